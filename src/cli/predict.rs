//! `skillgraft predict` (a task's predictions through the serving engine, on any device and in any precision)
//! and `skillgraft embed` (sentence embeddings and hidden states of the base model, for parity checks).

use super::args::{DataArgs, ModelArgs};
use super::evaluate::load_checked_graft;
use super::output::print_json;
use super::table::Table;
use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::model::predict::argmax_f32;
use crate::model::{to_hash_map, Encoder, TextInput};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options of `skillgraft predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The task's graft file.
    #[arg(long)]
    graft: PathBuf,
    /// Texts to classify, one per line (`-` for standard input); without it, the task's test split.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Texts per engine request.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Write every prediction (label index, logits) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cost of one forward pass in padded tokens when the engine cuts batches by length (0 = by device;
    /// a huge value = every batch padded to its longest text).
    #[arg(long, env = "SKILLGRAFT_PASS_OVERHEAD_TOKENS", default_value_t = 0)]
    pass_overhead_tokens: usize,
}

/// Reads non-empty lines of a file (or standard input for `-`).
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let lines: Vec<String> = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect()
    };
    Ok(lines.into_iter().filter(|l| !l.trim().is_empty()).collect())
}

/// Runs `skillgraft predict`.
pub fn run_predict(a: PredictArgs) -> Result<()> {
    let base = a.model.load()?;
    let graft = load_checked_graft(&a.graft, &base)?;
    let (texts, labels): (Vec<TextInput>, Option<Vec<usize>>) = match &a.texts {
        Some(path) => (
            read_lines(path)?
                .into_iter()
                .map(TextInput::single)
                .collect(),
            None,
        ),
        None => {
            let task = match (&a.data.task, &a.data.task_spec, &graft.manifest.task) {
                (None, None, Some(t)) => t.clone(),
                _ => a.data.task()?,
            };
            let split = a.data.split(&task)?;
            let texts = graft
                .manifest
                .head
                .inputs(&split.test, base.tokenizer.mask_token())?;
            (texts, Some(split.test.iter().map(|e| e.label).collect()))
        }
    };
    if texts.is_empty() {
        bail!("no texts to classify");
    }
    let engine = Engine::start(
        &base,
        EngineConfig {
            threads: rayon::current_num_threads(),
            pass_overhead_tokens: a.pass_overhead_tokens,
            ..Default::default()
        },
    )?;
    let task = Arc::new(ServedTask {
        name: a.graft.display().to_string(),
        graft,
        version: 1,
    });
    let prompt = task.head().uses_prompt();
    let start = Instant::now();
    let chunks = texts
        .chunks(a.batch_size.max(1))
        .map(|c| base.tokenizer.encode(c, prompt))
        .collect::<Result<Vec<_>>>()?;
    let replies = futures::executor::block_on(futures::future::join_all(
        chunks
            .into_iter()
            .map(|batch| engine.logits(task.clone(), batch)),
    ));
    let mut logits = Vec::with_capacity(texts.len());
    for r in replies {
        logits.extend(r?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let predictions: Vec<usize> = logits.iter().map(|l| argmax_f32(l)).collect();
    let accuracy = labels
        .as_ref()
        .map(|y| predictions.iter().zip(y).filter(|(p, y)| p == y).count() as f64 / y.len() as f64);
    let dtype = format!("{:?}", base.dtype).to_lowercase();
    let s = engine.stats();
    let summary = serde_json::json!({
        "graft": a.graft, "device": format!("{:?}", base.device), "dtype": dtype,
        "examples": texts.len(), "accuracy": accuracy, "seconds": seconds,
        "sentences_per_s": texts.len() as f64 / seconds,
        "forward_passes": s.passes.load(std::sync::atomic::Ordering::Relaxed),
        "real_tokens": s.tokens.load(std::sync::atomic::Ordering::Relaxed),
        "padded_tokens": s.padded_tokens.load(std::sync::atomic::Ordering::Relaxed),
    });
    if let Some(out) = &a.out {
        let mut full = summary.clone();
        full["predictions"] = serde_json::json!(predictions);
        full["logits"] = serde_json::json!(logits);
        std::fs::write(out, serde_json::to_vec(&full)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.model.json {
        return print_json(&summary);
    }
    let mut t = Table::new(&[
        "examples",
        "device",
        "dtype",
        "accuracy",
        "seconds",
        "sentences/s",
    ]);
    t.row(vec![
        texts.len().to_string(),
        format!("{:?}", base.device),
        dtype,
        accuracy.map_or("–".into(), |a| format!("{a:.4}")),
        format!("{seconds:.2}"),
        format!("{:.1}", texts.len() as f64 / seconds),
    ]);
    println!("{t}");
    Ok(())
}

/// Options of `skillgraft embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Texts, one per line (`-` for standard input).
    #[arg(long)]
    texts: PathBuf,
    /// Mean-pooled, L2-normalized sentence embeddings (texts × hidden, f32) as a .npy file.
    #[arg(long)]
    out: PathBuf,
    /// Also the last hidden states (texts × tokens × hidden, f32, padded) as a .npy file.
    #[arg(long)]
    hidden: Option<PathBuf>,
    /// Also the token ids and attention mask used, as JSON (to feed another implementation the same inputs).
    #[arg(long)]
    ids: Option<PathBuf>,
}

/// Runs `skillgraft embed`.
pub fn run_embed(a: EmbedArgs) -> Result<()> {
    let base = a.model.load()?;
    let texts: Vec<TextInput> = read_lines(&a.texts)?
        .into_iter()
        .map(TextInput::single)
        .collect();
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let tensors: std::collections::BTreeMap<_, _> = base
        .model
        .weights
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(base.dtype)?)))
        .collect::<Result<_>>()?;
    let vb = candle_nn::VarBuilder::from_tensors(to_hash_map(&tensors), base.dtype, &base.device);
    let encoder = Encoder::load(vb, &base.model.config)?;
    let enc = base.tokenizer.encode(&texts, false)?;
    let input = enc.to_input(&base.model.config, &base.device, base.dtype)?;
    let hidden = encoder.forward(&input)?.to_dtype(candle_core::DType::F32)?;
    let emb = crate::model::heads::unit_rows(&crate::model::heads::mean_pool(
        &hidden,
        &input.attention_mask.to_dtype(candle_core::DType::F32)?,
    )?)?;
    emb.to_device(&candle_core::Device::Cpu)?
        .write_npy(&a.out)?;
    if let Some(p) = &a.hidden {
        hidden.to_device(&candle_core::Device::Cpu)?.write_npy(p)?;
    }
    if let Some(p) = &a.ids {
        let v = serde_json::json!({
            "batch": enc.batch, "seq": enc.seq, "input_ids": enc.ids, "attention_mask": enc.mask,
            "token_type_ids": enc.type_ids,
        });
        std::fs::write(p, serde_json::to_vec(&v)?)?;
    }
    eprintln!(
        "embedded {} texts ({} tokens padded) on {:?} in {:?}",
        enc.batch, enc.seq, base.device, base.dtype
    );
    Ok(())
}
