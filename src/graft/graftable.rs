//! The model a localization works on: an instance whose region tensors can be set to any point
//! θ_pre + frac ⊙ Δ (or to given values), scored on examples and differentiated with respect to the mask.
//! Every localizer ([`super::localize`], [`super::methods`]) and the evaluation of variants
//! ([`super::evaluate`]) work through it; it knows nothing of methods.

use super::region::{FlatRegion, RegionSpec};
use crate::data::{Example, FewShotSplit};
use crate::model::ops::{with_f32_slice, write_f32};
use crate::model::predict::InputBuilder;
use crate::model::{LoadedModel, TextInput};
use crate::train::TaskInstance;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Examples per forward pass when evaluating (length-sorted batches, see [`InputBuilder::logits`]).
pub const EVAL_BATCH: usize = 64;

/// A model instance that can be set to any point θ_pre + frac ⊙ Δ of the region.
pub struct GraftableModel {
    /// The instance (region tensors are variables).
    pub inst: TaskInstance,
    /// The region.
    pub region: FlatRegion,
    /// θ_pre over the region.
    pub pre: Vec<f32>,
    /// θ_ft over the region.
    pub ft: Vec<f32>,
    /// Δ = θ_ft − θ_pre over the region.
    pub delta: Vec<f32>,
    /// When set, long loops stop with an error (job cancellation).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl GraftableModel {
    /// Builds an instance with the base body, the fine-tuned head and the region as variables.
    pub fn new(
        base: &LoadedModel,
        finetuned_body: &BTreeMap<String, Tensor>,
        head: BTreeMap<String, Tensor>,
        inputs: InputBuilder,
        region: &RegionSpec,
    ) -> Result<Self> {
        let flat = FlatRegion::new(region, &base.weights.tensors)?;
        let pre = flat.gather(&base.weights.tensors)?;
        let ft = flat.gather(finetuned_body)?;
        let delta: Vec<f32> = ft.iter().zip(&pre).map(|(f, p)| f - p).collect();
        let mut tensors = base.weights.deep_clone()?.tensors;
        for (k, v) in head {
            tensors.insert(k, v.copy()?);
        }
        let spec = region.clone();
        let inst = TaskInstance::new(tensors, inputs, move |n| spec.contains(n))?;
        if inst.params.names != flat.names {
            bail!("internal: region variables are not aligned with the flat region");
        }
        Ok(Self {
            inst,
            region: flat,
            pre,
            ft,
            delta,
            cancel: None,
        })
    }

    /// Sets the model to θ_pre + frac(i) ⊙ Δ over the region.
    pub fn set_point(&self, frac: &(dyn Fn(usize) -> f32 + Sync)) -> Result<()> {
        for (t, var) in self.inst.params.vars.iter().enumerate() {
            let o = self.region.offsets[t];
            write_f32(var.as_tensor(), |w| {
                for (j, x) in w.iter_mut().enumerate() {
                    let i = o + j;
                    *x = self.pre[i] + frac(i) * self.delta[i];
                }
            })?;
        }
        Ok(())
    }

    /// Sets the model to θ_pre + mask ⊙ Δ (mask = sorted flat indices), exactly: grafted entries take the
    /// fine-tuned value bit for bit, the others the base value.
    pub fn set_mask(&self, mask: &[u32]) -> Result<()> {
        self.write_masked(mask, |j| self.ft[mask[j] as usize])
    }

    /// Sets the model to θ_pre with the masked coordinates set to `values` (aligned with `mask`).
    pub fn set_values(&self, mask: &[u32], values: &[f32]) -> Result<()> {
        if mask.len() != values.len() {
            bail!(
                "internal: {} values for a mask of {}",
                values.len(),
                mask.len()
            );
        }
        self.write_masked(mask, |j| values[j])
    }

    /// Writes θ_pre everywhere and `value(j)` at `mask[j]` (sorted flat indices).
    fn write_masked(&self, mask: &[u32], value: impl Fn(usize) -> f32) -> Result<()> {
        let mut cursor = 0usize;
        for (t, var) in self.inst.params.vars.iter().enumerate() {
            let (o, end) = (self.region.offsets[t], self.region.offsets[t + 1]);
            let start = cursor;
            while cursor < mask.len() && (mask[cursor] as usize) < end {
                cursor += 1;
            }
            write_f32(var.as_tensor(), |w| {
                w.copy_from_slice(&self.pre[o..end]);
                for j in start..cursor {
                    w[mask[j] as usize - o] = value(j);
                }
            })?;
        }
        Ok(())
    }

    /// Calls `visit(offset, gradient)` for each region tensor's gradient of Σ over `batches` of the batch's
    /// mean loss; returns that sum. Consecutive batches share one backward pass (at most [`PASS_EXAMPLES`]
    /// examples, each weighted 1/|its batch|), their examples regrouped by length into sub-batches of at
    /// most [`PASS_TOKENS`] padded tokens: the same objective as one pass per batch, with less padding and
    /// fewer, larger products. `visit` runs once per pass and tensor.
    fn visit_gradient(
        &self,
        batches: &[(Vec<TextInput>, Vec<usize>)],
        visit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<f64> {
        let mut total = 0.0;
        for pass in merged_passes(batches, PASS_EXAMPLES) {
            let loss =
                self.inst
                    .weighted_loss(&pass.texts, &pass.labels, &pass.weights, PASS_TOKENS)?;
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let grads = loss.backward()?;
            let g = self.inst.params.gradients(&grads)?;
            for (t, gt) in g.iter().enumerate() {
                let o = self.region.offsets[t];
                with_f32_slice(gt, |gs| visit(o, gs))?;
            }
        }
        Ok(total)
    }

    /// Sets the model to the fine-tuned point (bit for bit).
    pub fn set_finetuned(&self) -> Result<()> {
        for (t, var) in self.inst.params.vars.iter().enumerate() {
            let (o, end) = (self.region.offsets[t], self.region.offsets[t + 1]);
            write_f32(var.as_tensor(), |w| w.copy_from_slice(&self.ft[o..end]))?;
        }
        Ok(())
    }

    /// Σ over batches of ∇_θ L ⊙ Δ at the current point (summed, not averaged), and the mean loss.
    pub fn gradient_times_delta(
        &self,
        batches: &[(Vec<TextInput>, Vec<usize>)],
    ) -> Result<(Vec<f32>, f64)> {
        let mut acc = vec![0f32; self.region.len()];
        let loss_sum = self.visit_gradient(batches, &mut |o, gs| {
            for (j, &v) in gs.iter().enumerate() {
                acc[o + j] += v * self.delta[o + j];
            }
        })?;
        Ok((acc, loss_sum / batches.len().max(1) as f64))
    }

    /// Σ over batches of the gradient of the batch's mean loss at the masked coordinates (aligned with
    /// `mask`), and Σ of the batches' mean losses.
    pub fn masked_gradient(
        &self,
        batches: &[(Vec<TextInput>, Vec<usize>)],
        mask: &[u32],
    ) -> Result<(Vec<f32>, f64)> {
        let mut out = vec![0f32; mask.len()];
        let loss = self.visit_gradient(batches, &mut |o, gs| {
            let lo = mask.partition_point(|&i| (i as usize) < o);
            let hi = mask.partition_point(|&i| (i as usize) < o + gs.len());
            for j in lo..hi {
                out[j] += gs[mask[j] as usize - o];
            }
        })?;
        Ok((out, loss))
    }

    /// An error when the job was cancelled.
    pub fn check_cancelled(&self) -> Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            bail!("cancelled");
        }
        Ok(())
    }

    /// Train and dev accuracy at the current point.
    pub fn accuracies(&self, split: &FewShotSplit) -> Result<(f64, f64)> {
        self.check_cancelled()?;
        Ok((
            self.inst.accuracy(&split.train, EVAL_BATCH)?,
            self.inst.accuracy(&split.dev, EVAL_BATCH)?,
        ))
    }

    /// Logits of examples at the current point.
    pub fn logits(&self, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
        self.inst.logits(examples, EVAL_BATCH)
    }
}

/// The `k` indices with the largest scores (ties: lower index first), returned sorted ascending.
/// Uses selection (O(n)), not a full sort.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        let (sa, sb) = (scores[*a as usize], scores[*b as usize]);
        sb.total_cmp(&sa).then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// Examples per forward + backward pass when gradients are summed over batches (see
/// [`GraftableModel::visit_gradient`]).
pub const PASS_EXAMPLES: usize = 64;

/// Padded tokens per sub-batch of a merged pass (examples of similar length run together).
pub const PASS_TOKENS: usize = 512;

/// One forward + backward pass over several batches: their examples, each weighted 1/|its batch|.
#[derive(Debug, Clone, PartialEq)]
struct MergedPass {
    texts: Vec<TextInput>,
    labels: Vec<usize>,
    weights: Vec<f32>,
}

/// Consecutive batches merged into passes of at most `max_examples` examples (a larger batch is a pass of
/// its own), so that a pass's weighted loss is the sum of its batches' mean losses.
fn merged_passes(batches: &[(Vec<TextInput>, Vec<usize>)], max_examples: usize) -> Vec<MergedPass> {
    let mut out: Vec<MergedPass> = Vec::new();
    for (texts, labels) in batches {
        if texts.is_empty() {
            continue;
        }
        let fits = out
            .last()
            .is_some_and(|p| p.texts.len() + texts.len() <= max_examples);
        if !fits {
            out.push(MergedPass {
                texts: Vec::new(),
                labels: Vec::new(),
                weights: Vec::new(),
            });
        }
        let pass = out.last_mut().expect("a pass was just pushed");
        pass.texts.extend(texts.iter().cloned());
        pass.labels.extend(labels);
        pass.weights
            .extend(std::iter::repeat_n(1.0 / texts.len() as f32, texts.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_passes_keep_batches_whole_and_weight_by_batch_size() {
        let batch = |n: usize, first: usize| -> (Vec<TextInput>, Vec<usize>) {
            (
                (first..first + n)
                    .map(|i| TextInput::single(format!("t{i}")))
                    .collect(),
                (first..first + n).collect(),
            )
        };
        let batches = vec![
            batch(3, 0),
            batch(3, 3),
            batch(2, 6),
            batch(5, 8),
            batch(0, 13),
        ];
        let passes = merged_passes(&batches, 6);
        let sizes: Vec<usize> = passes.iter().map(|p| p.texts.len()).collect();
        assert_eq!(
            sizes,
            vec![6, 2, 5],
            "batches are never split across passes"
        );
        let labels: Vec<usize> = passes.iter().flat_map(|p| p.labels.clone()).collect();
        assert_eq!(
            labels,
            (0..13).collect::<Vec<_>>(),
            "every example once, in order"
        );
        assert_eq!(passes[1].weights, vec![0.5, 0.5]);
        let total: f32 = passes.iter().flat_map(|p| &p.weights).sum();
        assert!(
            (total - 4.0).abs() < 1e-6,
            "weights sum to the number of non-empty batches"
        );
        assert_eq!(
            merged_passes(&[batch(9, 0)], 4)[0].texts.len(),
            9,
            "a large batch is its own pass"
        );
    }

    #[test]
    fn top_k_selects_largest_with_index_tie_break() {
        let s = [0.5, 3.0, 0.5, 2.0, 0.5, -9.0];
        assert_eq!(top_k(&s, 2), vec![1, 3]);
        assert_eq!(top_k(&s, 3), vec![0, 1, 3], "ties go to the lower index");
        assert_eq!(top_k(&s, 0), Vec::<u32>::new());
        assert_eq!(top_k(&s, 10).len(), 6);
    }

    #[test]
    fn top_k_matches_full_sort_on_random_data() {
        let mut x = 12345u64;
        let s: Vec<f32> = (0..10_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 40) % 1000) as f32
            })
            .collect();
        let mut order: Vec<u32> = (0..s.len() as u32).collect();
        order.sort_by(|a, b| s[*b as usize].total_cmp(&s[*a as usize]).then(a.cmp(b)));
        let mut want = order[..137].to_vec();
        want.sort_unstable();
        assert_eq!(top_k(&s, 137), want);
    }
}
