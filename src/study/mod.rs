//! Reproduction studies: grids of fine-tunes and localizations, then the analyses the paper's claims rest on
//! (calibration, out-of-distribution transfer, overlap and placement of grafts, composition against
//! sequential fine-tuning), written as a Markdown report with SVG plots.
//!
//! Everything is resumable: each fine-tune is cached as an HF directory, each cell as a JSON file beside its
//! graft file, each analysis result as a JSON file, all under the cache directory.

mod analysis;
mod report;
pub mod svg;

pub use analysis::{Analyses, CompositionRow, OodRow, OverlapSummary, Placement};

use crate::data::{self, FewShotOptions, FewShotSplit, TaskData, TaskSpec};
use crate::graft::evaluate::VariantReport;
use crate::graft::job::LocalizationJob;
use crate::graft::localize::{LocalizeOptions, Method};
use crate::model::export::{load_finetuned, write_hf_dir, FinetunedModel};
use crate::model::{BaseModel, HeadKind, HeadSpec, Pooling};
use crate::store::atomic_write;
use crate::train::optim::OptimizerConfig;
use crate::train::{finetune, FinetuneOptions, TrainScope};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::cell::Cell as Counter;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One grid: every combination of its lists is a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSpec {
    /// Built-in tasks.
    pub tasks: Vec<String>,
    /// Few-shot seeds.
    pub seeds: Vec<u64>,
    /// Examples per class.
    pub ks: Vec<usize>,
    /// Head protocols.
    pub heads: Vec<HeadKind>,
    /// Fine-tuning optimizers: `sgd`, `adamw`, `adamw-l1`.
    pub optimizers: Vec<String>,
    /// Localization methods.
    pub methods: Vec<Method>,
    /// Graft budgets.
    pub sparsities: Vec<f64>,
}

impl GridSpec {
    fn cells(&self) -> usize {
        self.tasks.len()
            * self.seeds.len()
            * self.ks.len()
            * self.heads.len()
            * self.optimizers.len()
            * self.methods.len()
            * self.sparsities.len()
    }
}

/// Which grafts the analyses use: the first grid's first K, head and optimizer, at this method and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSpec {
    /// Localization method of the analysed grafts.
    pub method: Method,
    /// Their budget.
    pub sparsity: f64,
    /// Out-of-distribution pairs `source:target` (same label set): fit on source, evaluate on target.
    pub ood: Vec<String>,
    /// Composition pairs `a:b`: graft a, then b, then both; sequential fine-tuning a then b.
    pub pairs: Vec<String>,
}

/// The whole study.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyConfig {
    /// Grids (their cells are the main and methods tables).
    pub grids: Vec<GridSpec>,
    /// Fine-tuning steps.
    pub steps: usize,
    /// Dev evaluation interval.
    pub eval_every: usize,
    /// Mask-optimization (and refit) epochs.
    pub epochs: usize,
    /// Test-set cap per task (None = full).
    pub max_test: Option<usize>,
    /// The analyses.
    pub analysis: AnalysisSpec,
    /// Where fine-tunes, cells and analyses are cached.
    #[serde(skip)]
    pub cache_dir: PathBuf,
    /// Data sets.
    #[serde(skip)]
    pub data_dir: PathBuf,
}

/// One finished cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Task.
    pub task: String,
    /// Seed.
    pub seed: u64,
    /// K.
    pub k: usize,
    /// Head.
    pub head: HeadKind,
    /// Optimizer.
    pub optimizer: String,
    /// Method.
    pub method: Method,
    /// Sparsity.
    pub sparsity: f64,
    /// Graft size.
    pub graft_size: usize,
    /// base+head, base patch, graft, fine-tuned on the test split.
    pub variants: Vec<VariantReport>,
    /// Localization wall time.
    pub seconds: f64,
}

impl Cell {
    /// Test accuracy of a variant (NaN when absent).
    pub fn accuracy(&self, variant: &str) -> f64 {
        self.variant(variant).map_or(f64::NAN, |v| v.test.accuracy)
    }

    /// A variant's report.
    pub fn variant(&self, name: &str) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.name == name)
    }
}

/// Everything a study produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyResults {
    /// The base model (name and size).
    pub base: String,
    /// The configuration.
    pub config: StudyConfig,
    /// Every cell of every grid.
    pub cells: Vec<Cell>,
    /// Analyses.
    pub analyses: Analyses,
}

/// A fine-tuned model of the study: task, K, seed, head protocol, optimizer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FinetuneId {
    pub task: String,
    pub k: usize,
    pub seed: u64,
    pub head: HeadKind,
    pub optimizer: String,
}

fn optimizer(name: &str) -> Result<(OptimizerConfig, Option<f64>)> {
    let adamw = |lr| OptimizerConfig::AdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    Ok(match name {
        "sgd" => (
            OptimizerConfig::Sgd {
                lr: 3e-2,
                momentum: 0.0,
                weight_decay: 1e-4,
            },
            None,
        ),
        "adamw" => (adamw(1e-5), None),
        "adamw-l1" => (adamw(1e-5), Some(1e-3)),
        other => bail!("unknown optimizer `{other}` (sgd, adamw, adamw-l1)"),
    })
}

/// Lower-case name of a head protocol.
pub fn head_name(h: HeadKind) -> String {
    serde_json::to_value(h)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Splits `a:b` into its two names.
pub fn parse_pair(s: &str) -> Result<(String, String)> {
    match s.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => {
            Ok((a.to_string(), b.to_string()))
        }
        _ => bail!("`{s}` is not a pair `a:b` of two different tasks"),
    }
}

/// A running study: the base, the configuration, the loaded data sets and the caches.
pub struct Study<'a> {
    base: &'a BaseModel,
    cfg: &'a StudyConfig,
    data: BTreeMap<String, (TaskSpec, TaskData)>,
    finetune_seconds: Counter<f64>,
    finetunes: Counter<usize>,
    /// Report only what the cache holds: train and localize nothing.
    pub cached_only: bool,
}

/// The error of a cache miss in `cached_only` mode.
#[derive(Debug, thiserror::Error)]
#[error("not in the cache: {0}")]
pub struct NotCached(pub String);

impl<'a> Study<'a> {
    /// Loads every data set the study names (grids, OOD targets, pairs); fails early on unknown tasks.
    pub fn new(base: &'a BaseModel, cfg: &'a StudyConfig) -> Result<Self> {
        if cfg.grids.is_empty() {
            bail!("the study has no grid");
        }
        let mut names: Vec<String> = cfg.grids.iter().flat_map(|g| g.tasks.clone()).collect();
        for p in cfg.analysis.ood.iter().chain(&cfg.analysis.pairs) {
            let (a, b) = parse_pair(p)?;
            names.extend([a, b]);
        }
        let mut data = BTreeMap::new();
        for name in names {
            if data.contains_key(&name) {
                continue;
            }
            let spec = data::builtin_task(&name).with_context(|| {
                format!(
                    "unknown task `{name}` (built-in: {})",
                    data::builtin_task_names().join(", ")
                )
            })?;
            let examples = data::load_examples(&spec, &cfg.data_dir)?;
            data.insert(name, (spec, examples));
        }
        Ok(Self {
            base,
            cfg,
            data,
            finetune_seconds: Counter::new(0.0),
            finetunes: Counter::new(0),
            cached_only: false,
        })
    }

    fn task(&self, name: &str) -> Result<&(TaskSpec, TaskData)> {
        self.data
            .get(name)
            .with_context(|| format!("internal: task `{name}` was not loaded"))
    }

    /// The few-shot split of a task (test capped at `max_test`).
    pub(crate) fn split(&self, task: &str, k: usize, seed: u64) -> Result<FewShotSplit> {
        let (spec, all) = self.task(task)?;
        data::few_shot(
            all,
            spec.labels.len(),
            &FewShotOptions {
                max_test: self.cfg.max_test,
                ..FewShotOptions::new(k, seed)
            },
        )
    }

    fn ft_key(&self, id: &FinetuneId) -> String {
        format!(
            "{}-k{}-s{}-{}-{}-{}steps",
            id.task,
            id.k,
            id.seed,
            head_name(id.head),
            id.optimizer,
            self.cfg.steps
        )
    }

    fn head_spec(&self, id: &FinetuneId) -> Result<HeadSpec> {
        let (spec, _) = self.task(&id.task)?;
        self.base.head_spec(id.head, spec, 0.05, Pooling::Cls)
    }

    /// Fine-tunes `id`'s task from `start` (the base when None) unless `dir` already holds the result.
    fn train_into(
        &self,
        dir: &Path,
        label: &str,
        id: &FinetuneId,
        start: Option<BTreeMap<String, Tensor>>,
    ) -> Result<()> {
        if dir.join("model.safetensors").is_file() {
            return Ok(());
        }
        if self.cached_only {
            return Err(NotCached(label.to_string()).into());
        }
        let t0 = Instant::now();
        eprintln!("[study] fine-tune {label}");
        let (task, _) = self.task(&id.task)?;
        let spec = self.head_spec(id)?;
        let split = self.split(&id.task, id.k, id.seed)?;
        let (opt, l1) = optimizer(&id.optimizer)?;
        let mut tensors = match start {
            Some(t) => t,
            None => self.base.model.weights.deep_clone()?.tensors,
        };
        tensors.extend(self.base.init_head(&spec, id.seed)?);
        let scope = match spec {
            HeadSpec::Prototype { .. } | HeadSpec::Prompt { .. } => TrainScope::Body,
            _ => TrainScope::ProbeThenBody,
        };
        let opts = FinetuneOptions {
            optimizer: opt,
            steps: self.cfg.steps,
            probe_steps: self.cfg.steps / 2,
            batch_size: 4,
            eval_every: self.cfg.eval_every,
            clip: Some(1.0),
            l1,
            scope,
            train_embeddings: false,
            seed: id.seed,
        };
        let (tensors, _) = finetune(
            tensors,
            &self.base.inputs(spec.clone()),
            &split,
            &opts,
            &mut |_| {},
        )?;
        write_hf_dir(dir, &self.base.model, &tensors, &spec, Some(task), true)?;
        let s = t0.elapsed().as_secs_f64();
        self.finetune_seconds.set(self.finetune_seconds.get() + s);
        self.finetunes.set(self.finetunes.get() + 1);
        eprintln!("[study]   {s:.0}s");
        Ok(())
    }

    /// The fine-tuned directory of `id` (trained on first use).
    pub(crate) fn finetuned_dir(&self, id: &FinetuneId) -> Result<PathBuf> {
        let key = self.ft_key(id);
        let dir = self.cfg.cache_dir.join("finetuned").join(&key);
        self.train_into(&dir, &key, id, None)?;
        Ok(dir)
    }

    /// `first`'s fine-tuned model fine-tuned again on `then`'s task (sequential fine-tuning).
    pub(crate) fn sequential_dir(&self, first: &FinetuneId, then: &FinetuneId) -> Result<PathBuf> {
        let key = format!("seq-{}-then-{}", self.ft_key(first), then.task);
        let dir = self.cfg.cache_dir.join("finetuned").join(&key);
        if !dir.join("model.safetensors").is_file() {
            let start = self.load_finetuned(first)?.model.weights.tensors;
            self.train_into(&dir, &key, then, Some(start))?;
        }
        Ok(dir)
    }

    /// Loads `id`'s fine-tuned model.
    pub(crate) fn load_finetuned(&self, id: &FinetuneId) -> Result<FinetunedModel> {
        let dir = self.finetuned_dir(id)?;
        self.load_dir(&dir, &id.task)
    }

    pub(crate) fn load_dir(&self, dir: &Path, task: &str) -> Result<FinetunedModel> {
        let (spec, _) = self.task(task)?;
        load_finetuned(
            dir,
            &self.base.model,
            Some(spec),
            &self.base.tokenizer,
            &self.base.device,
        )
    }

    fn cell_key(&self, id: &FinetuneId, method: Method, sparsity: f64) -> String {
        format!(
            "{}-{}-{sparsity:e}-e{}",
            self.ft_key(id),
            method.name(),
            self.cfg.epochs
        )
    }

    /// The result file of a cell.
    fn cell_path(&self, id: &FinetuneId, method: Method, sparsity: f64) -> PathBuf {
        self.cfg
            .cache_dir
            .join("cells")
            .join(format!("{}.json", self.cell_key(id, method, sparsity)))
    }

    /// The graft file of a cell.
    pub(crate) fn graft_path(&self, id: &FinetuneId, method: Method, sparsity: f64) -> PathBuf {
        self.cfg
            .cache_dir
            .join("grafts")
            .join(format!("{}.graft", self.cell_key(id, method, sparsity)))
    }

    /// A cell: from the cache when present (and its graft file too, if `need_graft`), else computed.
    /// Returns the cell and whether it was computed now.
    pub(crate) fn cell(
        &self,
        id: &FinetuneId,
        method: Method,
        sparsity: f64,
        need_graft: bool,
    ) -> Result<(Cell, bool)> {
        let key = self.cell_key(id, method, sparsity);
        let path = self.cell_path(id, method, sparsity);
        let graft_path = self.graft_path(id, method, sparsity);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(c) = serde_json::from_slice::<Cell>(&bytes) {
                if !need_graft || graft_path.is_file() {
                    return Ok((c, false));
                }
            }
        }
        if self.cached_only {
            return Err(NotCached(key).into());
        }
        let ft_dir = self.finetuned_dir(id)?;
        let ft = self.load_dir(&ft_dir, &id.task)?;
        let (task, _) = self.task(&id.task)?;
        let t0 = Instant::now();
        let job = LocalizationJob {
            base: self.base,
            finetuned: &ft,
            task: task.clone(),
            split: self.split(&id.task, id.k, id.seed)?,
            options: LocalizeOptions {
                method,
                sparsity,
                epochs: self.cfg.epochs,
                // The study reports temperature scaling as such (ECE after scaling), and its grafts
                // are localized as the paper's method was (growth allowed), so cached cells stay valid.
                calibration: crate::calibration::CalibrationPolicy::Temperature,
                allow_growth: true,
                ..Default::default()
            },
            bins: 10,
            budget: None,
            cancel: None,
        };
        let out = job.run(&mut |_| {})?;
        let cell = Cell {
            task: id.task.clone(),
            seed: id.seed,
            k: id.k,
            head: id.head,
            optimizer: id.optimizer.clone(),
            method,
            sparsity,
            graft_size: out.graft.size(),
            variants: out.variants,
            seconds: t0.elapsed().as_secs_f64(),
        };
        out.graft.save(&graft_path)?;
        atomic_write(&path, &serde_json::to_vec_pretty(&cell)?)?;
        eprintln!(
            "[study] {key}: base patch {:.3}, graft {:.3}, fine-tuned {:.3} ({:.0}s)",
            cell.accuracy("base patch"),
            cell.accuracy("graft"),
            cell.accuracy("fine-tuned"),
            cell.seconds
        );
        Ok((cell, true))
    }

    /// The fine-tune the analyses use for a task and seed.
    pub(crate) fn primary(&self, task: &str, seed: u64) -> FinetuneId {
        let g = &self.cfg.grids[0];
        FinetuneId {
            task: task.to_string(),
            k: g.ks.first().copied().unwrap_or(16),
            seed,
            head: g.heads.first().copied().unwrap_or(HeadKind::Prototype),
            optimizer: g
                .optimizers
                .first()
                .cloned()
                .unwrap_or_else(|| "sgd".into()),
        }
    }

    /// Every cell of every grid, in order: fine-tune, method, sparsity.
    fn grid_cells(&self) -> Vec<(FinetuneId, Method, f64)> {
        let mut out = Vec::new();
        for g in &self.cfg.grids {
            for task in &g.tasks {
                for &k in &g.ks {
                    for &seed in &g.seeds {
                        for &head in &g.heads {
                            for opt in &g.optimizers {
                                let id = FinetuneId {
                                    task: task.clone(),
                                    k,
                                    seed,
                                    head,
                                    optimizer: opt.clone(),
                                };
                                for &method in &g.methods {
                                    for &sp in &g.sparsities {
                                        out.push((id.clone(), method, sp));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs every missing cell of every grid (progress and ETA on stderr) and returns all cells.
    pub fn run_grids(&self) -> Result<Vec<Cell>> {
        let total: usize = self.cfg.grids.iter().map(GridSpec::cells).sum();
        let ids = self.grid_cells();
        let mut missing = ids
            .iter()
            .filter(|(id, m, s)| !self.cell_path(id, *m, *s).is_file())
            .count();
        eprintln!("[study] {total} cells, {missing} to compute");
        let (mut done, mut computed, mut spent) = (0usize, 0usize, 0f64);
        let mut cells = Vec::new();
        for (id, method, sp) in &ids {
            let (cell, fresh) = match self.cell(id, *method, *sp, false) {
                Err(e) if e.is::<NotCached>() => continue,
                other => other?,
            };
            done += 1;
            if fresh {
                computed += 1;
                missing = missing.saturating_sub(1);
                spent += cell.seconds;
                let eta = spent / computed as f64 * missing as f64;
                eprintln!(
                    "[study] {done}/{total} cells; {missing} left, ETA {:.0} min (+ fine-tunes not yet cached)",
                    eta / 60.0
                );
            }
            cells.push(cell);
        }
        eprintln!(
            "[study] grid done: {total} cells ({computed} computed, {} fine-tunes trained)",
            self.finetunes.get()
        );
        Ok(cells)
    }
}

/// Runs the grids and the analyses; with `cached_only`, reports what the cache holds and computes nothing.
pub fn run(base: &BaseModel, cfg: &StudyConfig, cached_only: bool) -> Result<StudyResults> {
    let mut study = Study::new(base, cfg)?;
    study.cached_only = cached_only;
    let cells = study.run_grids()?;
    let analyses = analysis::run(&study, &cells)?;
    Ok(StudyResults {
        base: format!(
            "{} ({} body parameters)",
            base.name,
            base.model.body_parameter_count()
        ),
        config: cfg.clone(),
        cells,
        analyses,
    })
}

/// Writes the results JSON, the report and its plots (into `plots/` beside the report).
pub fn write(
    results: &StudyResults,
    command: &str,
    report_path: &Path,
    json_path: &Path,
) -> Result<()> {
    let plots_dir = report_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("plots");
    let (text, plots) = report::render(results, command, "plots")?;
    for (name, svg) in plots {
        atomic_write(&plots_dir.join(name), svg.as_bytes())?;
    }
    atomic_write(json_path, &serde_json::to_vec_pretty(results)?)?;
    atomic_write(report_path, text.as_bytes())
}
