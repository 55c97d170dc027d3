//! Values loaded from the store on demand and kept in memory up to a byte budget, least recently used out
//! first — so a store may hold far more tasks than memory could. It also remembers keys found absent, so
//! repeated requests for an unknown name cost no store round trip. Entries are dropped when the change
//! journal names their key ([`LoadCache::invalidate`]).
//!
//! A load races with invalidations: a value read from the store just before a change, but inserted just
//! after the change was processed, would be stale. So every load takes a [`Ticket`] before reading, and its
//! insert is refused if any invalidation happened since (the caller still uses what it read, once).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Proof of when a load started (see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// What the cache knows about a key.
pub enum Cached<V> {
    /// In memory.
    Hit(Arc<V>),
    /// Known to be absent from the store.
    Absent,
    /// Not known: load it, then [`LoadCache::insert`] with this ticket.
    Miss(Ticket),
}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Values held.
    pub entries: usize,
    /// Their bytes.
    pub bytes: usize,
    /// The budget.
    pub max_bytes: usize,
    /// Keys remembered absent.
    pub absent: usize,
    /// Lookups answered from memory (values or absence).
    pub hits: u64,
    /// Lookups that had to go to the store.
    pub misses: u64,
    /// Values dropped to stay within the budget.
    pub evictions: u64,
    /// Values dropped because their key changed.
    pub invalidations: u64,
}

struct Slot<V> {
    value: Arc<V>,
    bytes: usize,
    used: u64,
}

struct Inner<V> {
    entries: HashMap<String, Slot<V>>,
    absent: HashSet<String>,
    clock: u64,
    epoch: u64,
    stats: CacheStats,
}

/// The cache.
pub struct LoadCache<V> {
    max_absent: usize,
    inner: Mutex<Inner<V>>,
}

impl<V> LoadCache<V> {
    /// A cache of at most `max_bytes` of values (one value is always kept, whatever its size) and
    /// `max_absent` absent keys.
    pub fn new(max_bytes: usize, max_absent: usize) -> Self {
        Self {
            max_absent,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                absent: HashSet::new(),
                clock: 0,
                epoch: 0,
                stats: CacheStats {
                    max_bytes,
                    ..Default::default()
                },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `key` up (a hit counts as a use).
    pub fn lookup(&self, key: &str) -> Cached<V> {
        let mut g = self.lock();
        g.clock += 1;
        let clock = g.clock;
        if let Some(slot) = g.entries.get_mut(key) {
            slot.used = clock;
            let v = slot.value.clone();
            g.stats.hits += 1;
            return Cached::Hit(v);
        }
        if g.absent.contains(key) {
            g.stats.hits += 1;
            return Cached::Absent;
        }
        g.stats.misses += 1;
        Cached::Miss(Ticket(g.epoch))
    }

    /// The value of `key` if held, without counting a use.
    pub fn peek(&self, key: &str) -> Option<Arc<V>> {
        self.lock().entries.get(key).map(|s| s.value.clone())
    }

    /// A ticket for a load or a write about to start.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Keeps `value` (of `bytes`) for `key`, unless an invalidation happened since `ticket`; returns whether
    /// it was kept. Evicts least recently used values beyond the budget.
    pub fn insert(&self, key: &str, value: Arc<V>, bytes: usize, ticket: Ticket) -> bool {
        let mut g = self.lock();
        if g.epoch != ticket.0 {
            return false;
        }
        g.clock += 1;
        let used = g.clock;
        g.absent.remove(key);
        if let Some(old) = g
            .entries
            .insert(key.to_string(), Slot { value, bytes, used })
        {
            g.stats.bytes -= old.bytes;
        }
        g.stats.bytes += bytes;
        while g.stats.bytes > g.stats.max_bytes && g.entries.len() > 1 {
            let Some(oldest) = g
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(s) = g.entries.remove(&oldest) {
                g.stats.bytes -= s.bytes;
                g.stats.evictions += 1;
            }
        }
        g.stats.entries = g.entries.len();
        true
    }

    /// Remembers that `key` is absent, unless an invalidation happened since `ticket`.
    pub fn insert_absent(&self, key: &str, ticket: Ticket) {
        let mut g = self.lock();
        if g.epoch != ticket.0 {
            return;
        }
        if g.absent.len() >= self.max_absent {
            g.absent.clear();
        }
        if let Some(s) = g.entries.remove(key) {
            g.stats.bytes -= s.bytes;
        }
        g.absent.insert(key.to_string());
        g.stats.entries = g.entries.len();
        g.stats.absent = g.absent.len();
    }

    /// Forgets `keys` (values and absences); loads in flight will not be kept.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut g = self.lock();
        g.epoch += 1;
        for k in keys {
            g.absent.remove(k);
            if let Some(s) = g.entries.remove(k) {
                g.stats.bytes -= s.bytes;
                g.stats.invalidations += 1;
            }
        }
        g.stats.entries = g.entries.len();
        g.stats.absent = g.absent.len();
    }

    /// Forgets everything (after a gap in the journal).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.stats.invalidations += g.entries.len() as u64;
        g.entries.clear();
        g.absent.clear();
        g.stats.bytes = 0;
        g.stats.entries = 0;
        g.stats.absent = 0;
    }

    /// How many values held satisfy `f`.
    pub fn count(&self, f: impl Fn(&V) -> bool) -> usize {
        self.lock().entries.values().filter(|s| f(&s.value)).count()
    }

    /// Keys of the values held.
    pub fn keys(&self) -> Vec<String> {
        self.lock().entries.keys().cloned().collect()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss(c: &LoadCache<u32>, k: &str) -> Ticket {
        match c.lookup(k) {
            Cached::Miss(t) => t,
            _ => panic!("{k}: expected a miss"),
        }
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_out() {
        let c = LoadCache::new(300, 10);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let t = miss(&c, k);
            assert!(c.insert(k, Arc::new(i as u32), 100, t));
        }
        assert!(matches!(c.lookup("a"), Cached::Hit(_)), "a used again");
        let t = miss(&c, "d");
        c.insert("d", Arc::new(3), 100, t);
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (3, 300, 1));
        assert!(c.peek("b").is_none(), "b was least recently used");
        assert!(c.peek("a").is_some() && c.peek("c").is_some());
        let t = miss(&c, "huge");
        c.insert("huge", Arc::new(9), 1000, t);
        assert_eq!(
            c.keys(),
            vec!["huge".to_string()],
            "one value is always kept"
        );
    }

    #[test]
    fn invalidation_beats_a_load_in_flight_and_clears_absence() {
        let c = LoadCache::new(1000, 2);
        let t = miss(&c, "x");
        c.invalidate(["x"]);
        assert!(
            !c.insert("x", Arc::new(1), 10, t),
            "read before the change: not kept"
        );
        let t = miss(&c, "x");
        assert!(c.insert("x", Arc::new(2), 10, t));
        let t = miss(&c, "gone");
        c.insert_absent("gone", t);
        assert!(matches!(c.lookup("gone"), Cached::Absent));
        c.invalidate(["gone", "x"]);
        assert!(
            matches!(c.lookup("gone"), Cached::Miss(_)),
            "a change may have created it"
        );
        assert!(matches!(c.lookup("x"), Cached::Miss(_)));
        for k in ["p", "q", "r"] {
            let t = miss(&c, k);
            c.insert_absent(k, t);
        }
        assert!(c.stats().absent <= 2, "absent keys are bounded");
        let t = miss(&c, "y");
        c.insert("y", Arc::new(3), 10, t);
        c.clear();
        assert_eq!(c.stats().entries, 0);
    }
}
