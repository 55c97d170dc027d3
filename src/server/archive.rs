//! Checkpoint archives: a tar of an HF directory, unpacked into a scratch directory and checked against the
//! base before anything is stored.
//!
//! Only the files a checkpoint needs are kept ([`is_checkpoint_file`]: config, safetensors weights and their
//! index, the head manifest and tensors, tokenizer files); every other entry is skipped, and an archive with
//! more than `max_entries` entries of any kind is refused before it is read further. Names are flattened to
//! their last component (no entry can be written outside the scratch directory); links and devices are
//! skipped; a name given twice, or a pickle file, is refused. Tar, gzip-compressed tar and zip archives are
//! told apart by their first bytes ([`archive_kind`]).

use crate::model::checkpoint::{inspect, CheckpointFacts};
use crate::model::BaseInfo;
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

/// Whether a checkpoint needs a file of this name.
pub fn is_checkpoint_file(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        crate::model::export::HEAD_MANIFEST,
        crate::model::export::HEAD_TENSORS,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
    ];
    EXACT.contains(&name) || is_shard(name)
}

/// `model-00001-of-00003.safetensors`.
fn is_shard(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((a, b)) = rest.split_once("-of-") else {
        return false;
    };
    [a, b]
        .iter()
        .all(|p| p.len() == 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

fn is_pickle(name: &str) -> bool {
    [".bin", ".pt", ".pth", ".pkl", ".ckpt"]
        .iter()
        .any(|x| name.ends_with(x))
}

/// Keeps one archive entry if a checkpoint needs it: refuses pickles and names given twice.
fn keep_entry(
    name: &str,
    reader: &mut dyn Read,
    dest: &Path,
    names: &mut BTreeSet<String>,
) -> Result<()> {
    if is_pickle(name) {
        bail!("`{name}` is a pickle file; pickle files are refused: upload safetensors weights");
    }
    if !is_checkpoint_file(name) {
        return Ok(());
    }
    if !names.insert(name.to_string()) {
        bail!("`{name}` appears more than once in the archive");
    }
    let mut out = std::fs::File::create(dest.join(name))?;
    std::io::copy(reader, &mut out)?;
    out.sync_all()?;
    Ok(())
}

/// The names kept, sorted; an archive without `config.json` is refused.
fn finish(names: BTreeSet<String>) -> Result<Vec<String>> {
    if !names.contains("config.json") {
        bail!("the archive holds no config.json (a checkpoint is config.json + model.safetensors [+ tokenizer files])");
    }
    Ok(names.into_iter().collect())
}

fn too_many(max_entries: usize) -> anyhow::Error {
    anyhow::anyhow!("the archive has more than {max_entries} entries; a checkpoint needs only config.json, its weights and tokenizer files")
}

/// Unpacks the checkpoint files of a tar stream into `dest`; returns their names, sorted.
pub fn unpack(reader: impl Read, dest: &Path, max_entries: usize) -> Result<Vec<String>> {
    let mut tar = tar::Archive::new(reader);
    let mut names = BTreeSet::new();
    for (count, entry) in tar.entries()?.enumerate() {
        if count >= max_entries {
            return Err(too_many(max_entries));
        }
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_path_buf();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        keep_entry(&name, &mut entry, dest, &mut names)?;
    }
    finish(names)
}

/// Unpacks the checkpoint files of a zip archive (deflated or stored) into `dest`.
fn unpack_zip(file: std::fs::File, dest: &Path, max_entries: usize) -> Result<Vec<String>> {
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| anyhow::anyhow!("not a valid zip archive: {e}"))?;
    if zip.len() > max_entries {
        return Err(too_many(max_entries));
    }
    let mut names = BTreeSet::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        if !entry.is_file() {
            continue;
        }
        let full = entry.name().map(|n| n.to_string()).unwrap_or_default();
        let Some(name) = Path::new(&full)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
        else {
            continue;
        };
        keep_entry(&name, &mut entry, dest, &mut names)?;
    }
    finish(names)
}

/// What an uploaded archive is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A tar archive.
    Tar,
    /// A gzip-compressed tar archive (`.tar.gz`, `.tgz`).
    TarGz,
    /// A zip archive.
    Zip,
}

/// Tells tar, tar.gz and zip apart by their magic bytes; anything else is refused with what was seen.
pub fn archive_kind(head: &[u8]) -> Result<ArchiveKind> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(ArchiveKind::TarGz);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(ArchiveKind::Zip);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(ArchiveKind::Tar);
    }
    let shown: String = head
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    bail!("the upload is not a tar, tar.gz (.tgz) or zip archive (it starts with bytes {shown}): pack the checkpoint directory with `tar czf ckpt.tgz -C DIR .` or `zip -r ckpt.zip DIR`")
}

/// Unpacks a checkpoint archive file of any [`ArchiveKind`] into `dest`.
pub fn unpack_file(path: &Path, dest: &Path, max_entries: usize) -> Result<Vec<String>> {
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let got = f.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let file = std::fs::File::open(path)?;
    match archive_kind(&head[..n])? {
        ArchiveKind::Tar => unpack(std::io::BufReader::new(file), dest, max_entries),
        ArchiveKind::TarGz => unpack(
            flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
            dest,
            max_entries,
        )
        .map_err(|e| anyhow::anyhow!("{e:#} (in the gzip-compressed tar archive)")),
        ArchiveKind::Zip => unpack_zip(file, dest, max_entries),
    }
}

/// Unpacks a checkpoint archive file into `dest` and checks it against `base` on the host CPU (names,
/// shapes, dtypes, head, labels; see [`inspect`]); a `head` given by the uploader is used when the checkpoint
/// does not carry one.
pub fn unpack_and_check(
    path: &Path,
    dest: &Path,
    base: &BaseInfo,
    max_entries: usize,
    head: Option<&crate::model::HeadSpec>,
    task: Option<&crate::data::TaskSpec>,
) -> Result<(CheckpointFacts, Vec<String>)> {
    let files = unpack_file(path, dest, max_entries)?;
    let facts = inspect(dest, base, task, head)?;
    Ok((facts, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn keeps_only_checkpoint_files_and_caps_entries() {
        let dir = std::env::temp_dir().join(format!("sg-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            ("ckpt/config.json".into(), b"{}".to_vec()),
            ("ckpt/x.safetensors".into(), b"junk".to_vec()),
            ("ckpt/tokenizer-7.json".into(), b"junk".to_vec()),
            ("ckpt/notes.txt".into(), b"junk".to_vec()),
        ];
        let view = |e: &[(String, Vec<u8>)]| -> Vec<u8> {
            let v: Vec<(&str, &[u8])> = e.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            tar_of(&v)
        };
        let names = unpack(view(&entries).as_slice(), &dir, 64).unwrap();
        assert_eq!(names, vec!["config.json"]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        for i in 0..100 {
            entries.push((format!("ckpt/f{i}.safetensors"), vec![]));
        }
        let err = unpack(view(&entries).as_slice(), &dir, 64).unwrap_err();
        assert!(err.to_string().contains("more than 64 entries"), "{err}");
        let twice = view(&[
            ("a/config.json".into(), b"{}".to_vec()),
            ("b/config.json".into(), b"{}".to_vec()),
        ]);
        assert!(unpack(twice.as_slice(), &dir, 64).is_err());
        assert!(is_shard("model-00001-of-00002.safetensors"));
        assert!(!is_shard("model-1-of-2.safetensors"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
