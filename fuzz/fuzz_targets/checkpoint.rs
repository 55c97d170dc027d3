//! Checkpoint checks as an upload meets them. The first byte picks what the rest is:
//! 0 — a tar archive, unpacked with the server's rules and, when it holds a config, loaded against the base;
//! 1 — a `config.json` beside the base's own weights; 2 — a `model.safetensors` beside the base's config.
//! The base is the tiny BERT fixture in ../shared/fixtures. Never a panic, never a file outside the scratch
//! directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgraft::model::BaseModel;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixture() -> PathBuf {
    std::env::var("SKILLGRAFT_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures"
            ))
        })
        .join("tiny-bert-cls")
}

fn base() -> &'static BaseModel {
    static B: OnceLock<BaseModel> = OnceLock::new();
    B.get_or_init(|| {
        BaseModel::load(&fixture(), &candle_core::Device::Cpu, 32)
            .expect("load the tiny BERT fixture")
    })
}

fn scratch() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let root = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        root.join(format!("sg-fuzz-ckpt-{}", std::process::id()))
    })
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let _ = b.append_data(&mut h, format!("ckpt/{name}"), *data);
    }
    b.into_inner().unwrap_or_default()
}

fn seeds() -> Vec<Vec<u8>> {
    let read = |f: &str| std::fs::read(fixture().join(f)).unwrap_or_default();
    let config = read("config.json");
    let weights = read("model.safetensors");
    let mut out = vec![];
    let mut t = vec![0u8];
    t.extend(tar_of(&[
        ("config.json", &config),
        ("notes.txt", b"x"),
        ("model.safetensors", &weights[..weights.len().min(4096)]),
    ]));
    out.push(t);
    let mut t = vec![0u8];
    t.extend(tar_of(&[
        ("config.json", &config),
        ("pytorch_model.bin", b"\x80\x02"),
    ]));
    out.push(t);
    let mut c = vec![1u8];
    c.extend(&config);
    out.push(c);
    // The safetensors header and the first tensor's bytes.
    let header_len = weights
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .unwrap_or(0);
    let mut w = vec![2u8];
    w.extend(&weights[..(8 + header_len + 64).min(weights.len())]);
    out.push(w);
    out
}

fuzz_target!(init: {
    let _ = base();
    skillgraft_fuzz::write_seeds(seeds);
}, |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("scratch");
    let b = base();
    match mode % 3 {
        0 => {
            if let Ok(names) = skillgraft::server::archive::unpack(rest, dir, 64) {
                for n in &names {
                    assert!(skillgraft::server::archive::is_checkpoint_file(n), "kept `{n}`");
                    assert!(dir.join(n).is_file());
                }
                let _ = skillgraft::model::export::load_finetuned(dir, &b.model, None, &b.tokenizer, &b.device);
            }
            let entries = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
            assert!(entries <= 64);
        }
        1 => {
            std::fs::write(dir.join("config.json"), rest).expect("write");
            std::fs::copy(fixture().join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
            let _ = skillgraft::model::export::load_finetuned(dir, &b.model, None, &b.tokenizer, &b.device);
        }
        _ => {
            std::fs::copy(fixture().join("config.json"), dir.join("config.json")).expect("copy");
            std::fs::write(dir.join("model.safetensors"), rest).expect("write");
            let _ = skillgraft::model::export::load_finetuned(dir, &b.model, None, &b.tokenizer, &b.device);
        }
    }
});
