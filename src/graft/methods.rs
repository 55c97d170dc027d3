//! Localizers for checkpoints whose Δ the paper's method cannot move: a learned mask whose step does not
//! vanish with |Δ| (Localize-and-Stitch style), and DARE's rescaled random drop as the no-optimization
//! baseline. Both work at a fixed budget k, like every method of [`super::localize`], so they compare at
//! equal size.

use super::graftable::{top_k, GraftableModel};
use crate::model::TextInput;
use anyhow::Result;
use rand::SeedableRng;
use std::time::Instant;

/// Batches of a training set: texts and labels.
pub type Batches = [(Vec<TextInput>, Vec<usize>)];

/// Starting logit of the learned mask: +c inside the top-|Δ| patch, −c outside (σ(±3) ≈ 0.95 / 0.05), so the
/// relaxed model starts next to the base patch.
pub const LEARNED_INIT: f32 = 3.0;

/// One epoch's outcome handed to the caller, which evaluates the rounded mask and returns its score.
pub struct LearnedEpoch<'a> {
    /// Epoch (from 1).
    pub epoch: usize,
    /// The rounded mask, projected onto the budget (sorted flat indices).
    pub mask: &'a [u32],
    /// Mean training loss at the relaxed point.
    pub loss: f64,
    /// Coordinates above the threshold after the step (the budget, but for ties).
    pub rounded_size: usize,
    /// When the epoch started.
    pub started: Instant,
}

/// The learned mask: logits S over the region, the model at the relaxed point θ_pre + σ(S − τ) ⊙ Δ, the
/// objective the task loss plus λ_t·Σσ(S − τ) with λ_t the multiplier that keeps the size at k. Each epoch takes one full-batch gradient g = ∇L ⊙ Δ (the
/// chain rule through the relaxed point, as the paper's method) and steps S ← S − η·g / mean|g|.
///
/// Unlike the paper's step (η·g·σ′(S), with η = 1e7), this one is normalized by the mean |g| over the region
/// and has no σ′ factor, so it neither vanishes when fine-tuning moved every weight a little (AdamW) nor when
/// a logit saturates: a coordinate moves by how much more than the average its inclusion lowers the loss.
/// The sparsity penalty is the multiplier that keeps exactly k logits above the threshold: τ is set each
/// epoch between the k-th and (k+1)-th largest logit, which is the λ_t for which the penalized objective's
/// rounded mask has the budget's size. So the relaxed point stays next to the rounded mask (the graft handed
/// out, the top-k of S), instead of drifting to millions of partly included coordinates (a fixed λ, tried
/// first, let 3.9M of 10.6M coordinates stay positive for a budget of 106k on an AdamW checkpoint, and the
/// rounded mask gained one dev example in ten epochs). `score` evaluates each epoch's mask; the caller keeps
/// the best (epoch 0 = the base patch).
pub fn learned_mask(
    model: &GraftableModel,
    train: &Batches,
    base_patch: &[u32],
    steps: LearnedSteps,
    score: &mut dyn FnMut(LearnedEpoch<'_>) -> Result<()>,
) -> Result<()> {
    let n = model.region.len();
    let k = base_patch.len();
    if k == 0 || k >= n {
        return Ok(());
    }
    let mut s = vec![-LEARNED_INIT; n];
    for &i in base_patch {
        s[i as usize] = LEARNED_INIT;
    }
    let nb = train.len().max(1) as f32;
    for epoch in 1..=steps.epochs {
        let started = Instant::now();
        model.check_cancelled()?;
        let tau = threshold(&s, k);
        model.set_point(&|i| sigmoid(s[i] - tau))?;
        let (g, loss) = model.gradient_times_delta(train)?;
        let mean = g.iter().map(|v| (v / nb).abs() as f64).sum::<f64>() / n as f64;
        if !(mean.is_finite() && mean > 0.0) {
            // No signal (a zero Δ or gradient): nothing can move.
            break;
        }
        let inv = (1.0 / mean) as f32;
        for (si, gi) in s.iter_mut().zip(&g) {
            *si -= steps.lr * (gi / nb) * inv;
        }
        let mask = top_k(&s, k);
        let after = threshold(&s, k);
        score(LearnedEpoch {
            epoch,
            mask: &mask,
            loss,
            rounded_size: s.iter().filter(|&&x| x > after).count(),
            started,
        })?;
    }
    Ok(())
}

/// The learned mask's schedule.
#[derive(Debug, Clone, Copy)]
pub struct LearnedSteps {
    /// Epochs (one full-batch step each).
    pub epochs: usize,
    /// Step size η, in units of the mean |gradient|.
    pub lr: f32,
}

/// A value between the k-th and (k+1)-th largest of `s` (0 < k < len).
fn threshold(s: &[f32], k: usize) -> f32 {
    let mut v = s.to_vec();
    let (_, kth, rest) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    let next = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    0.5 * (kth + next)
}

/// DARE (Yu et al. 2024): keep k coordinates of the region drawn uniformly at random (seeded) and rescale
/// their Δ by 1/(1 − p) = N/k, p the drop rate; no optimization and no use of |Δ|. Returns the mask (sorted)
/// and the grafted values θ_pre + Δ·N/k aligned with it.
pub fn dare(model: &GraftableModel, k: usize, seed: u64) -> (Vec<u32>, Vec<f32>) {
    let n = model.region.len();
    let k = k.min(n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut mask: Vec<u32> = rand::seq::index::sample(&mut rng, n, k)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    mask.sort_unstable();
    let scale = if k == 0 { 0.0 } else { n as f32 / k as f32 };
    let values = mask
        .iter()
        .map(|&i| model.pre[i as usize] + model.delta[i as usize] * scale)
        .collect();
    (mask, values)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
