//! `skillgraft selfcheck`: checks the kernels and the serving engine on a device (a GPU, typically) against
//! the CPU and against each other, and prints one line per check (or JSON). Exits non-zero when any fails.
//!
//! Checks: every fused op forward and backward in f64/f32 (and forward in bf16/f16) against the CPU in f64,
//! and against finite differences computed on the device; sparse per-row corrections; scatter apply/revert
//! bit for bit; then the engine on the base model: tasks served together in one batch (sparse corrections,
//! and a graft on the embeddings written in place) give each task's logits with its graft applied alone,
//! apply + revert leaves the weights bit for bit, and bf16 predictions agree with f32 ones.

use super::args::ModelArgs;
use super::output::print_json;
use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::synthetic::SyntheticTasks;
use crate::model::heads::Classifier;
use crate::model::ops::check::{kernels, Check};
use crate::model::predict::argmax_f32;
use crate::model::{to_hash_map, BaseModel, TextInput};
use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

/// Options of `skillgraft selfcheck`.
#[derive(Args, Debug)]
pub struct SelfcheckArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Only the kernel checks (no model needed beyond loading the device).
    #[arg(long)]
    kernels_only: bool,
}

fn check(name: &str, error: f64, tolerance: f64) -> Check {
    Check {
        name: name.into(),
        error,
        tolerance,
        passed: error <= tolerance,
    }
}

const TEXTS: [&str; 6] = [
    "a gorgeous , witty , seductive movie .",
    "the plot is dull and the acting is worse .",
    "an endearing , if uneven , comedy about growing up .",
    "it never quite finds its footing .",
    "one of the year 's best films , funny and wise",
    "bad .",
];

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

/// The engine on `base`'s device: mixed batches vs in place, revert identity, bf16 vs f32.
fn engine_checks(base: &BaseModel) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let inner = SyntheticTasks::new(base, 1e-3)?;
    let emb = SyntheticTasks::with_region(
        base,
        1e-3,
        &crate::graft::RegionSpec {
            include_embeddings: true,
            layers: None,
        },
    )?;
    let grafts = vec![inner.graft(1)?, inner.graft(2)?, emb.graft(3)?];
    if !grafts[2]
        .entries
        .iter()
        .any(|e| e.name.starts_with("embeddings."))
    {
        bail!("selfcheck: the embedding graft touches no embedding");
    }
    let texts: Vec<TextInput> = TEXTS.iter().map(|t| TextInput::single(*t)).collect();
    let batch = base.tokenizer.encode(&texts, false)?;
    // Reference: each graft applied alone to a copy of the weights, through the plain classifier.
    let weights = base.model.weights.deep_clone()?.tensors;
    let before: Vec<Vec<f32>> = weights
        .values()
        .map(crate::model::ops::to_f32_vec)
        .collect::<candle_core::Result<_>>()?;
    let input = batch.to_input(&base.model.config, &base.device, DType::F32)?;
    let mut reference = Vec::new();
    for g in &grafts {
        let applied = g.apply(&weights)?;
        let mut t = weights.clone();
        for (k, v) in g.head_tensors(&base.device)? {
            t.insert(k, v);
        }
        let clf = Classifier::load(
            &to_hash_map(&t),
            &base.model.config,
            &g.manifest.head,
            DType::F32,
            &base.device,
        )?;
        reference.push(clf.logits(&input)?.to_vec2::<f32>()?);
        applied.revert()?;
    }
    let after: Vec<Vec<f32>> = weights
        .values()
        .map(crate::model::ops::to_f32_vec)
        .collect::<candle_core::Result<_>>()?;
    let identical = before
        .iter()
        .zip(&after)
        .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    out.push(check(
        "graft apply + revert on the device weights, bit for bit (abs)",
        if identical { 0.0 } else { 1.0 },
        0.0,
    ));
    let served: Vec<Arc<ServedTask>> = grafts
        .into_iter()
        .enumerate()
        .map(|(i, graft)| {
            Arc::new(ServedTask {
                name: format!("check{i}"),
                graft,
                version: i as u64 + 1,
            })
        })
        .collect();
    let run = |base: &BaseModel| -> Result<Vec<Vec<Vec<f32>>>> {
        let engine = Engine::start(
            base,
            EngineConfig {
                max_wait: Duration::from_millis(200),
                threads: rayon::current_num_threads(),
                ..Default::default()
            },
        )?;
        let replies = futures::executor::block_on(futures::future::join_all(
            served
                .iter()
                .map(|t| engine.logits(t.clone(), batch.clone())),
        ));
        let logits = replies.into_iter().collect::<Result<Vec<_>, _>>()?;
        let batches = engine
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed);
        if batches != 1 {
            bail!("selfcheck: the three tasks ran in {batches} batches, not one");
        }
        Ok(logits)
    };
    let got = run(base)?;
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        let how = if i == 2 {
            "in place (embeddings)"
        } else {
            "sparse corrections"
        };
        out.push(check(
            &format!("engine task {i} in a mixed batch, {how}, vs applied alone (abs)"),
            max_abs(g, r),
            1e-4,
        ));
    }
    let mut half = base.clone();
    half.dtype = DType::BF16;
    let got16 = run(&half)?;
    let (mut agree, mut total) = (0usize, 0usize);
    let mut worst = 0f64;
    for (a, b) in got.iter().zip(&got16) {
        for (x, y) in a.iter().zip(b) {
            total += 1;
            agree += usize::from(argmax_f32(x) == argmax_f32(y));
        }
        worst = worst.max(max_abs(a, b));
    }
    out.push(check(
        "engine bf16 vs f32 logits (abs; prototype logits are cosines / 0.05)",
        worst,
        1.0,
    ));
    out.push(check(
        "engine bf16 vs f32 predictions: share that differ",
        1.0 - agree as f64 / total.max(1) as f64,
        0.2,
    ));
    Ok(out)
}

/// Runs `skillgraft selfcheck`.
pub fn run(a: SelfcheckArgs) -> Result<()> {
    let base = a.model.load()?;
    let mut checks = kernels(&base.device)?;
    if !a.kernels_only {
        checks.extend(engine_checks(&base)?);
    }
    let passed = checks.iter().all(|c| c.passed);
    if a.model.json {
        print_json(&serde_json::json!({
            "device": a.model.device, "passed": passed, "checks": checks,
        }))?;
    } else {
        for c in &checks {
            println!(
                "{}  {:<80} error {:.3e} (tolerance {:.1e})",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.error,
                c.tolerance
            );
        }
        println!(
            "{} of {} checks passed on {}",
            checks.iter().filter(|c| c.passed).count(),
            checks.len(),
            a.model.device
        );
    }
    if !passed {
        bail!("some checks failed");
    }
    Ok(())
}
