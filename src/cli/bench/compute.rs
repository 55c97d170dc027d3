//! `skillgraft bench`: forward throughput, forward+backward, optimizer steps, graft apply/revert and a reduced
//! localization job (SST-2 K=16 train/dev, 64 test sentences, a synthetic fine-tune), as one table
//! (optionally beside PyTorch's times measured in the same sitting). `--engine-graft-sizes` prints the
//! engine's graft-size table before it, and `--correction-crossover` prints only its own two tables (both
//! from [`super::engine`]).

use super::engine::{correction_crossover, engine_batch_seconds, graft_size_table};
use super::harness::{random_batch, synced, time_it, with_linear_head};
use crate::cli::args::ModelArgs;
use crate::cli::output::print_json;
use crate::cli::table::Table;
use crate::data;
use crate::graft::graftable::GraftableModel;
use crate::graft::localize::{localize, LocalizeOptions, Method};
use crate::graft::{entries_from_mask, Graft};
use crate::model::heads::{Classifier, HeadSpec, Pooling};
use crate::model::{to_hash_map, BaseModel, ParamSet};
use crate::train::optim::{Optimizer, OptimizerConfig};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `skillgraft bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub(in crate::cli) model: ModelArgs,
    /// Minimum seconds spent timing each row.
    #[arg(long, default_value_t = 2.0)]
    min_seconds: f64,
    /// Skip the reduced localization-job row (needs the data sets).
    #[arg(long)]
    skip_job: bool,
    /// Directory of the data sets (for the localization job).
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A Python with torch + transformers: run benches/torch_bench.py with the same threads and print ratios.
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// Forward shapes, batch x tokens (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1x16,32x64")]
    shapes: Vec<String>,
    /// Time only the forward shapes and the engine rows (inference; any dtype).
    #[arg(long)]
    forward_only: bool,
    /// Engine rows: one batch of the largest shape spread over this many synthetic tasks (comma-separated;
    /// empty for none), timed through the serving engine.
    #[arg(long, value_delimiter = ',', default_value = "")]
    engine_tasks: Vec<String>,
    /// Graft-size table: grafts of these shares of the whole model (comma-separated, e.g.
    /// 0.0001,0.001,0.01,0.1), each served to each of `--engine-tasks` tasks (default 1) on batches of the
    /// largest shape, against the base model through the same engine; replaces the engine rows.
    #[arg(long, value_delimiter = ',', default_value = "")]
    engine_graft_sizes: Vec<String>,
    /// Only time one layer's graft correction by the sparse and the dense-delta path on the CPU, across
    /// densities, and print where they cost the same (what sets the dense-delta threshold).
    #[arg(long)]
    correction_crossover: bool,
}

/// (batch, tokens) of a shape written `BxT`.
fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (b, t) = s
        .split_once('x')
        .with_context(|| format!("shape `{s}` is not BxT (e.g. 32x128)"))?;
    Ok((b.trim().parse()?, t.trim().parse()?))
}

/// One row of the table: what, milliseconds, a note.
type Row = (String, f64, String);

/// Runs the benchmark.
pub(super) fn run(a: BenchArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    if a.correction_crossover {
        return crossover(threads);
    }
    let base = a.model.load()?;
    let mut rows: Vec<Row> = Vec::new();
    let head = HeadSpec::Linear {
        num_labels: 2,
        pooling: Pooling::Cls,
    };
    let tensors = with_linear_head(&base)?;
    let shapes = a
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<Result<Vec<_>>>()?;
    forward_rows(&a, &base, &tensors, &head, &shapes, &mut rows)?;
    engine_rows(&a, &base, &shapes, threads, &mut rows)?;
    if a.forward_only {
        return report(&a, &base, threads, &rows, None);
    }
    if base.dtype != DType::F32 {
        anyhow::bail!(
            "training rows run in f32 only: add --forward-only for --dtype {:?}",
            base.dtype
        );
    }
    training_rows(&a, &base, &tensors, &head, &mut rows)?;
    graft_rows(&a, &base, &tensors, &mut rows)?;
    if !a.skip_job {
        rows.push(job_row(&a, &base)?);
    }
    let torch = match &a.torch_python {
        Some(py) => Some(torch_times(py, &base, threads)?),
        None => None,
    };
    report(&a, &base, threads, &rows, torch.as_ref())
}

/// `--correction-crossover`: one layer's correction by both paths, and where they cost the same.
fn crossover(threads: usize) -> Result<()> {
    let (t, cross) = correction_crossover(
        &[(384, 384), (384, 1536), (1536, 384)],
        &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0],
        &[32, 512],
        15,
    )?;
    println!(
        "one layer's correction, one task, f32, {threads} thread(s), CPU kernels {:?}:\n{t}\n{cross}",
        crate::model::ops::cpu_kernels()
    );
    Ok(())
}

/// Forward (inference: no variables, no graph), in the chosen dtype, at each shape.
fn forward_rows(
    a: &BenchArgs,
    base: &BaseModel,
    tensors: &BTreeMap<String, Tensor>,
    head: &HeadSpec,
    shapes: &[(usize, usize)],
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (cfg, dev, dtype) = (&base.model.config, &base.device, base.dtype);
    let clf = Classifier::load(&to_hash_map(tensors), cfg, head, dtype, dev)?;
    for &(b, s) in shapes {
        let input = random_batch(b, s, 1).to_input(cfg, dev, dtype)?;
        let t = time_it(a.min_seconds, || {
            synced(dev, || Ok(clf.encoder.forward(&input)?))?;
            Ok(())
        })?;
        rows.push((
            format!("forward {b}x{s}"),
            t * 1e3,
            format!(
                "{:.0} sentences/s, {:.0} tokens/s",
                b as f64 / t,
                (b * s) as f64 / t
            ),
        ));
    }
    Ok(())
}

/// The engine rows on the largest shape (`--engine-tasks`), or with `--engine-graft-sizes` the graft-size
/// table, printed at once.
fn engine_rows(
    a: &BenchArgs,
    base: &BaseModel,
    shapes: &[(usize, usize)],
    threads: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let engine_tasks = a
        .engine_tasks
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            n.trim()
                .parse()
                .context("--engine-tasks: a number of tasks")
        })
        .collect::<Result<Vec<usize>>>()?;
    let graft_sizes = a
        .engine_graft_sizes
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            f.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .with_context(|| format!("--engine-graft-sizes: `{f}` is not a share in (0, 1]"))
        })
        .collect::<Result<Vec<f64>>>()?;
    let largest = shapes.iter().max_by_key(|(b, s)| b * s).copied();
    if !graft_sizes.is_empty() {
        if a.model.json {
            anyhow::bail!("--engine-graft-sizes prints a table: drop --json");
        }
        let Some((b, s)) = largest else {
            anyhow::bail!("--engine-graft-sizes needs a shape (--shapes)");
        };
        let counts = if engine_tasks.is_empty() {
            vec![1]
        } else {
            engine_tasks
        };
        let table = graft_size_table(base, &graft_sizes, &counts, b, s, a.min_seconds)?;
        println!(
            "engine, batches of {b}x{s} tokens, {threads} thread(s), synthetic grafts in the encoder layers:\n{table}"
        );
    } else if let Some((b, s)) = largest {
        for &n in &engine_tasks {
            let t = engine_batch_seconds(base, n, b, s, a.min_seconds)?;
            rows.push((
                format!("engine {b}x{s}, {n} task(s)"),
                t * 1e3,
                format!("{:.0} sentences/s", b as f64 / t),
            ));
        }
    }
    Ok(())
}

/// Forward + backward (encoder layers trainable, embeddings frozen), then optimizer steps over them.
fn training_rows(
    a: &BenchArgs,
    base: &BaseModel,
    tensors: &BTreeMap<String, Tensor>,
    head: &HeadSpec,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let (cfg, dev) = (&base.model.config, &base.device);
    let mut train_tensors = tensors.clone();
    let params = ParamSet::make_trainable(&mut train_tensors, |n| n.starts_with("encoder."))?;
    let clf_t = Classifier::load(&to_hash_map(&train_tensors), cfg, head, DType::F32, dev)?;
    let input = random_batch(8, 64, 2).to_input(cfg, dev, DType::F32)?;
    let labels = Tensor::from_vec(vec![0u32, 1, 0, 1, 1, 0, 1, 0], 8, dev)?;
    let t = time_it(a.min_seconds, || {
        let logits = clf_t.logits(&input)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        params.gradients(&grads)?;
        dev.synchronize()?;
        Ok(())
    })?;
    rows.push((
        "forward+backward 8x64".into(),
        t * 1e3,
        format!(
            "{} trainable; head on [CLS], so the last layer runs for that token only",
            params.numel()
        ),
    ));
    let grads: Vec<Tensor> = params
        .vars
        .iter()
        .map(|v| v.as_tensor().randn_like(0.0, 1e-3))
        .collect::<candle_core::Result<_>>()?;
    for (name, cfg_opt) in [
        (
            "sgd step",
            OptimizerConfig::Sgd {
                lr: 1e-6,
                momentum: 0.0,
                weight_decay: 0.0,
            },
        ),
        (
            "adamw step",
            OptimizerConfig::AdamW {
                lr: 1e-6,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        ),
    ] {
        let mut opt = Optimizer::new(cfg_opt, &params, None, None)?;
        let t = time_it(a.min_seconds, || {
            synced(dev, || opt.step(&params, &grads))?;
            Ok(())
        })?;
        rows.push((name.into(), t * 1e3, format!("{} values", params.numel())));
    }
    Ok(())
}

/// Graft apply + revert on the served (inference) tensors, at two graft sizes.
fn graft_rows(
    a: &BenchArgs,
    base: &BaseModel,
    tensors: &BTreeMap<String, Tensor>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let region = crate::graft::FlatRegion::new(&Default::default(), &base.model.weights.tensors)?;
    for k in [1_064usize, 10_640] {
        let step = (region.len() / k).max(1);
        let mask: Vec<u32> = (0..k).map(|i| (i * step) as u32).collect();
        let values = vec![0.5f32; region.len()];
        let graft = Graft {
            manifest: serde_json::from_value(serde_json::json!({
                "format": 1, "base": {"name": "", "content_hash": "", "architecture": "", "parameters": 0},
                "region": {}, "region_size": region.len(), "size": k, "method": "bench",
                "hyper_parameters": null, "head": {"kind": "linear", "num_labels": 2, "pooling": "cls"},
                "task": null, "metrics": null, "created_unix": 0
            }))?,
            entries: entries_from_mask(&region, &mask, &values),
            head: BTreeMap::new(),
        };
        let t = time_it(a.min_seconds.min(0.5), || {
            synced(&base.device, || graft.apply(tensors)?.revert())?;
            Ok(())
        })?;
        rows.push((format!("graft apply+revert k={k}"), t * 1e3, String::new()));
    }
    Ok(())
}

/// A reduced localization job: SST-2 K=16 train/dev but only 64 test sentences (the real job evaluates its
/// variants on all 1,821), 10 epochs, paper method, prototype head, a synthetic fine-tune (the base plus
/// noise) instead of a trained checkpoint.
fn job_row(a: &BenchArgs, base: &BaseModel) -> Result<Row> {
    let dir = a.data_dir.clone().unwrap_or_else(data::data_dir_default);
    let task = data::builtin_task("sst2").context("sst2 task")?;
    let split = data::task_split(&task, &dir, 16, 42, Some(64))?;
    let spec = base.head_spec(
        crate::model::HeadKind::Prototype,
        &task,
        0.05,
        Pooling::Mean,
    )?;
    let head_t = base.init_head(&spec, 0)?;
    let mut ft = base.model.weights.deep_clone()?.tensors;
    for (n, t) in ft.iter_mut() {
        if n.starts_with("encoder.") {
            *t = (t.clone() + t.randn_like(0.0, 1e-3)?)?;
        }
    }
    let t0 = Instant::now();
    let model = GraftableModel::new(
        &base.model,
        &ft,
        head_t,
        base.inputs(spec),
        &Default::default(),
    )?;
    let opts = LocalizeOptions {
        method: Method::Paper,
        ..Default::default()
    };
    localize(&model, &split, &opts, &mut |_| {})?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        "reduced localization job (SST-2 K=16, 10 epochs, synthetic fine-tune, 64 test sentences)"
            .into(),
        secs * 1e3,
        format!("region {}", model.region.len()),
    ))
}

/// PyTorch's times of the same rows: benches/torch_bench.py run by `py` with the same threads.
fn torch_times(py: &Path, base: &BaseModel, threads: usize) -> Result<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/torch_bench.py");
    let out = std::process::Command::new(py)
        .arg(&script)
        .args(["--json", "--threads", &threads.to_string(), "--model"])
        .arg(&base.model.files.dir)
        .output()
        .with_context(|| format!("cannot run {}", py.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "torch_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("torch_bench.py printed no JSON")
}

/// Prints the rows (a table, or JSON with `--json`), beside PyTorch's times when given.
fn report(
    a: &BenchArgs,
    base: &BaseModel,
    threads: usize,
    rows: &[Row],
    torch: Option<&serde_json::Value>,
) -> Result<()> {
    let torch_ms = |row: &str| -> Option<f64> {
        let key = match row {
            "forward 1x16" => "forward_1x16_ms",
            "forward 32x64" => "forward_32x64_ms",
            "forward+backward 8x64" => "forward_backward_8x64_ms",
            "sgd step" => "sgd_step_ms",
            "adamw step" => "adamw_step_ms",
            _ => return None,
        };
        torch?.get(key)?.as_f64()
    };
    let dtype = format!("{:?}", base.dtype).to_lowercase();
    if a.model.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, ms, note)| serde_json::json!({"name": n, "ms": ms, "note": note, "torch_ms": torch_ms(n)}))
            .collect();
        return print_json(&serde_json::json!({
            "threads": threads, "device": a.model.device, "dtype": dtype, "rows": list, "torch": torch,
        }));
    }
    println!(
        "skillgraft bench — model {} ({} parameters), device {}, {dtype}, {} thread(s) (RAYON_NUM_THREADS)",
        base.name,
        base.model.body_parameter_count(),
        a.model.device,
        threads
    );
    let mut t = Table::new(&["what", "ms", "torch ms", "ratio", "note"]);
    for (n, ms, note) in rows {
        let (tm, ratio) = match torch_ms(n) {
            Some(x) => (format!("{x:.2}"), format!("{:.2}x", ms / x)),
            None => (String::new(), String::new()),
        };
        t.row(vec![n.clone(), format!("{ms:.2}"), tm, ratio, note.clone()]);
    }
    println!("{t}");
    Ok(())
}
