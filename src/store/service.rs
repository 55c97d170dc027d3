//! The service's state in a store that several replicas may share: tasks, job records and checkpoints as
//! values of a [`Store`] backend (a local directory, or S3-compatible object storage), every task write and
//! deletion recorded in the change [`Journal`], and this replica's heartbeat among the [`Replicas`].
//!
//! ```text
//! tasks/<name>.graft          one value per task (the graft; its manifest is the task's metadata)
//! jobs/<id>.json              localization jobs' last known state (with the replica running them)
//! checkpoints/<id>            uploaded fine-tuned checkpoints (HF directories), id = content hash; a directory
//!                             in a local store, one tar object (`<id>.tar`) in object storage
//! datasets/<id>.jsonl         uploaded data sets, normalized (one example per line), id = content hash
//! datasets/<id>.json          their descriptions (labels, counts, splits)
//! changes/<n>.json            the change journal
//! replicas/<id>.json          heartbeats
//! ```
//! Locally, `<state dir>/tmp` holds uploads in progress and `<state dir>/cache` checkpoints fetched from
//! object storage.

use super::blob::{DirStore, PutMode, Store, Version};
use super::journal::Journal;
use super::object::S3Store;
use super::replicas::Replicas;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// Change records kept in the journal (a replica that falls further behind reloads everything).
pub const JOURNAL_KEEP: u64 = 4096;

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A local directory.
    Dir(PathBuf),
    /// `s3://bucket/prefix`.
    S3(String),
}

impl StoreSpec {
    /// `s3://bucket/prefix`, or a directory path.
    pub fn parse(s: &str) -> Result<Self> {
        if s.starts_with("s3://") {
            super::object::parse_s3_url(s)?;
            return Ok(Self::S3(s.to_string()));
        }
        if s.contains("://") {
            bail!("unsupported store `{s}`: give a directory or s3://bucket/prefix");
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }
}

/// The store of one replica.
pub struct ServiceStore {
    blobs: Arc<dyn Store>,
    journal: Journal,
    replicas: Replicas,
    local: PathBuf,
    remote: bool,
}

fn task_key(name: &str) -> Result<String> {
    if !valid_name(name) {
        bail!("invalid task name `{name}`: {NAME_RULE}");
    }
    Ok(format!("tasks/{name}.graft"))
}

/// The task named by a store key (`tasks/<name>.graft`), if it is one.
pub fn task_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("tasks/")?.strip_suffix(".graft")
}

fn id_key(kind: &str, id: &str, ext: &str) -> Result<String> {
    if !valid_name(id) {
        bail!("invalid {kind} id `{id}`");
    }
    Ok(format!("{kind}/{id}{ext}"))
}

impl ServiceStore {
    /// Opens the store `spec` for replica `replica_id`, with local scratch and cache under `local`.
    pub fn open(
        spec: &StoreSpec,
        local: &Path,
        replica_id: String,
        dead_after: Duration,
    ) -> Result<Self> {
        let (blobs, remote): (Arc<dyn Store>, bool) = match spec {
            StoreSpec::Dir(d) => (Arc::new(DirStore::open(d)?), false),
            StoreSpec::S3(url) => (Arc::new(S3Store::open(url)?), true),
        };
        Self::with_blobs(blobs, remote, local, replica_id, dead_after)
    }

    /// A store over `blobs` (`remote`: values are not local files).
    pub fn with_blobs(
        blobs: Arc<dyn Store>,
        remote: bool,
        local: &Path,
        replica_id: String,
        dead_after: Duration,
    ) -> Result<Self> {
        for sub in ["tmp", "cache"] {
            let d = local.join(sub);
            std::fs::create_dir_all(&d).with_context(|| {
                format!(
                    "cannot create {} (the state directory must be writable by this user)",
                    d.display()
                )
            })?;
        }
        // Leftovers of uploads interrupted by a crash (this directory is this replica's own).
        if let Ok(entries) = std::fs::read_dir(local.join("tmp")) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(Self {
            journal: Journal::new(blobs.clone(), JOURNAL_KEEP),
            replicas: Replicas::new(blobs.clone(), replica_id, dead_after),
            blobs,
            local: local.to_path_buf(),
            remote,
        })
    }

    /// The backend.
    pub fn blobs(&self) -> &Arc<dyn Store> {
        &self.blobs
    }

    /// The change journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The replicas.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// Where the state lives, for logs.
    pub fn location(&self) -> String {
        self.blobs.location()
    }

    /// Whether the values live in object storage (not this machine's disk).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Stores (or replaces) a task's graft and records the change.
    pub fn put_task(&self, name: &str, graft: &[u8]) -> Result<Version> {
        let key = task_key(name)?;
        let v = self.blobs.put(&key, graft, PutMode::Overwrite)?;
        self.journal.record(&key, false, self.replicas.id())?;
        Ok(v)
    }

    /// A task's graft and its version, if the task exists.
    pub fn get_task(&self, name: &str) -> Result<Option<(Vec<u8>, Version)>> {
        self.blobs.get(&task_key(name)?)
    }

    /// Names of all stored tasks, sorted.
    pub fn list_tasks(&self) -> Result<Vec<String>> {
        Ok(self
            .blobs
            .list("tasks/", None)?
            .iter()
            .filter_map(|m| task_of_key(&m.key))
            .filter(|n| valid_name(n))
            .map(str::to_string)
            .collect())
    }

    /// Deletes a task and records the change; false when it did not exist.
    pub fn delete_task(&self, name: &str) -> Result<bool> {
        let key = task_key(name)?;
        if self.blobs.head(&key)?.is_none() {
            return Ok(false);
        }
        self.blobs.delete(&key)?;
        self.journal.record(&key, true, self.replicas.id())?;
        Ok(true)
    }

    /// Stores a job record (JSON); `mode` makes it conditional.
    pub fn put_job(&self, id: &str, record: &[u8], mode: PutMode) -> Result<Version> {
        self.blobs.put(&id_key("jobs", id, ".json")?, record, mode)
    }

    /// A job record and its version.
    pub fn get_job(&self, id: &str) -> Result<Option<(Vec<u8>, Version)>> {
        self.blobs.get(&id_key("jobs", id, ".json")?)
    }

    /// Ids of all job records.
    pub fn list_job_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .blobs
            .list("jobs/", None)?
            .iter()
            .filter_map(|m| m.key.strip_prefix("jobs/")?.strip_suffix(".json"))
            .filter(|id| valid_name(id))
            .map(str::to_string)
            .collect())
    }

    /// Leaves a request to cancel job `id` for the replica running it.
    pub fn request_cancel(&self, id: &str) -> Result<()> {
        self.blobs
            .put(&id_key("jobs", id, ".cancel")?, b"{}", PutMode::Overwrite)?;
        Ok(())
    }

    /// Whether someone asked to cancel job `id`.
    pub fn cancel_requested(&self, id: &str) -> Result<bool> {
        Ok(self.blobs.head(&id_key("jobs", id, ".cancel")?)?.is_some())
    }

    /// Removes the request to cancel job `id`.
    pub fn clear_cancel(&self, id: &str) -> Result<()> {
        self.blobs.delete(&id_key("jobs", id, ".cancel")?)
    }

    /// Stores checkpoint `id`: `fill` writes its files into a fresh directory, which then goes in as one unit.
    pub fn put_checkpoint(&self, id: &str, fill: &dyn Fn(&Path) -> Result<()>) -> Result<()> {
        let key = id_key("checkpoints", id, "")?;
        let staging = tempfile::Builder::new()
            .prefix("checkpoint.")
            .tempdir_in(self.scratch_dir())?;
        let dir = staging.path().join(id);
        std::fs::create_dir_all(&dir)?;
        fill(&dir)?;
        self.blobs.put_tree(&key, &dir)
    }

    /// A local directory with checkpoint `id` (fetched from object storage into the cache when needed).
    pub fn checkpoint_dir(&self, id: &str) -> Result<Option<PathBuf>> {
        self.blobs
            .get_tree(&id_key("checkpoints", id, "")?, &self.local.join("cache"))
    }

    /// Whether checkpoint `id` exists.
    pub fn has_checkpoint(&self, id: &str) -> Result<bool> {
        if !valid_name(id) {
            return Ok(false);
        }
        self.blobs.has_tree(&id_key("checkpoints", id, "")?)
    }

    /// Deletes a checkpoint (and this replica's cached copy); false when it did not exist.
    pub fn delete_checkpoint(&self, id: &str) -> Result<bool> {
        if !valid_name(id) {
            return Ok(false);
        }
        let key = id_key("checkpoints", id, "")?;
        if self.remote {
            let _ = std::fs::remove_dir_all(self.local.join("cache").join(&key));
            let _ = std::fs::remove_file(self.local.join("cache").join(format!("{key}.version")));
        }
        self.blobs.delete_tree(&key)
    }

    /// Ids of all stored checkpoints, sorted (a directory of files in a local store, `<id>.tar` in object
    /// storage).
    pub fn list_checkpoints(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .blobs
            .list("checkpoints/", None)?
            .iter()
            .filter_map(|m| {
                let rest = m.key.strip_prefix("checkpoints/")?;
                match rest.split_once('/') {
                    Some((id, _)) => Some(id),
                    None => rest.strip_suffix(".tar"),
                }
            })
            .filter(|id| valid_name(id))
            .map(str::to_string)
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Stores a data set: its examples (JSON lines) and its description (JSON); examples first, so a listed
    /// description always has its examples.
    pub fn put_dataset(&self, id: &str, examples: &[u8], description: &[u8]) -> Result<()> {
        self.blobs.put(
            &id_key("datasets", id, ".jsonl")?,
            examples,
            PutMode::Overwrite,
        )?;
        self.blobs.put(
            &id_key("datasets", id, ".json")?,
            description,
            PutMode::Overwrite,
        )?;
        Ok(())
    }

    /// A data set's examples, if it exists (its description is there).
    pub fn get_dataset(&self, id: &str) -> Result<Option<Vec<u8>>> {
        if !valid_name(id)
            || self
                .blobs
                .head(&id_key("datasets", id, ".json")?)?
                .is_none()
        {
            return Ok(None);
        }
        Ok(self
            .blobs
            .get(&id_key("datasets", id, ".jsonl")?)?
            .map(|(b, _)| b))
    }

    /// Every stored data set's description.
    pub fn list_datasets(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for m in self.blobs.list("datasets/", None)? {
            if m.key.ends_with(".json") {
                // One deleted since the listing is left out.
                if let Some((b, _)) = self.blobs.get(&m.key)? {
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a data set (its description first, so a half-deleted one is never listed); false when it did
    /// not exist.
    pub fn delete_dataset(&self, id: &str) -> Result<bool> {
        if !valid_name(id) {
            return Ok(false);
        }
        let description = id_key("datasets", id, ".json")?;
        let existed = self.blobs.head(&description)?.is_some();
        self.blobs.delete(&description)?;
        self.blobs.delete(&id_key("datasets", id, ".jsonl")?)?;
        Ok(existed)
    }

    /// A local scratch directory (uploads in progress).
    pub fn scratch_dir(&self) -> PathBuf {
        self.local.join("tmp")
    }

    /// Checks cheaply that the local directory can be written and the store read (one small request).
    pub fn check(&self) -> Result<()> {
        let probe = self.scratch_dir().join(".ready-probe");
        std::fs::write(&probe, b"ok").context("the local state directory is not writable")?;
        std::fs::remove_file(&probe)?;
        self.blobs
            .head(&format!(
                "{}{}.json",
                super::replicas::FOLDER,
                self.replicas.id()
            ))
            .context("the store cannot be read")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::Since;

    #[test]
    fn names() {
        assert!(valid_name("sst2-k16.v1"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn tasks_jobs_and_checkpoints_with_changes_recorded() {
        let d = std::env::temp_dir().join(format!("sg-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let open = |id: &str| {
            ServiceStore::open(
                &StoreSpec::Dir(d.join("state")),
                &d.join(format!("local-{id}")),
                id.to_string(),
                Duration::from_secs(5),
            )
            .unwrap()
        };
        let (a, b) = (open("a"), open("b"));
        a.put_task("t1", b"one").unwrap();
        b.put_task("t2", b"two").unwrap();
        assert_eq!(a.list_tasks().unwrap(), vec!["t1", "t2"]);
        assert_eq!(b.get_task("t1").unwrap().unwrap().0, b"one");
        assert!(a.delete_task("t2").unwrap());
        assert!(!b.delete_task("t2").unwrap());
        assert!(a.put_task("../x", b"").is_err());
        let Since::Changes(c) = b.journal().since(0).unwrap() else {
            panic!("gap")
        };
        let seen: Vec<(String, bool, String)> = c
            .iter()
            .map(|c| (c.key.clone(), c.deleted, c.replica.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("tasks/t1.graft".into(), false, "a".into()),
                ("tasks/t2.graft".into(), false, "b".into()),
                ("tasks/t2.graft".into(), true, "a".into()),
            ]
        );
        a.put_job("job-1", b"{}", PutMode::Create).unwrap();
        assert_eq!(b.list_job_ids().unwrap(), vec!["job-1".to_string()]);
        assert!(!a.cancel_requested("job-1").unwrap());
        b.request_cancel("job-1").unwrap();
        assert!(a.cancel_requested("job-1").unwrap());
        assert_eq!(b.list_job_ids().unwrap().len(), 1, "a request is no record");
        a.clear_cancel("job-1").unwrap();
        assert!(!b.cancel_requested("job-1").unwrap());
        a.put_checkpoint("c1", &|dir| {
            Ok(std::fs::write(dir.join("config.json"), b"{}")?)
        })
        .unwrap();
        let dir = b.checkpoint_dir("c1").unwrap().unwrap();
        assert!(dir.join("config.json").is_file());
        assert_eq!(b.list_checkpoints().unwrap(), vec!["c1".to_string()]);
        a.put_dataset("ds-1", b"{}\n", b"{\"id\":\"ds-1\"}")
            .unwrap();
        assert_eq!(b.get_dataset("ds-1").unwrap().unwrap(), b"{}\n");
        assert_eq!(
            b.list_datasets().unwrap(),
            vec![b"{\"id\":\"ds-1\"}".to_vec()]
        );
        assert!(b.delete_dataset("ds-1").unwrap());
        assert!(!a.delete_dataset("ds-1").unwrap());
        assert!(a.get_dataset("ds-1").unwrap().is_none());
        assert!(a.list_datasets().unwrap().is_empty());
        assert!(a.put_dataset("../x", b"", b"").is_err());
        assert!(a.get_dataset("../x").unwrap().is_none());
        assert!(b.delete_checkpoint("c1").unwrap());
        assert!(!a.has_checkpoint("c1").unwrap());
        a.check().unwrap();
        a.replicas().beat().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
