//! `skillgraft evaluate`: a graft side by side with base + head (and the base patch and the fine-tuned model
//! when given the checkpoint), in and out of distribution.

use super::args::{DataArgs, HeadArgs, ModelArgs};
use super::output::print_json;
use super::table::Table;
use crate::data;
use crate::graft::evaluate::{evaluate_variants, Variant};
use crate::graft::graftable::GraftableModel;
use crate::graft::Graft;
use crate::model::export::load_finetuned_with;
use crate::model::BaseModel;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct EvaluateArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The graft file.
    #[arg(long)]
    graft: PathBuf,
    /// The fine-tuned checkpoint, to add the base patch and fine-tuned rows.
    #[arg(long)]
    finetuned: Option<PathBuf>,
    /// Evaluate on another task with the same labels (out of distribution): a built-in task (mr, cr) or a
    /// task spec file.
    #[arg(long)]
    eval_task: Vec<String>,
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

pub(super) fn variants_table(rows: &[crate::graft::evaluate::VariantReport], bins: usize) -> Table {
    let mut t = Table::new(&[
        "model",
        "params",
        "train acc",
        "dev acc",
        "test acc",
        "macro-F1",
        &format!("ECE({bins})"),
        "NLL",
        "Brier",
        "T",
        "ECE@T",
    ]);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            r.size.to_string(),
            format!("{:.4}", r.train_accuracy),
            format!("{:.4}", r.dev_accuracy),
            format!("{:.4}", r.test.accuracy),
            format!("{:.4}", r.test.macro_f1),
            format!("{:.4}", r.test.ece),
            format!("{:.4}", r.test.nll),
            format!("{:.4}", r.test.brier),
            format!("{:.3}", r.temperature),
            format!("{:.4}", r.test_calibrated.ece),
        ]);
    }
    t
}

/// Reads a graft file and checks that it belongs to `base`.
pub(super) fn load_checked_graft(path: &std::path::Path, base: &BaseModel) -> Result<Graft> {
    let g = Graft::load(path)?;
    g.check_base(
        &base.model.weights.tensors,
        &base.model.weights.content_hash,
    )
    .with_context(|| format!("{}", path.display()))?;
    Ok(g)
}

/// Base weights with a graft applied (a detached copy), for use as a "fine-tuned" body.
pub(super) fn grafted_body(
    base: &BaseModel,
    graft: &Graft,
) -> Result<BTreeMap<String, candle_core::Tensor>> {
    let copy = base.model.weights.deep_clone()?.tensors;
    let applied = graft.apply(&copy)?;
    drop(applied);
    Ok(copy)
}

pub(super) fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    a.model.require_f32(
        "evaluate (use `skillgraft predict --dtype` for reduced-precision inference)",
    )?;
    let base = a.model.load()?;
    let graft = load_checked_graft(&a.graft, &base)?;
    let task = match (&a.data.task, &a.data.task_spec, &graft.manifest.task) {
        (None, None, Some(t)) => t.clone(),
        _ => a.data.task()?,
    };
    let split = a.data.split(&task)?;
    let head = graft.manifest.head.clone();
    let head_tensors = graft.head_tensors(&base.device)?;
    let ft_body = match &a.finetuned {
        Some(dir) => {
            let given = a.head.spec(&base, &task)?;
            load_finetuned_with(
                dir,
                &base.model,
                Some(&task),
                &base.tokenizer,
                &base.device,
                given.as_ref(),
            )?
            .model
            .weights
            .tensors
        }
        None => grafted_body(&base, &graft)?,
    };
    let model = GraftableModel::new(
        &base.model,
        &ft_body,
        head_tensors,
        base.inputs(head),
        &graft.manifest.region,
    )?;
    // The graft with its own values (a `refit` graft's differ from the checkpoint's), and the base patch
    // at the budget the graft was localized at.
    let (mask, values) = graft.flat_point(&model.region)?;
    let budget = graft.budget();
    let abs: Vec<f32> = model.delta.iter().map(|d| d.abs()).collect();
    let base_patch = crate::graft::graftable::top_k(&abs, budget);
    let mut variants = vec![("base+head".to_string(), Variant::Mask(&[]))];
    if a.finetuned.is_some() {
        variants.push(("base patch".to_string(), Variant::Mask(&base_patch)));
    }
    variants.push(("graft".to_string(), Variant::Values(&mask, &values)));
    if a.finetuned.is_some() {
        variants.push(("fine-tuned".to_string(), Variant::Finetuned));
    }
    let mut results = serde_json::Map::new();
    let policy = a.calibration;
    let in_dist = evaluate_variants(&model, &split, &split.test, &variants, a.bins, policy)?;
    if !a.model.json {
        println!(
            "{} (in distribution, {} test examples)",
            task.name,
            split.test.len()
        );
        println!("{}", variants_table(&in_dist, a.bins));
        print_calibration(&in_dist);
    }
    results.insert(task.name.clone(), serde_json::to_value(&in_dist)?);
    for other in &a.eval_task {
        let ot = eval_task(other)?;
        if ot.labels.len() != task.labels.len() {
            bail!(
                "task `{other}` has {} labels, `{}` has {}",
                ot.labels.len(),
                task.name,
                task.labels.len()
            );
        }
        let osplit = a.data.split(&ot)?;
        let r = evaluate_variants(&model, &split, &osplit.test, &variants, a.bins, policy)?;
        if !a.model.json {
            println!(
                "{} → {} (out of distribution, {} examples)",
                task.name,
                ot.name,
                osplit.test.len()
            );
            println!("{}", variants_table(&r, a.bins));
        }
        results.insert(ot.name.clone(), serde_json::to_value(&r)?);
    }
    if a.model.json {
        print_json(&serde_json::json!({"bins": a.bins, "budget": budget, "results": results}))?;
    }
    Ok(())
}

/// A built-in task by name, or a task spec file.
fn eval_task(name: &str) -> Result<data::TaskSpec> {
    let path = std::path::Path::new(name);
    if path.extension().is_some_and(|e| e == "json") {
        return data::TaskSpec::from_json_file(path);
    }
    data::builtin_task(name).with_context(|| {
        format!(
            "unknown task `{name}` (built-in: {}; or a task spec file ending in .json)",
            data::builtin_task_names().join(", ")
        )
    })
}

/// One line per variant: the calibration decision and its reason.
pub(super) fn print_calibration(rows: &[crate::graft::evaluate::VariantReport]) {
    for r in rows {
        if let Some(c) = &r.calibration {
            println!("calibration of {}: {}", r.name, c.reason);
        }
    }
}
