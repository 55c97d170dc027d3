//! `overlap`, `compose`, `export` and `info`: commands over graft files.

use super::args::ModelArgs;
use super::evaluate::{grafted_body, load_checked_graft};
use super::output::print_json;
use super::table::Table;
use crate::data;
use crate::graft::overlap::{compose, overlap, ConflictRule};
use crate::graft::{unix_now, FlatRegion, Graft, RegionSpec};
use crate::model::export::write_hf_dir;
use crate::model::BaseModel;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct OverlapArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Graft files.
    #[arg(required = true, num_args = 1..)]
    grafts: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct ComposeArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Graft files (order matters for last-wins).
    #[arg(required = true, num_args = 1..)]
    grafts: Vec<PathBuf>,
    /// Rule for coordinates several grafts set.
    #[arg(long, value_enum, default_value = "mean")]
    rule: ConflictRule,
    /// Output graft file (body union; head of the first graft).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the data sets (to measure each task's accuracy).
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Few-shot seed of the evaluation split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cap each task's test set.
    #[arg(long)]
    max_test: Option<usize>,
}

#[derive(Args, Debug)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// The graft file.
    #[arg(long)]
    graft: PathBuf,
    /// Output HF directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub(super) struct InfoArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// A graft file to describe instead of the model.
    #[arg(long)]
    graft: Option<PathBuf>,
}

fn load_grafts(paths: &[PathBuf], base: &BaseModel) -> Result<(Vec<String>, Vec<Graft>)> {
    let mut names = Vec::new();
    let mut grafts = Vec::new();
    for p in paths {
        let g = load_checked_graft(p, base)?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        names.push(
            g.manifest
                .task
                .as_ref()
                .map(|t| format!("{}:{stem}", t.name))
                .unwrap_or(stem),
        );
        grafts.push(g);
    }
    let r0 = &grafts[0].manifest.region;
    if grafts.iter().any(|g| &g.manifest.region != r0) {
        bail!("the grafts were localized over different regions; overlap needs one region");
    }
    Ok((names, grafts))
}

fn matrix_table(title: &str, names: &[String], m: &[Vec<String>]) -> Table {
    let mut header = vec![title.to_string()];
    header.extend(names.iter().cloned());
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&refs);
    for (n, row) in names.iter().zip(m) {
        let mut r = vec![n.clone()];
        r.extend(row.iter().cloned());
        t.row(r);
    }
    t
}

pub(super) fn cmd_overlap(a: OverlapArgs) -> Result<()> {
    let base = a.model.load()?;
    let (names, grafts) = load_grafts(&a.grafts, &base)?;
    let region = FlatRegion::new(&grafts[0].manifest.region, &base.model.weights.tensors)?;
    let rep = overlap(&names, &grafts, &region)?;
    if a.model.json {
        return print_json(&serde_json::to_value(&rep)?);
    }
    let fmt_u = |m: &Vec<Vec<usize>>| {
        m.iter()
            .map(|r| r.iter().map(|v| v.to_string()).collect())
            .collect::<Vec<Vec<String>>>()
    };
    let fmt_f = |m: &Vec<Vec<f64>>| {
        m.iter()
            .map(|r| r.iter().map(|v| format!("{v:.4}")).collect())
            .collect::<Vec<Vec<String>>>()
    };
    println!(
        "{}",
        matrix_table("|A∩B|", &names, &fmt_u(&rep.intersection))
    );
    println!("{}", matrix_table("Jaccard", &names, &fmt_f(&rep.jaccard)));
    println!(
        "{}",
        matrix_table("random Jaccard", &names, &fmt_f(&rep.random_jaccard))
    );
    println!(
        "{}",
        matrix_table("containment", &names, &fmt_f(&rep.containment))
    );
    let mut layers: Vec<String> = rep
        .breakdown
        .iter()
        .flat_map(|b| b.by_layer.keys().cloned())
        .collect();
    layers.sort();
    layers.dedup();
    let mut modules: Vec<String> = rep
        .breakdown
        .iter()
        .flat_map(|b| b.by_module.keys().cloned())
        .collect();
    modules.sort();
    modules.dedup();
    for (title, keys, get) in [
        (
            "by layer",
            &layers,
            (|b: &crate::graft::overlap::Breakdown, k: &str| b.by_layer.get(k).copied())
                as fn(&_, &str) -> Option<usize>,
        ),
        ("by module", &modules, |b, k| b.by_module.get(k).copied()),
    ] {
        let mut header = vec![title.to_string()];
        header.extend(keys.iter().cloned());
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&refs);
        for (n, b) in names.iter().zip(&rep.breakdown) {
            let mut row = vec![n.clone()];
            row.extend(keys.iter().map(|k| get(b, k).unwrap_or(0).to_string()));
            t.row(row);
        }
        println!("{t}");
    }
    Ok(())
}

pub(super) fn cmd_compose(a: ComposeArgs) -> Result<()> {
    a.model.require_f32("compose")?;
    let base = a.model.load()?;
    let (names, grafts) = load_grafts(&a.grafts, &base)?;
    let region = FlatRegion::new(&grafts[0].manifest.region, &base.model.weights.tensors)?;
    let entries = compose(&grafts, &region, a.rule)?;
    let mut composed = grafts[0].clone();
    composed.entries = entries;
    composed.manifest.size = composed.size();
    composed.manifest.method = format!("compose({:?})", a.rule).to_lowercase();
    composed.manifest.hyper_parameters =
        serde_json::from_value(serde_json::json!({"members": names, "rule": a.rule}))?;
    composed.manifest.metrics = serde_json::from_value(serde_json::json!({}))?;
    composed.manifest.created_unix = unix_now();
    let data_dir = a.data_dir.clone().unwrap_or_else(data::data_dir_default);
    let mut rows = Vec::new();
    for (name, g) in names.iter().zip(&grafts) {
        let Some(task) = &g.manifest.task else {
            rows.push(
                serde_json::json!({"task": name, "note": "graft has no task spec; not evaluated"}),
            );
            continue;
        };
        let split = data::task_split(task, &data_dir, 16, a.seed, a.max_test)?;
        let labels: Vec<usize> = split.test.iter().map(|e| e.label).collect();
        let inst_tensors = {
            let mut t = base.model.weights.deep_clone()?.tensors;
            t.extend(g.head_tensors(&base.device)?);
            t
        };
        let inst = crate::train::TaskInstance::new(
            inst_tensors,
            base.inputs(g.manifest.head.clone()),
            |_| false,
        )?;
        let alone = {
            let applied = g.apply(&inst.tensors)?;
            let acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
            applied.revert()?;
            acc
        };
        let under = {
            let applied = composed.apply(&inst.tensors)?;
            let acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
            applied.revert()?;
            acc
        };
        let base_acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
        rows.push(serde_json::json!({"task": name, "base_head": base_acc, "alone": alone, "composed": under,
            "test_examples": split.test.len()}));
    }
    if let Some(out) = &a.out {
        composed.manifest.metrics = serde_json::from_value(serde_json::json!({"members": rows}))?;
        composed.save(out)?;
    }
    if a.model.json {
        return print_json(
            &serde_json::json!({"size": composed.size(), "rule": a.rule, "tasks": rows, "out": a.out}),
        );
    }
    println!(
        "composed graft: {} parameters from {} grafts (rule {:?})",
        composed.size(),
        grafts.len(),
        a.rule
    );
    let mut t = Table::new(&["task", "base+head", "graft alone", "under composition"]);
    for r in &rows {
        let f = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_f64())
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        };
        t.row(vec![
            r["task"].as_str().unwrap_or("?").to_string(),
            f("base_head"),
            f("alone"),
            f("composed"),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub(super) fn cmd_export(a: ExportArgs) -> Result<()> {
    let base = a.model.load()?;
    let graft = load_checked_graft(&a.graft, &base)?;
    let mut tensors = grafted_body(&base, &graft)?;
    tensors.extend(graft.head_tensors(&base.device)?);
    write_hf_dir(
        &a.out,
        &base.model,
        &tensors,
        &graft.manifest.head,
        graft.manifest.task.as_ref(),
        a.force,
    )?;
    if a.model.json {
        print_json(&serde_json::json!({"out": a.out, "size": graft.size()}))
    } else {
        println!(
            "base + graft ({} parameters) written to {}",
            graft.size(),
            a.out.display()
        );
        Ok(())
    }
}

pub(super) fn cmd_info(a: InfoArgs) -> Result<()> {
    if let Some(p) = &a.graft {
        let g = Graft::load(p)?;
        let v = serde_json::json!({"manifest": g.manifest, "tensors": g.entries.len(), "size": g.size(),
            "head_tensors": g.head.keys().collect::<Vec<_>>()});
        return print_json(&v);
    }
    let base = a.model.load()?;
    let cfg = &base.model.config;
    let v = serde_json::json!({
        "name": base.name, "dir": base.model.files.dir, "architecture": cfg.model_type,
        "content_hash": base.model.weights.content_hash,
        "parameters": base.model.body_parameter_count(),
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
        "tensors": base.model.weights.tensors.len(),
        "region_parameters": FlatRegion::new(&RegionSpec::default(), &base.model.weights.tensors)?.len(),
    });
    if a.model.json {
        print_json(&v)
    } else {
        for (k, val) in v.as_object().into_iter().flatten() {
            println!("{k:>18}: {val}");
        }
        Ok(())
    }
}
