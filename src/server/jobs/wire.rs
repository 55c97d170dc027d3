//! What localization jobs look like on the wire: the request (with the checks that need no store), the head
//! given with it, and a job's public state.

use crate::calibration::CalibrationPolicy;
use crate::data::files::LabelValue;
use crate::data::{SplitRule, TaskSpec};
use crate::graft::localize::Method;
use crate::model::{BaseInfo, HeadKind, HeadSpec};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
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
    pub fn spec(&self, base: &BaseInfo, task: &TaskSpec) -> Result<HeadSpec> {
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
