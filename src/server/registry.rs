//! Tasks served on demand. The store is the source of truth; this replica keeps the grafts it served recently
//! in a cache bounded in bytes ([`LoadCache`], least recently used out), loads a task on first use, and
//! remembers tasks that are stored but cannot be served (their graft fails validation) and names that are
//! not stored at all. The sync loop ([`super::sync`]) drops entries whose task another replica changed.
//! So 10,000 or 100,000 stored tasks cost store space, and memory only for the tasks in use.

use crate::engine::ServedTask;
use crate::graft::Graft;
use crate::store::cache::{CacheStats, Cached, LoadCache};
use crate::store::service::ServiceStore;
use anyhow::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a lookup found.
pub enum Found {
    /// A served task.
    Task(Arc<ServedTask>),
    /// Stored, but its graft cannot be served: why.
    Failed(String),
    /// Not stored.
    Missing,
}

/// What is cached per name: a servable task, or why the stored graft is not servable.
pub enum Entry {
    /// Served.
    Task(Arc<ServedTask>),
    /// Stored but invalid.
    Failed(String),
}

/// The registry.
pub struct TaskRegistry {
    cache: LoadCache<Entry>,
    next_version: AtomicU64,
}

/// Bytes a graft holds in memory (its indices, values, head and a fixed allowance for the manifest).
pub fn graft_bytes(g: &Graft) -> usize {
    let body: usize = g
        .entries
        .iter()
        .map(|e| e.indices.len() * 4 + e.values.len() * 4 + e.name.len() + 64)
        .sum();
    let head: usize = g
        .head
        .iter()
        .map(|(k, h)| h.values.len() * 4 + k.len() + 64)
        .sum();
    body + head + 4096
}

impl TaskRegistry {
    /// A registry caching at most `max_bytes` of grafts.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            cache: LoadCache::new(max_bytes, 100_000),
            next_version: AtomicU64::new(1),
        }
    }

    /// A version number never used before (the engine caches per name and version).
    pub fn fresh_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    fn served(&self, name: &str, graft: Graft) -> Arc<ServedTask> {
        Arc::new(ServedTask {
            name: name.to_string(),
            graft,
            version: self.fresh_version(),
        })
    }

    /// What memory knows about `name` (None: it has to be looked up in the store).
    pub fn cached(&self, name: &str) -> Option<Found> {
        match self.cache.lookup(name) {
            Cached::Hit(e) => Some(match &*e {
                Entry::Task(t) => Found::Task(t.clone()),
                Entry::Failed(why) => Found::Failed(why.clone()),
            }),
            Cached::Absent => Some(Found::Missing),
            Cached::Miss(_) => None,
        }
    }

    /// Task `name`: from memory, or loaded from `store` and checked by `check` (which says why a graft
    /// cannot be served), and kept in memory when `keep`. Blocking (store I/O).
    pub fn lookup(
        &self,
        store: &ServiceStore,
        name: &str,
        check: &dyn Fn(&[u8]) -> std::result::Result<Graft, String>,
        keep: bool,
    ) -> Result<Found> {
        let ticket = match self.cache.lookup(name) {
            Cached::Hit(e) => {
                return Ok(match &*e {
                    Entry::Task(t) => Found::Task(t.clone()),
                    Entry::Failed(why) => Found::Failed(why.clone()),
                })
            }
            Cached::Absent => return Ok(Found::Missing),
            Cached::Miss(t) => t,
        };
        let Some((bytes, _version)) = store.get_task(name)? else {
            if keep {
                self.cache.insert_absent(name, ticket);
            }
            return Ok(Found::Missing);
        };
        let (entry, size) = match check(&bytes) {
            Ok(graft) => {
                let size = graft_bytes(&graft);
                (Entry::Task(self.served(name, graft)), size)
            }
            Err(why) => {
                tracing::error!("stored task `{name}` cannot be served: {why}");
                let size = 4096 + why.len();
                (Entry::Failed(why), size)
            }
        };
        let found = match &entry {
            Entry::Task(t) => Found::Task(t.clone()),
            Entry::Failed(why) => Found::Failed(why.clone()),
        };
        if keep {
            self.cache.insert(name, Arc::new(entry), size, ticket);
        }
        Ok(found)
    }

    /// After this replica stored `graft` as `name` (ticket taken before the write): serve it from memory.
    pub fn stored(
        &self,
        name: &str,
        graft: Graft,
        ticket: crate::store::cache::Ticket,
    ) -> Arc<ServedTask> {
        let size = graft_bytes(&graft);
        let t = self.served(name, graft);
        if !self
            .cache
            .insert(name, Arc::new(Entry::Task(t.clone())), size, ticket)
        {
            // A change arrived meanwhile: the next use reloads from the store.
            self.cache.invalidate([name]);
        }
        t
    }

    /// A ticket for a write about to start (see [`LoadCache`]).
    pub fn ticket(&self) -> crate::store::cache::Ticket {
        self.cache.ticket()
    }

    /// Forgets `names` (another replica changed them, or this one deleted them).
    pub fn invalidate<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        self.cache.invalidate(names);
    }

    /// Forgets everything (the journal had a gap).
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// A task held in memory, without loading (for metrics and listings).
    pub fn resident(&self, name: &str) -> Option<Arc<ServedTask>> {
        match self.cache.peek(name).as_deref() {
            Some(Entry::Task(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Tasks in memory: (served, stored but not servable).
    pub fn counts(&self) -> (usize, usize) {
        let served = self.cache.count(|e| matches!(e, Entry::Task(_)));
        let failed = self.cache.count(|e| matches!(e, Entry::Failed(_)));
        (served, failed)
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}
