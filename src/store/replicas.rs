//! Which replicas are alive. Each running server writes its heartbeat, `replicas/<id>.json`, every few seconds
//! and removes it when it stops cleanly; the others list the folder (one request for all replicas) and judge a
//! replica dead when its heartbeat is gone, or has not changed for [`Replicas::dead_after`] — measured on the
//! observer's own monotonic clock, and also by the store's last-modified time, so a heartbeat left behind
//! by a replica killed long ago is dead at first sight. A replica that ran on this machine (same host name, boot
//! and process-id namespace) in a process that no longer exists — its process id free, or taken by a process
//! started at another time — is dead at once, so a replica restarted in place settles its predecessor's jobs
//! at start-up. What a dead replica was doing (a localization job) can then be reported failed
//! by any other.

use super::blob::{PutMode, Store, Version};
use super::journal::unix_ms;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The folder of the heartbeats.
pub const FOLDER: &str = "replicas/";

/// Heartbeats this old are removed by whoever sees them.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a heartbeat says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The replica's id.
    pub id: String,
    /// When it started (ms since the Unix epoch).
    pub started_unix_ms: u64,
    /// When it wrote this beat.
    pub unix_ms: u64,
    /// Its version of skillgraft.
    pub version: String,
    /// Its host name.
    #[serde(default)]
    pub host: String,
    /// Its machine's boot id (processes of one boot share it, containers included).
    #[serde(default)]
    pub boot_id: String,
    /// Its process-id namespace (`/proc/self/ns/pid`), so processes of other containers are never judged.
    #[serde(default)]
    pub pid_ns: String,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// When that process started (clock ticks after boot), so a reused process id is told apart.
    #[serde(default)]
    pub process_start: u64,
}

/// When process `pid` of this machine started (clock ticks after boot); None when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the command name, which may hold spaces, start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// This machine's host name, boot id and process-id namespace.
fn machine() -> (String, String, String) {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    (host, boot, pid_ns)
}

/// A fresh replica id: the host name (a pod's name on Kubernetes) and a random suffix, so a restart is a new
/// replica.
pub fn new_replica_id() -> String {
    let host: String = machine()
        .0
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "replica".into()
    } else {
        host
    };
    format!("{host}-{:08x}", rand::random::<u32>())
}

#[derive(Debug)]
struct Seen {
    version: Version,
    changed: Instant,
    modified_ms: u64,
}

/// This replica's view of the others.
pub struct Replicas {
    blobs: Arc<dyn Store>,
    id: String,
    started_unix_ms: u64,
    dead_after: Duration,
    seen: Mutex<Option<HashMap<String, Seen>>>,
}

impl Replicas {
    /// This replica (`id`) in store `blobs`; others are dead after `dead_after` without a beat.
    pub fn new(blobs: Arc<dyn Store>, id: String, dead_after: Duration) -> Self {
        Self {
            blobs,
            id,
            started_unix_ms: unix_ms(),
            dead_after,
            seen: Mutex::new(None),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long a silent replica counts as alive.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    fn key(id: &str) -> String {
        format!("{FOLDER}{id}.json")
    }

    /// Writes this replica's heartbeat.
    pub fn beat(&self) -> Result<()> {
        let (host, boot_id, pid_ns) = machine();
        let hb = Heartbeat {
            id: self.id.clone(),
            started_unix_ms: self.started_unix_ms,
            unix_ms: unix_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            host,
            boot_id,
            pid_ns,
            pid: std::process::id(),
            process_start: process_start(std::process::id()).unwrap_or(0),
        };
        self.blobs.put(
            &Self::key(&self.id),
            &serde_json::to_vec(&hb)?,
            PutMode::Overwrite,
        )?;
        Ok(())
    }

    /// Removes this replica's heartbeat (a clean stop).
    pub fn leave(&self) -> Result<()> {
        self.blobs.delete(&Self::key(&self.id))
    }

    /// Lists the heartbeats and notes which changed since the last look.
    pub fn observe(&self) -> Result<()> {
        let listed = self.blobs.list(FOLDER, None)?;
        let now = Instant::now();
        let wall = unix_ms();
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let old = guard.take().unwrap_or_default();
        let mut next = HashMap::new();
        for m in listed {
            let Some(id) = m
                .key
                .strip_prefix(FOLDER)
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            if wall.saturating_sub(m.modified_ms) > FORGET_AFTER.as_millis() as u64 && id != self.id
            {
                let _ = self.blobs.delete(&m.key);
                continue;
            }
            let changed = match old.get(id) {
                Some(s) if s.version == m.version => s.changed,
                _ => now,
            };
            next.insert(
                id.to_string(),
                Seen {
                    version: m.version,
                    changed,
                    modified_ms: m.modified_ms,
                },
            );
        }
        *guard = Some(next);
        Ok(())
    }

    /// Whether replica `id` is alive as of the last [`observe`](Self::observe) (observing first if never
    /// done). This replica is always alive.
    pub fn is_alive(&self, id: &str) -> Result<bool> {
        if id == self.id {
            return Ok(true);
        }
        let observed = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !observed {
            self.observe()?;
        }
        let guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = guard.as_ref().and_then(|m| m.get(id)) else {
            return Ok(false);
        };
        let silent_here = s.changed.elapsed() >= self.dead_after;
        let silent_at_store =
            unix_ms().saturating_sub(s.modified_ms) >= self.dead_after.as_millis() as u64;
        if silent_here || silent_at_store {
            return Ok(false);
        }
        drop(guard);
        Ok(!self.gone_from_this_machine(id)?)
    }

    /// Whether replica `id` ran on this machine (same host name, boot and process-id namespace) in a process
    /// that no longer exists: no process has its id, or the one that has it started at another time (a reused
    /// id).
    fn gone_from_this_machine(&self, id: &str) -> Result<bool> {
        let Some((bytes, _)) = self.blobs.get(&Self::key(id))? else {
            return Ok(true);
        };
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(&bytes) else {
            return Ok(false);
        };
        let (host, boot, pid_ns) = machine();
        if hb.boot_id.is_empty()
            || hb.pid_ns.is_empty()
            || hb.host != host
            || hb.boot_id != boot
            || hb.pid_ns != pid_ns
            || hb.process_start == 0
        {
            return Ok(false);
        }
        Ok(process_start(hb.pid) != Some(hb.process_start))
    }

    /// Ids of the replicas alive as of the last observation (this one included).
    pub fn alive(&self) -> Vec<String> {
        let ids: Vec<String> = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<String> = ids
            .into_iter()
            .filter(|id| self.is_alive(id).unwrap_or(false))
            .collect();
        if !out.contains(&self.id) {
            out.push(self.id.clone());
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob::DirStore;

    #[test]
    fn a_replica_that_stops_beating_is_dead_after_the_bound() {
        let d = std::env::temp_dir().join(format!("sg-replicas-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs: Arc<dyn Store> = Arc::new(DirStore::open(&d).unwrap());
        let dead_after = Duration::from_millis(600);
        let a = Replicas::new(blobs.clone(), "a-1".into(), dead_after);
        let b = Replicas::new(blobs.clone(), "b-1".into(), dead_after);
        let c = Replicas::new(blobs.clone(), "c-1".into(), dead_after);
        a.beat().unwrap();
        b.beat().unwrap();
        c.beat().unwrap();
        b.observe().unwrap();
        assert!(b.is_alive("a-1").unwrap());
        assert!(b.is_alive("b-1").unwrap());
        assert!(!b.is_alive("nobody").unwrap());
        c.leave().unwrap();
        b.observe().unwrap();
        assert!(!b.is_alive("c-1").unwrap(), "a clean stop is seen at once");
        // a keeps beating for a while, then stops (as if killed).
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(200));
            a.beat().unwrap();
            b.observe().unwrap();
            assert!(b.is_alive("a-1").unwrap());
        }
        let stopped = Instant::now();
        while b.is_alive("a-1").unwrap() {
            assert!(stopped.elapsed() < dead_after * 3, "never declared dead");
            std::thread::sleep(Duration::from_millis(50));
            b.observe().unwrap();
        }
        assert!(stopped.elapsed() >= dead_after / 2);
        assert_eq!(b.alive(), vec!["b-1".to_string()]);
        // A fresh heartbeat of a process of this machine that no longer exists: dead at once.
        let (host, boot_id, pid_ns) = machine();
        let ghost = Heartbeat {
            id: "ghost-1".into(),
            started_unix_ms: unix_ms(),
            unix_ms: unix_ms(),
            version: String::new(),
            host,
            boot_id,
            pid_ns: pid_ns.clone(),
            pid: u32::MAX - 1,
            process_start: 1,
        };
        // The same process id in another process-id namespace (another container) is not judged here; a
        // live process of this machine (this one) is alive.
        let elsewhere = Heartbeat {
            id: "elsewhere-1".into(),
            pid_ns: "pid:[1]".into(),
            ..ghost.clone()
        };
        let me = std::process::id();
        let live = Heartbeat {
            id: "live-1".into(),
            pid: me,
            process_start: process_start(me).unwrap(),
            ..ghost.clone()
        };
        for hb in [&ghost, &elsewhere, &live] {
            let bytes = serde_json::to_vec(hb).unwrap();
            blobs
                .put(&Replicas::key(&hb.id), &bytes, PutMode::Overwrite)
                .unwrap();
        }
        b.observe().unwrap();
        assert!(!b.is_alive("ghost-1").unwrap(), "its process is gone");
        assert!(b.is_alive("elsewhere-1").unwrap(), "another namespace");
        assert!(b.is_alive("live-1").unwrap(), "a live process");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
