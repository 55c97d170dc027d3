//! `skillgraft localize`: a fine-tuned checkpoint's graft, found by the budget search (the smallest graft
//! keeping `--retain` of the gain, with the retention curve) or at a fixed `--sparsity`; exits with status
//! [`NOT_LOCALIZED_EXIT`] and writes nothing when no graft within the ceiling keeps the target.

use super::args::{DataArgs, HeadArgs, ModelArgs, RegionArgs};
use super::evaluate;
use super::output::{print_json, Exit, Reporter};
use super::table::Table;
use crate::graft::budget::{Budget, Retention, Verdict};
use crate::graft::job::LocalizationJob;
use crate::graft::localize::{LocalizeOptions, Method};
use crate::model::export::load_finetuned_with;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct LocalizeArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The fine-tuned HF directory (from `finetune`, or transformers' save_pretrained).
    #[arg(long)]
    finetuned: PathBuf,
    /// Output graft file.
    #[arg(long)]
    out: PathBuf,
    /// Method.
    #[arg(long, value_enum, default_value = "paper")]
    method: Method,
    /// A fixed graft size as a fraction of the region, instead of the budget search (the retention target
    /// still decides the verdict).
    #[arg(long)]
    sparsity: Option<f64>,
    /// Keep at least this share of the fine-tuning gain on dev: the search returns the smallest graft on
    /// the ladder (1e-5 of the region in half decades up to --ceiling) that does.
    #[arg(long, default_value_t = crate::graft::budget::DEFAULT_RETAIN)]
    retain: f64,
    /// Largest graft the search tries, as a fraction of the region.
    #[arg(long, default_value_t = crate::graft::budget::DEFAULT_CEILING)]
    ceiling: f64,
    /// Write the best graft even when none keeps --retain (the verdict is printed; exit status 0).
    #[arg(long)]
    keep_anyway: bool,
    /// Step size of the `learned` method's mask logits, in units of the mean |gradient| per epoch.
    #[arg(long, default_value_t = 1.0)]
    learned_lr: f64,
    /// Mask-optimization epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mask learning rate η.
    #[arg(long, default_value_t = 1e7)]
    mask_lr: f64,
    /// Sigmoid bias β.
    #[arg(long, default_value_t = 10.0)]
    sigmoid_bias: f64,
    /// Relative L1 strength (method l1).
    #[arg(long, default_value_t = 0.1)]
    l1_lambda: f64,
    /// Adam learning rate of the re-fitted values (method refit).
    #[arg(long, default_value_t = 1e-3)]
    refit_lr: f64,
    /// Batch size for gradient accumulation.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Seed of the mask initialisation.
    #[arg(long, default_value_t = 0)]
    mask_seed: u64,
    /// Let the paper's method return more parameters than the budget (its rounded mask grows freely, as
    /// in the paper); by default the mask is projected onto the budget's top-k by inclusion probability.
    #[arg(long)]
    allow_growth: bool,
    #[command(flatten)]
    region: RegionArgs,
    /// ECE bins.
    #[arg(long, default_value_t = 10)]
    bins: usize,
    #[command(flatten)]
    head: HeadArgs,
    /// Temperature scaling: auto (applied when cross-validation on dev lowers held-out NLL), temperature
    /// (always), none.
    #[arg(long, value_enum, default_value = "auto")]
    calibration: crate::calibration::CalibrationPolicy,
}

pub(super) fn cmd_localize(a: LocalizeArgs) -> Result<()> {
    a.model.require_f32("localize")?;
    let base = a.model.load()?;
    let named = a.data.task.is_some() || a.data.task_spec.is_some();
    let hint = if named { Some(a.data.task()?) } else { None };
    let given = match (&hint, a.head.kind) {
        (Some(t), _) => a.head.spec(&base, t)?,
        (None, Some(_)) => bail!("--head needs the task (its labels and descriptions): name it with --task or --task-spec"),
        (None, None) => None,
    };
    let ft = load_finetuned_with(
        &a.finetuned,
        &base.model,
        hint.as_ref(),
        &base.tokenizer,
        &base.device,
        given.as_ref(),
    )?;
    let task = match hint {
        Some(t) => t,
        None => ft
            .task
            .clone()
            .context("the checkpoint does not say its task: name it with --task or --task-spec")?,
    };
    let split = a.data.split(&task)?;
    let options = LocalizeOptions {
        method: a.method,
        sparsity: a.sparsity.unwrap_or(1e-4),
        epochs: a.epochs,
        lr: a.mask_lr,
        sigmoid_bias: a.sigmoid_bias,
        l1_lambda: a.l1_lambda,
        refit_lr: a.refit_lr,
        learned_lr: a.learned_lr,
        batch_size: a.batch_size,
        seed: a.mask_seed,
        region: a.region.spec(),
        allow_growth: a.allow_growth,
        calibration: a.calibration,
    };
    let job = LocalizationJob {
        base: &base,
        finetuned: &ft,
        task,
        split,
        options,
        bins: a.bins,
        budget: Some(Budget {
            retain: a.retain,
            ceiling: a.ceiling,
            search: a.sparsity.is_none(),
        }),
        cancel: None,
    };
    let mut rep = Reporter::new();
    let out = job.run(&mut |p| rep.handle(p))?;
    let retention = out
        .retention
        .as_ref()
        .context("internal: a job with a budget returned no retention curve")?;
    let kept = retention.verdict != Verdict::NotLocalized;
    if kept || a.keep_anyway {
        out.graft.save(&a.out)?;
    }
    let m = &out.graft.manifest;
    if a.model.json {
        print_json(&serde_json::json!({
            "out": a.out, "size": m.size, "region_size": m.region_size,
            "region_fraction": m.region_fraction(), "model_fraction": m.model_fraction(),
            "method": m.method, "best_epoch": out.localization.best_epoch,
            "variants": out.variants, "history": out.localization.history, "timings": out.timings,
            "retention": retention, "verdict": retention.verdict, "written": kept || a.keep_anyway,
            "budget": out.localization.base_patch.len(),
        }))?;
    } else {
        println!("{}", curve_table(retention));
        println!("{}", retention.summary);
        for tip in &retention.advice {
            println!("  - {tip}");
        }
        println!(
            "graft: {} parameters = {:.3e} of the region ({}), {:.3e} of the model; method {}, best epoch {}",
            m.size,
            m.region_fraction(),
            m.region_size,
            m.model_fraction(),
            m.method,
            out.localization.best_epoch
        );
        println!("{}", evaluate::variants_table(&out.variants, a.bins));
        evaluate::print_calibration(&out.variants);
        println!(
            "times: setup {:.2}s, localization {:.2}s, evaluation {:.2}s; {}",
            out.timings.setup_seconds,
            out.timings.localize_seconds,
            out.timings.evaluate_seconds,
            if kept || a.keep_anyway {
                format!("written to {}", a.out.display())
            } else {
                "nothing written".to_string()
            }
        );
    }
    if !kept && !a.keep_anyway {
        return Err(Exit {
            code: NOT_LOCALIZED_EXIT,
            message: format!(
                "{} (nothing written; --keep-anyway writes the best graft)",
                retention.summary
            ),
        }
        .into());
    }
    Ok(())
}

/// Exit status of `localize` when no graft within the ceiling keeps the target.
pub const NOT_LOCALIZED_EXIT: i32 = 3;

/// The retention curve as a table.
pub(super) fn curve_table(r: &Retention) -> Table {
    let mut t = Table::new(&[
        "method",
        "rung",
        "params",
        "of model",
        "dev acc",
        "kept (dev)",
        "test acc",
        "kept (test)",
        "test ECE",
        "",
    ]);
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    for (i, p) in r.points.iter().enumerate() {
        t.row(vec![
            p.method.clone(),
            format!("{:.0e}", p.sparsity),
            p.size.to_string(),
            format!("{:.2e}", p.model_fraction),
            format!("{:.4}", p.dev_accuracy),
            pct(p.retained),
            format!("{:.4}", p.test_accuracy),
            pct(p.test_retained),
            format!("{:.4}", p.test_ece),
            if i == r.chosen {
                "<- graft".into()
            } else {
                String::new()
            },
        ]);
    }
    t.row(vec![
        "base+head".into(),
        String::new(),
        "0".into(),
        String::new(),
        format!("{:.4}", r.base.dev_accuracy),
        String::new(),
        format!("{:.4}", r.base.test_accuracy),
    ]);
    t.row(vec![
        "fine-tuned".into(),
        String::new(),
        "all".into(),
        String::new(),
        format!("{:.4}", r.finetuned.dev_accuracy),
        String::new(),
        format!("{:.4}", r.finetuned.test_accuracy),
    ]);
    t
}
