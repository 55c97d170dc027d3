//! Running one localization job on its worker thread: the job's own compute pool, its own f32 copy of the
//! base weights (read from the model's files for the job and dropped after it, so the engine's copy is the
//! only one resident between jobs), the localization itself, and the task's registration.

use super::resolve::prepare;
use super::wire::{JobState, LocalizationRequest};
use super::{update, JobEntry};
use crate::graft::budget::Verdict;
use crate::graft::job::LocalizationJob;
use crate::graft::localize::LocalizeOptions;
use crate::graft::RegionSpec;
use crate::server::AppState;
use crate::train::Progress;
use anyhow::Result;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) fn run_job(state: &Arc<AppState>, entry: &JobEntry) {
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
    let result = localize(state, entry, &request);
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

/// The job's work on its own compute pool: resolve the request, read the base, localize, register.
fn localize(
    state: &Arc<AppState>,
    entry: &JobEntry,
    request: &LocalizationRequest,
) -> Result<Finished> {
    let pool = crate::compute_pool(Some(state.config.job_threads))?;
    pool.install(|| {
        let prepared = prepare(state, request)?;
        // The job's own f32 copy of the base, read from the model's files and dropped when it ends.
        let base = state.base.load()?;
        let ft = prepared.load(state, request, &base)?;
        let job = LocalizationJob {
            base: &base,
            finetuned: &ft,
            task: prepared.task,
            split: prepared.split,
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
