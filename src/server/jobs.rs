//! Localization jobs: a bounded pool of worker threads, each job with its own model copy (it modifies the
//! weights for seconds at a time, so it never touches the engine's). A job runs on the replica that accepted
//! it; its state is persisted in the store on every change, with that replica's id, so every replica can
//! answer for it ([`records`]); a job whose replica stopped (a restart included) is reported failed. A job's
//! inline examples are shown to admin keys only ([`JobStatus::view`]).

pub mod records;

use super::AppState;
use crate::calibration::CalibrationPolicy;
use crate::data::files::LabelValue;
use crate::data::{Example, FewShotSplit, SplitRule, TaskSpec};
use crate::graft::budget::Verdict;
use crate::graft::job::LocalizationJob;
use crate::graft::localize::{LocalizeOptions, Method};
use crate::graft::RegionSpec;
use crate::model::export::{load_finetuned_with, FinetunedModel};
use crate::model::{BaseModel, HeadKind, HeadSpec};
use crate::store::blob::PutMode;
use crate::train::Progress;
use anyhow::{bail, Context, Result};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker slot.
    Queued,
    /// Running.
    Running,
    /// Finished; a graft keeps the retention target and the task is registered.
    Succeeded,
    /// Failed (see `error`).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Finished, but no graft up to the ceiling keeps the retention target (`retention` says the best point
    /// and what would work); the task is registered only when the request said `register_anyway`.
    NotLocalized,
}

/// The retention target of a job (`budget`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// Share of the fine-tuning gain on dev the graft must keep, in [0, 1] (default 0.95).
    #[serde(default = "default_retain")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub retain: f64,
    /// Largest graft the search tries, as a fraction of the region (default 0.1).
    #[serde(default = "default_ceiling")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub ceiling: f64,
}

impl Default for BudgetRequest {
    fn default() -> Self {
        Self {
            retain: default_retain(),
            ceiling: default_ceiling(),
        }
    }
}

fn default_retain() -> f64 {
    crate::graft::budget::DEFAULT_RETAIN
}
fn default_ceiling() -> f64 {
    crate::graft::budget::DEFAULT_CEILING
}

/// A localization request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LocalizationRequest {
    /// Id of an uploaded checkpoint.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub checkpoint: String,
    /// Name to register the resulting task under.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub task_name: String,
    /// Built-in task (sst2, sst5, mr, cr, mpqa, subj) whose spec and data to use.
    #[serde(default)]
    pub task: Option<String>,
    /// A task spec (labels, template, label words, descriptions) for inline data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub task_spec: Option<TaskSpec>,
    /// Id of an uploaded data set (`POST /v1/datasets`) whose examples to use; its labels are the task's
    /// unless `task_spec` names them (same names).
    #[serde(default)]
    pub dataset: Option<String>,
    /// How train/dev/test are made from a data set or a built-in task: `{"rule": "few_shot", "k": 16,
    /// "seed": 42, "cap_k": false}` or `{"rule": "given"}` (the data's own splits, e.g. its split column).
    /// Default: few-shot with `k`, `seed` and `cap_k` below.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub split: Option<SplitRule>,
    /// Take at most half of a class that has fewer than 2K examples instead of refusing (few-shot).
    #[serde(default)]
    pub cap_k: bool,
    /// The checkpoint's head, when it does not carry one (a body fine-tuned elsewhere behind a prototype
    /// head) or to override it.
    #[serde(default)]
    pub head: Option<HeadRequest>,
    /// Temperature scaling of the served task: `auto` (default: applied when cross-validation on dev says it
    /// lowers held-out NLL), `temperature` (always), `none`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub calibration: Option<CalibrationPolicy>,
    /// Let the paper's method return more parameters than the budget.
    #[serde(default)]
    pub allow_growth: bool,
    /// Inline training examples; with `dev`, instead of a built-in task's data. Labels are class names or
    /// indices. Shown to admin keys only.
    #[serde(default)]
    #[schema(value_type = Option<Vec<InlineExample>>)]
    pub train: Option<Vec<InlineExample>>,
    /// Inline dev examples. Shown to admin keys only.
    #[serde(default)]
    #[schema(value_type = Option<Vec<InlineExample>>)]
    pub dev: Option<Vec<InlineExample>>,
    /// Inline test examples (optional; dev is used to report metrics when absent). Shown to admin keys only.
    #[serde(default)]
    #[schema(value_type = Option<Vec<InlineExample>>)]
    pub test: Option<Vec<InlineExample>>,
    /// Examples per class (built-in data).
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 4096)]
    pub k: usize,
    /// Few-shot seed (built-in data).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Cap on test examples (built-in data).
    #[serde(default)]
    pub max_test: Option<usize>,
    /// Method: paper, magnitude, l1, saliency, refit (the base patch with re-trained values), learned (a
    /// learned mask for AdamW deltas) or dare (random drop and rescale, a baseline).
    #[serde(default = "default_method")]
    #[schema(value_type = MethodName)]
    pub method: Method,
    /// The retention target: the job searches a ladder of sizes (1e-5 of the region in half decades up to
    /// `ceiling`) for the smallest graft keeping `retain` of the fine-tuning gain on dev. Default
    /// `{"retain": 0.95, "ceiling": 0.1}`; with `sparsity` the size is fixed and `retain` still decides
    /// the verdict.
    #[serde(default)]
    pub budget: Option<BudgetRequest>,
    /// A fixed graft size as a fraction of the region, in (0, 1], instead of the search.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub sparsity: Option<f64>,
    /// Register the task even when no graft keeps the target (the job still ends `not_localized`).
    #[serde(default)]
    pub register_anyway: bool,
    /// Let the graft include the embeddings (a checkpoint that trained them needs it to keep its gain).
    #[serde(default)]
    pub include_embeddings: bool,
    /// Mask-optimization epochs.
    #[serde(default = "default_epochs")]
    #[schema(maximum = 1000)]
    pub epochs: usize,
    /// Mask learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Mask-initialisation seed.
    #[serde(default)]
    pub mask_seed: u64,
}

/// Localization methods (the schema of `LocalizationRequest.method`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    /// The paper's mask optimization.
    Paper,
    /// The top-|Δ| base patch.
    Magnitude,
    /// Mask optimization with an L1 penalty.
    L1,
    /// First-order saliency.
    Saliency,
    /// The base patch with re-trained values.
    Refit,
    /// A learned mask with a step normalized by the mean gradient.
    Learned,
    /// Random drop of Δ with rescaling (DARE).
    Dare,
}

/// A labelled example given inline (the schema of `train`, `dev`, `test`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InlineExample {
    /// The text.
    pub text: String,
    /// A second text, for sentence-pair tasks.
    #[serde(default)]
    pub text_b: Option<String>,
    /// A class name of the task, or its index.
    #[schema(value_type = Object)]
    pub label: LabelValue,
}

/// A head given with a job (or an upload): its kind and what it needs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadRequest {
    /// `prototype`, `bert_classifier`, `roberta_classifier`, `linear` or `prompt`.
    #[schema(value_type = String)]
    pub kind: HeadKind,
    /// Class names (default: the task's labels).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Prototype heads: one description per class (default: the task spec's `label_descriptions`).
    #[serde(default)]
    pub descriptions: Option<Vec<String>>,
    /// Prototype heads: the temperature τ (default 0.05).
    #[serde(default)]
    pub temperature: Option<f64>,
}

impl HeadRequest {
    /// The kind's name (`prototype`, `bert_classifier`, …).
    pub fn kind_name(&self) -> String {
        serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The head spec for `task` on `base` (a prototype head's tensor is built from the base at load time).
    pub fn spec(&self, base: &BaseModel, task: &TaskSpec) -> Result<HeadSpec> {
        let mut t = task.clone();
        if let Some(labels) = &self.labels {
            if labels.len() != t.labels.len() {
                bail!(
                    "`head.labels` has {} names but the task has {} labels ({})",
                    labels.len(),
                    t.labels.len(),
                    t.labels.join(", ")
                );
            }
            t.labels = labels.clone();
        }
        if let Some(d) = &self.descriptions {
            t.label_descriptions = d.clone();
        }
        let tau = self.temperature.unwrap_or(0.05);
        if !(tau.is_finite() && tau > 0.0) {
            bail!("`head.temperature` must be a positive number, got {tau}");
        }
        t.validate().map_err(|e| anyhow::anyhow!("`head`: {e:#}"))?;
        base.head_spec(self.kind, &t, tau, crate::model::Pooling::Cls)
            .map_err(|e| anyhow::anyhow!("`head`: {e:#}: give `head.descriptions` (one per label) or the task spec's `label_descriptions`"))
    }
}

impl LocalizationRequest {
    /// Checks what can be checked without the store: names, numeric ranges, and that data is given one way.
    pub fn check(&self) -> std::result::Result<(), String> {
        use crate::store::service::{valid_name, NAME_RULE};
        if !valid_name(&self.task_name) {
            return Err(format!(
                "invalid task_name `{}`: {NAME_RULE}",
                self.task_name
            ));
        }
        if !valid_name(&self.checkpoint) {
            return Err(format!(
                "invalid checkpoint `{}`: {NAME_RULE}",
                self.checkpoint
            ));
        }
        if self.sparsity.is_some_and(|s| !(s > 0.0 && s <= 1.0)) || self.epochs > 1000 {
            return Err("sparsity must be in (0, 1] and epochs at most 1000".into());
        }
        self.budget_spec().check()?;
        if self.k == 0 || self.k > 4096 {
            return Err("k must be between 1 and 4096".into());
        }
        if !self.lr.is_finite() {
            return Err("lr must be a finite number".into());
        }
        let ways = [
            self.task.is_some() && self.train.is_none(),
            self.dataset.is_some(),
            self.train.is_some() || self.dev.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() != 1 {
            return Err("give the data one way: a built-in `task`, a `dataset` id (POST /v1/datasets), or inline `train` and `dev` examples".into());
        }
        match (&self.task, &self.dataset, &self.train, &self.dev) {
            (Some(t), None, None, None) if crate::data::builtin_task(t).is_none() => Err(format!(
                "unknown task `{t}` (built-in: {}); for your own data upload it to /v1/datasets and give `dataset`",
                crate::data::builtin_task_names().join(", ")
            )),
            (_, None, Some(_), None) | (_, None, None, Some(_)) => {
                Err("inline data needs both `train` and `dev` examples".into())
            }
            _ => Ok(()),
        }
    }
}

impl LocalizationRequest {
    /// The job's budget: the search (or the fixed `sparsity`) and its target.
    pub fn budget_spec(&self) -> crate::graft::budget::Budget {
        let b = self.budget.unwrap_or_default();
        crate::graft::budget::Budget {
            retain: b.retain,
            ceiling: b.ceiling,
            search: self.sparsity.is_none(),
        }
    }
}

fn default_k() -> usize {
    16
}
fn default_seed() -> u64 {
    42
}
fn default_method() -> Method {
    Method::Paper
}
fn default_epochs() -> usize {
    10
}
fn default_lr() -> f64 {
    1e7
}

/// A job's public state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// State.
    pub state: JobState,
    /// The request.
    pub request: LocalizationRequest,
    /// Last finished epoch.
    pub epoch: usize,
    /// Size of the current mask.
    pub mask_size: Option<usize>,
    /// Train accuracy of the current mask.
    pub train_accuracy: Option<f64>,
    /// Dev accuracy of the current mask.
    pub dev_accuracy: Option<f64>,
    /// Latest status line.
    pub message: String,
    /// Error, when failed.
    pub error: Option<String>,
    /// Final graft size.
    pub graft_size: Option<usize>,
    /// Metrics of base+head / base patch / graft / fine-tuned, when finished (one object per variant).
    #[schema(value_type = Option<Vec<Object>>)]
    pub variants: Option<Vec<serde_json::Value>>,
    /// Timings, when finished.
    #[schema(value_type = Option<Object>)]
    pub timings: Option<serde_json::Value>,
    /// The retention curve, when finished: target, measure, base+head and fine-tuned accuracies, every
    /// point measured (method, size, dev/test accuracy, share of the gain kept, test ECE), the chosen
    /// point, the verdict (`retained` / `not_localized`), a summary and advice.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Whether the task was registered (absent in records before retention targets).
    #[serde(default)]
    pub registered: Option<bool>,
    /// Times (seconds since the Unix epoch).
    pub created_unix: u64,
    /// Start time.
    pub started_unix: Option<u64>,
    /// End time.
    pub finished_unix: Option<u64>,
    /// The replica running the job (absent in records of servers before replicas).
    #[serde(default)]
    pub replica: Option<String>,
}

impl JobStatus {
    /// What a caller may see: everything for an admin; without the inline examples for anyone else.
    pub fn view(&self, admin: bool) -> JobStatus {
        let mut v = self.clone();
        if !admin {
            v.request.train = None;
            v.request.dev = None;
            v.request.test = None;
        }
        v
    }

    /// Whether the job has ended.
    pub fn ended(&self) -> bool {
        !matches!(self.state, JobState::Queued | JobState::Running)
    }
}

/// One job in memory.
pub struct JobEntry {
    /// State.
    pub status: Mutex<JobStatus>,
    /// Cancellation flag.
    pub cancel: Arc<AtomicBool>,
    /// Every new state, for SSE subscribers.
    pub events: broadcast::Sender<JobStatus>,
}

/// All jobs, and the worker slots.
pub struct JobManager {
    jobs: DashMap<String, Arc<JobEntry>>,
    slots: Arc<(Mutex<usize>, Condvar)>,
}

impl JobManager {
    /// A manager running at most `max` jobs at once.
    pub fn new(max: usize) -> Self {
        Self {
            jobs: DashMap::new(),
            slots: Arc::new((Mutex::new(max.max(1)), Condvar::new())),
        }
    }

    /// Settles stored jobs at start: those queued or running on a replica that is gone (this one before a
    /// restart included) are marked failed.
    pub fn load(&self, state: &AppState) -> Result<()> {
        for id in state.store.list_job_ids()? {
            records::read(state, &id)?;
        }
        Ok(())
    }

    /// A job this replica runs (or ran since it started).
    pub fn local(&self, id: &str) -> Option<Arc<JobEntry>> {
        self.jobs.get(id).map(|e| e.clone())
    }

    /// Ids of the jobs this replica has not finished.
    pub fn running_here(&self) -> Vec<(String, Arc<AtomicBool>)> {
        self.jobs
            .iter()
            .filter(|e| e.status.lock().is_ok_and(|s| !s.ended()))
            .map(|e| (e.key().clone(), e.cancel.clone()))
            .collect()
    }

    /// A job's state, wherever it runs; None when unknown.
    pub fn status(&self, state: &AppState, id: &str) -> Result<Option<JobStatus>> {
        if !crate::store::service::valid_name(id) {
            return Ok(None);
        }
        if let Some(e) = self.local(id) {
            return Ok(Some(
                e.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ));
        }
        records::read(state, id)
    }

    /// All jobs' states (every replica's), newest first.
    pub fn list(&self, state: &AppState) -> Result<Vec<JobStatus>> {
        let mut v = Vec::new();
        for id in state.store.list_job_ids()? {
            if let Some(st) = self.status(state, &id)? {
                v.push(st);
            }
        }
        v.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(b.id.cmp(&a.id)));
        Ok(v)
    }

    /// Applies cancellations of this replica's jobs asked for through other replicas.
    pub fn apply_remote_cancels(&self, state: &AppState) {
        records::apply_cancels(state, &self.running_here());
    }

    /// Number of this replica's jobs per state.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut c = [0usize; 6];
        for e in self.jobs.iter() {
            if let Ok(s) = e.status.lock() {
                c[s.state as usize] += 1;
            }
        }
        vec![
            ("queued", c[0]),
            ("running", c[1]),
            ("succeeded", c[2]),
            ("failed", c[3]),
            ("cancelled", c[4]),
            ("not_localized", c[5]),
        ]
    }

    /// Registers a job and starts its worker thread.
    pub fn submit(&self, state: Arc<AppState>, request: LocalizationRequest) -> Result<JobStatus> {
        let id = format!("job-{:016x}", rand::random::<u64>());
        let status = JobStatus {
            id: id.clone(),
            state: JobState::Queued,
            request,
            epoch: 0,
            mask_size: None,
            train_accuracy: None,
            dev_accuracy: None,
            message: "queued".into(),
            error: None,
            graft_size: None,
            variants: None,
            timings: None,
            retention: None,
            registered: None,
            created_unix: crate::graft::unix_now(),
            started_unix: None,
            finished_unix: None,
            replica: Some(state.store.replicas().id().to_string()),
        };
        state
            .store
            .put_job(&id, &serde_json::to_vec(&status)?, PutMode::Overwrite)?;
        let (tx, _) = broadcast::channel(256);
        let entry = Arc::new(JobEntry {
            status: Mutex::new(status.clone()),
            cancel: Arc::new(AtomicBool::new(false)),
            events: tx,
        });
        self.jobs.insert(id.clone(), entry.clone());
        let slots = self.slots.clone();
        std::thread::Builder::new()
            .name(id.clone())
            .spawn(move || {
                {
                    let (lock, cv) = &*slots;
                    let mut free = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while *free == 0 {
                        free = cv.wait(free).unwrap_or_else(|p| p.into_inner());
                    }
                    *free -= 1;
                }
                run_job(&state, &entry);
                let (lock, cv) = &*slots;
                let mut free = lock.lock().unwrap_or_else(|p| p.into_inner());
                *free += 1;
                cv.notify_one();
            })?;
        Ok(status)
    }
}

fn update(state: &AppState, entry: &JobEntry, f: impl FnOnce(&mut JobStatus)) {
    let snapshot = {
        let mut s = entry.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        s.clone()
    };
    if let Ok(bytes) = serde_json::to_vec(&snapshot) {
        if let Err(e) = state
            .store
            .put_job(&snapshot.id, &bytes, PutMode::Overwrite)
        {
            tracing::warn!("cannot persist job {}: {e:#}", snapshot.id);
        }
    }
    let _ = entry.events.send(snapshot);
}

/// What a request resolves to before any training: the task, its split, the loaded checkpoint.
pub struct Prepared {
    /// The task (labels, head fields; no data source for uploaded or inline data).
    pub task: TaskSpec,
    /// Train / dev / test.
    pub split: FewShotSplit,
    /// The checkpoint, checked against the base and the task, its head identified.
    pub finetuned: FinetunedModel,
}

/// Inline examples with labels resolved against the task (`field` names them in messages).
fn inline(examples: &[InlineExample], labels: &[String], field: &str) -> Result<Vec<Example>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let label = e
                .label
                .resolve(labels)
                .map_err(|msg| anyhow::anyhow!("`{field}[{i}].label`: {msg}"))?;
            Ok(Example {
                text: e.text.clone(),
                text_b: e.text_b.clone(),
                label,
            })
        })
        .collect()
}

/// A stored data set's description, by id.
pub fn dataset_info(
    state: &AppState,
    id: &str,
) -> Result<Option<crate::data::dataset::DatasetInfo>> {
    for bytes in state.store.list_datasets()? {
        if let Ok(info) = serde_json::from_slice::<crate::data::dataset::DatasetInfo>(&bytes) {
            if info.id == id {
                return Ok(Some(info));
            }
        }
    }
    Ok(None)
}

/// A stored data set's examples and description; a missing one names the field and the fix.
pub fn load_dataset(
    state: &AppState,
    id: &str,
) -> Result<(crate::data::dataset::DatasetInfo, crate::data::TaskData)> {
    let missing = || {
        anyhow::anyhow!("`dataset`: no data set `{id}` (upload one with POST /v1/datasets; GET /v1/datasets lists them)")
    };
    if !crate::store::service::valid_name(id) {
        return Err(missing());
    }
    let info = dataset_info(state, id)?.ok_or_else(missing)?;
    let bytes = state.store.get_dataset(id)?.ok_or_else(missing)?;
    let data = crate::data::dataset::load(&bytes, &info)?;
    Ok((info, data))
}

/// Resolves a request: task spec, data and split, checkpoint and head. Every error names the request
/// field it comes from; the handler runs this before answering 202, the job again when it starts.
pub fn prepare(state: &AppState, r: &LocalizationRequest) -> Result<Prepared> {
    let rule = r.split.clone().unwrap_or(SplitRule::FewShot {
        k: r.k,
        seed: r.seed,
        cap_k: r.cap_k,
    });
    let spec_checked = |s: &TaskSpec| -> Result<TaskSpec> {
        s.validate()
            .map_err(|e| anyhow::anyhow!("`task_spec`: {e:#}"))?;
        Ok(s.clone())
    };
    let (mut task, split) = if let Some(id) = &r.dataset {
        let (info, data) = load_dataset(state, id)?;
        let mut task = match &r.task_spec {
            Some(s) => {
                let s = spec_checked(s)?;
                if s.labels != info.labels {
                    bail!("`task_spec.labels` {:?} differ from the labels of data set `{id}` {:?}: give the same names in the same order (or leave `task_spec` out)", s.labels, info.labels);
                }
                s
            }
            None => TaskSpec::with_labels(&r.task_name, info.labels.clone()),
        };
        task.source = None;
        let split = crate::data::split_data(&data, &task, &rule, r.max_test)
            .map_err(|e| anyhow::anyhow!("`split` of data set `{id}`: {e:#}"))?;
        (task, split)
    } else if let (Some(train), Some(dev)) = (&r.train, &r.dev) {
        let mut spec = match (&r.task_spec, &r.task) {
            (Some(s), _) => spec_checked(s)?,
            (None, Some(name)) => crate::data::builtin_task(name)
                .with_context(|| format!("`task`: unknown task `{name}`"))?,
            (None, None) => bail!(
                "`task_spec`: inline data needs `task_spec` (its labels) or a built-in `task`"
            ),
        };
        spec.source = None;
        let split = FewShotSplit {
            train: inline(train, &spec.labels, "train")?,
            dev: inline(dev, &spec.labels, "dev")?,
            test: inline(r.test.as_deref().unwrap_or_default(), &spec.labels, "test")?,
            k: 0,
            seed: 0,
        };
        (spec, split)
    } else {
        let name = r
            .task
            .as_deref()
            .context("give a built-in `task`, a `dataset`, or inline `train` and `dev` examples")?;
        let spec = crate::data::builtin_task(name)
            .with_context(|| format!("`task`: unknown task `{name}`"))?;
        let split = crate::data::split_task(&spec, &state.config.datasets_dir, &rule, r.max_test)
            .map_err(|e| anyhow::anyhow!("`split`: {}", state.redact(&format!("{e:#}"))))?;
        (spec, split)
    };
    if let Some(h) = &r.head {
        if let Some(d) = &h.descriptions {
            task.label_descriptions = d.clone();
        }
    }
    let base = &state.base;
    let given = r.head.as_ref().map(|h| h.spec(base, &task)).transpose()?;
    // From object storage, the checkpoint is fetched into this replica's cache first.
    let Some(dir) = state.store.checkpoint_dir(&r.checkpoint)? else {
        bail!("`checkpoint`: no checkpoint `{}` (upload it to /v1/checkpoints; GET /v1/checkpoints lists them)", r.checkpoint);
    };
    let finetuned = load_finetuned_with(
        &dir,
        &base.model,
        Some(&task),
        &base.tokenizer,
        &base.device,
        given.as_ref(),
    )
    .map_err(|e| {
        let msg = crate::server::error::redact_paths(
            &format!("{e:#}"),
            &[(dir.as_path(), "<checkpoint>")],
        );
        anyhow::anyhow!("`checkpoint` {}: {}", r.checkpoint, state.redact(&msg))
    })?;
    Ok(Prepared {
        task,
        split,
        finetuned,
    })
}

fn run_job(state: &Arc<AppState>, entry: &JobEntry) {
    let request = match entry.status.lock() {
        Ok(s) => s.request.clone(),
        Err(_) => return,
    };
    if entry.cancel.load(Ordering::Relaxed) {
        update(state, entry, |s| {
            s.state = JobState::Cancelled;
            s.finished_unix = Some(crate::graft::unix_now());
        });
        return;
    }
    update(state, entry, |s| {
        s.state = JobState::Running;
        s.started_unix = Some(crate::graft::unix_now());
        s.message = "loading checkpoint".into();
    });
    let result = (|| -> Result<Finished> {
        let pool = crate::compute_pool(Some(state.config.job_threads))?;
        pool.install(|| {
            let prepared = prepare(state, &request)?;
            let (task, split, ft) = (prepared.task, prepared.split, prepared.finetuned);
            let base = &state.base;
            let job = LocalizationJob {
                base,
                finetuned: &ft,
                task,
                split,
                options: LocalizeOptions {
                    method: request.method,
                    sparsity: request.sparsity.unwrap_or(1e-4),
                    epochs: request.epochs,
                    lr: request.lr,
                    seed: request.mask_seed,
                    region: RegionSpec {
                        include_embeddings: request.include_embeddings,
                        ..RegionSpec::default()
                    },
                    allow_growth: request.allow_growth,
                    calibration: request.calibration.unwrap_or_default(),
                    ..Default::default()
                },
                bins: 10,
                budget: Some(request.budget_spec()),
                cancel: Some(entry.cancel.clone()),
            };
            let out = job.run(&mut |p| match p {
                Progress::Epoch(e) => update(state, entry, |s| {
                    s.epoch = e.epoch;
                    s.mask_size = Some(e.mask_size);
                    s.train_accuracy = Some(e.train_accuracy);
                    s.dev_accuracy = Some(e.dev_accuracy);
                    s.message = format!("epoch {} of {}", e.epoch, request.epochs);
                }),
                Progress::Message { text } => update(state, entry, |s| s.message = text),
                _ => {}
            })?;
            let retained = out
                .retention
                .as_ref()
                .is_some_and(|r| r.verdict != Verdict::NotLocalized);
            let register = retained || request.register_anyway;
            if register {
                let bytes = out.graft.to_bytes()?;
                state
                    .install_task(&request.task_name, &bytes)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            }
            let variants = match serde_json::to_value(&out.variants)? {
                serde_json::Value::Array(v) => v,
                other => vec![other],
            };
            Ok(Finished {
                size: out.graft.size(),
                variants,
                timings: serde_json::to_value(&out.timings)?,
                summary: out
                    .retention
                    .as_ref()
                    .map_or_else(String::new, |r| r.summary.clone()),
                retention: serde_json::to_value(&out.retention)?,
                retained,
                registered: register,
            })
        })
    })();
    let cancelled = entry.cancel.load(Ordering::Relaxed);
    update(state, entry, |s| {
        s.finished_unix = Some(crate::graft::unix_now());
        match result {
            Ok(f) => {
                s.state = if f.retained {
                    JobState::Succeeded
                } else {
                    JobState::NotLocalized
                };
                s.graft_size = Some(f.size);
                s.variants = Some(f.variants);
                s.timings = Some(f.timings);
                s.retention = Some(f.retention);
                s.registered = Some(f.registered);
                s.message = match (f.retained, f.registered) {
                    (true, _) => format!("task `{}` registered: {}", request.task_name, f.summary),
                    (false, true) => format!(
                        "{}; task `{}` registered anyway (register_anyway)",
                        f.summary, request.task_name
                    ),
                    (false, false) => format!(
                        "{}; task `{}` not registered (set register_anyway to register it)",
                        f.summary, request.task_name
                    ),
                };
            }
            Err(_) if cancelled => {
                s.state = JobState::Cancelled;
                s.message = "cancelled".into();
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.error = Some(state.redact(&format!("{e:#}")));
                s.message = "failed".into();
            }
        }
    });
}

/// What a finished job reports.
struct Finished {
    size: usize,
    variants: Vec<serde_json::Value>,
    timings: serde_json::Value,
    summary: String,
    retention: serde_json::Value,
    retained: bool,
    registered: bool,
}
