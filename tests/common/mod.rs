//! Shared helpers of the integration tests: where the model, fixtures and data are.
#![allow(dead_code)]

pub mod checkpoint;
pub mod grafts;
pub mod http;
pub mod s3;

use std::path::PathBuf;

/// The shared folder beside the project (fixtures, data).
pub fn shared_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"))
}

/// The reference fixtures.
pub fn fixtures_dir() -> PathBuf {
    std::env::var("SKILLGRAFT_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| shared_dir().join("fixtures"))
}

/// The data sets.
pub fn data_dir() -> PathBuf {
    std::env::var("SKILLGRAFT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| shared_dir().join("data"))
}

/// The default base model, or None (with a loud message) when it has not been fetched.
/// With SKILLGRAFT_REQUIRE_MODEL=1 (set by CI) a missing model fails the test instead.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = skillgraft::default_model_dir();
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("SKILLGRAFT_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!(
            "the default model is missing at {} (run scripts/fetch-model.sh)",
            dir.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: default model not found at {} — run scripts/fetch-model.sh to run this test ***\n",
        dir.display()
    );
    None
}
