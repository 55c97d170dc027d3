//! The Markdown report of a study and its SVG plots.

use super::svg::{self, Heatmap, ReliabilitySeries};
use super::{head_name, Cell, OodRow, StudyResults};
use crate::graft::localize::Method;
use crate::metrics::ReliabilityBin;
use crate::model::HeadKind;
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Task, K, head, optimizer, sparsity, method.
type ConfigKey = (String, usize, String, String, String, String);

fn mean(v: &[f64]) -> f64 {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn std(v: &[f64]) -> f64 {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(&v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// `mean ± std` in percent (just the mean for one value; `–` for none).
fn pct(v: &[f64]) -> String {
    let n = v.iter().filter(|x| x.is_finite()).count();
    match n {
        0 => "–".to_string(),
        1 => format!("{:.1}", mean(v) * 100.0),
        _ => format!("{:.1} ± {:.1}", mean(v) * 100.0, std(v) * 100.0),
    }
}

fn sp(s: f64) -> String {
    format!("{s:e}")
}

/// (graft − base+head) / (fine-tuned − base+head), NaN when fine-tuning did not move the accuracy.
fn gap(c: &Cell, variant: &str) -> f64 {
    let (b, f) = (c.accuracy("base+head"), c.accuracy("fine-tuned"));
    if (f - b).abs() < 1e-9 {
        f64::NAN
    } else {
        (c.accuracy(variant) - b) / (f - b)
    }
}

fn ece(c: &Cell, variant: &str, calibrated: bool) -> f64 {
    c.variant(variant).map_or(f64::NAN, |v| {
        if calibrated {
            v.test_calibrated.ece
        } else {
            v.test.ece
        }
    })
}

fn collect(cells: &[&Cell], f: impl Fn(&Cell) -> f64) -> Vec<f64> {
    cells.iter().map(|c| f(c)).collect()
}

/// base+head, base patch, graft, fine-tuned accuracy, retained, gap recovered, ECE fine-tuned, ECE graft.
fn summary_cells(cs: &[&Cell]) -> String {
    [
        pct(&collect(cs, |c| c.accuracy("base+head"))),
        pct(&collect(cs, |c| c.accuracy("base patch"))),
        pct(&collect(cs, |c| c.accuracy("graft"))),
        pct(&collect(cs, |c| c.accuracy("fine-tuned"))),
        pct(&collect(cs, |c| {
            c.accuracy("graft") / c.accuracy("fine-tuned")
        })),
        pct(&collect(cs, |c| gap(c, "graft"))),
        pct(&collect(cs, |c| ece(c, "fine-tuned", false))),
        pct(&collect(cs, |c| ece(c, "graft", false))),
    ]
    .join(" | ")
}

fn by_task<'a>(cells: &[&'a Cell], t: &str) -> Vec<&'a Cell> {
    cells.iter().copied().filter(|c| c.task == t).collect()
}

fn merged_bins(cells: &[&Cell], variant: &str) -> Vec<ReliabilityBin> {
    let mut out: Vec<ReliabilityBin> = Vec::new();
    for c in cells {
        let Some(v) = c.variant(variant) else {
            continue;
        };
        for (i, b) in v.test.reliability.iter().enumerate() {
            if out.len() <= i {
                out.push(ReliabilityBin {
                    lower: b.lower,
                    upper: b.upper,
                    count: 0,
                    accuracy: 0.0,
                    confidence: 0.0,
                });
            }
            let o = &mut out[i];
            let n = (o.count + b.count).max(1) as f64;
            o.accuracy = (o.accuracy * o.count as f64 + b.accuracy * b.count as f64) / n;
            o.confidence = (o.confidence * o.count as f64 + b.confidence * b.count as f64) / n;
            o.count += b.count;
        }
    }
    out
}

/// Tasks that share a sentiment label set (the "similar tasks" of the overlap claim).
const SENTIMENT: [&str; 4] = ["sst2", "sst5", "mr", "cr"];

fn verdict(all: bool, any: bool) -> &'static str {
    if all {
        "**holds**"
    } else if any {
        "**partly holds**"
    } else {
        "**does not hold**"
    }
}

/// What every section of the report reads: the results and the cells and tasks it summarizes.
struct Context<'a> {
    r: &'a StudyResults,
    /// K, head and optimizer of the first grid: the primary configuration.
    k0: usize,
    head0: Option<HeadKind>,
    opt0: String,
    /// Method and sparsity of the analyses (calibration, OOD, overlap, composition).
    am: Method,
    asp: f64,
    /// Cells of the primary configuration, and those of them at the analysed method and sparsity.
    primary: Vec<&'a Cell>,
    analysed: Vec<&'a Cell>,
    /// Tasks of the primary configuration, in the order the cells name them.
    tasks: Vec<String>,
    /// OOD rows by (source, target).
    ood: BTreeMap<(String, String), Vec<&'a OodRow>>,
    /// Where the report links its plots.
    plots_rel: &'a str,
}

impl<'a> Context<'a> {
    fn new(r: &'a StudyResults, plots_rel: &'a str) -> Self {
        let g0 = &r.config.grids[0];
        let (k0, head0, opt0) = (
            g0.ks.first().copied().unwrap_or(16),
            g0.heads.first().copied(),
            g0.optimizers.first().cloned().unwrap_or_default(),
        );
        let am = r.config.analysis.method;
        let asp = r.config.analysis.sparsity;
        let primary: Vec<&Cell> = r
            .cells
            .iter()
            .filter(|c| c.k == k0 && Some(c.head) == head0 && c.optimizer == opt0)
            .collect();
        let analysed: Vec<&Cell> = primary
            .iter()
            .copied()
            .filter(|c| c.method == am && c.sparsity == asp)
            .collect();
        let mut tasks: Vec<String> = Vec::new();
        for c in &primary {
            if !tasks.contains(&c.task) {
                tasks.push(c.task.clone());
            }
        }
        let mut ood: BTreeMap<(String, String), Vec<&OodRow>> = BTreeMap::new();
        for o in &r.analyses.ood {
            ood.entry((o.source.clone(), o.target.clone()))
                .or_default()
                .push(o);
        }
        Self {
            r,
            k0,
            head0,
            opt0,
            am,
            asp,
            primary,
            analysed,
            tasks,
            ood,
            plots_rel,
        }
    }

    fn is_primary(&self, c: &Cell) -> bool {
        c.k == self.k0 && Some(c.head) == self.head0 && c.optimizer == self.opt0
    }
}

/// Test accuracy of variant `name` in an OOD row (NaN when it has none).
fn ood_accuracy(o: &OodRow, name: &str) -> f64 {
    o.variants
        .iter()
        .find(|v| v.name == name)
        .map_or(f64::NAN, |v| v.test.accuracy)
}

/// Renders the report; returns it and the plots (file name, SVG) it links under `plots_rel`.
pub(super) fn render(
    r: &StudyResults,
    command: &str,
    plots_rel: &str,
) -> Result<(String, Vec<(String, String)>)> {
    let cx = Context::new(r, plots_rel);
    let mut plots = Vec::new();
    let mut out = String::new();
    header(&mut out, r, command)?;
    claims(&mut out, &cx);
    main_table(&mut out, &cx);
    methods(&mut out, &cx);
    calibration(&mut out, &cx, &mut plots);
    out_of_distribution(&mut out, &cx);
    overlap(&mut out, &cx, &mut plots);
    placement(&mut out, &cx, &mut plots);
    composition(&mut out, &cx);
    appendix(&mut out, &cx);
    Ok((out, plots))
}

/// Title, the command line, the configuration and the protocol.
fn header(out: &mut String, r: &StudyResults, command: &str) -> Result<()> {
    let cfg = &r.config;
    let _ = writeln!(out, "# Results: skill localization on {}\n", r.base);
    let _ = writeln!(out, "Generated by:\n\n```\n{command}\n```\n");
    let _ = writeln!(
        out,
        "<details><summary>Configuration</summary>\n\n```json\n{}\n```\n</details>\n",
        serde_json::to_string_pretty(cfg)?
    );
    let _ = writeln!(out, "**Protocol.** Each task is split K-shot (K examples per class for training, another K for dev, test \
capped at {} examples) by seed. Fine-tuning: {} steps, batch 4, best dev checkpoint; the `prototype` head is frozen (the base's \
mean-pooled embeddings of one description per class, cosine / 0.05) and only the encoder layers train. Localization region: the encoder \
layers ({} parameters per graft budget of 1). Methods: `magnitude` = top-|Δ| (the paper's base patch); `paper` = the paper's sigmoid-mask \
optimization from the base patch ({} epochs, η = 1e7, β = 10); `saliency` = top |∇L ⊙ Δ| at the fine-tuned point; `l1` = mask \
optimization with an L1 penalty; `refit` (ours) = the base patch's coordinates with their values re-trained by Adam (at most 4 steps per epoch) on the training \
split, epoch chosen by train + dev accuracy. Accuracy and ECE (10 bins) in %, mean ± std over seeds. Retained = graft / fine-tuned \
accuracy; **gap recovered** = (graft − base+head) / (fine-tuned − base+head), the share of what fine-tuning added that the graft keeps.\n",
        cfg.max_test.map_or("no limit".to_string(), |m| m.to_string()),
        cfg.steps,
        r.cells.iter().find_map(|c| c.variant("fine-tuned").map(|v| v.size)).unwrap_or(0),
        cfg.epochs,
    );
    Ok(())
}

/// Which of the paper's claims hold on this model, each stated from the numbers.
fn claims(out: &mut String, cx: &Context) {
    let _ = writeln!(out, "## Which of the paper's claims hold on this model\n");
    claim_retention(out, cx);
    claim_calibration(out, cx);
    claim_ood(out, cx);
    claim_overlap(out, cx);
    claim_continual(out, cx);
    claim_refit(out, cx);
    let _ = writeln!(out);
}

/// Claim 1: a graft of ≈0.01% of the parameters keeps > 95% of the fine-tuned accuracy.
fn claim_retention(out: &mut String, cx: &Context) {
    let k0 = cx.k0;
    let paper_sp: Vec<&Cell> = cx
        .primary
        .iter()
        .copied()
        .filter(|c| c.method == Method::Paper && (c.sparsity - 1e-4).abs() < 1e-12)
        .collect();
    if !paper_sp.is_empty() {
        let per: Vec<(String, f64, f64)> = cx
            .tasks
            .iter()
            .map(|t| {
                let cs = by_task(&paper_sp, t);
                (
                    t.clone(),
                    mean(&collect(&cs, |c| {
                        c.accuracy("graft") / c.accuracy("fine-tuned")
                    })),
                    mean(&collect(&cs, |c| gap(c, "graft"))),
                )
            })
            .filter(|p| p.1.is_finite())
            .collect();
        let ok = per.iter().filter(|p| p.1 > 0.95).count();
        let _ = writeln!(
            out,
            "1. *A graft of ≈0.01% of the parameters keeps > 95% of the fine-tuned accuracy* — {} for the paper's method at 1e-4 of the \
encoder (K = {k0}): retained {} ({} of {} tasks above 95%). But retained flatters: the graft recovers only {} of the gap between \
base+head and fine-tuned.",
            verdict(ok == per.len() && ok > 0, ok > 0),
            per.iter().map(|p| format!("{} {:.1}%", p.0, p.1 * 100.0)).collect::<Vec<_>>().join(", "),
            ok,
            per.len(),
            per.iter().map(|p| format!("{} {:.0}%", p.0, p.2 * 100.0)).collect::<Vec<_>>().join(", "),
        );
    }
}

/// Claim 2: grafting lowers calibration error by 40–90%.
fn claim_calibration(out: &mut String, cx: &Context) {
    let am = cx.am;
    let asp = cx.asp;
    if !cx.analysed.is_empty() {
        let per: Vec<(String, f64, f64)> = cx
            .tasks
            .iter()
            .map(|t| {
                let cs = by_task(&cx.analysed, t);
                (
                    t.clone(),
                    mean(&collect(&cs, |c| ece(c, "fine-tuned", false))),
                    mean(&collect(&cs, |c| ece(c, "graft", false))),
                )
            })
            .filter(|p| p.1.is_finite())
            .collect();
        let red: Vec<f64> = per.iter().map(|p| 1.0 - p.2 / p.1).collect();
        let ok = red.iter().filter(|x| **x >= 0.4).count();
        let _ = writeln!(
            out,
            "2. *Grafting lowers calibration error by 40–90%* — {} ({} graft at {}): ECE fine-tuned → graft {}.",
            verdict(ok == red.len() && ok > 0, ok > 0),
            am.name(),
            sp(asp),
            per.iter()
                .zip(&red)
                .map(|(p, x)| format!("{} {:.1} → {:.1} ({:+.0}%)", p.0, p.1 * 100.0, p.2 * 100.0, -x * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Claim 3: grafts generalize better out of distribution than the fine-tuned model.
fn claim_ood(out: &mut String, cx: &Context) {
    if !cx.ood.is_empty() {
        let d: Vec<(String, f64)> = cx
            .ood
            .iter()
            .map(|((s, t), rows)| {
                (
                    format!("{s}→{t}"),
                    mean(
                        &rows
                            .iter()
                            .map(|o| ood_accuracy(o, "graft") - ood_accuracy(o, "fine-tuned"))
                            .collect::<Vec<_>>(),
                    ),
                )
            })
            .collect();
        let ok = d.iter().filter(|x| x.1 > 0.0).count();
        let _ = writeln!(
            out,
            "3. *Grafts generalize better out of distribution than the fine-tuned model* — {}: graft − fine-tuned accuracy on the \
target {}.",
            verdict(ok == d.len(), ok > 0),
            d.iter().map(|x| format!("{} {:+.1} points", x.0, x.1 * 100.0)).collect::<Vec<_>>().join(", ")
        );
    }
}

/// Claim 4: grafts of different tasks are almost disjoint; similar tasks overlap more.
fn claim_overlap(out: &mut String, cx: &Context) {
    let r = cx.r;
    if let Some(ov) = &r.analyses.overlap {
        let n = ov.tasks.len();
        let (mut within, mut across, mut max_j, mut ratio) =
            (Vec::new(), Vec::new(), 0f64, Vec::new());
        for i in 0..n {
            for j in i + 1..n {
                let jv = ov.jaccard[i][j];
                max_j = max_j.max(jv);
                ratio.push(jv / ov.random_jaccard[i][j].max(1e-12));
                let both = SENTIMENT.contains(&ov.tasks[i].as_str())
                    && SENTIMENT.contains(&ov.tasks[j].as_str());
                if both {
                    within.push(jv)
                } else {
                    across.push(jv)
                }
            }
        }
        let _ = writeln!(
            out,
            "4. *Grafts of different tasks are almost disjoint* — {}: the largest pairwise Jaccard is {:.3}; yet pairs share {:.0}× \
more than random masks of the same sizes (mean over pairs). *Similar tasks overlap more* — {}: mean Jaccard {:.3} between sentiment \
tasks vs {:.3} for pairs with a non-sentiment task.",
            verdict(max_j < 0.1, max_j < 0.2),
            max_j,
            mean(&ratio),
            if within.is_empty() || across.is_empty() {
                "not testable with these tasks"
            } else {
                verdict(mean(&within) > mean(&across), false)
            },
            mean(&within),
            mean(&across)
        );
    }
}

/// Claim 5: grafting helps continual learning.
fn claim_continual(out: &mut String, cx: &Context) {
    let r = cx.r;
    if !r.analyses.composition.is_empty() {
        let firsts: Vec<&super::CompositionRow> = r
            .analyses
            .composition
            .iter()
            .filter(|c| c.pair.split(':').next() == Some(c.task.as_str()))
            .collect();
        let comp_drop = mean(
            &firsts
                .iter()
                .map(|c| c.graft - c.composed)
                .collect::<Vec<_>>(),
        );
        let seq_drop = mean(
            &firsts
                .iter()
                .map(|c| c.finetuned - c.sequential)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            out,
            "5. *Grafting helps continual learning* — {}: after adding task b, task a loses {:.1} points under the graft composition \
vs {:.1} points after sequential full fine-tuning (mean over pairs and seeds).",
            verdict(comp_drop < seq_drop, false),
            comp_drop * 100.0,
            seq_drop * 100.0
        );
    }
}

/// Claim 6: our `refit` beats the paper's method at equal graft size.
fn claim_refit(out: &mut String, cx: &Context) {
    let r = cx.r;
    // (K, optimizer, sparsity) → (refit wins, runs, gap-recovered differences).
    type Tally = (usize, usize, Vec<f64>);
    let mut by_sp: BTreeMap<(usize, String, String), Tally> = BTreeMap::new();
    for c in r.cells.iter().filter(|c| c.method == Method::Refit) {
        let Some(p) = r.cells.iter().find(|p| {
            p.method == Method::Paper
                && p.task == c.task
                && p.k == c.k
                && p.seed == c.seed
                && p.head == c.head
                && p.optimizer == c.optimizer
                && p.sparsity == c.sparsity
        }) else {
            continue;
        };
        let d = gap(c, "graft") - gap(p, "graft");
        let e = by_sp
            .entry((c.k, c.optimizer.clone(), sp(c.sparsity)))
            .or_default();
        e.1 += 1;
        if c.accuracy("graft") > p.accuracy("graft") {
            e.0 += 1;
        }
        if d.is_finite() {
            e.2.push(d);
        }
    }
    if !by_sp.is_empty() {
        let all_better = by_sp.values().all(|v| mean(&v.2) > 0.0);
        let _ = writeln!(
            out,
            "6. *Our `refit` beats the paper's method at equal graft size* — {}: {}.",
            verdict(all_better, by_sp.values().any(|v| mean(&v.2) > 0.0)),
            by_sp
                .iter()
                .map(|((k, opt, s), (wins, n, d))| format!(
                    "K = {k}, {opt} fine-tuning, at {s}: higher test accuracy in {wins} of {n} runs, gap recovered {:+.0} points on average",
                    mean(d) * 100.0
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

/// Section 1: accuracy and calibration of the primary configuration, one row per task, sparsity and method.
fn main_table(out: &mut String, cx: &Context) {
    let k0 = cx.k0;
    let head0 = cx.head0;
    let opt0 = &cx.opt0;
    let _ = writeln!(
        out,
        "## 1. Accuracy and calibration (K = {k0}, {} head, {opt0})\n",
        head0.map(head_name).unwrap_or_default()
    );
    let _ = writeln!(out, "| task | method | sparsity | seeds | graft params | base+head | base patch | graft | fine-tuned | retained | gap recovered | ECE fine-tuned | ECE graft |");
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut groups: BTreeMap<(String, String, String), Vec<&Cell>> = BTreeMap::new();
    for c in &cx.primary {
        groups
            .entry((c.task.clone(), sp(c.sparsity), c.method.name().to_string()))
            .or_default()
            .push(c);
    }
    for ((task, s, method), cs) in &groups {
        let size = mean(&collect(cs, |c| c.graft_size as f64));
        let _ = writeln!(
            out,
            "| {task} | {method} | {s} | {} | {size:.0} | {} |",
            cs.len(),
            summary_cells(cs)
        );
    }
    let _ = writeln!(out);
}

/// Section 2: the localization methods at equal graft size, per configuration.
fn methods(out: &mut String, cx: &Context) {
    let r = cx.r;
    let _ = writeln!(out, "## 2. Localization methods at equal graft size\n");
    let _ = writeln!(out, "Gap recovered (%), mean ± std over seeds; every method selects exactly the same number of parameters. \
Best mean in bold. The *mean* rows average the per-task means over the tasks on which every method ran.\n");
    let mut configs: BTreeMap<(usize, String, String), Vec<&Cell>> = BTreeMap::new();
    for c in &r.cells {
        configs
            .entry((c.k, head_name(c.head), c.optimizer.clone()))
            .or_default()
            .push(c);
    }
    for ((k, head, opt), cs) in &configs {
        let mut methods: Vec<Method> = Vec::new();
        for c in cs {
            if !methods.contains(&c.method) {
                methods.push(c.method);
            }
        }
        let mut sps: Vec<f64> = cs.iter().map(|c| c.sparsity).collect();
        sps.sort_by(f64::total_cmp);
        sps.dedup();
        let mut ts: Vec<String> = Vec::new();
        for c in cs {
            if !ts.contains(&c.task) {
                ts.push(c.task.clone());
            }
        }
        let _ = writeln!(out, "**K = {k}, {head} head, {opt}**\n");
        let _ = writeln!(
            out,
            "| task | sparsity | seeds | {} |\n|---|---:|---:|{}",
            methods
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(methods.len())
        );
        for &s in &sps {
            let mut avg: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
            let mut complete_tasks = 0;
            for t in &ts {
                let vals: Vec<Vec<f64>> = methods
                    .iter()
                    .map(|m| {
                        collect(
                            &cs.iter()
                                .copied()
                                .filter(|c| &c.task == t && c.sparsity == s && c.method == *m)
                                .collect::<Vec<_>>(),
                            |c| gap(c, "graft"),
                        )
                    })
                    .collect();
                if vals.iter().all(|v| v.is_empty()) {
                    continue;
                }
                let best = vals
                    .iter()
                    .map(|v| mean(v))
                    .filter(|x| x.is_finite())
                    .fold(f64::NEG_INFINITY, f64::max);
                let seeds = vals.iter().map(Vec::len).max().unwrap_or(0);
                let complete = vals.iter().all(|v| mean(v).is_finite());
                if complete {
                    complete_tasks += 1;
                }
                let row: Vec<String> = vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if complete {
                            avg[i].push(mean(v));
                        }
                        if mean(v) == best {
                            format!("**{}**", pct(v))
                        } else {
                            pct(v)
                        }
                    })
                    .collect();
                let _ = writeln!(out, "| {t} | {} | {seeds} | {} |", sp(s), row.join(" | "));
            }
            let means: Vec<f64> = avg.iter().map(|v| mean(v)).collect();
            let best = means
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            if complete_tasks == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "| *mean over the {complete_tasks} tasks with every method* | {} | | {} |",
                sp(s),
                means
                    .iter()
                    .map(|m| if *m == best {
                        format!("**{:.1}**", m * 100.0)
                    } else {
                        format!("{:.1}", m * 100.0)
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        let _ = writeln!(out);
    }
}

/// Section 3: calibration of the analysed grafts, with the reliability diagrams.
fn calibration(out: &mut String, cx: &Context, plots: &mut Vec<(String, String)>) {
    let am = cx.am;
    let asp = cx.asp;
    let plots_rel = cx.plots_rel;
    if !cx.analysed.is_empty() {
        let _ = writeln!(
            out,
            "## 3. Calibration ({} graft at {})\n",
            am.name(),
            sp(asp)
        );
        let _ = writeln!(
            out,
            "ECE (%) at temperature 1 and after temperature scaling fitted on dev (@T).\n"
        );
        let _ = writeln!(out, "| task | seeds | ECE base+head | ECE fine-tuned | ECE graft | change | ECE fine-tuned @T | ECE graft @T |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut panels = Vec::new();
        for t in &cx.tasks {
            let cs = by_task(&cx.analysed, t);
            if cs.is_empty() {
                continue;
            }
            let (ef, eg) = (
                mean(&collect(&cs, |c| ece(c, "fine-tuned", false))),
                mean(&collect(&cs, |c| ece(c, "graft", false))),
            );
            let _ = writeln!(
                out,
                "| {t} | {} | {} | {} | {} | {:+.0}% | {} | {} |",
                cs.len(),
                pct(&collect(&cs, |c| ece(c, "base+head", false))),
                pct(&collect(&cs, |c| ece(c, "fine-tuned", false))),
                pct(&collect(&cs, |c| ece(c, "graft", false))),
                (eg / ef - 1.0) * 100.0,
                pct(&collect(&cs, |c| ece(c, "fine-tuned", true))),
                pct(&collect(&cs, |c| ece(c, "graft", true))),
            );
            panels.push((
                t.clone(),
                vec![
                    ReliabilitySeries {
                        name: "base+head".into(),
                        color: "#7f7f7f".into(),
                        bins: merged_bins(&cs, "base+head"),
                    },
                    ReliabilitySeries {
                        name: "fine-tuned".into(),
                        color: "#1f77b4".into(),
                        bins: merged_bins(&cs, "fine-tuned"),
                    },
                    ReliabilitySeries {
                        name: "graft".into(),
                        color: "#d62728".into(),
                        bins: merged_bins(&cs, "graft"),
                    },
                ],
            ));
        }
        plots.push((
            "reliability.svg".to_string(),
            svg::reliability(
                &format!(
                    "Reliability diagrams, test sets pooled over seeds ({} graft at {})",
                    am.name(),
                    sp(asp)
                ),
                &panels,
            ),
        ));
        let _ = writeln!(
            out,
            "\n![reliability diagrams]({plots_rel}/reliability.svg)\n"
        );
    }
}

/// Section 4: the analysed grafts out of distribution.
fn out_of_distribution(out: &mut String, cx: &Context) {
    let am = cx.am;
    let asp = cx.asp;
    if !cx.ood.is_empty() {
        let _ = writeln!(
            out,
            "## 4. Out of distribution ({} graft at {})\n",
            am.name(),
            sp(asp)
        );
        let _ = writeln!(out, "Models fitted on the source task, evaluated on the target task's test split (same labels).\n");
        let _ = writeln!(out, "| source → target | seeds | base+head | base patch | graft | fine-tuned | graft − fine-tuned | ECE fine-tuned | ECE graft |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for ((s, t), rows) in &cx.ood {
            let a = |n: &str| rows.iter().map(|o| ood_accuracy(o, n)).collect::<Vec<_>>();
            let e = |n: &str| {
                rows.iter()
                    .map(|o| {
                        o.variants
                            .iter()
                            .find(|v| v.name == n)
                            .map_or(f64::NAN, |v| v.test.ece)
                    })
                    .collect::<Vec<_>>()
            };
            let d: Vec<f64> = rows
                .iter()
                .map(|o| ood_accuracy(o, "graft") - ood_accuracy(o, "fine-tuned"))
                .collect();
            let _ = writeln!(
                out,
                "| {s} → {t} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rows.len(),
                pct(&a("base+head")),
                pct(&a("base patch")),
                pct(&a("graft")),
                pct(&a("fine-tuned")),
                pct(&d),
                pct(&e("fine-tuned")),
                pct(&e("graft")),
            );
        }
        let _ = writeln!(out);
    }
}

/// Section 5: overlap of the tasks' grafts, with the heatmaps.
fn overlap(out: &mut String, cx: &Context, plots: &mut Vec<(String, String)>) {
    let r = cx.r;
    let am = cx.am;
    let asp = cx.asp;
    let plots_rel = cx.plots_rel;
    if let Some(ov) = &r.analyses.overlap {
        let _ = writeln!(
            out,
            "## 5. Overlap of tasks' grafts ({} at {}, mean over seeds {:?})\n",
            am.name(),
            sp(asp),
            ov.seeds
        );
        let _ = writeln!(out, "Jaccard |A∩B|/|A∪B| (random masks of the same sizes in parentheses) and containment |A∩B|/min(|A|,|B|).\n");
        let n = ov.tasks.len();
        let _ = writeln!(
            out,
            "| | {} |\n|---|{}",
            ov.tasks.join(" | "),
            "---:|".repeat(n)
        );
        for i in 0..n {
            let cells: Vec<String> = (0..n)
                .map(|j| {
                    if i == j {
                        format!("({:.0} params)", ov.sizes[i])
                    } else {
                        format!(
                            "J {:.3} ({:.4}), C {:.3}",
                            ov.jaccard[i][j], ov.random_jaccard[i][j], ov.containment[i][j]
                        )
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", ov.tasks[i], cells.join(" | "));
        }
        let off = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| if i == j { f64::NAN } else { m[i][j] })
                        .collect()
                })
                .collect()
        };
        let jl: Vec<Vec<String>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if i == j {
                            "–".into()
                        } else {
                            format!(
                                "{:.3} (×{:.0})",
                                ov.jaccard[i][j],
                                ov.jaccard[i][j] / ov.random_jaccard[i][j].max(1e-12)
                            )
                        }
                    })
                    .collect()
            })
            .collect();
        let cl: Vec<Vec<String>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if i == j {
                            "–".into()
                        } else {
                            format!("{:.3}", ov.containment[i][j])
                        }
                    })
                    .collect()
            })
            .collect();
        let panels = vec![
            Heatmap {
                title: "Jaccard (× random)".into(),
                rows: ov.tasks.clone(),
                cols: ov.tasks.clone(),
                values: off(&ov.jaccard),
                labels: jl,
            },
            Heatmap {
                title: "Containment".into(),
                rows: ov.tasks.clone(),
                cols: ov.tasks.clone(),
                values: off(&ov.containment),
                labels: cl,
            },
        ];
        plots.push((
            "overlap.svg".to_string(),
            svg::heatmaps(
                &format!("Overlap of grafts ({} at {})", am.name(), sp(asp)),
                &panels,
                2,
            ),
        ));
        let _ = writeln!(out, "\n![overlap heatmap]({plots_rel}/overlap.svg)\n");
    }
}

/// Section 5, continued: where the grafts live, per layer and module type.
fn placement(out: &mut String, cx: &Context, plots: &mut Vec<(String, String)>) {
    let r = cx.r;
    let am = cx.am;
    let asp = cx.asp;
    let plots_rel = cx.plots_rel;
    if !r.analyses.placement.is_empty() {
        let _ = writeln!(out, "### Where the grafts live\n\nShare of each task's graft (%, pooled over seeds) per encoder layer and module type.\n");
        let panels: Vec<Heatmap> = r
            .analyses
            .placement
            .iter()
            .map(|p| Heatmap {
                title: p.task.clone(),
                rows: p.layers.clone(),
                cols: p.modules.clone(),
                values: p.share.clone(),
                labels: p
                    .share
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|v| {
                                if *v > 0.0 {
                                    format!("{:.1}", v * 100.0)
                                } else {
                                    String::new()
                                }
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        plots.push((
            "placement.svg".to_string(),
            svg::heatmaps(
                &format!(
                    "Where grafts live: % of the graft per layer × module ({} at {})",
                    am.name(),
                    sp(asp)
                ),
                &panels,
                2,
            ),
        ));
        let _ = writeln!(
            out,
            "![layer × module heatmaps]({plots_rel}/placement.svg)\n"
        );
    }
}

/// Section 6: composition against sequential fine-tuning.
fn composition(out: &mut String, cx: &Context) {
    let r = cx.r;
    let am = cx.am;
    let asp = cx.asp;
    if !r.analyses.composition.is_empty() {
        let _ = writeln!(
            out,
            "## 6. Composition and continual learning ({} grafts at {})\n",
            am.name(),
            sp(asp)
        );
        let _ = writeln!(out, "Pair a:b — graft a, graft b, then both composed (mean on shared coordinates); against fine-tuning a, then \
fine-tuning the result on b (task a keeps its own head). Test accuracy (%) of each task.\n");
        let _ = writeln!(out, "| pair | task | seeds | own graft | composed | Δ composed | fine-tuned | sequential fine-tuning | Δ sequential | shared coordinates |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut g: BTreeMap<(String, String), Vec<&super::CompositionRow>> = BTreeMap::new();
        for c in &r.analyses.composition {
            g.entry((c.pair.clone(), c.task.clone()))
                .or_default()
                .push(c);
        }
        for ((pair, task), rows) in &g {
            let v = |f: &dyn Fn(&super::CompositionRow) -> f64| {
                rows.iter().map(|c| f(c)).collect::<Vec<_>>()
            };
            let _ = writeln!(
                out,
                "| {pair} | {task} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                rows.len(),
                pct(&v(&|c| c.graft)),
                pct(&v(&|c| c.composed)),
                pct(&v(&|c| c.composed - c.graft)),
                pct(&v(&|c| c.finetuned)),
                pct(&v(&|c| c.sequential)),
                pct(&v(&|c| c.sequential - c.finetuned)),
                mean(&v(&|c| c.shared as f64)),
            );
        }
        let _ = writeln!(out);
    }
}

/// Appendix: every configuration other than the primary one.
fn appendix(out: &mut String, cx: &Context) {
    let r = cx.r;
    let others: Vec<&Cell> = r.cells.iter().filter(|c| !cx.is_primary(c)).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "## Appendix: other configurations\n");
        let _ = writeln!(out, "| task | K | head | optimizer | method | sparsity | seeds | base+head | base patch | graft | fine-tuned | retained | gap recovered | ECE fine-tuned | ECE graft |");
        let _ = writeln!(
            out,
            "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut groups: BTreeMap<ConfigKey, Vec<&Cell>> = BTreeMap::new();
        for c in &others {
            groups
                .entry((
                    c.task.clone(),
                    c.k,
                    head_name(c.head),
                    c.optimizer.clone(),
                    sp(c.sparsity),
                    c.method.name().to_string(),
                ))
                .or_default()
                .push(c);
        }
        for ((task, k, head, opt, s, method), cs) in &groups {
            let _ = writeln!(
                out,
                "| {task} | {k} | {head} | {opt} | {method} | {s} | {} | {} |",
                cs.len(),
                summary_cells(cs)
            );
        }
        let _ = writeln!(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graft::evaluate::VariantReport;
    use crate::graft::localize::Method;
    use crate::metrics::evaluate_probs;
    use crate::model::HeadKind;
    use crate::study::{AnalysisSpec, GridSpec, StudyConfig};

    /// A variant whose test accuracy is `acc` on 10 examples, with confidence 0.9 on every prediction.
    fn variant(name: &str, acc: f64) -> VariantReport {
        let right = (acc * 10.0).round() as usize;
        let labels = vec![0usize; 10];
        let probs: Vec<Vec<f64>> = (0..10)
            .map(|i| {
                if i < right {
                    vec![0.9, 0.1]
                } else {
                    vec![0.1, 0.9]
                }
            })
            .collect();
        let test = evaluate_probs(&probs, &labels, 10).unwrap();
        VariantReport {
            name: name.into(),
            size: 1,
            train_accuracy: 1.0,
            dev_accuracy: 1.0,
            test: test.clone(),
            temperature: 1.0,
            test_calibrated: test,
            calibration: None,
        }
    }

    fn cell(task: &str, seed: u64, method: Method, accs: [f64; 4]) -> Cell {
        Cell {
            task: task.into(),
            seed,
            k: 16,
            head: HeadKind::Prototype,
            optimizer: "sgd".into(),
            method,
            sparsity: 1e-4,
            graft_size: 100,
            variants: ["base+head", "base patch", "graft", "fine-tuned"]
                .iter()
                .zip(accs)
                .map(|(n, a)| variant(n, a))
                .collect(),
            seconds: 1.0,
        }
    }

    #[test]
    fn report_aggregates_seeds_and_states_claims_from_the_numbers() {
        let cells = vec![
            cell("sst2", 1, Method::Paper, [0.5, 0.7, 0.7, 0.9]),
            cell("sst2", 2, Method::Paper, [0.5, 0.6, 0.6, 0.7]),
            cell("sst2", 1, Method::Refit, [0.5, 0.7, 0.8, 0.9]),
            cell("sst2", 2, Method::Refit, [0.5, 0.6, 0.7, 0.7]),
        ];
        let results = StudyResults {
            base: "tiny".into(),
            config: StudyConfig {
                grids: vec![GridSpec {
                    tasks: vec!["sst2".into()],
                    seeds: vec![1, 2],
                    ks: vec![16],
                    heads: vec![HeadKind::Prototype],
                    optimizers: vec!["sgd".into()],
                    methods: vec![Method::Paper, Method::Refit],
                    sparsities: vec![1e-4],
                }],
                steps: 1,
                eval_every: 1,
                epochs: 1,
                max_test: None,
                analysis: AnalysisSpec {
                    method: Method::Paper,
                    sparsity: 1e-4,
                    ood: vec![],
                    pairs: vec![],
                },
                cache_dir: Default::default(),
                data_dir: Default::default(),
            },
            cells,
            analyses: Default::default(),
        };
        let (text, plots) = render(&results, "skillgraft study --x", "plots").unwrap();
        assert!(text.contains("skillgraft study --x"));
        // Paper: graft 0.7 / 0.6 → 65.0 ± 7.1; gap (0.2/0.4, 0.1/0.2) = 50% both; retained 0.7/0.9, 0.6/0.7.
        assert!(
            text.contains("| sst2 | paper | 1e-4 | 2 | 100 | 50.0 ± 0.0 | 65.0 ± 7.1 | 65.0 ± 7.1 | 80.0 ± 14.1 | 81.7 ± 5.6 | 50.0 ± 0.0 |"),
            "{text}"
        );
        // Refit: gaps 75% and 100%.
        assert!(
            text.contains("| sst2 | 1e-4 | 2 | 50.0 ± 0.0 | **87.5 ± 17.7** |"),
            "{text}"
        );
        assert!(
            text.contains("higher test accuracy in 2 of 2 runs, gap recovered +38 points"),
            "{text}"
        );
        // Retained 81.7% < 95%: the first claim does not hold here.
        assert!(
            text.contains("keeps > 95% of the fine-tuned accuracy* — **does not hold**"),
            "{text}"
        );
        // Confidence 0.9 everywhere: ECE = |0.9 − accuracy|, 10.0 fine-tuned vs 25.0 graft: worse, not better.
        assert!(
            text.contains("**does not hold** (paper graft at 1e-4)"),
            "{text}"
        );
        assert_eq!(plots.len(), 1, "a reliability diagram");
    }

    /// `docs/RESULTS.md` and `docs/plots/` are exactly what `render` makes of `docs/results.json` with the command
    /// line the report names, so the committed figures are the ones `skillgraft study` writes.
    #[test]
    fn the_committed_report_is_what_render_makes_of_the_committed_results() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let read = |name: &str| std::fs::read_to_string(docs.join(name)).unwrap();
        let results: StudyResults = serde_json::from_str(&read("results.json")).unwrap();
        let committed = read("RESULTS.md");
        let command = committed
            .split("```\n")
            .nth(1)
            .and_then(|block| block.lines().next())
            .expect("the report names its command");
        let (text, plots) = render(&results, command, "plots").unwrap();
        assert!(
            text == committed,
            "docs/RESULTS.md differs from what render writes"
        );
        assert_eq!(plots.len(), 3, "reliability, overlap and placement plots");
        for (name, svg) in plots {
            assert!(
                svg == read(&format!("plots/{name}")),
                "docs/plots/{name} differs"
            );
        }
    }
}
