//! Job records across replicas. A job runs on the replica that accepted it, which writes its record to the store
//! on every change; any other replica reads that record. A queued or running job whose replica is gone (its
//! heartbeat removed, or silent past the bound) is reported failed, and the record is rewritten so only if
//! nobody changed it meanwhile. A cancellation asked for through another replica is left in the store as
//! `jobs/<id>.cancel`, which the running replica picks up on its next heartbeat.

use super::{JobState, JobStatus};
use crate::server::AppState;
use crate::store::blob::{is_conflict, PutMode};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A job's stored record; a job of a replica that is gone is settled as failed first.
pub fn read(state: &AppState, id: &str) -> Result<Option<JobStatus>> {
    let Some((bytes, version)) = state.store.get_job(id)? else {
        return Ok(None);
    };
    let mut st: JobStatus = match serde_json::from_slice(&bytes) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!("job record `{id}` is not readable: {e}");
            return Ok(None);
        }
    };
    if st.ended() {
        return Ok(Some(st));
    }
    let alive = match &st.replica {
        Some(r) => state.store.replicas().is_alive(r)?,
        None => false,
    };
    if alive {
        return Ok(Some(st));
    }
    let who = st
        .replica
        .clone()
        .unwrap_or_else(|| "a server without replica ids".into());
    st.state = JobState::Failed;
    st.error = Some(format!(
        "the replica running it ({who}) stopped before it finished (restart or crash)"
    ));
    st.message = "failed".into();
    st.finished_unix = Some(crate::graft::unix_now());
    match state
        .store
        .put_job(id, &serde_json::to_vec(&st)?, PutMode::Update(version))
    {
        Ok(_) => Ok(Some(st)),
        // Changed meanwhile (by its replica after all, or another reader settling it): what is stored now.
        Err(e) if is_conflict(&e) => Ok(state
            .store
            .get_job(id)?
            .and_then(|(b, _)| serde_json::from_slice(&b).ok())),
        Err(e) => Err(e),
    }
}

/// Asks the replica running job `id` to cancel it.
pub fn request_cancel(state: &AppState, id: &str) -> Result<()> {
    state.store.request_cancel(id)
}

/// Sets the cancellation flag of each of `jobs` (this replica's unfinished jobs) asked to cancel elsewhere.
pub fn apply_cancels(state: &AppState, jobs: &[(String, Arc<AtomicBool>)]) {
    for (id, flag) in jobs {
        match state.store.cancel_requested(id) {
            Ok(true) => {
                tracing::info!("job {id}: cancelled through another replica");
                flag.store(true, Ordering::Relaxed);
                let _ = state.store.clear_cancel(id);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot read cancellation requests: {e:#}"),
        }
    }
}
