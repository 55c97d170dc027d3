//! Persistence: the service's state in a store that several replicas may share ([`service`]), through one
//! interface of whole values by key ([`blob::Store`]) with two backends, a local directory ([`blob::DirStore`])
//! and S3-compatible object storage ([`object`]); the change [`journal`], replica heartbeats ([`replicas`]) and
//! a byte-bounded cache of loaded values ([`cache`]).
//!
//! Here too: [`atomic_write`] and [`atomic_dir`], which write a local file or directory whole (graft files,
//! exported checkpoints, study reports, the S3 backend's local checkpoint cache): a temporary name beside the
//! target, fsync, rename over the target, fsync of the directory, so a crash never leaves a half-written file
//! under the final name (the directory backend does the same with its own temporaries, see [`blob::DirStore`]);
//! and [`safetensors_bytes`], the safetensors encoding of grafts and exported weights.

pub mod blob;
pub mod cache;
pub mod journal;
pub mod object;
pub mod replicas;
pub mod service;

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, directory fsync). The temporary file has a
/// unique name (`.<name>.<random>.tmp` beside the target), so concurrent writers of one path never share it;
/// the last rename wins and the file is always one writer's complete bytes.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Suffix of every temporary file and directory the store creates (old ones are removed when a directory store
/// opens: [`blob::DirStore::remove_stale_temporaries`]).
pub const TEMP_SUFFIX: &str = ".tmp";

/// Best-effort fsync of a directory (makes a rename durable on Linux).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Builds a directory under a temporary name beside `dest`, then renames it into place; `dest` must not exist
/// unless `overwrite` is set (then the old one is replaced only after the new one is complete).
pub fn atomic_dir(
    dest: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if dest.exists() && !overwrite {
        anyhow::bail!(
            "{} already exists (pass --force to replace it)",
            dest.display()
        );
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let name = dest
        .file_name()
        .with_context(|| format!("{} is not a directory path", dest.display()))?
        .to_string_lossy();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TEMP_SUFFIX)
        .tempdir_in(parent)?;
    fill(staging.path())?;
    let tmp: PathBuf = staging.keep();
    if dest.exists() {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}.old."))
            .suffix(TEMP_SUFFIX)
            .tempdir_in(parent)?
            .keep();
        fs::rename(dest, old.join("dir"))?;
        fs::rename(&tmp, dest)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, dest)?;
    }
    sync_dir(parent);
    Ok(())
}

/// One tensor to serialize: name, dtype, shape and little-endian bytes.
pub struct RawTensor {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian data.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An f32 tensor, stored as `dtype` (F32, F16 or BF16).
    pub fn from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
        dtype: safetensors::Dtype,
    ) -> Result<Self> {
        use safetensors::Dtype as S;
        let bytes: Vec<u8> = match dtype {
            S::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            S::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            S::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => anyhow::bail!("cannot store f32 values as {other:?}"),
        };
        Ok(Self {
            name: name.into(),
            dtype,
            shape,
            bytes,
        })
    }

    /// A u32 tensor.
    pub fn from_u32(name: impl Into<String>, values: &[u32]) -> Self {
        Self {
            name: name.into(),
            dtype: safetensors::Dtype::U32,
            shape: vec![values.len()],
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serializes tensors (and string metadata) into safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[RawTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .map_err(|e| anyhow::anyhow!("tensor `{}`: {e}", t.name))?;
        views.push((t.name.clone(), view));
    }
    safetensors::serialize(views, metadata).map_err(|e| anyhow::anyhow!("safetensors: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = std::env::temp_dir().join(format!("sg-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = dir.join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let d = dir.join("out");
        atomic_dir(&d, false, |t| atomic_write(&t.join("x"), b"1")).unwrap();
        assert!(
            atomic_dir(&d, false, |_| Ok(())).is_err(),
            "existing dir needs overwrite"
        );
        assert!(atomic_dir(&d, true, |_| anyhow::bail!("fail")).is_err());
        assert_eq!(
            fs::read(d.join("x")).unwrap(),
            b"1",
            "a failed rewrite keeps the old directory"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_path_never_collide() {
        let dir = std::env::temp_dir().join(format!("sg-atomic-conc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = dir.join("t.graft");
        for round in 0..20 {
            let bodies: Vec<Vec<u8>> = (0..8u8)
                .map(|w| vec![w + round; 4096 * (1 + w as usize)])
                .collect();
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let handles: Vec<_> = bodies
                    .iter()
                    .map(|b| s.spawn(|| atomic_write(&p, b)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                assert!(r.is_ok(), "round {round}: {r:?}");
            }
            let stored = fs::read(&p).unwrap();
            assert!(
                bodies.contains(&stored),
                "round {round}: the file is no writer's bytes"
            );
        }
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary files left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
