//! Values by key: the storage interface every kind of persisted state goes through — tasks, job records,
//! checkpoints, uploaded data sets, change records, replica heartbeats — with two backends: a local directory
//! ([`DirStore`], here) and S3-compatible object storage ([`S3Store`](super::object::S3Store)).
//!
//! A key is a relative path `kind/name[/…]` ([`valid_key`]). A value is written whole and read whole; no
//! reader ever sees half of one. Every value carries a [`Version`] that changes with each write (the ETag on
//! S3), so a writer can create only if absent or replace only if unchanged ([`PutMode`]): what several
//! replicas need to share one store safely. A directory tree (a checkpoint) is stored as one unit too.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An opaque tag that changes whenever the value under a key is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// What a listing or a `head` says about a stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Its key.
    pub key: String,
    /// Its version.
    pub version: Version,
    /// Its size, bytes.
    pub size: u64,
    /// When it was last written, milliseconds since the Unix epoch (the store's clock).
    pub modified_ms: u64,
}

/// How [`Store::put`] treats a value already under the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (or create).
    Overwrite,
    /// Create only: fail with [`Conflict`] when the key exists.
    Create,
    /// Replace only this version: fail with [`Conflict`] when the key holds another one or nothing.
    Update(Version),
}

/// A conditional write lost: the key exists ([`PutMode::Create`]) or holds another version
/// ([`PutMode::Update`]).
#[derive(Debug, thiserror::Error)]
#[error("`{key}` changed concurrently (conditional write refused)")]
pub struct Conflict {
    /// The key.
    pub key: String,
}

/// Whether an error is a lost conditional write.
pub fn is_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Conflict>().is_some()
}

/// A key-value store of whole values, shared by every replica that opens it.
pub trait Store: Send + Sync + 'static {
    /// The value and its version; None when absent.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>>;
    /// The value's metadata; None when absent.
    fn head(&self, key: &str) -> Result<Option<Meta>>;
    /// Writes a value atomically; a refused condition is a [`Conflict`] error.
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<Version>;
    /// Writes the contents of a local file as one value (streamed; for large values).
    fn put_file(&self, key: &str, path: &Path) -> Result<Version>;
    /// Copies a value into a local file (written atomically); false when absent.
    fn get_file(&self, key: &str, dest: &Path) -> Result<bool>;
    /// Removes a value; removing an absent key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Values whose keys start with `prefix` (a `kind/` folder) and sort after `after`, in key order.
    fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Meta>>;
    /// Stores the directory `dir` as the tree `key`, as one unit (replacing any previous tree); `dir` may be
    /// moved or consumed.
    fn put_tree(&self, key: &str, dir: &Path) -> Result<()>;
    /// A local directory holding tree `key` (downloaded under `cache` when the store is remote); None when
    /// absent.
    fn get_tree(&self, key: &str, cache: &Path) -> Result<Option<PathBuf>>;
    /// Whether tree `key` exists.
    fn has_tree(&self, key: &str) -> Result<bool>;
    /// Removes tree `key`; false when it did not exist.
    fn delete_tree(&self, key: &str) -> Result<bool>;
    /// Where the values live, for logs (no secrets).
    fn location(&self) -> String;
}

/// Whether `key` is a valid key: 2 to 8 `/`-separated segments, each 1–128 characters from letters, digits,
/// `-`, `_`, `.`, not starting with `.` (so no segment is `.` or `..`, and hidden names stay free for
/// temporaries).
pub fn valid_key(key: &str) -> bool {
    let segments: Vec<&str> = key.split('/').collect();
    (2..=8).contains(&segments.len())
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.len() <= 128
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

fn check_key(key: &str) -> Result<()> {
    if !valid_key(key) {
        bail!("invalid store key `{key}`");
    }
    Ok(())
}

/// Temporaries older than this are leftovers of a crashed writer (no live write takes this long).
pub const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// The local-directory backend: each key is a file under the root (the layout a single server always had:
/// `tasks/<name>.graft`, `jobs/<id>.json`, `checkpoints/<id>/`). Writes go to a hidden temporary file,
/// fsynced, then renamed into place; conditional writes and deletions are serialized across processes by an
/// advisory lock on `<root>/.lock`, so several servers may share one directory (on one machine, or on a
/// shared filesystem with working `flock`).
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (creating) a directory store. Temporaries older than [`STALE_TEMPORARY`] are removed.
    pub fn open(root: &Path) -> Result<Self> {
        let not_writable = || {
            format!(
                "the state directory {} is not writable by this user (uid {}); make it writable (e.g. chown) or \
                 point --state-dir / SKILLGRAFT_STATE_DIR elsewhere",
                root.display(),
                current_uid()
            )
        };
        fs::create_dir_all(root).with_context(not_writable)?;
        let probe = root.join(".write-probe");
        fs::write(&probe, b"ok").with_context(not_writable)?;
        let _ = fs::remove_file(&probe);
        let s = Self {
            root: root.to_path_buf(),
        };
        s.remove_stale_temporaries(STALE_TEMPORARY);
        Ok(s)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Removes hidden temporaries (`.name.…tmp`) older than `age` anywhere under the root; returns how many.
    pub fn remove_stale_temporaries(&self, age: Duration) -> usize {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let p = e.path();
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if !name.starts_with('.') {
                    if is_dir {
                        stack.push(p);
                    }
                    continue;
                }
                if !name.ends_with(super::TEMP_SUFFIX) {
                    continue;
                }
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|d| d >= age);
                if old
                    && fs::remove_dir_all(&p)
                        .or_else(|_| fs::remove_file(&p))
                        .is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Runs `f` holding the store's exclusive advisory lock (across processes).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))
            .context("cannot open the store's lock file")?;
        lock.lock().context("cannot lock the store")?;
        let out = f();
        let _ = lock.unlock();
        out
    }

    /// A durable hidden temporary file beside `path` holding `bytes`.
    fn temporary(
        path: &Path,
        fill: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<tempfile::TempPath> {
        let dir = path.parent().context("a key has a folder")?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = path
            .file_name()
            .context("a key has a name")?
            .to_string_lossy();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(super::TEMP_SUFFIX)
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        fill(tmp.as_file_mut())?;
        tmp.as_file().sync_all()?;
        Ok(tmp.into_temp_path())
    }

    fn current(path: &Path) -> Result<Option<Version>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(version_of(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Moves a finished temporary into place under the lock, if `mode` allows.
    fn commit(
        &self,
        key: &str,
        path: &Path,
        tmp: tempfile::TempPath,
        mode: &PutMode,
    ) -> Result<Version> {
        let dir = path.parent().context("a key has a folder")?.to_path_buf();
        self.locked(|| {
            let now = Self::current(path)?;
            let allowed = match mode {
                PutMode::Overwrite => true,
                PutMode::Create => now.is_none(),
                PutMode::Update(v) => now.as_ref() == Some(v),
            };
            if !allowed {
                return Err(Conflict {
                    key: key.to_string(),
                }
                .into());
            }
            tmp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot move a new {} into place", path.display()))?;
            super::sync_dir(&dir);
            Self::current(path)?.context("the value vanished after its write")
        })
    }
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

fn modified_ms(m: &fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn version_of(m: &fs::Metadata) -> Version {
    use std::os::unix::fs::MetadataExt;
    Version(format!(
        "{:x}-{}.{:09}-{:x}",
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.len()
    ))
}

impl Store for DirStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        let p = self.path(key)?;
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        // The version of the file actually opened (a rename after the open does not change what is read).
        let version = version_of(&f.metadata()?);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes)
            .with_context(|| format!("cannot read {}", p.display()))?;
        Ok(Some((bytes, version)))
    }

    fn head(&self, key: &str) -> Result<Option<Meta>> {
        let p = self.path(key)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(Meta {
                key: key.to_string(),
                version: version_of(&m),
                size: m.len(),
                modified_ms: modified_ms(&m),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<Version> {
        let p = self.path(key)?;
        let tmp = Self::temporary(&p, |f| Ok(f.write_all(bytes)?))?;
        self.commit(key, &p, tmp, &mode)
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<Version> {
        let p = self.path(key)?;
        let tmp = Self::temporary(&p, |f| {
            let mut src =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            std::io::copy(&mut src, f)?;
            Ok(())
        })?;
        self.commit(key, &p, tmp, &PutMode::Overwrite)
    }

    fn get_file(&self, key: &str, dest: &Path) -> Result<bool> {
        let p = self.path(key)?;
        if !p.is_file() {
            return Ok(false);
        }
        let tmp = Self::temporary(dest, |f| {
            let mut src = File::open(&p)?;
            std::io::copy(&mut src, f)?;
            Ok(())
        })?;
        tmp.persist(dest).map_err(|e| e.error)?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        self.locked(|| match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(dir) = p.parent() {
                    super::sync_dir(dir);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
        })
    }

    fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Meta>> {
        let (folder, _) = prefix
            .rsplit_once('/')
            .with_context(|| format!("list prefix `{prefix}` names no folder"))?;
        check_key(&format!("{folder}/x"))?;
        let mut out = Vec::new();
        let mut stack = vec![self.root.join(folder)];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            for e in entries {
                let e = e?;
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let m = match e.metadata() {
                    Ok(m) => m,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err.into()),
                };
                if m.is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let Ok(rel) = e
                    .path()
                    .strip_prefix(&self.root)
                    .map(|r| r.to_string_lossy().to_string())
                else {
                    continue;
                };
                if rel.starts_with(prefix)
                    && after.is_none_or(|a| rel.as_str() > a)
                    && valid_key(&rel)
                {
                    out.push(Meta {
                        key: rel,
                        version: version_of(&m),
                        size: m.len(),
                        modified_ms: modified_ms(&m),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn put_tree(&self, key: &str, dir: &Path) -> Result<()> {
        let dest = self.path(key)?;
        let parent = dest.parent().context("a key has a folder")?;
        fs::create_dir_all(parent)?;
        let name = dest
            .file_name()
            .context("a key has a name")?
            .to_string_lossy()
            .to_string();
        // Staged beside the destination (same filesystem), then swapped in under the lock.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(super::TEMP_SUFFIX)
            .tempdir_in(parent)?;
        let staged = staging.path().join("tree");
        if fs::rename(dir, &staged).is_err() {
            copy_dir(dir, &staged)?;
        }
        self.locked(|| {
            let old = staging.path().join("old");
            if dest.exists() {
                fs::rename(&dest, &old)?;
            }
            fs::rename(&staged, &dest)
                .with_context(|| format!("cannot move {} into place", dest.display()))?;
            super::sync_dir(parent);
            Ok(())
        })
    }

    fn get_tree(&self, key: &str, _cache: &Path) -> Result<Option<PathBuf>> {
        let p = self.path(key)?;
        Ok(p.is_dir().then_some(p))
    }

    fn has_tree(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.is_dir())
    }

    fn delete_tree(&self, key: &str) -> Result<bool> {
        let p = self.path(key)?;
        let parent = p.parent().context("a key has a folder")?.to_path_buf();
        let name = p
            .file_name()
            .context("a key has a name")?
            .to_string_lossy()
            .to_string();
        // Renamed away under the lock (one step), removed after.
        let gone = self.locked(|| {
            if !p.is_dir() {
                return Ok(None);
            }
            let trash = tempfile::Builder::new()
                .prefix(&format!(".{name}.deleted."))
                .suffix(super::TEMP_SUFFIX)
                .tempdir_in(&parent)?
                .keep();
            fs::rename(&p, trash.join("tree"))?;
            super::sync_dir(&parent);
            Ok(Some(trash))
        })?;
        match gone {
            Some(trash) => {
                let _ = fs::remove_dir_all(trash);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

/// Copies a directory tree (files and folders; links are refused).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else if t.is_file() {
            fs::copy(e.path(), &dest)?;
        } else {
            bail!("{} is neither a file nor a folder", e.path().display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-blobs-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keys() {
        assert!(valid_key("tasks/sst2.graft"));
        assert!(valid_key("checkpoints/abc/model.safetensors"));
        assert!(!valid_key("tasks"));
        assert!(!valid_key("tasks/../x"));
        assert!(!valid_key("tasks/.hidden"));
        assert!(!valid_key("/tasks/x"));
        assert!(!valid_key("tasks//x"));
        assert!(!valid_key("tasks/a b"));
    }

    #[test]
    fn conditional_writes_and_listing() {
        let d = tmp("cond");
        let s = DirStore::open(&d).unwrap();
        let v1 = s.put("changes/0001.json", b"a", PutMode::Create).unwrap();
        let e = s
            .put("changes/0001.json", b"b", PutMode::Create)
            .unwrap_err();
        assert!(is_conflict(&e), "{e:#}");
        let v2 = s
            .put("changes/0001.json", b"b", PutMode::Update(v1.clone()))
            .unwrap();
        assert_ne!(v1, v2);
        let e = s
            .put("changes/0001.json", b"c", PutMode::Update(v1))
            .unwrap_err();
        assert!(is_conflict(&e));
        assert_eq!(
            s.get("changes/0001.json").unwrap().unwrap(),
            (b"b".to_vec(), v2)
        );
        s.put("changes/0002.json", b"x", PutMode::Overwrite)
            .unwrap();
        s.put("tasks/t.graft", b"x", PutMode::Overwrite).unwrap();
        let keys = |after| -> Vec<String> {
            s.list("changes/", after)
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect()
        };
        assert_eq!(keys(None), vec!["changes/0001.json", "changes/0002.json"]);
        assert_eq!(keys(Some("changes/0001.json")), vec!["changes/0002.json"]);
        s.delete("changes/0001.json").unwrap();
        s.delete("changes/0001.json").unwrap();
        assert!(s.get("changes/0001.json").unwrap().is_none());
        assert!(s.put("../x", b"", PutMode::Overwrite).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_creators_of_one_key_exactly_one_wins() {
        let d = tmp("race");
        let s = DirStore::open(&d).unwrap();
        for round in 0..10 {
            let key = format!("changes/{round:04}.json");
            let wins: usize = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..6u8)
                    .map(|w| {
                        let (s, key) = (&s, &key);
                        sc.spawn(move || s.put(key, &[w; 100], PutMode::Create).is_ok() as usize)
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(wins, 1, "round {round}");
            assert_eq!(s.get(&key).unwrap().unwrap().0.len(), 100);
        }
        let hidden = fs::read_dir(d.join("changes"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0, "temporaries left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn trees_replace_whole_and_stale_temporaries_go() {
        let d = tmp("tree");
        let s = DirStore::open(&d).unwrap();
        let src = tmp("tree-src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/a"), b"1").unwrap();
        s.put_tree("checkpoints/c1", &src).unwrap();
        assert!(s.has_tree("checkpoints/c1").unwrap());
        let got = s.get_tree("checkpoints/c1", &d).unwrap().unwrap();
        assert_eq!(fs::read(got.join("sub/a")).unwrap(), b"1");
        assert!(s.delete_tree("checkpoints/c1").unwrap());
        assert!(!s.delete_tree("checkpoints/c1").unwrap());
        fs::write(d.join(".0003.json.abc.tmp"), b"half").unwrap();
        assert_eq!(
            s.remove_stale_temporaries(Duration::from_secs(3600)),
            0,
            "a fresh one may be live"
        );
        assert_eq!(s.remove_stale_temporaries(Duration::ZERO), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
