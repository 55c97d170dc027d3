//! skillgraft: serve many fine-tuned tasks from one pre-trained transformer by grafting each task's
//! sparse skill region (Panigrahi et al., ICML 2023) onto the shared base model.

pub mod calibration;
pub mod cli;
pub mod data;
pub mod engine;
pub mod graft;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod study;
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

/// The pool all model compute runs in, with `threads` threads (default: all cores).
///
/// Run model work *inside* it (`pool.install(..)`): the calling thread then takes part in candle's
/// rayon-parallel matmuls instead of competing with the pool's workers for the same cores. It also sets
/// `RAYON_NUM_THREADS` (candle reads it to split matmuls) and, unless already set, pins candle's own
/// elementwise worker pool to one thread (`CANDLE_NUM_THREADS=1`): its spinning workers otherwise compete
/// with rayon's (measured on 2 cores: forward+backward 2.7× slower).
pub fn compute_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(32 << 20)
        .thread_name(|i| format!("compute-{i}"))
        .build()?)
}
