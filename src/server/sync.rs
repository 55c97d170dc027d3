//! Keeps this replica in step with the others that share its store. A thread of its own:
//! - every `interval` it reads the change journal after the last record it saw and drops the cached tasks that
//!   another replica created, replaced or deleted (everything, after a gap), so a change made anywhere is served
//!   everywhere within about one interval plus one load;
//! - every `heartbeat` it writes this replica's heartbeat, looks at the others', and applies cancellations of
//!   its own jobs asked for through other replicas.
//!
//! On shutdown it removes the heartbeat, so the others see at once that this replica's jobs will not finish.

use super::AppState;
use crate::store::journal::Since;
use crate::store::service::task_of_key;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often to look.
#[derive(Debug, Clone, Copy)]
pub struct SyncConfig {
    /// Journal polls.
    pub interval: Duration,
    /// Heartbeats (and looks at the other replicas).
    pub heartbeat: Duration,
}

/// Counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// The last journal record applied.
    pub seq: AtomicU64,
    /// Polls done.
    pub polls: AtomicU64,
    /// Tasks dropped because another replica changed them.
    pub invalidated: AtomicU64,
    /// Gaps (everything dropped).
    pub gaps: AtomicU64,
    /// Polls or heartbeats that failed (store unreachable).
    pub errors: AtomicU64,
}

/// Starts the thread; it ends when `stop` is set or the state is dropped.
pub fn start(state: Weak<AppState>, start_seq: u64, config: SyncConfig, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("store-sync".into())
        .spawn(move || run(state, start_seq, config, stop));
    if let Err(e) = spawned {
        tracing::error!("cannot start the store sync thread: {e}");
    }
}

fn run(state: Weak<AppState>, mut cursor: u64, config: SyncConfig, stop: Arc<AtomicBool>) {
    let mut next_beat = Instant::now();
    loop {
        let Some(s) = state.upgrade() else { return };
        if stop.load(Ordering::Relaxed) {
            if let Err(e) = s.store.replicas().leave() {
                tracing::warn!("cannot remove this replica's heartbeat: {e:#}");
            }
            return;
        }
        s.sync.polls.fetch_add(1, Ordering::Relaxed);
        match s.store.journal().since(cursor) {
            Ok(Since::Changes(changes)) => {
                let me = s.store.replicas().id().to_string();
                let names: Vec<&str> = changes
                    .iter()
                    .filter(|c| c.replica != me)
                    .filter_map(|c| task_of_key(&c.key))
                    .collect();
                if !names.is_empty() {
                    s.sync
                        .invalidated
                        .fetch_add(names.len() as u64, Ordering::Relaxed);
                    s.registry.invalidate(names.iter().copied());
                }
                if let Some(last) = changes.last() {
                    cursor = last.seq;
                }
            }
            Ok(Since::Gap(head)) => {
                tracing::info!(
                    "change journal skipped ahead to {head}: dropping every cached task"
                );
                s.sync.gaps.fetch_add(1, Ordering::Relaxed);
                s.registry.clear();
                cursor = head;
            }
            Err(e) => {
                s.sync.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot read the change journal: {e:#}");
            }
        }
        s.sync.seq.store(cursor, Ordering::Relaxed);
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + config.heartbeat;
            let beat = s
                .store
                .replicas()
                .beat()
                .and_then(|_| s.store.replicas().observe());
            if let Err(e) = beat {
                s.sync.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot write or read heartbeats: {e:#}");
            }
            s.jobs.apply_remote_cancels(&s);
        }
        drop(s);
        std::thread::sleep(config.interval);
    }
}
