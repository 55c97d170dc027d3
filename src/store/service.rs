//! The service's persistent state in one data directory.
//!
//! ```text
//! <data>/tasks/<name>.graft        one file per task (the graft; its manifest is the task's metadata)
//! <data>/checkpoints/<id>/         uploaded fine-tuned checkpoints (HF directories), id = content hash
//! <data>/jobs/<id>.json            localization jobs' last known state
//! <data>/datasets/<id>.jsonl       uploaded data sets, normalized (one example per line), id = content hash
//! <data>/datasets/<id>.json        their descriptions (labels, counts, splits)
//! ```
//! Every file is written atomically, so a task is either fully there or not at all.

use super::{atomic_dir, atomic_write};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Rule for task and checkpoint names, as shown to users.
pub const NAME_RULE: &str =
    "1 to 64 characters from letters, digits, '-', '_' and '.', not starting with '.'";

/// Whether a task name follows [`NAME_RULE`].
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What the service persists. The filesystem implementation is [`FsStore`]; an object-storage backend can
/// implement the same trait.
pub trait Store: Send + Sync + 'static {
    /// Stores (or replaces) a task's graft file, atomically.
    fn put_task(&self, name: &str, graft: &[u8]) -> Result<()>;
    /// A task's graft file, if the task exists.
    fn get_task(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Names of all stored tasks, sorted.
    fn list_tasks(&self) -> Result<Vec<String>>;
    /// Deletes a task; false when it did not exist.
    fn delete_task(&self, name: &str) -> Result<bool>;
    /// Stores a job record (JSON), atomically.
    fn put_job(&self, id: &str, record: &[u8]) -> Result<()>;
    /// All job records.
    fn list_jobs(&self) -> Result<Vec<Vec<u8>>>;
    /// Directory holding checkpoint `id` (it may not exist).
    fn checkpoint_dir(&self, id: &str) -> PathBuf;
    /// Moves a fully written checkpoint directory into place under `id`.
    fn put_checkpoint(&self, id: &str, fill: &dyn Fn(&Path) -> Result<()>) -> Result<()>;
    /// Deletes a checkpoint; false when it did not exist.
    fn delete_checkpoint(&self, id: &str) -> Result<bool>;
    /// A scratch directory on the same filesystem (for uploads in progress).
    fn scratch_dir(&self) -> PathBuf;
    /// Ids of all stored checkpoints, sorted.
    fn list_checkpoints(&self) -> Result<Vec<String>>;
    /// Stores a data set: its examples (JSON lines) and its description (JSON), atomically (examples first,
    /// so a listed description always has its examples).
    fn put_dataset(&self, id: &str, examples: &[u8], description: &[u8]) -> Result<()>;
    /// A data set's examples, if it exists.
    fn get_dataset(&self, id: &str) -> Result<Option<Vec<u8>>>;
    /// Every stored data set's description.
    fn list_datasets(&self) -> Result<Vec<Vec<u8>>>;
    /// Deletes a data set; false when it did not exist.
    fn delete_dataset(&self, id: &str) -> Result<bool>;
    /// Checks that the store can be read and written.
    fn check(&self) -> Result<()>;
}

/// The filesystem store.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

/// Serialized job record stored by [`Store::put_job`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredJob {
    /// Job id.
    pub id: String,
    /// Raw JSON of the job's public state.
    pub state: serde_json::Value,
}

impl FsStore {
    /// Opens (creating if needed) a data directory.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["tasks", "checkpoints", "jobs", "datasets", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        // Leftovers of writes and uploads interrupted by a crash.
        for sub in ["tasks", "checkpoints", "jobs", "datasets"] {
            let n = super::remove_stale_temporaries(&root.join(sub));
            if n > 0 {
                tracing::info!("removed {n} unfinished temporary file(s) from {sub}/");
            }
        }
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn dataset_path(&self, id: &str, ext: &str) -> Result<PathBuf> {
        if !valid_name(id) {
            bail!("invalid data set id `{id}`");
        }
        Ok(self.root.join("datasets").join(format!("{id}.{ext}")))
    }

    fn task_path(&self, name: &str) -> Result<PathBuf> {
        if !valid_name(name) {
            bail!("invalid task name `{name}`: {NAME_RULE}");
        }
        Ok(self.root.join("tasks").join(format!("{name}.graft")))
    }
}

impl Store for FsStore {
    fn put_task(&self, name: &str, graft: &[u8]) -> Result<()> {
        atomic_write(&self.task_path(name)?, graft)
    }

    fn get_task(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.task_path(name)?;
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn list_tasks(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(self.root.join("tasks"))? {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".graft") {
                if valid_name(stem) {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete_task(&self, name: &str) -> Result<bool> {
        let p = self.task_path(name)?;
        match std::fs::remove_file(&p) {
            Ok(()) => {
                super::sync_dir(&self.root.join("tasks"));
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn put_job(&self, id: &str, record: &[u8]) -> Result<()> {
        if !valid_name(id) {
            bail!("invalid job id `{id}`");
        }
        atomic_write(&self.root.join("jobs").join(format!("{id}.json")), record)
    }

    fn list_jobs(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("jobs"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(std::fs::read(&p)?);
            }
        }
        Ok(out)
    }

    fn checkpoint_dir(&self, id: &str) -> PathBuf {
        self.root.join("checkpoints").join(id)
    }

    fn put_checkpoint(&self, id: &str, fill: &dyn Fn(&Path) -> Result<()>) -> Result<()> {
        if !valid_name(id) {
            bail!("invalid checkpoint id `{id}`");
        }
        atomic_dir(&self.checkpoint_dir(id), true, |d| fill(d))
    }

    fn delete_checkpoint(&self, id: &str) -> Result<bool> {
        if !valid_name(id) {
            return Ok(false);
        }
        let d = self.checkpoint_dir(id);
        if !d.is_dir() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&d)?;
        Ok(true)
    }

    fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn list_checkpoints(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(self.root.join("checkpoints"))? {
            let e = e?;
            let id = e.file_name().to_string_lossy().to_string();
            if valid_name(&id) && e.path().is_dir() {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn put_dataset(&self, id: &str, examples: &[u8], description: &[u8]) -> Result<()> {
        atomic_write(&self.dataset_path(id, "jsonl")?, examples)?;
        atomic_write(&self.dataset_path(id, "json")?, description)
    }

    fn get_dataset(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let p = self.dataset_path(id, "jsonl")?;
        if !self.dataset_path(id, "json")?.is_file() {
            return Ok(None);
        }
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn list_datasets(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("datasets"))? {
            let p = e?.path();
            let visible = p
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
            if visible && p.extension().is_some_and(|x| x == "json") {
                out.push(std::fs::read(&p)?);
            }
        }
        Ok(out)
    }

    fn delete_dataset(&self, id: &str) -> Result<bool> {
        if !valid_name(id) {
            return Ok(false);
        }
        let description = self.dataset_path(id, "json")?;
        let existed = description.is_file();
        // The description goes first, so a half-deleted data set is never listed.
        for p in [description, self.dataset_path(id, "jsonl")?] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        super::sync_dir(&self.root.join("datasets"));
        Ok(existed)
    }

    fn check(&self) -> Result<()> {
        let probe = self.root.join("tmp").join(".ready-probe");
        std::fs::write(&probe, b"ok").context("data directory is not writable")?;
        std::fs::remove_file(&probe)?;
        std::fs::read_dir(self.root.join("tasks")).context("tasks directory is not readable")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trip() {
        assert!(valid_name("sst2-k16.v1"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = FsStore::open(&dir).unwrap();
        s.put_task("a", b"one").unwrap();
        s.put_task("b", b"two").unwrap();
        assert_eq!(s.list_tasks().unwrap(), vec!["a", "b"]);
        assert_eq!(s.get_task("a").unwrap().unwrap(), b"one");
        assert!(s.get_task("zzz").unwrap().is_none());
        assert!(s.put_task("../x", b"").is_err());
        assert!(s.delete_task("a").unwrap());
        assert!(!s.delete_task("a").unwrap());
        s.check().unwrap();
        s.put_dataset("ds-1", b"{}\n", b"{\"id\":\"ds-1\"}")
            .unwrap();
        assert_eq!(s.get_dataset("ds-1").unwrap().unwrap(), b"{}\n");
        assert_eq!(s.list_datasets().unwrap().len(), 1);
        assert!(s.delete_dataset("ds-1").unwrap());
        assert!(!s.delete_dataset("ds-1").unwrap());
        assert!(s.get_dataset("ds-1").unwrap().is_none());
        assert!(s.put_dataset("../x", b"", b"").is_err());
        // A write interrupted by a crash leaves a hidden temporary file; opening the store removes it.
        std::fs::write(dir.join("tasks").join(".t0.graft.tmp-3102"), b"half").unwrap();
        let s = FsStore::open(&dir).unwrap();
        assert_eq!(s.list_tasks().unwrap(), vec!["b"]);
        assert_eq!(std::fs::read_dir(dir.join("tasks")).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
