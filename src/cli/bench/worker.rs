//! `skillgraft bench-worker` (hidden): the skillgraft side of `benches/compare.py`, which times skillgraft,
//! PyTorch and ONNX Runtime interleaved in one sitting. It loads the model once, then answers one JSON
//! request per stdin line with one JSON line on stdout:
//!
//! - `{"op": "info"}` → threads and the matrix-product library;
//! - `{"op": "forward", "batch": B, "seq": S, "reps": N}` → `{"times": [seconds × N]}` (inference forward);
//! - `{"op": "train", "batch": B, "seq": S, "reps": N}` → the same for forward + backward (encoder layers
//!   trainable, a linear head on the first token, cross-entropy), as `skillgraft bench` times it; the last
//!   layer runs on the first token only, since nothing else reaches the loss;
//! - `{"op": "train_all", …}` → the same with the head on the mean of every token, so that the whole last
//!   layer is computed (the like-for-like comparison with a framework that always computes it);
//! - `{"op": "hidden", "ids": [[…], …]}` → `{"shape": [B, S, H], "hidden": […]}` (last hidden states, for
//!   checking that the systems run the same weights).
//!
//! Inputs of a (batch, seq) are random token ids drawn once from a fixed seed.

use super::harness::{all_real, random_batch, with_linear_head};
use crate::cli::args::ModelArgs;
use crate::model::heads::{Classifier, HeadSpec, Pooling};
use crate::model::{to_hash_map, EncoderInput, ParamSet};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

/// Options of `skillgraft bench-worker`.
#[derive(Args, Debug)]
pub struct BenchWorkerArgs {
    #[command(flatten)]
    pub(in crate::cli) model: ModelArgs,
}

#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    batch: usize,
    #[serde(default)]
    seq: usize,
    #[serde(default)]
    reps: usize,
    #[serde(default)]
    ids: Vec<Vec<u32>>,
}

/// Serves requests until stdin closes.
pub(super) fn run(a: BenchWorkerArgs) -> Result<()> {
    let base = a.model.load()?;
    let cfg = &base.model.config;
    let dev = &base.device;
    let head = HeadSpec::Linear {
        num_labels: 2,
        pooling: Pooling::Cls,
    };
    let tensors = with_linear_head(&base)?;
    let clf = Classifier::load(&to_hash_map(&tensors), cfg, &head, base.dtype, dev)?;
    let mut train_tensors = tensors.clone();
    let params = ParamSet::make_trainable(&mut train_tensors, |n| n.starts_with("encoder."))?;
    let clf_t = Classifier::load(&to_hash_map(&train_tensors), cfg, &head, DType::F32, dev)?;
    let mean_head = HeadSpec::Linear {
        num_labels: 2,
        pooling: Pooling::Mean,
    };
    let clf_all = Classifier::load(
        &to_hash_map(&train_tensors),
        cfg,
        &mean_head,
        DType::F32,
        dev,
    )?;
    let mut inputs: HashMap<(usize, usize), EncoderInput> = HashMap::new();
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line).context("bench-worker: bad request")?;
        let reply = match req.op.as_str() {
            "info" => serde_json::json!({
                "threads": rayon::current_num_threads(),
                "gemm": crate::model::ops::gemm::backend(),
            }),
            "forward" | "train" | "train_all" => {
                if req.batch == 0 || req.seq == 0 {
                    bail!("bench-worker: batch and seq must be positive");
                }
                let input = match inputs.entry((req.batch, req.seq)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(
                        random_batch(req.batch, req.seq, 1).to_input(cfg, dev, base.dtype)?,
                    ),
                };
                let labels: Vec<u32> = (0..req.batch as u32).map(|i| i % 2).collect();
                let labels = Tensor::from_vec(labels, req.batch, dev)?;
                let mut times = Vec::with_capacity(req.reps);
                for _ in 0..req.reps.max(1) {
                    let t = Instant::now();
                    if req.op == "forward" {
                        clf.encoder.forward(input)?;
                    } else {
                        let trained = if req.op == "train" { &clf_t } else { &clf_all };
                        let loss =
                            candle_nn::loss::cross_entropy(&trained.logits(input)?, &labels)?;
                        params.gradients(&loss.backward()?)?;
                    }
                    dev.synchronize()?;
                    times.push(t.elapsed().as_secs_f64());
                }
                serde_json::json!({ "times": times })
            }
            "hidden" => {
                let batch = req.ids.len();
                let seq = req.ids.first().map_or(0, Vec::len);
                if batch == 0 || seq == 0 || req.ids.iter().any(|r| r.len() != seq) {
                    bail!("bench-worker: ids must be a non-empty rectangle");
                }
                let enc = all_real(req.ids.concat(), batch, seq);
                let h = clf
                    .encoder
                    .forward(&enc.to_input(cfg, dev, base.dtype)?)?
                    .to_dtype(DType::F32)?;
                serde_json::json!({
                    "shape": h.dims(),
                    "hidden": h.flatten_all()?.to_vec1::<f32>()?,
                })
            }
            other => bail!("bench-worker: unknown op `{other}`"),
        };
        let mut out = stdout.lock();
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}
