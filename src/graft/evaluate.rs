//! Side-by-side evaluation of the models grafting compares: base + head (empty mask), base patch, graft, and
//! the fine-tuned model (full mask), each uncalibrated and with the calibration decided on dev
//! ([`crate::calibration`]).

use super::graftable::{GraftableModel, EVAL_BATCH};
use crate::calibration::{decide, CalibrationDecision, CalibrationPolicy};
use crate::data::{Example, FewShotSplit};
use crate::metrics::{evaluate_logits, ClassificationReport};
use crate::model::predict::accuracy;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// One model to evaluate.
#[derive(Debug, Clone, Copy)]
pub enum Variant<'a> {
    /// θ_pre + mask ⊙ Δ (sorted flat region indices; empty = base + head).
    Mask(&'a [u32]),
    /// θ_pre with the masked coordinates set to the given values (aligned with the mask).
    Values(&'a [u32], &'a [f32]),
    /// θ_ft.
    Finetuned,
}

/// Metrics of one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantReport {
    /// Name (`base+head`, `base patch`, `graft`, `fine-tuned`, …).
    pub name: String,
    /// Grafted parameters (the region size for the fine-tuned model).
    pub size: usize,
    /// Train accuracy, on at most [`TRAIN_SAMPLE`] training examples (an evenly spaced sample of larger
    /// training sets: it is a diagnostic, ≈ 1 for every fine-tune, and scoring a full training set per
    /// variant cost more than the dev and test sets together).
    pub train_accuracy: f64,
    /// Dev accuracy.
    pub dev_accuracy: f64,
    /// Evaluation-set metrics at temperature 1.
    pub test: ClassificationReport,
    /// Temperature the calibration decision applies (1.0 when it applies none).
    pub temperature: f64,
    /// Evaluation-set metrics at that temperature.
    pub test_calibrated: ClassificationReport,
    /// The calibration decision (policy, temperature fitted on dev, cross-validated NLLs, reason); absent
    /// in reports written before decisions were recorded (they always applied the fitted temperature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationDecision>,
}

impl GraftableModel {
    /// Sets the model to a variant.
    pub fn set_variant(&self, v: Variant<'_>) -> Result<()> {
        match v {
            Variant::Mask(m) => self.set_mask(m),
            Variant::Values(m, v) => self.set_values(m, v),
            Variant::Finetuned => self.set_finetuned(),
        }
    }
}

/// Most training examples a variant's train accuracy is measured on.
pub const TRAIN_SAMPLE: usize = 1000;

/// An evenly spaced sample of at most [`TRAIN_SAMPLE`] examples (all of them when there are fewer).
fn train_sample(train: &[Example]) -> Vec<Example> {
    if train.len() <= TRAIN_SAMPLE {
        return train.to_vec();
    }
    (0..TRAIN_SAMPLE)
        .map(|i| train[i * train.len() / TRAIN_SAMPLE].clone())
        .collect()
}

/// Evaluates each variant on `eval` (dev accuracy from the split, train accuracy on a sample of it; calibration decided on dev under
/// `policy`).
pub fn evaluate_variants(
    model: &GraftableModel,
    split: &FewShotSplit,
    eval: &[Example],
    variants: &[(String, Variant<'_>)],
    bins: usize,
    policy: CalibrationPolicy,
) -> Result<Vec<VariantReport>> {
    let labels: Vec<usize> = eval.iter().map(|e| e.label).collect();
    let dev_labels: Vec<usize> = split.dev.iter().map(|e| e.label).collect();
    let train = train_sample(&split.train);
    let mut out = Vec::new();
    for (name, v) in variants {
        model.set_variant(*v)?;
        model.check_cancelled()?;
        let train_accuracy = model.inst.accuracy(&train, EVAL_BATCH)?;
        let dev_logits = model.logits(&split.dev)?;
        let dev_accuracy = accuracy(&dev_logits, &dev_labels);
        let logits = model.logits(eval)?;
        let calibration = decide(&dev_logits, &dev_labels, policy)?;
        let temperature = calibration.temperature;
        out.push(VariantReport {
            name: name.clone(),
            size: match v {
                Variant::Mask(m) | Variant::Values(m, _) => m.len(),
                Variant::Finetuned => model.region.len(),
            },
            train_accuracy,
            dev_accuracy,
            test: evaluate_logits(&logits, &labels, 1.0, bins)?,
            temperature,
            test_calibrated: evaluate_logits(&logits, &labels, temperature, bins)?,
            calibration: Some(calibration),
        });
    }
    model.set_mask(&[])?;
    Ok(out)
}
