//! skillgraft: serve many fine-tuned tasks from one pre-trained transformer by grafting each task's
//! sparse skill region (Panigrahi et al., ICML 2023) onto the shared base model.

pub mod cli;
pub mod data;
pub mod graft;
pub mod metrics;
pub mod model;
pub mod store;
pub mod train;

use std::path::PathBuf;

/// Name of the default base model.
pub const DEFAULT_MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Root of skillgraft's cache and state: `SKILLGRAFT_HOME`, else `~/.cache/skillgraft`.
pub fn home_dir() -> PathBuf {
    if let Ok(h) = std::env::var("SKILLGRAFT_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache").join("skillgraft")
}

/// Where the default model lives: `SKILLGRAFT_MODEL_DIR`, else `<home>/models/all-MiniLM-L6-v2`
/// (filled by `scripts/fetch-model.sh`).
pub fn default_model_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SKILLGRAFT_MODEL_DIR") {
        return PathBuf::from(d);
    }
    home_dir().join("models").join(DEFAULT_MODEL_NAME)
}
