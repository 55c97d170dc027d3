//! Localization: finding the graft (GRAFTING.md, exactly), plus the magnitude baseline, an L1-regularized
//! variant (Localize-and-Stitch style), first-order saliency, `refit` (the base patch with its values
//! re-trained on the task, as in lottery-ticket sparse fine-tuning), and the two localizers for AdamW deltas
//! of [`super::methods`] (a learned mask, DARE's rescaled random drop), all at the same graft budget.
//!
//! Everything runs on flat buffers aligned with the region's tensors: θ_pre, Δ = θ_ft − θ_pre, the mask
//! logits S and the accumulated gradient. Only region tensors are variables, so only they get gradients.

use super::graftable::{top_k, GraftableModel};
use super::region::RegionSpec;
use crate::data::{Example, FewShotSplit};
use crate::model::TextInput;
pub use crate::train::EpochReport;
use crate::train::Progress;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// How the graft is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The base patch alone: the top-|Δ| parameters.
    Magnitude,
    /// The paper's sigmoid-mask optimization starting from the base patch.
    Paper,
    /// Mask optimization from no base patch with an L1 penalty λ·Σσ(S−β); final graft = top-k of S.
    L1,
    /// Top-k of |Σ_batches ∇L ⊙ Δ| at the fine-tuned point (first-order saliency).
    Saliency,
    /// The base patch's coordinates with their values re-trained (Adam, at most 4 steps per epoch, only those
    /// coordinates move, starting from the fine-tuned values); the epoch with the best train + dev accuracy is
    /// kept.
    Refit,
    /// A learned mask whose step is normalized by the mean |∇L ⊙ Δ| (does not vanish with |Δ|), started at
    /// the base patch, its size held at the budget ([`super::methods::learned_mask`]).
    Learned,
    /// DARE: k coordinates drawn at random, their Δ rescaled by N/k (no optimization; a baseline).
    Dare,
}

impl Method {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Paper => "paper",
            Method::L1 => "l1",
            Method::Saliency => "saliency",
            Method::Refit => "refit",
            Method::Learned => "learned",
            Method::Dare => "dare",
        }
    }
}

/// Localization hyper-parameters (defaults are the paper's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalizeOptions {
    /// Method.
    pub method: Method,
    /// Graft budget as a fraction of the region (size of the base patch).
    pub sparsity: f64,
    /// Mask-optimization epochs (one step each).
    pub epochs: usize,
    /// Learning rate η of the mask logits.
    pub lr: f64,
    /// Sigmoid bias β.
    pub sigmoid_bias: f64,
    /// L1 strength for the `l1` method, relative to the mean |gradient| of the first epoch.
    pub l1_lambda: f64,
    /// Step size η of the `learned` method's logits (per epoch, in units of the mean |gradient|).
    #[serde(default = "default_learned_lr")]
    pub learned_lr: f64,
    /// Adam learning rate of the `refit` method.
    #[serde(default = "default_refit_lr")]
    pub refit_lr: f64,
    /// Examples per batch when accumulating gradients.
    pub batch_size: usize,
    /// Seed of the mask-logit initialisation.
    pub seed: u64,
    /// Region.
    pub region: RegionSpec,
    /// Let the paper's method return more than the budget (its rounded mask grows freely); by default the
    /// rounded mask is projected onto the budget's top-k by inclusion probability.
    #[serde(default)]
    pub allow_growth: bool,
    /// When temperature scaling is applied to the evaluated variants (see [`crate::calibration`]).
    #[serde(default)]
    pub calibration: crate::calibration::CalibrationPolicy,
}

impl Default for LocalizeOptions {
    fn default() -> Self {
        Self {
            method: Method::Paper,
            sparsity: 1e-4,
            epochs: 10,
            lr: 1e7,
            sigmoid_bias: 10.0,
            l1_lambda: 0.1,
            refit_lr: default_refit_lr(),
            learned_lr: default_learned_lr(),
            batch_size: 8,
            seed: 0,
            region: RegionSpec::default(),
            allow_growth: false,
            calibration: Default::default(),
        }
    }
}

/// Adam steps per epoch of `refit` (gradients averaged over equal groups of batches), so that its step budget
/// does not grow with the training set.
const REFIT_STEPS_PER_EPOCH: usize = 4;

fn default_refit_lr() -> f64 {
    1e-3
}

fn default_learned_lr() -> f64 {
    1.0
}

/// Budget of a sparsity over a region: ⌈s·N⌉.
pub fn budget(sparsity: f64, region_len: usize) -> usize {
    ((sparsity * region_len as f64).ceil() as usize).min(region_len)
}

/// The result of a localization run.
#[derive(Debug, Clone)]
pub struct Localization {
    /// The graft (sorted flat region indices).
    pub mask: Vec<u32>,
    /// The grafted values, aligned with `mask`, when they differ from the fine-tuned values (`refit`).
    pub values: Option<Vec<f32>>,
    /// The base patch (top-|Δ|) at the same budget.
    pub base_patch: Vec<u32>,
    /// Per-epoch progress (empty for one-shot methods).
    pub history: Vec<EpochReport>,
    /// Epoch whose mask was kept.
    pub best_epoch: usize,
    /// Wall time.
    pub seconds: f64,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn batches(
    model: &GraftableModel,
    examples: &[Example],
    batch_size: usize,
) -> Result<Vec<(Vec<TextInput>, Vec<usize>)>> {
    let texts = model.inst.inputs.texts(examples)?;
    Ok(texts
        .chunks(batch_size.max(1))
        .zip(examples.chunks(batch_size.max(1)))
        .map(|(t, e)| (t.to_vec(), e.iter().map(|x| x.label).collect()))
        .collect())
}

fn flips(mask: &[u32], base: &[u32]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < mask.len() && j < base.len() {
        match mask[i].cmp(&base[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    mask.len() + base.len() - 2 * common
}

/// Runs localization on a prepared model. Deterministic for a seed.
pub fn localize(
    model: &GraftableModel,
    split: &FewShotSplit,
    opts: &LocalizeOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Localization> {
    let start = Instant::now();
    if !(opts.sparsity > 0.0 && opts.sparsity <= 1.0) {
        bail!("sparsity must be in (0, 1], got {}", opts.sparsity);
    }
    if split.train.is_empty() {
        bail!("localization needs training examples");
    }
    let n = model.region.len();
    let k = budget(opts.sparsity, n);
    let abs: Vec<f32> = model.delta.iter().map(|d| d.abs()).collect();
    let base_patch = top_k(&abs, k);
    let train_batches = batches(model, &split.train, opts.batch_size)?;
    let mut history = Vec::new();
    // Train and dev accuracy of each mask (and values) evaluated so far: a rounded mask often stays the same
    // for several epochs, and the same point has the same accuracies.
    let mut seen: HashMap<(Vec<u32>, Vec<u32>), (f64, f64)> = HashMap::new();
    // Sets the model to the mask (with `values` in place of the fine-tuned ones, when given), records the
    // epoch and returns train + dev accuracy.
    let mut evaluate = |epoch: usize,
                        mask: &[u32],
                        values: Option<&[f32]>,
                        loss: Option<f64>,
                        unprojected_size: Option<usize>,
                        t0: Instant|
     -> Result<(f64, EpochReport)> {
        let key = (
            mask.to_vec(),
            values.map_or_else(Vec::new, |v| v.iter().map(|x| x.to_bits()).collect()),
        );
        let (tr, dv) = match seen.get(&key) {
            Some(&known) => known,
            None => {
                match values {
                    Some(v) => model.set_values(mask, v)?,
                    None => model.set_mask(mask)?,
                }
                let measured = model.accuracies(split)?;
                seen.insert(key, measured);
                measured
            }
        };
        let r = EpochReport {
            epoch,
            mask_size: mask.len(),
            flips: flips(mask, &base_patch),
            train_accuracy: tr,
            dev_accuracy: dv,
            loss,
            unprojected_size,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress(Progress::Epoch(r.clone()));
        history.push(r.clone());
        Ok((tr + dv, r))
    };
    let mut values = None;
    let (mask, best_epoch) = match opts.method {
        Method::Magnitude => {
            evaluate(0, &base_patch, None, None, None, Instant::now())?;
            (base_patch.clone(), 0)
        }
        Method::Refit => {
            let (mut best_score, _) = evaluate(0, &base_patch, None, None, None, Instant::now())?;
            let mut v: Vec<f32> = base_patch.iter().map(|&i| model.ft[i as usize]).collect();
            let mut best: Option<(Vec<f32>, usize)> = None;
            let (b1, b2, eps, lr) = (0.9f32, 0.999f32, 1e-8f32, opts.refit_lr as f32);
            let (mut m1, mut m2) = (vec![0f32; k], vec![0f32; k]);
            let mut step = 0i32;
            for epoch in 1..=opts.epochs {
                let t0 = Instant::now();
                let mut loss_sum = 0.0;
                let group = train_batches.len().div_ceil(REFIT_STEPS_PER_EPOCH).max(1);
                for chunk in train_batches.chunks(group) {
                    model.check_cancelled()?;
                    model.set_values(&base_patch, &v)?;
                    let (mut g, loss) = model.masked_gradient(chunk, &base_patch)?;
                    loss_sum += loss;
                    let n = chunk.len() as f32;
                    for x in g.iter_mut() {
                        *x /= n;
                    }
                    step += 1;
                    let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
                    for j in 0..k {
                        m1[j] = b1 * m1[j] + (1.0 - b1) * g[j];
                        m2[j] = b2 * m2[j] + (1.0 - b2) * g[j] * g[j];
                        v[j] -= lr * (m1[j] / c1) / ((m2[j] / c2).sqrt() + eps);
                    }
                }
                let loss = loss_sum / train_batches.len().max(1) as f64;
                let (score, _) = evaluate(epoch, &base_patch, Some(&v), Some(loss), None, t0)?;
                if score > best_score {
                    best_score = score;
                    best = Some((v.clone(), epoch));
                }
            }
            let epoch = best.as_ref().map_or(0, |b| b.1);
            values = best.map(|b| b.0);
            (base_patch.clone(), epoch)
        }
        Method::Saliency => {
            let t0 = Instant::now();
            model.set_finetuned()?;
            let (g, loss) = model.gradient_times_delta(&train_batches)?;
            let score: Vec<f32> = g.iter().map(|v| v.abs()).collect();
            let mask = top_k(&score, k);
            evaluate(1, &mask, None, Some(loss), None, t0)?;
            (mask, 1)
        }
        Method::Paper => {
            let beta = opts.sigmoid_bias as f32;
            let lr = opts.lr as f32;
            let mut in_b = vec![false; n];
            for &i in &base_patch {
                in_b[i as usize] = true;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
            let mut s: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
            let rounded = |s: &[f32]| -> Vec<u32> {
                (0..n as u32)
                    .filter(|&i| in_b[i as usize] != (s[i as usize] > beta))
                    .collect()
            };
            let (mut best_score, _) = evaluate(0, &base_patch, None, None, None, Instant::now())?;
            let mut best_mask = base_patch.clone();
            let mut best_epoch = 0;
            let nb = train_batches.len().max(1) as f32;
            for epoch in 1..=opts.epochs {
                let t0 = Instant::now();
                let frac = |i: usize| {
                    let b = if in_b[i] { 1.0 } else { 0.0 };
                    b + (1.0 - 2.0 * b) * sigmoid(s[i] - beta)
                };
                model.set_point(&frac)?;
                let (g, loss) = model.gradient_times_delta(&train_batches)?;
                for i in 0..n {
                    let sg = sigmoid(s[i] - beta);
                    let sign = if in_b[i] { -1.0 } else { 1.0 };
                    s[i] -= lr * sign * (g[i] / nb) * sg * (1.0 - sg);
                }
                let mut mask = rounded(&s);
                let grown = mask.len();
                if grown > k && !opts.allow_growth {
                    // Project onto the budget: the k coordinates most likely to be in the mask.
                    let inclusion: Vec<f32> = (0..n)
                        .map(|i| {
                            let p = sigmoid(s[i] - beta);
                            if in_b[i] {
                                1.0 - p
                            } else {
                                p
                            }
                        })
                        .collect();
                    mask = top_k(&inclusion, k);
                }
                let unprojected = (grown > k && !opts.allow_growth).then_some(grown);
                let (score, _) = evaluate(epoch, &mask, None, Some(loss), unprojected, t0)?;
                if score > best_score {
                    best_score = score;
                    best_mask = mask;
                    best_epoch = epoch;
                }
            }
            (best_mask, best_epoch)
        }
        Method::Learned => {
            let (mut best_score, _) = evaluate(0, &base_patch, None, None, None, Instant::now())?;
            let (mut best_mask, mut best_epoch) = (base_patch.clone(), 0);
            let steps = super::methods::LearnedSteps {
                epochs: opts.epochs,
                lr: opts.learned_lr as f32,
            };
            super::methods::learned_mask(model, &train_batches, &base_patch, steps, &mut |e| {
                let projected = (e.rounded_size > k).then_some(e.rounded_size);
                let (score, _) =
                    evaluate(e.epoch, e.mask, None, Some(e.loss), projected, e.started)?;
                if score > best_score {
                    best_score = score;
                    best_mask = e.mask.to_vec();
                    best_epoch = e.epoch;
                }
                Ok(())
            })?;
            (best_mask, best_epoch)
        }
        Method::Dare => {
            let (mask, v) = super::methods::dare(model, k, opts.seed);
            evaluate(0, &mask, Some(&v), None, None, Instant::now())?;
            values = Some(v);
            (mask, 0)
        }
        Method::L1 => {
            let beta = opts.sigmoid_bias as f32;
            let lr = opts.lr as f32;
            let mut s = vec![0f32; n];
            let mut best: Option<(f64, Vec<u32>, usize)> = None;
            let nb = train_batches.len().max(1) as f32;
            let mut lambda: Option<f32> = None;
            for epoch in 1..=opts.epochs.max(1) {
                let t0 = Instant::now();
                model.set_point(&|i| sigmoid(s[i] - beta))?;
                let (g, loss) = model.gradient_times_delta(&train_batches)?;
                let lam = *lambda.get_or_insert_with(|| {
                    let mean = g.iter().map(|v| (v / nb).abs()).sum::<f32>() / n as f32;
                    opts.l1_lambda as f32 * mean
                });
                for i in 0..n {
                    let sg = sigmoid(s[i] - beta);
                    s[i] -= lr * (g[i] / nb + lam) * sg * (1.0 - sg);
                }
                let mask = top_k(&s, k);
                let (score, _) = evaluate(epoch, &mask, None, Some(loss), None, t0)?;
                if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
                    best = Some((score, mask, epoch));
                }
            }
            let (_, mask, epoch) = best.unwrap_or((0.0, base_patch.clone(), 0));
            (mask, epoch)
        }
    };
    Ok(Localization {
        mask,
        values,
        base_patch,
        history,
        best_epoch,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_flips() {
        assert_eq!(budget(1e-4, 10_000_000), 1000);
        assert_eq!(budget(1e-4, 10_001), 2);
        assert_eq!(flips(&[1, 2, 3], &[2, 3, 4]), 2);
    }
}
