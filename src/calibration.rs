//! Deciding whether temperature scaling helps a model, from its dev split alone.
//!
//! A temperature fitted on a few-shot dev split (32 examples at K = 16 with two classes) can make
//! calibration worse on the test set: it is fitted and judged on the same handful of examples. So under
//! the default policy ([`CalibrationPolicy::Auto`]) the temperature is *cross-validated* on dev: the dev
//! examples are cut into folds (round robin within each class, so every fold holds every class), a
//! temperature is fitted on all folds but one and the held-out fold's NLL is measured with it and at
//! T = 1. Temperature scaling is applied (with the temperature fitted on all of dev) only when
//!
//! - dev has at least [`MIN_DEV_EXAMPLES`] examples and at least [`MIN_PER_CLASS`] per class present, and
//! - the held-out NLL with fitted temperatures is lower than at T = 1 by at least [`MIN_NLL_GAIN`]
//!   (relative).
//!
//! Otherwise the probabilities stay at T = 1. The decision and its reason are recorded
//! ([`CalibrationDecision`]) in evaluation output, graft metrics and the service's answers.

use crate::metrics::{evaluate_logits, fit_temperature};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Fewest dev examples a temperature is fitted on.
pub const MIN_DEV_EXAMPLES: usize = 20;

/// Fewest dev examples of each class present (so every fold holds each class).
pub const MIN_PER_CLASS: usize = 4;

/// Relative drop of the held-out NLL that temperature scaling must bring to be applied.
pub const MIN_NLL_GAIN: f64 = 0.01;

/// Most folds of the cross-validation.
pub const MAX_FOLDS: usize = 5;

/// When temperature scaling is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationPolicy {
    /// Only when cross-validation on dev says it lowers held-out NLL (the default).
    #[default]
    Auto,
    /// Always, with the temperature fitted on all of dev.
    Temperature,
    /// Never (T = 1).
    None,
}

/// What was decided about temperature scaling, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationDecision {
    /// `temperature` (applied) or `none`.
    pub method: String,
    /// The temperature applied (1.0 for `none`).
    pub temperature: f64,
    /// The temperature fitted on all dev examples (whether applied or not).
    pub fitted_temperature: f64,
    /// The policy the decision followed.
    pub policy: CalibrationPolicy,
    /// Dev examples.
    pub dev_examples: usize,
    /// Folds of the cross-validation (0 when it did not run).
    pub folds: usize,
    /// Mean held-out NLL at T = 1 over the folds.
    pub cv_nll_uncalibrated: Option<f64>,
    /// Mean held-out NLL with the temperature fitted on the other folds.
    pub cv_nll_calibrated: Option<f64>,
    /// Why, in words.
    pub reason: String,
}

impl CalibrationDecision {
    /// Whether a temperature is applied.
    pub fn applied(&self) -> bool {
        self.method == "temperature"
    }
}

/// Fold of each dev example: round robin within its class, in dev order.
fn folds_of(labels: &[usize], folds: usize) -> Vec<usize> {
    let mut seen = std::collections::BTreeMap::<usize, usize>::new();
    labels
        .iter()
        .map(|&y| {
            let c = seen.entry(y).or_default();
            let f = *c % folds;
            *c += 1;
            f
        })
        .collect()
}

/// Decides temperature scaling from dev logits and labels under `policy`.
pub fn decide(
    dev_logits: &[Vec<f32>],
    dev_labels: &[usize],
    policy: CalibrationPolicy,
) -> Result<CalibrationDecision> {
    let n = dev_labels.len();
    let fitted = if n == 0 {
        1.0
    } else {
        fit_temperature(dev_logits, dev_labels)?
    };
    let mut d = CalibrationDecision {
        method: "none".into(),
        temperature: 1.0,
        fitted_temperature: fitted,
        policy,
        dev_examples: n,
        folds: 0,
        cv_nll_uncalibrated: None,
        cv_nll_calibrated: None,
        reason: String::new(),
    };
    match policy {
        CalibrationPolicy::None => {
            d.reason = "calibration turned off (policy none)".into();
            return Ok(d);
        }
        CalibrationPolicy::Temperature => {
            if n == 0 {
                d.reason = "no dev examples to fit a temperature on".into();
                return Ok(d);
            }
            d.method = "temperature".into();
            d.temperature = fitted;
            d.reason = format!("policy temperature: T = {fitted:.3} fitted on {n} dev examples, applied without checking");
            return Ok(d);
        }
        CalibrationPolicy::Auto => {}
    }
    let mut per_class = std::collections::BTreeMap::<usize, usize>::new();
    for &y in dev_labels {
        *per_class.entry(y).or_default() += 1;
    }
    let fewest = per_class.values().copied().min().unwrap_or(0);
    if n < MIN_DEV_EXAMPLES || fewest < MIN_PER_CLASS {
        d.reason = format!(
            "not applied: {n} dev examples ({fewest} in the smallest class) are too few to check a temperature (at least {MIN_DEV_EXAMPLES}, and {MIN_PER_CLASS} per class)"
        );
        return Ok(d);
    }
    let k = MAX_FOLDS.min(fewest);
    let fold = folds_of(dev_labels, k);
    let (mut nll_one, mut nll_fit) = (0.0, 0.0);
    for f in 0..k {
        let pick = |held: bool| -> (Vec<Vec<f32>>, Vec<usize>) {
            (0..n)
                .filter(|&i| (fold[i] == f) == held)
                .map(|i| (dev_logits[i].clone(), dev_labels[i]))
                .unzip()
        };
        let (train_l, train_y) = pick(false);
        let (held_l, held_y) = pick(true);
        let t = fit_temperature(&train_l, &train_y)?;
        let w = held_y.len() as f64 / n as f64;
        nll_one += w * evaluate_logits(&held_l, &held_y, 1.0, 1)?.nll;
        nll_fit += w * evaluate_logits(&held_l, &held_y, t, 1)?.nll;
    }
    d.folds = k;
    d.cv_nll_uncalibrated = Some(nll_one);
    d.cv_nll_calibrated = Some(nll_fit);
    if nll_fit < nll_one * (1.0 - MIN_NLL_GAIN) {
        d.method = "temperature".into();
        d.temperature = fitted;
        d.reason = format!(
            "applied: T = {fitted:.3}; {k}-fold cross-validation on {n} dev examples lowers held-out NLL from {nll_one:.4} to {nll_fit:.4}"
        );
    } else {
        d.reason = format!(
            "not applied: {k}-fold cross-validation on {n} dev examples gives held-out NLL {nll_fit:.4} with a fitted temperature vs {nll_one:.4} at T = 1 (needs a {:.0}% drop); T = {fitted:.3} fitted on all of dev would overfit",
            MIN_NLL_GAIN * 100.0
        );
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits `scale · (±1)` for the label, with some rows wrong.
    fn logits(n: usize, scale: f32, wrong_every: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        (0..n)
            .map(|i| {
                let y = i % 2;
                let right = wrong_every == 0 || i % wrong_every != 0;
                let s = if right { scale } else { -scale };
                let row = if y == 0 { vec![s, -s] } else { vec![-s, s] };
                (row, y)
            })
            .unzip()
    }

    #[test]
    fn overconfident_models_get_a_temperature_and_calibrated_ones_do_not() {
        // Very confident and 25% wrong: a temperature > 1 clearly lowers held-out NLL.
        let (l, y) = logits(64, 8.0, 4);
        let d = decide(&l, &y, CalibrationPolicy::Auto).unwrap();
        assert!(d.applied(), "{d:?}");
        assert!(d.temperature > 1.0 && d.folds == 5, "{d:?}");
        assert!(d.cv_nll_calibrated.unwrap() < d.cv_nll_uncalibrated.unwrap());

        // Already calibrated logits (p = 0.75 when right, 3 in 4 right): nothing to gain.
        let p = (0.75f32 / 0.25).ln() / 2.0;
        let (l, y) = logits(64, p, 4);
        let d = decide(&l, &y, CalibrationPolicy::Auto).unwrap();
        assert!(!d.applied(), "{d:?}");
        assert_eq!(d.temperature, 1.0);
        assert!(d.reason.contains("not applied"), "{}", d.reason);

        // Too few dev examples: not applied, whatever the fit says; policy temperature applies anyway.
        let (l, y) = logits(12, 8.0, 4);
        let d = decide(&l, &y, CalibrationPolicy::Auto).unwrap();
        assert!(
            !d.applied() && d.folds == 0 && d.reason.contains("too few"),
            "{d:?}"
        );
        let d = decide(&l, &y, CalibrationPolicy::Temperature).unwrap();
        assert!(d.applied() && d.temperature == d.fitted_temperature);
        let d = decide(&l, &y, CalibrationPolicy::None).unwrap();
        assert!(!d.applied());
    }

    #[test]
    fn folds_hold_every_class() {
        let labels = [0, 0, 0, 1, 1, 1, 0, 1];
        assert_eq!(folds_of(&labels, 2), [0, 1, 0, 0, 1, 0, 1, 1]);
    }
}
