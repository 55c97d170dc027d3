//! Reproduction studies: a grid of fine-tunes and localizations, resumable (every cell's result is cached as
//! a JSON file, every fine-tune as an HF directory), aggregated over seeds into a Markdown report.

use crate::data::{self, FewShotOptions};
use crate::graft::evaluate::VariantReport;
use crate::graft::job::LocalizationJob;
use crate::graft::localize::{LocalizeOptions, Method};
use crate::model::export::{load_finetuned, write_hf_dir};
use crate::model::{BaseModel, HeadKind, Pooling};
use crate::store::atomic_write;
use crate::train::optim::OptimizerConfig;
use crate::train::{finetune, FinetuneOptions, Progress, TrainScope};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The grid and its fixed settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyConfig {
    /// Built-in tasks.
    pub tasks: Vec<String>,
    /// Few-shot seeds.
    pub seeds: Vec<u64>,
    /// Examples per class.
    pub ks: Vec<usize>,
    /// Head protocols.
    pub heads: Vec<HeadKind>,
    /// Fine-tuning optimizers: `sgd`, `adamw`, `adamw-l1`.
    pub optimizers: Vec<String>,
    /// Localization methods.
    pub methods: Vec<Method>,
    /// Graft budgets.
    pub sparsities: Vec<f64>,
    /// Fine-tuning steps.
    pub steps: usize,
    /// Dev evaluation interval.
    pub eval_every: usize,
    /// Mask-optimization epochs.
    pub epochs: usize,
    /// Test-set cap per task (None = full).
    pub max_test: Option<usize>,
    /// Where fine-tunes and cells are cached.
    pub cache_dir: PathBuf,
    /// Data sets.
    pub data_dir: PathBuf,
}

/// One finished cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Task.
    pub task: String,
    /// Seed.
    pub seed: u64,
    /// K.
    pub k: usize,
    /// Head.
    pub head: HeadKind,
    /// Optimizer.
    pub optimizer: String,
    /// Method.
    pub method: Method,
    /// Sparsity.
    pub sparsity: f64,
    /// Graft size.
    pub graft_size: usize,
    /// base+head, base patch, graft, fine-tuned on the test split.
    pub variants: Vec<VariantReport>,
    /// Localization wall time.
    pub seconds: f64,
}

fn optimizer(name: &str) -> Result<(OptimizerConfig, Option<f64>)> {
    let adamw = |lr| OptimizerConfig::AdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    Ok(match name {
        "sgd" => (
            OptimizerConfig::Sgd {
                lr: 3e-2,
                momentum: 0.0,
                weight_decay: 1e-4,
            },
            None,
        ),
        "adamw" => (adamw(1e-5), None),
        "adamw-l1" => (adamw(1e-5), Some(1e-3)),
        other => anyhow::bail!("unknown optimizer `{other}` (sgd, adamw, adamw-l1)"),
    })
}

fn head_name(h: HeadKind) -> String {
    serde_json::to_value(h)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs every missing cell of the grid (progress and ETA on stderr) and returns all cells.
pub fn run(base: &BaseModel, cfg: &StudyConfig) -> Result<Vec<Cell>> {
    let ft_total =
        cfg.tasks.len() * cfg.seeds.len() * cfg.ks.len() * cfg.heads.len() * cfg.optimizers.len();
    let total = ft_total * cfg.methods.len() * cfg.sparsities.len();
    let mut cells = Vec::new();
    let mut done = 0usize;
    let mut spent = 0f64;
    let mut computed = 0usize;
    for task_name in &cfg.tasks {
        let task =
            data::builtin_task(task_name).with_context(|| format!("unknown task `{task_name}`"))?;
        let all = data::load_examples(&task, &cfg.data_dir)?;
        for &k in &cfg.ks {
            for &seed in &cfg.seeds {
                let split = data::few_shot(
                    &all,
                    task.labels.len(),
                    &FewShotOptions {
                        max_test: cfg.max_test,
                        ..FewShotOptions::new(k, seed)
                    },
                )?;
                for &head_kind in &cfg.heads {
                    for opt_name in &cfg.optimizers {
                        let ft_key = format!(
                            "{task_name}-k{k}-s{seed}-{}-{opt_name}-{}steps",
                            head_name(head_kind),
                            cfg.steps
                        );
                        let ft_dir = cfg.cache_dir.join("finetuned").join(&ft_key);
                        let spec = base.head_spec(head_kind, &task, 0.05, Pooling::Cls)?;
                        if !ft_dir.join("model.safetensors").is_file() {
                            let t0 = Instant::now();
                            eprintln!("[study] fine-tune {ft_key}");
                            let (opt, l1) = optimizer(opt_name)?;
                            let mut tensors = base.model.weights.deep_clone()?.tensors;
                            tensors.extend(base.init_head(&spec, seed)?);
                            let scope = match spec {
                                crate::model::HeadSpec::Prototype { .. }
                                | crate::model::HeadSpec::Prompt { .. } => TrainScope::Body,
                                _ => TrainScope::ProbeThenBody,
                            };
                            let opts = FinetuneOptions {
                                optimizer: opt,
                                steps: cfg.steps,
                                probe_steps: cfg.steps / 2,
                                batch_size: 4,
                                eval_every: cfg.eval_every,
                                clip: Some(1.0),
                                l1,
                                scope,
                                train_embeddings: false,
                                seed,
                            };
                            let (tensors, _) = finetune(
                                tensors,
                                &base.inputs(spec.clone()),
                                &split,
                                &opts,
                                &mut |_| {},
                            )?;
                            write_hf_dir(&ft_dir, &base.model, &tensors, &spec, Some(&task), true)?;
                            eprintln!("[study]   {:.0}s", t0.elapsed().as_secs_f64());
                        }
                        let mut ft = None;
                        for &method in &cfg.methods {
                            for &sparsity in &cfg.sparsities {
                                let key = format!(
                                    "{ft_key}-{}-{sparsity:e}-e{}",
                                    method.name(),
                                    cfg.epochs
                                );
                                let path = cfg.cache_dir.join("cells").join(format!("{key}.json"));
                                done += 1;
                                if let Ok(bytes) = std::fs::read(&path) {
                                    if let Ok(c) = serde_json::from_slice::<Cell>(&bytes) {
                                        cells.push(c);
                                        continue;
                                    }
                                }
                                if ft.is_none() {
                                    ft = Some(load_finetuned(
                                        &ft_dir,
                                        &base.model,
                                        Some(&task),
                                        &base.tokenizer,
                                        &base.device,
                                    )?);
                                }
                                let Some(ftm) = ft.as_ref() else { continue };
                                let t0 = Instant::now();
                                let job = LocalizationJob {
                                    base,
                                    finetuned: ftm,
                                    task: task.clone(),
                                    split: split.clone(),
                                    options: LocalizeOptions {
                                        method,
                                        sparsity,
                                        epochs: cfg.epochs,
                                        ..Default::default()
                                    },
                                    bins: 10,
                                    cancel: None,
                                };
                                let out = job.run(&mut |_p: Progress| {})?;
                                let cell = Cell {
                                    task: task_name.clone(),
                                    seed,
                                    k,
                                    head: head_kind,
                                    optimizer: opt_name.clone(),
                                    method,
                                    sparsity,
                                    graft_size: out.graft.size(),
                                    variants: out.variants,
                                    seconds: t0.elapsed().as_secs_f64(),
                                };
                                atomic_write(&path, &serde_json::to_vec_pretty(&cell)?)?;
                                spent += cell.seconds;
                                computed += 1;
                                let eta = spent / computed as f64 * (total - done) as f64;
                                eprintln!(
                                    "[study] {done}/{total} {key}: graft {:.4}  ETA {:.0} min (fine-tunes not included)",
                                    cell.variants.iter().find(|v| v.name == "graft").map_or(f64::NAN, |v| v.test.accuracy),
                                    eta / 60.0
                                );
                                cells.push(cell);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(cells)
}

/// A report row: task, head, optimizer, K, method, sparsity.
type ConfigKey = (String, String, String, usize, String, String);

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn fmt(v: &[f64], scale: f64) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{:.1} ± {:.1}", m * scale, s * scale)
    } else {
        format!("{:.1}", m * scale)
    }
}

/// The Markdown report: per configuration, mean ± std over seeds of accuracy and ECE of the four models,
/// graft size, retained (graft / fine-tuned) and gap recovered ((graft − base) / (fine-tuned − base)).
pub fn report(cells: &[Cell], command: &str) -> String {
    let mut groups: BTreeMap<ConfigKey, Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        groups
            .entry((
                c.task.clone(),
                head_name(c.head),
                c.optimizer.clone(),
                c.k,
                c.method.name().to_string(),
                format!("{:e}", c.sparsity),
            ))
            .or_default()
            .push(c);
    }
    let mut out = String::new();
    out.push_str("# Results\n\nGenerated by:\n\n```\n");
    out.push_str(command);
    out.push_str("\n```\n\nAccuracy and ECE (10 bins) in %, mean ± std over seeds, on each task's test split. ");
    out.push_str("Retained = graft / fine-tuned accuracy; gap recovered = (graft − base+head) / (fine-tuned − base+head).\n\n");
    out.push_str("| task | head | optimizer | K | method | sparsity | seeds | graft params | base+head | base patch | graft | fine-tuned | retained | gap recovered | ECE fine-tuned | ECE graft |\n");
    out.push_str("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for ((task, head, opt, k, method, sp), cs) in &groups {
        let acc = |name: &str| -> Vec<f64> {
            cs.iter()
                .filter_map(|c| c.variants.iter().find(|v| v.name == name))
                .map(|v| v.test.accuracy)
                .collect()
        };
        let ece = |name: &str| -> Vec<f64> {
            cs.iter()
                .filter_map(|c| c.variants.iter().find(|v| v.name == name))
                .map(|v| v.test.ece)
                .collect()
        };
        let (b, p, g, f) = (
            acc("base+head"),
            acc("base patch"),
            acc("graft"),
            acc("fine-tuned"),
        );
        let retained: Vec<f64> = g.iter().zip(&f).map(|(g, f)| g / f).collect();
        let gap: Vec<f64> = g
            .iter()
            .zip(&f)
            .zip(&b)
            .filter(|((_, f), b)| (*f - *b).abs() > 1e-9)
            .map(|((g, f), b)| (g - b) / (f - b))
            .collect();
        let size = cs.iter().map(|c| c.graft_size as f64).sum::<f64>() / cs.len().max(1) as f64;
        out.push_str(&format!(
            "| {task} | {head} | {opt} | {k} | {method} | {sp} | {} | {size:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cs.len(),
            fmt(&b, 100.0),
            fmt(&p, 100.0),
            fmt(&g, 100.0),
            fmt(&f, 100.0),
            fmt(&retained, 100.0),
            if gap.is_empty() { "–".to_string() } else { fmt(&gap, 100.0) },
            fmt(&ece("fine-tuned"), 100.0),
            fmt(&ece("graft"), 100.0),
        ));
    }
    out
}

/// Writes `results.json` and the report.
pub fn write(cells: &[Cell], command: &str, report_path: &Path, json_path: &Path) -> Result<()> {
    atomic_write(json_path, &serde_json::to_vec_pretty(cells)?)?;
    atomic_write(report_path, report(cells, command).as_bytes())
}
