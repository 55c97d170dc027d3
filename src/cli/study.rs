//! `skillgraft study`: the reproduction study's command line.

use super::args::ModelArgs;
use super::output::print_json;
use crate::data;
use crate::graft::localize::Method;
use crate::model::HeadKind;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Options of `skillgraft study` (lists are comma-separated).
#[derive(Args, Debug)]
pub(super) struct StudyArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Tasks.
    #[arg(long, value_delimiter = ',', default_value = "sst2,mr,cr,subj")]
    tasks: Vec<String>,
    /// Few-shot seeds.
    #[arg(long, value_delimiter = ',', default_value = "13,21,42")]
    seeds: Vec<u64>,
    /// Examples per class.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    ks: Vec<usize>,
    /// Head protocols.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "prototype")]
    heads: Vec<HeadKind>,
    /// Fine-tuning optimizers: sgd, adamw, adamw-l1.
    #[arg(long, value_delimiter = ',', default_value = "sgd")]
    optimizers: Vec<String>,
    /// Localization methods.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "magnitude,paper,l1,saliency,refit"
    )]
    methods: Vec<Method>,
    /// Graft budgets.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,1e-3")]
    sparsities: Vec<f64>,
    /// Fine-tuning steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Dev evaluation interval.
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Mask-optimization epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Test-set cap per task.
    #[arg(long)]
    max_test: Option<usize>,
    /// Cache of fine-tunes and finished cells (a rerun continues from it).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Data sets.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Method of the grafts the analyses use (calibration, out of distribution, overlap, composition).
    #[arg(long, value_enum, default_value = "paper")]
    analysis_method: Method,
    /// Budget of the analysed grafts.
    #[arg(long, default_value_t = 1e-4)]
    analysis_sparsity: f64,
    /// Out-of-distribution pairs source:target (comma-separated; "" for none).
    #[arg(long, value_delimiter = ',', default_value = "sst2:mr,sst2:cr")]
    ood: Vec<String>,
    /// Composition pairs a:b (comma-separated; "" for none).
    #[arg(long, value_delimiter = ',', default_value = "sst2:subj,mr:cr")]
    pairs: Vec<String>,
    /// A JSON study configuration (several grids, analyses); replaces the grid and analysis flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the report from what the cache already holds; train and localize nothing.
    #[arg(long)]
    cached_only: bool,
    /// The Markdown report (plots go to `plots/` beside it).
    #[arg(long, default_value = "docs/RESULTS.md")]
    report: PathBuf,
    /// All cells as JSON.
    #[arg(long, default_value = "docs/results.json")]
    results_json: PathBuf,
}

pub(super) fn cmd_study(a: StudyArgs) -> Result<()> {
    a.model.require_f32("study")?;
    let base = a.model.load()?;
    let nonempty = |v: Vec<String>| v.into_iter().filter(|s| !s.trim().is_empty()).collect();
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<crate::study::StudyConfig>(&text)
                .with_context(|| format!("{} is not a valid study configuration", path.display()))?
        }
        None => crate::study::StudyConfig {
            grids: vec![crate::study::GridSpec {
                tasks: a.tasks,
                seeds: a.seeds,
                ks: a.ks,
                heads: a.heads,
                optimizers: a.optimizers,
                methods: a.methods,
                sparsities: a.sparsities,
            }],
            steps: a.steps,
            eval_every: a.eval_every,
            epochs: a.epochs,
            max_test: a.max_test,
            analysis: crate::study::AnalysisSpec {
                method: a.analysis_method,
                sparsity: a.analysis_sparsity,
                ood: nonempty(a.ood),
                pairs: nonempty(a.pairs),
            },
            cache_dir: PathBuf::new(),
            data_dir: PathBuf::new(),
        },
    };
    cfg.cache_dir = a
        .cache_dir
        .unwrap_or_else(|| crate::home_dir().join("study"));
    cfg.data_dir = a.data_dir.unwrap_or_else(data::data_dir_default);
    let command = std::iter::once("skillgraft".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let results = crate::study::run(&base, &cfg, a.cached_only)?;
    crate::study::write(&results, &command, &a.report, &a.results_json)?;
    if a.model.json {
        print_json(
            &serde_json::json!({"cells": results.cells.len(), "report": a.report, "results": a.results_json}),
        )
    } else {
        println!(
            "{} cells; report written to {}",
            results.cells.len(),
            a.report.display()
        );
        Ok(())
    }
}
