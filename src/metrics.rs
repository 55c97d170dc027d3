//! Classification metrics over predicted probabilities or logits.
//!
//! Provides accuracy, macro-F1, expected calibration error (ECE) with
//! reliability-diagram bins, negative log-likelihood (NLL), the multi-class
//! Brier score, and temperature scaling fitted on a development set.
//!
//! Conventions used throughout:
//! - The predicted class of a row is its [`argmax`] (first index on ties) and
//!   the confidence is the probability of that class.
//! - NLL is the mean over examples of `-ln max(p_y, 1e-12)`.
//! - Brier is the mean over examples of `Σ_c (p_c − 1[c = y])²`, i.e. the
//!   multi-class sum, *not* divided by the number of classes (range `[0, 2]`).
//! - ECE uses equal-width bins over the confidence; bin `b` of `B` covers
//!   `(b/B, (b+1)/B]`, and the first bin also includes 0.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Smallest probability used inside the logarithm of the NLL.
const NLL_PROB_FLOOR: f64 = 1e-12;

/// Largest tolerated deviation of a probability row's sum from 1 in [`evaluate_probs`].
const PROB_SUM_TOLERANCE: f64 = 1e-4;

/// Smallest temperature [`fit_temperature`] can return.
const MIN_TEMPERATURE: f64 = 0.05;

/// Largest temperature [`fit_temperature`] can return.
const MAX_TEMPERATURE: f64 = 20.0;

/// Upper bound on the bisection steps of [`fit_temperature`].
const MAX_FIT_ITERATIONS: usize = 200;

/// Relative width of the inverse-temperature bracket at which bisection stops.
const FIT_RELATIVE_TOLERANCE: f64 = 1e-13;

/// One equal-width confidence bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Exclusive lower edge `b / bins` (the first bin also includes 0).
    pub lower: f64,
    /// Inclusive upper edge `(b + 1) / bins`.
    pub upper: f64,
    /// Number of examples whose confidence falls in this bin.
    pub count: usize,
    /// Fraction of the bin's examples predicted correctly (0 for an empty bin).
    pub accuracy: f64,
    /// Mean confidence (max probability) of the bin's examples (0 for an empty bin).
    pub confidence: f64,
}

/// All metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of evaluated examples.
    pub n: usize,
    /// Fraction of examples whose argmax equals the label.
    pub accuracy: f64,
    /// Macro-averaged F1 over the classes present in labels or predictions.
    pub macro_f1: f64,
    /// Expected calibration error over `ece_bins` equal-width bins.
    pub ece: f64,
    /// Number of equal-width bins used for the ECE.
    pub ece_bins: usize,
    /// Mean of `-ln max(p_y, 1e-12)`.
    pub nll: f64,
    /// Mean over examples of `Σ_c (p_c − 1[c = y])²` (multi-class sum, not divided by classes).
    pub brier: f64,
    /// Temperature the probabilities were computed with (1.0 = uncalibrated).
    pub temperature: f64,
    /// Reliability-diagram bins, `ece_bins` of them, in increasing confidence order.
    pub reliability: Vec<ReliabilityBin>,
}

/// Softmax of each row of logits divided by `temperature` (numerically stable, f64 math).
///
/// The row maximum is subtracted before exponentiation, so large logits do not
/// overflow. `temperature` should be finite and positive and logits finite;
/// otherwise the affected rows contain non-finite values. An empty row maps to
/// an empty row.
pub fn softmax_rows(logits: &[Vec<f32>], temperature: f64) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|row| {
            let scaled: Vec<f64> = row.iter().map(|&v| f64::from(v) / temperature).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scaled.iter().map(|&v| (v - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        })
        .collect()
}

/// Evaluates logits against labels at the given temperature with `bins` ECE bins.
///
/// Fails on empty input, a logits/labels length mismatch, rows of unequal
/// length or with zero classes, a label not below the number of classes,
/// `bins == 0`, non-finite logits, or a temperature that is not finite and
/// positive.
pub fn evaluate_logits(
    logits: &[Vec<f32>],
    labels: &[usize],
    temperature: f64,
    bins: usize,
) -> Result<ClassificationReport> {
    check_bins(bins)?;
    check_temperature(temperature)?;
    let classes = validate_logits(logits, labels)?;
    let probs = softmax_rows(logits, temperature);
    Ok(build_report(&probs, labels, classes, bins, temperature))
}

/// Evaluates probability rows (each sums to 1) against labels.
///
/// The report's `temperature` is 1.0. Fails on empty input, a length mismatch,
/// rows of unequal length or with zero classes, a label not below the number
/// of classes, `bins == 0`, or a row with a non-finite or negative entry or a
/// sum further than 1e-4 from 1.
pub fn evaluate_probs(
    probs: &[Vec<f64>],
    labels: &[usize],
    bins: usize,
) -> Result<ClassificationReport> {
    check_bins(bins)?;
    let classes = validate_shape(probs, labels)?;
    for (i, row) in probs.iter().enumerate() {
        if let Some(j) = row.iter().position(|p| !p.is_finite()) {
            bail!("non-finite probability {} at row {i}, class {j}", row[j]);
        }
        if let Some(j) = row.iter().position(|&p| p < 0.0) {
            bail!("negative probability {} at row {i}, class {j}", row[j]);
        }
        let sum: f64 = row.iter().sum();
        if (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
            bail!("probability row {i} sums to {sum}, expected 1 (tolerance {PROB_SUM_TOLERANCE})");
        }
    }
    Ok(build_report(probs, labels, classes, bins, 1.0))
}

/// Expected calibration error and its bins: equal-width bins over the max probability, ECE = Σ_b (|B_b|/n)·|acc(B_b) − conf(B_b)|.
///
/// Bin `b` covers `(b/bins, (b+1)/bins]` and the first bin also includes 0;
/// confidences above 1 land in the last bin. Empty bins are reported with
/// count 0 and accuracy/confidence 0. This function does not validate its
/// input: only the first `min(probs.len(), labels.len())` pairs are used, a
/// label the row has no class for counts as incorrect, and `bins == 0` or no
/// pairs gives an ECE of 0 (with no bins, respectively all-empty bins).
pub fn expected_calibration_error(
    probs: &[Vec<f64>],
    labels: &[usize],
    bins: usize,
) -> (f64, Vec<ReliabilityBin>) {
    if bins == 0 {
        return (0.0, Vec::new());
    }
    let mut counts = vec![0usize; bins];
    let mut correct = vec![0usize; bins];
    let mut conf_sums = vec![0.0f64; bins];
    let mut n = 0usize;
    for (row, &label) in probs.iter().zip(labels) {
        let pred = argmax(row);
        let confidence = row.get(pred).copied().unwrap_or(0.0);
        let b = bin_index(confidence, bins);
        counts[b] += 1;
        conf_sums[b] += confidence;
        if pred == label && !row.is_empty() {
            correct[b] += 1;
        }
        n += 1;
    }
    let mut ece = 0.0;
    let reliability: Vec<ReliabilityBin> = (0..bins)
        .map(|b| {
            let count = counts[b];
            let (accuracy, confidence) = if count == 0 {
                (0.0, 0.0)
            } else {
                (
                    correct[b] as f64 / count as f64,
                    conf_sums[b] / count as f64,
                )
            };
            if count > 0 {
                ece += (count as f64 / n as f64) * (accuracy - confidence).abs();
            }
            ReliabilityBin {
                lower: bin_edge(b, bins),
                upper: bin_edge(b + 1, bins),
                count,
                accuracy,
                confidence,
            }
        })
        .collect();
    (ece, reliability)
}

/// Macro-averaged F1 over `num_classes` classes (a class never predicted nor present contributes F1 = 0 only if it is present in labels or predictions; classes absent from both are skipped).
///
/// Per class, F1 = 2·TP / (2·TP + FP + FN). Every class `c < num_classes` that
/// occurs in the labels or the predictions is averaged in (with F1 = 0 when it
/// has no true positive); classes occurring in neither are skipped. Values
/// `≥ num_classes` are not scored as classes themselves, but a mismatch still
/// counts against the in-range side. Only the first
/// `min(predictions.len(), labels.len())` pairs are used; with no scored class
/// the result is 0.
pub fn macro_f1(predictions: &[usize], labels: &[usize], num_classes: usize) -> f64 {
    let mut tp = vec![0usize; num_classes];
    let mut fp = vec![0usize; num_classes];
    let mut fn_ = vec![0usize; num_classes];
    for (&pred, &label) in predictions.iter().zip(labels) {
        if pred == label {
            if let Some(t) = tp.get_mut(pred) {
                *t += 1;
            }
        } else {
            if let Some(f) = fp.get_mut(pred) {
                *f += 1;
            }
            if let Some(f) = fn_.get_mut(label) {
                *f += 1;
            }
        }
    }
    let mut sum = 0.0;
    let mut scored = 0usize;
    for c in 0..num_classes {
        let denom = 2 * tp[c] + fp[c] + fn_[c];
        if denom == 0 {
            continue;
        }
        sum += (2 * tp[c]) as f64 / denom as f64;
        scored += 1;
    }
    if scored == 0 {
        0.0
    } else {
        sum / scored as f64
    }
}

/// Index of the largest value (first on ties).
///
/// NaN entries never win against an earlier value; an empty row gives 0.
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Fits one temperature T > 0 minimizing the mean NLL of softmax(logits / T) on (logits, labels).
///
/// The mean NLL is convex in the inverse temperature β = 1/T, so its
/// derivative `mean(E_p[z] − z_y)` is non-decreasing in β; the root is found by
/// deterministic bisection in log β over T ∈ [0.05, 20] down to a relative
/// bracket width of 1e-13. If the optimum lies outside that range (e.g.
/// perfectly separable data wants T → 0, uninformative logits want T → ∞) the
/// nearest end of the range is returned. Fails on the same input errors as
/// [`evaluate_logits`].
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> Result<f64> {
    validate_logits(logits, labels)?;
    let rows: Vec<Vec<f64>> = logits
        .iter()
        .map(|row| row.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let beta_low = 1.0 / MAX_TEMPERATURE;
    let beta_high = 1.0 / MIN_TEMPERATURE;
    if nll_beta_derivative(&rows, labels, beta_low) >= 0.0 {
        return Ok(MAX_TEMPERATURE);
    }
    if nll_beta_derivative(&rows, labels, beta_high) <= 0.0 {
        return Ok(MIN_TEMPERATURE);
    }
    let (mut lo, mut hi) = (beta_low, beta_high);
    for _ in 0..MAX_FIT_ITERATIONS {
        if hi - lo <= FIT_RELATIVE_TOLERANCE * lo {
            break;
        }
        let mid = (lo * hi).sqrt();
        let g = nll_beta_derivative(&rows, labels, mid);
        if g == 0.0 {
            lo = mid;
            hi = mid;
            break;
        }
        if g < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(1.0 / (lo * hi).sqrt())
}

/// Derivative of the mean NLL of softmax(β·z) with respect to β: mean of `E_p[z] − z_y`.
fn nll_beta_derivative(rows: &[Vec<f64>], labels: &[usize], beta: f64) -> f64 {
    let mut total = 0.0;
    for (row, &label) in rows.iter().zip(labels) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut weight_sum = 0.0;
        let mut weighted = 0.0;
        for &z in row {
            let w = (beta * (z - max)).exp();
            weight_sum += w;
            weighted += w * z;
        }
        let target = row.get(label).copied().unwrap_or(max);
        total += weighted / weight_sum - target;
    }
    total / rows.len().max(1) as f64
}

/// Computes every metric from already validated probability rows.
fn build_report(
    probs: &[Vec<f64>],
    labels: &[usize],
    classes: usize,
    bins: usize,
    temperature: f64,
) -> ClassificationReport {
    let n = labels.len();
    let predictions: Vec<usize> = probs.iter().map(|row| argmax(row)).collect();
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, y)| p == y)
        .count();
    let (ece, reliability) = expected_calibration_error(probs, labels, bins);
    ClassificationReport {
        n,
        accuracy: correct as f64 / n as f64,
        macro_f1: macro_f1(&predictions, labels, classes),
        ece,
        ece_bins: bins,
        nll: mean_nll(probs, labels),
        brier: mean_brier(probs, labels),
        temperature,
        reliability,
    }
}

/// Mean of `-ln max(p_y, 1e-12)` over the pairs.
fn mean_nll(probs: &[Vec<f64>], labels: &[usize]) -> f64 {
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(row, &y)| -row.get(y).copied().unwrap_or(0.0).max(NLL_PROB_FLOOR).ln())
        .sum();
    total / labels.len().max(1) as f64
}

/// Mean over the pairs of `Σ_c (p_c − 1[c = y])²`.
fn mean_brier(probs: &[Vec<f64>], labels: &[usize]) -> f64 {
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(row, &y)| {
            row.iter()
                .enumerate()
                .map(|(c, &p)| {
                    let target = if c == y { 1.0 } else { 0.0 };
                    (p - target) * (p - target)
                })
                .sum::<f64>()
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// Index of the bin `(b/bins, (b+1)/bins]` holding `confidence` (the first bin includes 0).
fn bin_index(confidence: f64, bins: usize) -> usize {
    let raw = (confidence * bins as f64).ceil();
    let mut b = if raw >= 1.0 {
        (raw as usize - 1).min(bins - 1)
    } else {
        0
    };
    while b > 0 && confidence <= bin_edge(b, bins) {
        b -= 1;
    }
    while b + 1 < bins && confidence > bin_edge(b + 1, bins) {
        b += 1;
    }
    b
}

/// Edge `k / bins` between bins, computed the same way everywhere.
fn bin_edge(k: usize, bins: usize) -> f64 {
    k as f64 / bins as f64
}

/// Fails when `bins` is zero.
fn check_bins(bins: usize) -> Result<()> {
    if bins == 0 {
        bail!("number of ECE bins must be at least 1, got 0");
    }
    Ok(())
}

/// Fails when `temperature` is not finite and positive.
fn check_temperature(temperature: f64) -> Result<()> {
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("temperature must be finite and positive, got {temperature}");
    }
    Ok(())
}

/// Checks shape, labels and finiteness of logits; returns the number of classes.
fn validate_logits(logits: &[Vec<f32>], labels: &[usize]) -> Result<usize> {
    let classes = validate_shape(logits, labels)?;
    for (i, row) in logits.iter().enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!("non-finite logit {} at row {i}, class {j}", row[j]);
        }
    }
    Ok(classes)
}

/// Checks non-emptiness, matching lengths, equal row lengths and label range; returns the number of classes.
fn validate_shape<T>(rows: &[Vec<T>], labels: &[usize]) -> Result<usize> {
    if rows.is_empty() {
        bail!("empty input: no examples to evaluate");
    }
    if rows.len() != labels.len() {
        bail!(
            "length mismatch: {} score rows but {} labels",
            rows.len(),
            labels.len()
        );
    }
    let classes = rows.first().map_or(0, Vec::len);
    if classes == 0 {
        bail!("rows have zero classes");
    }
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != classes) {
        bail!(
            "rows of unequal length: row 0 has {classes} classes but row {i} has {}",
            row.len()
        );
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= classes) {
        bail!("label {y} at index {i} is out of range for {classes} classes");
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic RNG (SplitMix64) for test data.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn next_f64(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Index sampled from the categorical distribution `probs`.
        fn sample(&mut self, probs: &[f64]) -> usize {
            let u = self.next_f64();
            let mut acc = 0.0;
            for (i, &p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    return i;
                }
            }
            probs.len() - 1
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn nll_at(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> f64 {
        mean_nll(&softmax_rows(logits, temperature), labels)
    }

    /// Logits `scale·z` with labels drawn from softmax(z): the true temperature is `scale`.
    fn synthetic(seed: u64, n: usize, k: usize, scale: f32) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = SplitMix64(seed);
        let mut logits = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let z: Vec<f32> = (0..k)
                .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
                .collect();
            let p = softmax_rows(std::slice::from_ref(&z), 1.0);
            labels.push(rng.sample(&p[0]));
            logits.push(z.iter().map(|v| v * scale).collect());
        }
        (logits, labels)
    }

    #[test]
    fn ece_hand_example() {
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.8, 0.2],
            vec![0.6, 0.4],
            vec![0.3, 0.7],
        ];
        let labels = [0, 1, 0, 1];
        // Confidences / correctness / bin (10 bins, (b/10, (b+1)/10]):
        //   0.9 pred 0 label 0 correct -> bin 8 (0.8, 0.9]: |1 - 0.9| = 0.1
        //   0.8 pred 0 label 1 wrong   -> bin 7 (0.7, 0.8]: |0 - 0.8| = 0.8
        //   0.6 pred 0 label 0 correct -> bin 5 (0.5, 0.6]: |1 - 0.6| = 0.4
        //   0.7 pred 1 label 1 correct -> bin 6 (0.6, 0.7]: |1 - 0.7| = 0.3
        // Each bin holds 1 of 4 examples: ECE = (0.1 + 0.8 + 0.4 + 0.3) / 4 = 0.4.
        let (ece, bins) = expected_calibration_error(&probs, &labels, 10);
        assert!(close(ece, 0.4, 1e-12), "ece = {ece}");
        assert_eq!(bins.len(), 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4);
        let counts: Vec<usize> = bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 0]);
        assert!(close(bins[7].accuracy, 0.0, 0.0));
        assert!(close(bins[7].confidence, 0.8, 1e-12));
        assert!(close(bins[8].accuracy, 1.0, 0.0));
        assert!(close(bins[0].lower, 0.0, 0.0) && close(bins[9].upper, 1.0, 0.0));
        assert!(close(bins[3].lower, 0.3, 1e-15) && close(bins[3].upper, 0.4, 1e-15));
        assert!(bins
            .iter()
            .filter(|b| b.count == 0)
            .all(|b| b.accuracy == 0.0 && b.confidence == 0.0));
    }

    #[test]
    fn ece_bin_edges_and_degenerate_inputs() {
        // Confidence exactly on an edge belongs to the lower bin; 0 goes to bin 0.
        assert_eq!(bin_index(0.5, 10), 4);
        assert_eq!(bin_index(0.7, 10), 6);
        assert_eq!(bin_index(0.3, 10), 2);
        assert_eq!(bin_index(0.0, 10), 0);
        assert_eq!(bin_index(1.0, 10), 9);
        assert_eq!(bin_index(1.5, 10), 9);
        assert_eq!(bin_index(f64::NAN, 10), 0);
        assert_eq!(bin_index(0.50000001, 2), 1);
        let (ece, bins) = expected_calibration_error(&[], &[], 5);
        assert_eq!(ece, 0.0);
        assert_eq!(bins.len(), 5);
        assert_eq!(
            expected_calibration_error(&[vec![1.0]], &[0], 0),
            (0.0, Vec::new())
        );
    }

    #[test]
    fn perfectly_calibrated_construction_has_zero_ece() -> Result<()> {
        // 10 examples at confidence 0.7 with 7 correct, 10 at 0.9 with 9 correct,
        // 4 at 0.5 (ties go to class 0) with 2 correct.
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for i in 0..10 {
            probs.push(vec![0.7, 0.3]);
            labels.push(usize::from(i >= 7));
            probs.push(vec![0.1, 0.9]);
            labels.push(usize::from(i < 9));
        }
        for i in 0..4 {
            probs.push(vec![0.5, 0.5]);
            labels.push(i % 2);
        }
        let report = evaluate_probs(&probs, &labels, 10)?;
        assert!(report.ece.abs() < 1e-12, "ece = {}", report.ece);
        assert_eq!(report.n, 24);
        assert_eq!(
            report.reliability.iter().map(|b| b.count).sum::<usize>(),
            24
        );

        // Labels sampled from the predicted distribution: ECE is small.
        let mut rng = SplitMix64(7);
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..20_000 {
            let p = rng.next_f64();
            let row = vec![p, 1.0 - p];
            labels.push(rng.sample(&row));
            probs.push(row);
        }
        let (ece, _) = expected_calibration_error(&probs, &labels, 10);
        assert!(ece < 0.02, "sampled ece = {ece}");
        Ok(())
    }

    #[test]
    fn all_correct_confident_predictions() -> Result<()> {
        let probs = vec![
            vec![0.95, 0.03, 0.02],
            vec![0.1, 0.8, 0.1],
            vec![0.2, 0.15, 0.65],
            vec![0.99, 0.005, 0.005],
        ];
        let labels = [0, 1, 2, 0];
        let report = evaluate_probs(&probs, &labels, 15)?;
        let mean_conf = (0.95 + 0.8 + 0.65 + 0.99) / 4.0;
        assert_eq!(report.accuracy, 1.0);
        assert_eq!(report.macro_f1, 1.0);
        assert!(
            close(report.ece, 1.0 - mean_conf, 1e-12),
            "ece = {}",
            report.ece
        );
        assert_eq!(report.temperature, 1.0);
        assert_eq!(report.ece_bins, 15);
        Ok(())
    }

    #[test]
    fn macro_f1_and_accuracy_hand_example() -> Result<()> {
        let preds = [0, 0, 1, 2, 2, 1];
        let labels = [0, 1, 1, 2, 0, 1];
        // class 0: TP 1, FP 1, FN 1 -> 2/4 = 1/2
        // class 1: TP 2, FP 0, FN 1 -> 4/5
        // class 2: TP 1, FP 1, FN 0 -> 2/3
        // macro = (1/2 + 4/5 + 2/3) / 3 = 59/90; accuracy = 4/6.
        assert!(close(macro_f1(&preds, &labels, 3), 59.0 / 90.0, 1e-12));
        // Class 3 occurs nowhere and is skipped.
        assert!(close(macro_f1(&preds, &labels, 4), 59.0 / 90.0, 1e-12));
        // A class present only in the labels contributes F1 = 0: (2/3 + 0) / 2.
        assert!(close(macro_f1(&[0, 0], &[0, 1], 2), 1.0 / 3.0, 1e-12));
        // A class present only in the predictions also contributes 0.
        assert!(close(macro_f1(&[1, 1], &[1, 0], 3), 1.0 / 3.0, 1e-12));
        assert_eq!(macro_f1(&[], &[], 3), 0.0);

        let probs: Vec<Vec<f64>> = preds
            .iter()
            .map(|&p| {
                let mut row = vec![0.2; 3];
                row[p] = 0.6;
                row
            })
            .collect();
        let report = evaluate_probs(&probs, &labels, 10)?;
        assert!(close(report.accuracy, 4.0 / 6.0, 1e-12));
        assert!(close(report.macro_f1, 59.0 / 90.0, 1e-12));
        Ok(())
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5, 0.1]), 1);
        assert_eq!(argmax(&[3.0, 1.0]), 0);
        assert_eq!(argmax(&[f64::NAN, 1.0, 2.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn nll_and_brier_hand_example() -> Result<()> {
        let probs = vec![vec![0.7, 0.2, 0.1], vec![0.1, 0.5, 0.4]];
        let labels = [0, 2];
        // NLL = -(ln 0.7 + ln 0.4) / 2 = (0.356675 + 0.916291) / 2 = 0.636483.
        // Brier: row 0 = 0.3² + 0.2² + 0.1² = 0.14; row 1 = 0.1² + 0.5² + 0.6² = 0.62;
        // mean = 0.38.
        let report = evaluate_probs(&probs, &labels, 10)?;
        assert!(close(report.nll, -(0.7f64.ln() + 0.4f64.ln()) / 2.0, 1e-12));
        assert!(close(report.nll, 0.636_483, 1e-6));
        assert!(close(report.brier, 0.38, 1e-12));
        // A zero probability for the label is clamped to 1e-12.
        let report = evaluate_probs(&[vec![1.0, 0.0]], &[1], 10)?;
        assert!(close(report.nll, -(1e-12f64).ln(), 1e-9));
        assert!(close(report.brier, 2.0, 1e-12));
        Ok(())
    }

    #[test]
    fn softmax_and_evaluate_logits() -> Result<()> {
        let p = softmax_rows(&[vec![1.0, 2.0, 3.0]], 1.0);
        let denom = 1f64.exp() + 2f64.exp() + 3f64.exp();
        for (c, &v) in p[0].iter().enumerate() {
            assert!(close(v, ((c + 1) as f64).exp() / denom, 1e-12));
        }
        let p = softmax_rows(&[vec![1.0, 2.0, 3.0]], 2.0);
        let denom = 0.5f64.exp() + 1f64.exp() + 1.5f64.exp();
        assert!(close(p[0][2], 1.5f64.exp() / denom, 1e-12));
        // Large logits stay finite.
        let p = softmax_rows(&[vec![1000.0, 0.0, -1000.0]], 1.0);
        assert!(p[0].iter().all(|v| v.is_finite()));
        assert!(close(p[0][0], 1.0, 1e-12));

        let report = evaluate_logits(&[vec![0.0, 0.0], vec![2.0, 0.0]], &[1, 0], 1.0, 10)?;
        let p_second = 1.0 / (1.0 + (-2f64).exp());
        assert!(close(report.nll, (2f64.ln() - p_second.ln()) / 2.0, 1e-12));
        assert!(close(report.accuracy, 0.5, 0.0));
        let hot = evaluate_logits(&[vec![0.0, 0.0], vec![2.0, 0.0]], &[1, 0], 4.0, 10)?;
        assert_eq!(hot.temperature, 4.0);
        assert!(hot.reliability[9].count == 0);
        let json = serde_json::to_string(&hot)?;
        let back: ClassificationReport = serde_json::from_str(&json)?;
        assert_eq!(back, hot);
        Ok(())
    }

    #[test]
    fn fit_temperature_recovers_known_scale() -> Result<()> {
        let (logits, labels) = synthetic(42, 4000, 4, 3.0);
        let t = fit_temperature(&logits, &labels)?;
        assert!((t - 3.0).abs() < 0.4, "fitted T = {t}");
        let at = nll_at(&logits, &labels, t);
        assert!(at <= nll_at(&logits, &labels, t + 0.01));
        assert!(at <= nll_at(&logits, &labels, t - 0.01));
        assert!(at < nll_at(&logits, &labels, 1.0));
        // A fine grid around the fit finds no better point more than 2e-4 away.
        let grid_best = (-200..=200)
            .map(|j| t + f64::from(j) * 1e-5)
            .map(|x| (x, nll_at(&logits, &labels, x)))
            .fold((t, at), |best, cur| if cur.1 < best.1 { cur } else { best });
        assert!(
            (grid_best.0 - t).abs() <= 2e-4,
            "grid best {} vs {t}",
            grid_best.0
        );
        // Deterministic.
        assert_eq!(fit_temperature(&logits, &labels)?, t);
        // The calibrated report uses that temperature and beats T = 1 on NLL.
        let calibrated = evaluate_logits(&logits, &labels, t, 15)?;
        let raw = evaluate_logits(&logits, &labels, 1.0, 15)?;
        assert!(calibrated.nll < raw.nll);
        assert!(calibrated.ece < raw.ece);
        Ok(())
    }

    #[test]
    fn fit_temperature_other_scales_and_bounds() -> Result<()> {
        // Over-smoothed logits (true T = 0.5) give T < 1.
        let (logits, labels) = synthetic(9, 3000, 3, 0.5);
        let t = fit_temperature(&logits, &labels)?;
        assert!((t - 0.5).abs() < 0.1, "fitted T = {t}");
        assert!(nll_at(&logits, &labels, t) <= nll_at(&logits, &labels, t * 1.01));
        assert!(nll_at(&logits, &labels, t) <= nll_at(&logits, &labels, t * 0.99));
        // Perfectly separable data wants T -> 0: clamp to the lower end.
        let t = fit_temperature(&[vec![2.0, 0.0], vec![0.0, 1.0]], &[0, 1])?;
        assert_eq!(t, MIN_TEMPERATURE);
        // Always-wrong confident logits want T -> infinity: clamp to the upper end.
        let t = fit_temperature(&[vec![2.0, 0.0], vec![0.0, 1.0]], &[1, 0])?;
        assert_eq!(t, MAX_TEMPERATURE);
        // Constant logits: every T is optimal; a valid T is still returned.
        let t = fit_temperature(&[vec![1.0, 1.0], vec![1.0, 1.0]], &[0, 1])?;
        assert!(t > 0.0 && t.is_finite());
        Ok(())
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn error_cases() {
        let logits = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let probs = vec![vec![0.6, 0.4], vec![0.3, 0.7]];
        assert!(err_text(evaluate_logits(&[], &[], 1.0, 10)).contains("empty"));
        assert!(err_text(evaluate_probs(&[], &[], 10)).contains("empty"));
        assert!(err_text(fit_temperature(&[], &[])).contains("empty"));
        assert!(err_text(evaluate_logits(&logits, &[0], 1.0, 10)).contains("length mismatch"));
        assert!(err_text(evaluate_probs(&probs, &[0, 1, 0], 10)).contains("length mismatch"));
        assert!(err_text(fit_temperature(&logits, &[0])).contains("length mismatch"));
        assert!(err_text(evaluate_logits(&logits, &[0, 2], 1.0, 10)).contains("out of range"));
        assert!(err_text(evaluate_probs(&probs, &[5, 0], 10)).contains("out of range"));
        assert!(err_text(fit_temperature(&logits, &[2, 0])).contains("out of range"));
        let ragged = vec![vec![1.0f32, 0.0], vec![0.0, 1.0, 2.0]];
        assert!(err_text(evaluate_logits(&ragged, &[0, 1], 1.0, 10)).contains("unequal length"));
        assert!(err_text(fit_temperature(&ragged, &[0, 1])).contains("unequal length"));
        let ragged_probs = vec![vec![1.0], vec![0.5, 0.5]];
        assert!(err_text(evaluate_probs(&ragged_probs, &[0, 0], 10)).contains("unequal length"));
        assert!(err_text(evaluate_logits(&[vec![]], &[0], 1.0, 10)).contains("zero classes"));
        assert!(err_text(evaluate_logits(&logits, &[0, 1], 1.0, 0)).contains("bins"));
        assert!(err_text(evaluate_probs(&probs, &[0, 1], 0)).contains("bins"));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let l = vec![vec![1.0f32, bad]];
            assert!(err_text(evaluate_logits(&l, &[0], 1.0, 10)).contains("non-finite logit"));
            assert!(err_text(fit_temperature(&l, &[0])).contains("non-finite logit"));
        }
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(err_text(evaluate_logits(&logits, &[0, 1], t, 10)).contains("temperature"));
        }
        assert!(err_text(evaluate_probs(&[vec![0.5, f64::NAN]], &[0], 10)).contains("non-finite"));
        assert!(err_text(evaluate_probs(&[vec![1.5, -0.5]], &[0], 10)).contains("negative"));
        assert!(err_text(evaluate_probs(&[vec![0.5, 0.6]], &[0], 10)).contains("sums to"));
    }
}
