//! Resolving a localization request before any training: its task spec, its data and split (a built-in
//! task, an uploaded data set, or inline examples), its head, and its checkpoint. Failures are typed
//! ([`ResolveError`]): a missing checkpoint or data set, content that does not fit, or the store failing;
//! [`crate::server::error`] maps them to status codes.

use super::wire::{InlineExample, LocalizationRequest};
use crate::data::dataset::DatasetInfo;
use crate::data::{Example, FewShotSplit, SplitRule, TaskData, TaskSpec};
use crate::model::export::{load_finetuned_with, FinetunedModel};
use crate::model::{BaseModel, HeadSpec};
use crate::server::AppState;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Why a request cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The checkpoint named is not stored.
    #[error("`checkpoint`: no checkpoint `{0}` (upload it to /v1/checkpoints; GET /v1/checkpoints lists them)")]
    NoCheckpoint(String),
    /// The data set named is not stored.
    #[error("`dataset`: no data set `{0}` (upload one with POST /v1/datasets; GET /v1/datasets lists them)")]
    NoDataset(String),
    /// The request's content does not fit (the message names the field).
    #[error(transparent)]
    Invalid(anyhow::Error),
    /// The store could not be read, or what it holds could not be used.
    #[error(transparent)]
    Store(anyhow::Error),
}

/// What a request resolves to before any training: the task, its split, the head given, the checkpoint.
pub struct Prepared {
    /// The task (labels, head fields; no data source for uploaded or inline data).
    pub task: TaskSpec,
    /// Train / dev / test.
    pub split: FewShotSplit,
    /// The head the request gives (None: the checkpoint's own).
    pub head: Option<HeadSpec>,
    /// The checkpoint's directory (in this replica's cache when the store is object storage).
    pub checkpoint: PathBuf,
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
pub fn load_dataset(state: &AppState, id: &str) -> Result<(DatasetInfo, TaskData), ResolveError> {
    let missing = || ResolveError::NoDataset(id.to_string());
    if !crate::store::service::valid_name(id) {
        return Err(missing());
    }
    let info = dataset_info(state, id)
        .map_err(ResolveError::Store)?
        .ok_or_else(missing)?;
    let bytes = state
        .store
        .get_dataset(id)
        .map_err(ResolveError::Store)?
        .ok_or_else(missing)?;
    let data = crate::data::dataset::load(&bytes, &info).map_err(ResolveError::Store)?;
    Ok((info, data))
}

/// Resolves a request: task spec, data and split, the head given, the checkpoint's directory. Every error
/// names the request field it comes from; the handler runs this (and [`Prepared::check`]) before answering
/// 202, the job again when it starts (and then [`Prepared::load`]).
pub fn prepare(state: &AppState, r: &LocalizationRequest) -> Result<Prepared, ResolveError> {
    let (mut task, split) = task_and_split(state, r)?;
    if let Some(h) = &r.head {
        if let Some(d) = &h.descriptions {
            task.label_descriptions = d.clone();
        }
    }
    let head = r
        .head
        .as_ref()
        .map(|h| h.spec(&state.base, &task))
        .transpose()
        .map_err(ResolveError::Invalid)?;
    // From object storage, the checkpoint is fetched into this replica's cache first.
    let checkpoint = state
        .store
        .checkpoint_dir(&r.checkpoint)
        .map_err(ResolveError::Store)?
        .ok_or_else(|| ResolveError::NoCheckpoint(r.checkpoint.clone()))?;
    Ok(Prepared {
        task,
        split,
        head,
        checkpoint,
    })
}

/// The task spec and split of a request's data (an uploaded data set, inline examples, a built-in task).
fn task_and_split(
    state: &AppState,
    r: &LocalizationRequest,
) -> Result<(TaskSpec, FewShotSplit), ResolveError> {
    let rule = r.split.clone().unwrap_or(SplitRule::FewShot {
        k: r.k,
        seed: r.seed,
        cap_k: r.cap_k,
    });
    if let Some(id) = &r.dataset {
        let (info, data) = load_dataset(state, id)?;
        return dataset_split(r, id, &info, &data, &rule).map_err(ResolveError::Invalid);
    }
    let resolved = if let (Some(train), Some(dev)) = (&r.train, &r.dev) {
        inline_split(r, train, dev)
    } else {
        builtin_split(state, r, &rule)
    };
    resolved.map_err(ResolveError::Invalid)
}

fn spec_checked(s: &TaskSpec) -> Result<TaskSpec> {
    s.validate()
        .map_err(|e| anyhow::anyhow!("`task_spec`: {e:#}"))?;
    Ok(s.clone())
}

fn dataset_split(
    r: &LocalizationRequest,
    id: &str,
    info: &DatasetInfo,
    data: &TaskData,
    rule: &SplitRule,
) -> Result<(TaskSpec, FewShotSplit)> {
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
    let split = crate::data::split_data(data, &task, rule, r.max_test)
        .map_err(|e| anyhow::anyhow!("`split` of data set `{id}`: {e:#}"))?;
    Ok((task, split))
}

fn inline_split(
    r: &LocalizationRequest,
    train: &[InlineExample],
    dev: &[InlineExample],
) -> Result<(TaskSpec, FewShotSplit)> {
    let mut spec = match (&r.task_spec, &r.task) {
        (Some(s), _) => spec_checked(s)?,
        (None, Some(name)) => crate::data::builtin_task(name)
            .with_context(|| format!("`task`: unknown task `{name}`"))?,
        (None, None) => {
            bail!("`task_spec`: inline data needs `task_spec` (its labels) or a built-in `task`")
        }
    };
    spec.source = None;
    let split = FewShotSplit {
        train: inline(train, &spec.labels, "train")?,
        dev: inline(dev, &spec.labels, "dev")?,
        test: inline(r.test.as_deref().unwrap_or_default(), &spec.labels, "test")?,
        k: 0,
        seed: 0,
    };
    Ok((spec, split))
}

fn builtin_split(
    state: &AppState,
    r: &LocalizationRequest,
    rule: &SplitRule,
) -> Result<(TaskSpec, FewShotSplit)> {
    let name = r
        .task
        .as_deref()
        .context("give a built-in `task`, a `dataset`, or inline `train` and `dev` examples")?;
    let spec = crate::data::builtin_task(name)
        .with_context(|| format!("`task`: unknown task `{name}`"))?;
    let split = crate::data::split_task(&spec, &state.config.datasets_dir, rule, r.max_test)
        .map_err(|e| anyhow::anyhow!("`split`: {}", state.redact(&format!("{e:#}"))))?;
    Ok((spec, split))
}

impl Prepared {
    /// Checks the checkpoint against the base and the task on the host CPU, without the base's weights
    /// (names, shapes, dtypes, head, labels): what the handler runs before answering 202.
    pub fn check(&self, state: &AppState, r: &LocalizationRequest) -> Result<(), ResolveError> {
        crate::model::checkpoint::inspect(
            &self.checkpoint,
            &state.base,
            Some(&self.task),
            self.head.as_ref(),
        )
        .map_err(|e| self.checkpoint_error(state, r, e))?;
        Ok(())
    }

    /// Loads the checkpoint onto `base`'s device for training (a prototype head built from `base`).
    pub fn load(
        &self,
        state: &AppState,
        r: &LocalizationRequest,
        base: &BaseModel,
    ) -> Result<FinetunedModel, ResolveError> {
        load_finetuned_with(
            &self.checkpoint,
            &base.model,
            Some(&self.task),
            &base.tokenizer,
            &base.device,
            self.head.as_ref(),
        )
        .map_err(|e| self.checkpoint_error(state, r, e))
    }

    fn checkpoint_error(
        &self,
        state: &AppState,
        r: &LocalizationRequest,
        e: anyhow::Error,
    ) -> ResolveError {
        let msg = crate::server::redact::redact_paths(
            &format!("{e:#}"),
            &[(self.checkpoint.as_path(), "<checkpoint>")],
        );
        ResolveError::Invalid(anyhow::anyhow!(
            "`checkpoint` {}: {}",
            r.checkpoint,
            state.redact(&msg)
        ))
    }
}
