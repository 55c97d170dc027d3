//! Localization jobs: a bounded pool of worker threads, each job with its own model copy (it modifies the
//! weights for seconds at a time, so it never touches the engine's). A job runs on the replica that accepted
//! it; its state is persisted in the store on every change, with that replica's id, so every replica can
//! answer for it ([`records`]); a job whose replica stopped (a restart included) is reported failed. A job's
//! inline examples are shown to admin keys only ([`JobStatus::view`]).
//!
//! This file is the manager (the jobs in memory, the worker slots, persisting each change); the wire types
//! are in [`wire`], resolving a request's data, head and checkpoint in [`resolve`], and running a job (its
//! compute pool and its copy of the base weights) in [`run`].

pub mod records;
pub mod resolve;
pub mod run;
pub mod wire;

pub use resolve::{dataset_info, load_dataset, prepare, Prepared, ResolveError};
pub use wire::{
    BudgetRequest, HeadRequest, InlineExample, JobState, JobStatus, LocalizationRequest, MethodName,
};

use super::AppState;
use crate::store::blob::PutMode;
use anyhow::Result;
use dashmap::DashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::broadcast;

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
                run::run_job(&state, &entry);
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
