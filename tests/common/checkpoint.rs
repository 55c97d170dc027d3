//! A small fine-tuned checkpoint made by the CLI, and tar archives of checkpoint directories.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Fine-tunes SST-2 for a few steps (K = 8) into `out`.
pub fn finetune_quick(model: &Path, out: &Path) {
    let st = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args([
            "finetune",
            "--task",
            "sst2",
            "--k",
            "8",
            "--steps",
            "16",
            "--eval-every",
            "8",
            "--max-test",
            "10",
            "--model",
        ])
        .arg(model)
        .arg("--out")
        .arg(out)
        .env("SKILLGRAFT_DATA_DIR", super::data_dir())
        .output()
        .expect("run finetune");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Files of a checkpoint written by `finetune`.
pub const FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "skillgraft_head.json",
    "skillgraft_head.safetensors",
    "tokenizer.json",
];

/// A tar archive of the given files of a directory (under `ckpt/`), one of them optionally replaced.
pub fn tar_of(dir: &Path, files: &[&str], replace: Option<(&str, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let data = match &replace {
            Some((n, d)) if n == f => d.clone(),
            _ => std::fs::read(dir.join(f)).expect("read checkpoint file"),
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("ckpt/{f}"), data.as_slice())
            .expect("append");
    }
    b.into_inner().expect("tar")
}
