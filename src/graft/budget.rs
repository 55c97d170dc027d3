//! The budget search: the smallest graft that keeps a share R of what fine-tuning added, found on a ladder
//! of sizes, with the whole retention curve and an honest verdict when no size up to the ceiling keeps R.
//!
//! **Measure.** Retention = the share of the fine-tuning gain a graft recovers on the *dev* split:
//! (acc(graft) − acc(base+head)) / (acc(fine-tuned) − acc(base+head)). Dev because the test split must stay
//! unseen by every choice the job makes, and train accuracy of a fine-tuned model is near 1 whatever the
//! graft keeps. The curve also reports the same ratio on test, and the test ECE, for every point.
//!
//! **Search.** Δ and its |Δ| ranking are computed once; the magnitude patch of every rung is a prefix of that
//! ranking, so the magnitude curve costs one evaluation per rung. An optimizing method (paper, learned, l1,
//! refit, …) then runs from the first rung where magnitude reaches R (or the ceiling) downwards while it
//! still reaches R, upwards while it does not: a few runs, not one per rung.

use super::evaluate::Variant;
use super::graftable::GraftableModel;
use super::localize::{budget, localize, Localization, LocalizeOptions, Method};
use crate::data::{Example, FewShotSplit};
use crate::metrics::evaluate_logits;
use crate::model::predict::accuracy;
use crate::train::Progress;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a localization must keep and how far it may grow to keep it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Share R of the fine-tuning gain (dev) the graft must keep, in [0, 1].
    pub retain: f64,
    /// Largest graft tried, as a fraction of the region.
    pub ceiling: f64,
    /// Search the ladder (true) or try the options' fixed sparsity only (false).
    pub search: bool,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            retain: DEFAULT_RETAIN,
            ceiling: DEFAULT_CEILING,
            search: true,
        }
    }
}

/// Default share of the gain a graft must keep.
pub const DEFAULT_RETAIN: f64 = 0.95;
/// Default ceiling of the ladder (fraction of the region).
pub const DEFAULT_CEILING: f64 = 0.1;
/// The ladder's rungs, fractions of the region (half decades from 1e-5); the ceiling cuts it and is added
/// as the last rung when it is not one.
pub const LADDER: [f64; 11] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0,
];

/// The measure used, in words (also stored with every curve).
pub const MEASURE: &str =
    "dev gap recovered: (acc(graft) - acc(base+head)) / (acc(fine-tuned) - acc(base+head)) on the dev split";

impl Budget {
    /// Checks the numbers.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.retain) {
            return Err(format!(
                "budget.retain must be in [0, 1], got {}",
                self.retain
            ));
        }
        if !(self.ceiling > 0.0 && self.ceiling <= 1.0) {
            return Err(format!(
                "budget.ceiling must be in (0, 1], got {}",
                self.ceiling
            ));
        }
        Ok(())
    }

    /// The rungs (fractions of the region) for a fixed `sparsity` or the search.
    pub fn rungs(&self, sparsity: f64) -> Vec<f64> {
        if !self.search {
            return vec![sparsity];
        }
        let mut r: Vec<f64> = LADDER
            .iter()
            .copied()
            .filter(|&f| f <= self.ceiling * (1.0 + 1e-9))
            .collect();
        if r.last().is_none_or(|&l| l < self.ceiling * (1.0 - 1e-9)) {
            r.push(self.ceiling);
        }
        r
    }
}

/// Accuracy on dev and test of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    /// Dev accuracy.
    pub dev_accuracy: f64,
    /// Test (evaluation-set) accuracy.
    pub test_accuracy: f64,
}

/// One point of the retention curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPoint {
    /// The method that made this graft.
    pub method: String,
    /// Rung (fraction of the region it was asked for).
    pub sparsity: f64,
    /// Grafted parameters.
    pub size: usize,
    /// Size / region.
    pub region_fraction: f64,
    /// Size / all base body parameters.
    pub model_fraction: f64,
    /// Dev accuracy.
    pub dev_accuracy: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Dev gap recovered (the measure); absent when fine-tuning gained nothing on dev.
    pub retained: Option<f64>,
    /// The same ratio on test; absent when fine-tuning gained nothing on test.
    pub test_retained: Option<f64>,
    /// Test ECE at temperature 1.
    pub test_ece: f64,
    /// Seconds this point took (localization + evaluation).
    pub seconds: f64,
}

/// How a job ended against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A graft within the ceiling keeps the target.
    Retained,
    /// None does.
    NotLocalized,
    /// Fine-tuning gained nothing on dev over base + head: there is nothing to keep, and the smallest graft
    /// is returned (it is as good on dev as the fine-tuned model).
    NoGain,
}

/// The retention curve and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Target share R.
    pub target: f64,
    /// The measure (see [`MEASURE`]).
    pub measure: String,
    /// Ceiling of the search (fraction of the region); the fixed sparsity when there was no search.
    pub ceiling: f64,
    /// Whether the ladder was searched.
    pub searched: bool,
    /// Base + head (empty graft).
    pub base: Anchor,
    /// The fine-tuned model (full graft).
    pub finetuned: Anchor,
    /// Every point measured, magnitude's first, by size.
    pub points: Vec<RetentionPoint>,
    /// Index into `points` of the graft the job returns: the smallest of the requested method that keeps the
    /// target, or its best when none does.
    pub chosen: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// What the verdict means, in a sentence.
    pub summary: String,
    /// What would work instead (empty when retained).
    pub advice: Vec<String>,
    /// Dev examples the measure was taken on.
    #[serde(default)]
    pub dev_examples: usize,
    /// Body values the checkpoint changed outside the region (no graft of the region can carry them).
    #[serde(default)]
    pub changed_outside_region: usize,
}

/// Below this many dev examples of gain, the share kept is mostly noise (one example moves it by a third).
pub const MIN_GAIN_EXAMPLES: f64 = 3.0;

impl Retention {
    /// The returned graft's point.
    pub fn chosen_point(&self) -> &RetentionPoint {
        &self.points[self.chosen]
    }

    /// The smallest point of `method` that keeps the target.
    pub fn smallest_retained(&self, method: &str) -> Option<&RetentionPoint> {
        self.points
            .iter()
            .filter(|p| {
                p.method == method
                    && (self.verdict == Verdict::NoGain || keeps(p.retained, self.target))
            })
            .min_by_key(|p| p.size)
    }
}

/// Share of the gap `acc` recovers between `base` and `ft`; None when there is no gap.
pub fn gap_recovered(acc: f64, base: f64, ft: f64) -> Option<f64> {
    let gap = ft - base;
    (gap > 1e-12).then(|| (acc - base) / gap)
}

/// Whether a point keeps the target: a target of 0 asks for nothing (every graft keeps it).
fn keeps(retained: Option<f64>, target: f64) -> bool {
    target <= 0.0 || retained.is_some_and(|r| r >= target - 1e-12)
}

/// Evaluates the model's current point on dev and the evaluation set.
struct Scorer<'a> {
    model: &'a GraftableModel,
    split: &'a FewShotSplit,
    eval: &'a [Example],
    bins: usize,
    base: Anchor,
    finetuned: Anchor,
    body_parameters: usize,
}

impl Scorer<'_> {
    fn anchor(model: &GraftableModel, split: &FewShotSplit, eval: &[Example]) -> Result<Anchor> {
        let dev = labels(&split.dev);
        let test = labels(eval);
        Ok(Anchor {
            dev_accuracy: accuracy(&model.logits(&split.dev)?, &dev),
            test_accuracy: accuracy(&model.logits(eval)?, &test),
        })
    }

    fn point(
        &self,
        method: &str,
        sparsity: f64,
        v: Variant<'_>,
        t0: Instant,
    ) -> Result<RetentionPoint> {
        self.model.check_cancelled()?;
        self.model.set_variant(v)?;
        let size = match v {
            Variant::Mask(m) | Variant::Values(m, _) => m.len(),
            Variant::Finetuned => self.model.region.len(),
        };
        let dev_accuracy = accuracy(
            &self.model.logits(&self.split.dev)?,
            &labels(&self.split.dev),
        );
        let report = evaluate_logits(
            &self.model.logits(self.eval)?,
            &labels(self.eval),
            1.0,
            self.bins,
        )?;
        Ok(RetentionPoint {
            method: method.to_string(),
            sparsity,
            size,
            region_fraction: size as f64 / self.model.region.len().max(1) as f64,
            model_fraction: size as f64 / self.body_parameters.max(1) as f64,
            dev_accuracy,
            test_accuracy: report.accuracy,
            retained: gap_recovered(
                dev_accuracy,
                self.base.dev_accuracy,
                self.finetuned.dev_accuracy,
            ),
            test_retained: gap_recovered(
                report.accuracy,
                self.base.test_accuracy,
                self.finetuned.test_accuracy,
            ),
            test_ece: report.ece,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

fn labels(examples: &[Example]) -> Vec<usize> {
    examples.iter().map(|e| e.label).collect()
}

/// The rung's sizes' |Δ| ranking: the `k` largest, best first (ties: lower index first).
fn ranking(delta: &[f32], k: usize) -> Vec<u32> {
    let abs: Vec<f32> = delta.iter().map(|d| d.abs()).collect();
    let mut top = super::graftable::top_k(&abs, k);
    top.sort_by(|a, b| abs[*b as usize].total_cmp(&abs[*a as usize]).then(a.cmp(b)));
    top
}

/// How a search measures: the budget, the ECE bins, and the base's body size (for the model fractions).
#[derive(Debug, Clone, Copy)]
pub struct SearchSpec {
    /// Target and ladder.
    pub budget: Budget,
    /// ECE bins of the curve's test ECE.
    pub bins: usize,
    /// Parameters of the base body.
    pub body_parameters: usize,
}

/// Runs the search: the magnitude curve over the rungs, then the requested method where it matters. Returns
/// the localization of the chosen graft and the curve.
pub fn search(
    model: &GraftableModel,
    split: &FewShotSplit,
    eval: &[Example],
    opts: &LocalizeOptions,
    spec: SearchSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Localization, Retention)> {
    let SearchSpec {
        budget: target,
        bins,
        body_parameters,
    } = spec;
    let target = &target;
    target.check().map_err(anyhow::Error::msg)?;
    let n = model.region.len();
    let rungs = target.rungs(opts.sparsity);
    if rungs.iter().any(|&f| !(f > 0.0 && f <= 1.0)) {
        bail!("sparsity must be in (0, 1], got {}", opts.sparsity);
    }
    model.set_mask(&[])?;
    let base = Scorer::anchor(model, split, eval)?;
    model.set_finetuned()?;
    let finetuned = Scorer::anchor(model, split, eval)?;
    let scorer = Scorer {
        model,
        split,
        eval,
        bins,
        base,
        finetuned,
        body_parameters,
    };
    // Without a gain on dev there is nothing to keep: every size does, the smallest is returned.
    let no_gain = gap_recovered(
        finetuned.dev_accuracy,
        base.dev_accuracy,
        finetuned.dev_accuracy,
    )
    .is_none();
    let keeps = |retained: Option<f64>, target: f64| no_gain || keeps(retained, target);
    let say = |progress: &mut dyn FnMut(Progress), p: &RetentionPoint| {
        progress(Progress::Message {
            text: format!(
                "{} at {:.0e} ({} parameters): dev {:.4} ({} of the gain), test {:.4}",
                p.method,
                p.sparsity,
                p.size,
                p.dev_accuracy,
                p.retained
                    .map_or("no gain".to_string(), |r| format!("{:.0}%", 100.0 * r)),
                p.test_accuracy
            ),
        })
    };
    progress(Progress::Message {
        text: format!(
            "budget: keep {:.0}% of the dev gain (base+head {:.4} -> fine-tuned {:.4}) on {} rung(s) up to {:.0e} of the region",
            100.0 * target.retain,
            base.dev_accuracy,
            finetuned.dev_accuracy,
            rungs.len(),
            rungs.last().copied().unwrap_or(opts.sparsity)
        ),
    });
    let mut points = Vec::new();
    let order = ranking(&model.delta, budget(rungs[rungs.len() - 1], n));
    let mut first_magnitude_keeps = None;
    for (r, &f) in rungs.iter().enumerate() {
        let t0 = Instant::now();
        let mut mask = order[..budget(f, n).min(order.len())].to_vec();
        mask.sort_unstable();
        let p = scorer.point("magnitude", f, Variant::Mask(&mask), t0)?;
        say(progress, &p);
        if first_magnitude_keeps.is_none() && keeps(p.retained, target.retain) {
            first_magnitude_keeps = Some(r);
        }
        points.push(p);
    }
    // The requested method: down from where magnitude keeps the target (or the top rung) while it keeps it,
    // up while it does not.
    let method = opts.method.name();
    let mut runs: Vec<(usize, Localization, usize)> = Vec::new();
    let mut run = |r: usize,
                   points: &mut Vec<RetentionPoint>,
                   progress: &mut dyn FnMut(Progress)|
     -> Result<bool> {
        let t0 = Instant::now();
        let o = LocalizeOptions {
            sparsity: rungs[r],
            ..opts.clone()
        };
        if opts.method == Method::Magnitude {
            // Its point is the ladder's (index r): only the localization is needed.
            let loc = localize(model, split, &o, &mut |_| {})?;
            runs.push((r, loc, r));
            return Ok(keeps(points[r].retained, target.retain));
        }
        let loc = localize(model, split, &o, progress)?;
        let v = match &loc.values {
            Some(v) => Variant::Values(&loc.mask, v),
            None => Variant::Mask(&loc.mask),
        };
        let p = scorer.point(method, rungs[r], v, t0)?;
        say(progress, &p);
        let kept = keeps(p.retained, target.retain);
        points.push(p);
        runs.push((r, loc, points.len() - 1));
        Ok(kept)
    };
    let start = first_magnitude_keeps.unwrap_or(rungs.len() - 1);
    if run(start, &mut points, progress)? {
        let mut r = start;
        while r > 0 && run(r - 1, &mut points, progress)? {
            r -= 1;
        }
    } else {
        let mut r = start;
        while r + 1 < rungs.len() && !run(r + 1, &mut points, progress)? {
            r += 1;
        }
    }
    model.set_mask(&[])?;
    let kept: Vec<&(usize, Localization, usize)> = runs
        .iter()
        .filter(|(_, _, p)| keeps(points[*p].retained, target.retain))
        .collect();
    let (verdict, pick) = match kept.iter().min_by_key(|(r, _, _)| *r) {
        Some(&&(_, _, p)) if no_gain => (Verdict::NoGain, p),
        Some(&&(_, _, p)) => (Verdict::Retained, p),
        None => {
            // The best the method reached (smaller on ties).
            let best = runs
                .iter()
                .max_by(|a, b| {
                    let (pa, pb) = (&points[a.2], &points[b.2]);
                    pa.retained
                        .unwrap_or(f64::NEG_INFINITY)
                        .total_cmp(&pb.retained.unwrap_or(f64::NEG_INFINITY))
                        .then(pb.size.cmp(&pa.size))
                })
                .map_or(0, |x| x.2);
            (Verdict::NotLocalized, best)
        }
    };
    let idx = runs
        .iter()
        .position(|(_, _, p)| *p == pick)
        .unwrap_or(runs.len() - 1);
    let (_, loc, _) = runs.swap_remove(idx);
    // Magnitude's points first, then the method's, each by size; `chosen` follows its point.
    let mut perm: Vec<usize> = (0..points.len()).collect();
    perm.sort_by(|&a, &b| {
        let (pa, pb) = (&points[a], &points[b]);
        (pa.method != "magnitude")
            .cmp(&(pb.method != "magnitude"))
            .then(pa.size.cmp(&pb.size))
            .then(a.cmp(&b))
    });
    let chosen = perm.iter().position(|&i| i == pick).unwrap_or(0);
    let points = perm.into_iter().map(|i| points[i].clone()).collect();
    let mut retention = Retention {
        target: target.retain,
        measure: MEASURE.to_string(),
        ceiling: rungs[rungs.len() - 1],
        searched: target.search,
        base,
        finetuned,
        points,
        chosen,
        verdict,
        summary: String::new(),
        advice: Vec::new(),
        dev_examples: split.dev.len(),
        changed_outside_region: 0,
    };
    explain(&mut retention, opts.method);
    Ok((loc, retention))
}

/// Fills in the summary and the advice (again after `changed_outside_region` is set).
pub fn explain(r: &mut Retention, method: Method) {
    r.advice.clear();
    let p = r.chosen_point().clone();
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
    match r.verdict {
        Verdict::Retained => {
            r.summary = format!(
                "{} parameters ({:.1e} of the region, {:.1e} of the model) keep {} of the dev gain (target {:.0}%); test {}",
                p.size,
                p.region_fraction,
                p.model_fraction,
                pct(p.retained),
                100.0 * r.target,
                pct(p.test_retained)
            );
        }
        Verdict::NoGain => {
            r.summary = format!(
                "the fine-tuned model is no better than base+head on dev ({:.4} vs {:.4}): there is no gain to keep; the smallest graft ({} parameters) is returned",
                r.finetuned.dev_accuracy, r.base.dev_accuracy, p.size
            );
            r.advice = vec![
                "check that the checkpoint was fine-tuned on this task and labels, and that dev is large enough to show its gain".into(),
            ];
        }
        Verdict::NotLocalized => {
            r.summary = format!(
                "does not localize within {:.0e} of the region: the best {} graft keeps {} of the dev gain (target {:.0}%) at {} parameters ({:.1e} of the region)",
                r.ceiling,
                p.method,
                pct(p.retained),
                100.0 * r.target,
                p.size,
                p.region_fraction
            );
            let mut advice = Vec::new();
            if r.ceiling < 1.0 {
                advice.push(format!(
                    "a larger ceiling (budget.ceiling, now {:.0e}) lets the search try bigger grafts",
                    r.ceiling
                ));
            }
            if method != Method::Dare {
                advice.push(
                    "method `dare` (k values drawn at random, Δ rescaled by N/k) kept 90–101% of the gain at 1e-2 of the body on four AdamW fine-tunes where the top-|Δ| patch kept 18–58% (docs/adamw-checkpoints.md)"
                        .into(),
                );
            }
            if method != Method::Refit {
                advice.push(
                    "method `refit` re-trains the values of the top-|Δ| patch (it is re-training, not grafting)"
                        .into(),
                );
            }
            if method != Method::Learned {
                advice.push(
                    "method `learned` learns the mask with a step that does not vanish with |Δ|"
                        .into(),
                );
            }
            advice.push(
                "fine-tune with an L1 penalty on θ − θ_pre (`skillgraft finetune --l1`, or scripts/l1-trainer.py for transformers): AdamW then moves only the weights the task needs".into(),
            );
            r.advice = advice;
        }
    }
    let gain = (r.finetuned.dev_accuracy - r.base.dev_accuracy) * r.dev_examples as f64;
    if r.verdict != Verdict::NoGain && gain < MIN_GAIN_EXAMPLES - 1e-9 {
        r.summary.push_str(&format!(
            "; but fine-tuning gained only {gain:.0} dev example(s) over base+head, so the share kept is mostly noise"
        ));
        r.advice.push(
            "measure on a larger dev split (more examples per class, or the data's own dev split)"
                .into(),
        );
    }
    if r.changed_outside_region > 0 {
        r.advice.push(format!(
            "the checkpoint also changed {} values outside the region (the embeddings, when they were trained), which no graft of this region carries: include them in the region (`--include-embeddings`, `\"include_embeddings\": true`)",
            r.changed_outside_region
        ));
    }
}
