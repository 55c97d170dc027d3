//! The change journal: one small record per write to a shared value (a task created, replaced or deleted; any
//! key), numbered densely in commit order, so every replica learns what changed since it last looked by listing
//! the records after the last number it saw — one cheap LIST per poll, whatever the number of stored values.
//!
//! Record `n` is `changes/<n, 20 digits>.json`, created with create-if-absent: of two writers racing for the same
//! number one wins and the other takes the next, and number `n + 1` is only ever tried after `n` was seen to
//! exist, so a reader that has seen `n` never misses a record that commits later. Records are written after the
//! value they describe, so a reader that sees a record and then reads the value sees that write or a newer one.
//! Old records are removed (the newest [`Journal::keep`] stay); a reader that finds a hole where its next
//! records were is told so ([`Since::Gap`]) and must drop everything it cached.

use super::blob::{is_conflict, PutMode, Store};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The folder of the records.
pub const FOLDER: &str = "changes/";

/// Every how many records the writer of one removes the old ones.
const COMPACT_EVERY: u64 = 64;

/// Most records a reader fetches in one poll; more is reported as a gap (drop the cache) rather than read.
pub const MAX_READ: usize = 256;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Its number.
    pub seq: u64,
    /// The key whose value changed.
    pub key: String,
    /// Whether the value was deleted (else written).
    pub deleted: bool,
    /// The replica that made the change.
    pub replica: String,
    /// When (milliseconds since the Unix epoch, the writer's clock).
    pub unix_ms: u64,
}

/// What happened since a reader's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// These changes, oldest first (empty: nothing).
    Changes(Vec<Change>),
    /// Records after the cursor were removed, or there are too many to read: forget every cached value. The
    /// newest record's number is the new cursor.
    Gap(u64),
}

/// The journal of one store.
pub struct Journal {
    blobs: Arc<dyn Store>,
    keep: u64,
    hint: AtomicU64,
}

/// The key of record `seq`.
pub fn record_key(seq: u64) -> String {
    format!("{FOLDER}{seq:020}.json")
}

fn seq_of(key: &str) -> Option<u64> {
    key.strip_prefix(FOLDER)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    /// The journal of `blobs`, keeping the newest `keep` records (at least 2 × the compaction step).
    pub fn new(blobs: Arc<dyn Store>, keep: u64) -> Self {
        Self {
            blobs,
            keep: keep.max(2 * COMPACT_EVERY),
            hint: AtomicU64::new(0),
        }
    }

    /// How many records are kept.
    pub fn keep(&self) -> u64 {
        self.keep
    }

    /// The newest record's number (0 when there is none).
    pub fn head(&self) -> Result<u64> {
        let hint = self.hint.load(Ordering::Relaxed);
        let after = (hint > 0).then(|| record_key(hint));
        let newest = self
            .blobs
            .list(FOLDER, after.as_deref())?
            .iter()
            .filter_map(|m| seq_of(&m.key))
            .max()
            .unwrap_or(0)
            .max(hint);
        self.hint.fetch_max(newest, Ordering::Relaxed);
        Ok(newest)
    }

    /// Records that `key` was written (or deleted) by `replica`; returns the record's number.
    pub fn record(&self, key: &str, deleted: bool, replica: &str) -> Result<u64> {
        for _ in 0..1000 {
            let seq = self.head()? + 1;
            let change = Change {
                seq,
                key: key.to_string(),
                deleted,
                replica: replica.to_string(),
                unix_ms: unix_ms(),
            };
            let bytes = serde_json::to_vec(&change)?;
            match self.blobs.put(&record_key(seq), &bytes, PutMode::Create) {
                Ok(_) => {
                    self.hint.fetch_max(seq, Ordering::Relaxed);
                    if seq.is_multiple_of(COMPACT_EVERY) {
                        if let Err(e) = self.compact(seq) {
                            tracing::warn!("cannot remove old change records: {e:#}");
                        }
                    }
                    return Ok(seq);
                }
                Err(e) if is_conflict(&e) => {
                    // Another writer took this number: look again.
                    self.hint.fetch_max(seq, Ordering::Relaxed);
                }
                Err(e) => return Err(e).context("cannot record a change"),
            }
        }
        bail!("cannot record a change: the journal is too busy")
    }

    /// The changes after record `cursor` (0: from the first kept record).
    pub fn since(&self, cursor: u64) -> Result<Since> {
        let after = (cursor > 0).then(|| record_key(cursor));
        let seqs: Vec<(u64, String)> = self
            .blobs
            .list(FOLDER, after.as_deref())?
            .into_iter()
            .filter_map(|m| seq_of(&m.key).map(|s| (s, m.key)))
            .collect();
        let Some(&(first, _)) = seqs.first() else {
            return Ok(Since::Changes(Vec::new()));
        };
        let newest = seqs.last().map_or(cursor, |(s, _)| *s);
        self.hint.fetch_max(newest, Ordering::Relaxed);
        if first != cursor + 1 || seqs.len() > MAX_READ {
            return Ok(Since::Gap(newest));
        }
        let mut out = Vec::with_capacity(seqs.len());
        for (seq, key) in seqs {
            match self.blobs.get(&key)? {
                Some((bytes, _)) => {
                    let c: Change = serde_json::from_slice(&bytes)
                        .with_context(|| format!("change record {seq} is not valid"))?;
                    out.push(c);
                }
                // Removed between the listing and the read: compaction ran past us.
                None => return Ok(Since::Gap(newest)),
            }
        }
        Ok(Since::Changes(out))
    }

    /// Removes records older than the newest `keep` before `upto`.
    fn compact(&self, upto: u64) -> Result<()> {
        let Some(limit) = upto.checked_sub(self.keep) else {
            return Ok(());
        };
        for m in self.blobs.list(FOLDER, None)? {
            match seq_of(&m.key) {
                Some(s) if s <= limit => self.blobs.delete(&m.key)?,
                _ => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blob::DirStore;

    #[test]
    fn records_are_dense_under_racing_writers_and_readers_see_each_once() {
        let d = std::env::temp_dir().join(format!("sg-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs: Arc<dyn Store> = Arc::new(DirStore::open(&d).unwrap());
        let reader = Journal::new(blobs.clone(), 1000);
        assert_eq!(reader.since(0).unwrap(), Since::Changes(vec![]));
        let seqs: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|w| {
                    let blobs = blobs.clone();
                    s.spawn(move || {
                        // Each writer has its own journal handle, like separate replicas.
                        let j = Journal::new(blobs, 1000);
                        (0..10)
                            .map(|i| {
                                j.record(&format!("tasks/w{w}-{i}.graft"), false, "r")
                                    .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=40).collect::<Vec<_>>(),
            "numbers are dense and unique"
        );
        let Since::Changes(all) = reader.since(0).unwrap() else {
            panic!("no gap expected");
        };
        assert_eq!(all.len(), 40);
        let Since::Changes(tail) = reader.since(38).unwrap() else {
            panic!("no gap expected");
        };
        assert_eq!(tail.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![39, 40]);
        assert_eq!(reader.head().unwrap(), 40);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_leaves_a_gap_that_readers_detect() {
        let d = std::env::temp_dir().join(format!("sg-journal-gap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs: Arc<dyn Store> = Arc::new(DirStore::open(&d).unwrap());
        let j = Journal::new(blobs.clone(), 0);
        assert_eq!(j.keep(), 2 * COMPACT_EVERY);
        for i in 0..(3 * COMPACT_EVERY) {
            j.record(&format!("tasks/t{i}.graft"), i.is_multiple_of(2), "r")
                .unwrap();
        }
        let left = blobs.list(FOLDER, None).unwrap().len() as u64;
        assert!(
            left <= 2 * COMPACT_EVERY + COMPACT_EVERY,
            "{left} records kept"
        );
        assert_eq!(j.since(3).unwrap(), Since::Gap(3 * COMPACT_EVERY));
        let Since::Changes(c) = j.since(3 * COMPACT_EVERY - 1).unwrap() else {
            panic!("no gap expected");
        };
        assert_eq!(c.len(), 1);
        assert!(c[0].deleted == (3 * COMPACT_EVERY - 1).is_multiple_of(2));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
