//! The service's state in a store that several replicas may share: tasks, job records and checkpoints as
//! values of a [`Store`] backend (a local directory, or S3-compatible object storage), every task write and
//! deletion recorded in the change [`Journal`], and this replica's heartbeat among the [`Replicas`].
//!
//! ```text
//! tasks/<name>.graft          one value per task (the graft; its manifest is the task's metadata)
//! jobs/<id>.json              localization jobs' last known state (with the replica running them)
//! checkpoints/<id>            uploaded fine-tuned checkpoints (HF directories), id = content hash; a directory
//!                             in a local store, one tar object (`<id>.tar`) in object storage
//! checkpoint-uploaders/<id>.json  who uploaded checkpoint <id> (one entry per key, however often it uploaded
//!                             it), written by conditional writes; the checkpoint goes when the last deletes it
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
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// Who holds an uploaded checkpoint (`checkpoint-uploaders/<id>.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Uploaders {
    /// One entry per uploader (`key-<id>`, or `open` without keys).
    uploaders: BTreeSet<String>,
    /// Set (ms since the Unix epoch, the writer's clock) while the last uploader's delete removes the
    /// checkpoint; an upload meanwhile waits for it, or takes over after [`STALE_REMOVAL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    removing_since_ms: Option<u64>,
}

/// A removal marked longer ago than this was abandoned (its replica crashed): no removal of one tree takes
/// this long.
pub const STALE_REMOVAL: Duration = Duration::from_secs(30);

/// What deleting a checkpoint for one uploader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointRelease {
    /// It was the last uploader's: the checkpoint is gone.
    Removed,
    /// Other uploaders still hold it (how many).
    Kept(usize),
}

/// Why a checkpoint could not be deleted for an uploader.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointDeleteError {
    /// No such checkpoint (or it is being removed).
    #[error("no checkpoint `{0}`")]
    Missing(String),
    /// Stored, but uploaded with other keys only.
    #[error(
        "checkpoint `{0}` was uploaded with other keys, not this one; it stays until the last of them deletes it"
    )]
    NotHeld(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn removal_is_stale(since_ms: u64) -> bool {
    now_ms().saturating_sub(since_ms) > STALE_REMOVAL.as_millis() as u64
}

fn uploaders_bytes(u: &Uploaders) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(u)?)
}

fn parse_uploaders(key: &str, bytes: &[u8]) -> Result<Uploaders> {
    serde_json::from_slice(bytes).with_context(|| format!("`{key}` is not a record of uploaders"))
}

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

    /// Stores checkpoint `id` for `uploader`: `fill` writes its files into a fresh directory, which then goes
    /// in as one unit. The uploader is recorded first (once, however often it uploads the same checkpoint), so
    /// a stored checkpoint always has its uploaders; an upload while the last uploader's delete is removing
    /// the checkpoint waits for that removal to end.
    pub fn put_checkpoint(
        &self,
        id: &str,
        uploader: &str,
        fill: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        let key = id_key("checkpoints", id, "")?;
        let record = id_key("checkpoint-uploaders", id, ".json")?;
        let staging = tempfile::Builder::new()
            .prefix("checkpoint.")
            .tempdir_in(self.scratch_dir())?;
        let dir = staging.path().join(id);
        std::fs::create_dir_all(&dir)?;
        fill(&dir)?;
        let deadline = Instant::now() + STALE_REMOVAL + Duration::from_secs(5);
        loop {
            let (mut u, mode) = match self.blobs.get(&record)? {
                None => (Uploaders::default(), PutMode::Create),
                Some((bytes, v)) => (parse_uploaders(&record, &bytes)?, PutMode::Update(v)),
            };
            if let Some(since) = u.removing_since_ms {
                if !removal_is_stale(since) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                // Abandoned: this upload takes the checkpoint over.
                u = Uploaders::default();
            }
            if u.uploaders.insert(uploader.to_string()) || mode == PutMode::Create {
                match self.blobs.put(&record, &serde_json::to_vec(&u)?, mode) {
                    Ok(_) => {}
                    Err(e) if super::blob::is_conflict(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            break;
        }
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

    /// Deletes checkpoint `id` for `uploader`: it is removed (and this replica's cached copy) when `uploader`
    /// was the last to hold it, else kept for the others. Every change of its uploaders is one conditional
    /// write, retried when another replica wrote first. A checkpoint stored before uploaders were recorded
    /// has none, and goes on any admin's delete.
    pub fn delete_checkpoint(
        &self,
        id: &str,
        uploader: &str,
    ) -> Result<CheckpointRelease, CheckpointDeleteError> {
        let missing = || CheckpointDeleteError::Missing(id.to_string());
        if !valid_name(id) {
            return Err(missing());
        }
        let key = id_key("checkpoints", id, "")?;
        let record = id_key("checkpoint-uploaders", id, ".json")?;
        loop {
            let Some((bytes, v)) = self.blobs.get(&record)? else {
                return match self.remove_checkpoint_tree(&key)? {
                    true => Ok(CheckpointRelease::Removed),
                    false => Err(missing()),
                };
            };
            let mut u = parse_uploaders(&record, &bytes)?;
            match u.removing_since_ms {
                // Another delete is removing it.
                Some(since) if !removal_is_stale(since) => return Err(missing()),
                // An abandoned removal is finished by this one.
                Some(_) => {}
                None => {
                    if !u.uploaders.remove(uploader) {
                        return Err(if self.blobs.has_tree(&key)? {
                            CheckpointDeleteError::NotHeld(id.to_string())
                        } else {
                            missing()
                        });
                    }
                    if !u.uploaders.is_empty() {
                        match self
                            .blobs
                            .put(&record, &uploaders_bytes(&u)?, PutMode::Update(v))
                        {
                            Ok(_) => return Ok(CheckpointRelease::Kept(u.uploaders.len())),
                            Err(e) if super::blob::is_conflict(&e) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            // The last uploader: mark the removal (uploads wait for it), remove the tree, then the record.
            u.uploaders.clear();
            u.removing_since_ms = Some(now_ms());
            match self
                .blobs
                .put(&record, &uploaders_bytes(&u)?, PutMode::Update(v))
            {
                Ok(_) => {}
                Err(e) if super::blob::is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            let existed = self.remove_checkpoint_tree(&key)?;
            self.blobs.delete(&record)?;
            return if existed {
                Ok(CheckpointRelease::Removed)
            } else {
                Err(missing())
            };
        }
    }

    /// Removes a checkpoint's tree (and this replica's cached copy); false when it did not exist.
    fn remove_checkpoint_tree(&self, key: &str) -> Result<bool> {
        if self.remote {
            let _ = std::fs::remove_dir_all(self.local.join("cache").join(key));
            let _ = std::fs::remove_file(self.local.join("cache").join(format!("{key}.version")));
        }
        self.blobs.delete_tree(key)
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
    fn a_checkpoint_stays_until_its_last_uploader_deletes_it() {
        let d = std::env::temp_dir().join(format!("sg-owners-{}", std::process::id()));
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
        let fill = |dir: &Path| Ok(std::fs::write(dir.join("config.json"), b"{}")?);
        a.put_checkpoint("c1", "u1", &fill).unwrap();
        a.put_checkpoint("c1", "u1", &fill).unwrap();
        b.put_checkpoint("c1", "u2", &fill).unwrap();
        assert!(matches!(
            a.delete_checkpoint("c1", "u3"),
            Err(CheckpointDeleteError::NotHeld(_))
        ));
        assert_eq!(
            a.delete_checkpoint("c1", "u1").unwrap(),
            CheckpointRelease::Kept(1)
        );
        assert!(b.has_checkpoint("c1").unwrap());
        assert!(matches!(
            a.delete_checkpoint("c1", "u1"),
            Err(CheckpointDeleteError::NotHeld(_))
        ));
        assert_eq!(
            b.delete_checkpoint("c1", "u2").unwrap(),
            CheckpointRelease::Removed
        );
        assert!(!a.has_checkpoint("c1").unwrap());
        assert!(a
            .blobs()
            .head("checkpoint-uploaders/c1.json")
            .unwrap()
            .is_none());
        assert!(matches!(
            b.delete_checkpoint("c1", "u2"),
            Err(CheckpointDeleteError::Missing(_))
        ));
        // An abandoned removal (its replica crashed mid-way) is taken over by the next upload.
        let stale = Uploaders {
            uploaders: BTreeSet::new(),
            removing_since_ms: Some(now_ms() - 2 * STALE_REMOVAL.as_millis() as u64),
        };
        a.blobs()
            .put(
                "checkpoint-uploaders/c1.json",
                &serde_json::to_vec(&stale).unwrap(),
                PutMode::Overwrite,
            )
            .unwrap();
        a.put_checkpoint("c1", "u1", &fill).unwrap();
        assert!(b.has_checkpoint("c1").unwrap());
        assert_eq!(
            b.delete_checkpoint("c1", "u1").unwrap(),
            CheckpointRelease::Removed
        );
        std::fs::remove_dir_all(&d).unwrap();
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
        a.put_checkpoint("c1", "u1", &|dir| {
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
        assert_eq!(
            b.delete_checkpoint("c1", "u1").unwrap(),
            CheckpointRelease::Removed
        );
        assert!(!a.has_checkpoint("c1").unwrap());
        a.check().unwrap();
        a.replicas().beat().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
