//! Persistence. Everything skillgraft writes goes through [`atomic_write`]: a temporary file in the target
//! directory, fsync, rename over the target, fsync of the directory — so a crash never leaves a half-written
//! file under the final name.

pub mod service;

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, directory fsync).
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
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

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
    let tmp: PathBuf = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(dest, &old)?;
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
}
