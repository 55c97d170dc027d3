//! Checkpoint archives: a tar of an HF directory, unpacked into a scratch directory and checked against the
//! base before anything is stored.
//!
//! Only the files a checkpoint needs are kept ([`is_checkpoint_file`]: config, safetensors weights and their
//! index, the head manifest and tensors, tokenizer files); every other entry is skipped, and an archive with
//! more than `max_entries` entries of any kind is refused before it is read further. Names are flattened to
//! their last component (no entry can be written outside the scratch directory); links and devices are
//! skipped; a name given twice, or a pickle file, is refused.

use crate::model::export::{load_finetuned, FinetunedModel};
use crate::model::BaseModel;
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

/// Unpacks the checkpoint files of a tar stream into `dest`; returns their names, sorted.
pub fn unpack(reader: impl Read, dest: &Path, max_entries: usize) -> Result<Vec<String>> {
    let mut tar = tar::Archive::new(reader);
    let mut names = BTreeSet::new();
    for (count, entry) in tar.entries()?.enumerate() {
        if count >= max_entries {
            bail!("the archive has more than {max_entries} entries; a checkpoint needs only config.json, its weights and tokenizer files");
        }
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_path_buf();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if is_pickle(&name) {
            bail!(
                "`{name}` is a pickle file; pickle files are refused: upload safetensors weights"
            );
        }
        if !is_checkpoint_file(&name) {
            continue;
        }
        if !names.insert(name.clone()) {
            bail!("`{name}` appears more than once in the archive");
        }
        let mut out = std::fs::File::create(dest.join(&name))?;
        std::io::copy(&mut entry, &mut out)?;
        out.sync_all()?;
    }
    if !names.contains("config.json") {
        bail!("the archive holds no config.json (a checkpoint is config.json + model.safetensors [+ tokenizer files])");
    }
    Ok(names.into_iter().collect())
}

/// Unpacks a checkpoint archive into `dest` and loads it against `base` (names, shapes, dtypes, head).
pub fn unpack_and_check(
    reader: impl Read,
    dest: &Path,
    base: &BaseModel,
    max_entries: usize,
) -> Result<(FinetunedModel, Vec<String>)> {
    let files = unpack(reader, dest, max_entries)?;
    let ft = load_finetuned(dest, &base.model, None, &base.tokenizer, &base.device)?;
    Ok((ft, files))
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
