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

/// The number of compute threads `threads` asks for: itself when given and positive, else every core.
pub fn compute_threads(threads: Option<usize>) -> usize {
    threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the process-wide thread settings that candle reads from the environment, once, at start-up: before
/// any other thread exists (the binary calls it first thing in `main`), never later. `RAYON_NUM_THREADS` is the
/// process's compute threads (candle splits its matmuls into that many parts), and, unless already set,
/// `CANDLE_NUM_THREADS=1` pins candle's own elementwise worker pool to one thread: its spinning workers
/// otherwise compete with rayon's for the same cores (measured on 2 cores: forward+backward 2.7× slower).
pub fn set_process_threads(threads: Option<usize>) {
    std::env::set_var("RAYON_NUM_THREADS", compute_threads(threads).to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// A pool for model compute with `threads` threads (default: all cores). It changes no process-wide setting
/// ([`set_process_threads`] made those at start-up), so building one while other work runs is safe.
///
/// Run model work *inside* it (`pool.install(..)`): the calling thread then takes part in candle's
/// rayon-parallel matmuls instead of competing with the pool's workers for the same cores.
pub fn compute_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(compute_threads(threads))
        .stack_size(32 << 20)
        .thread_name(|i| format!("compute-{i}"))
        .build()?)
}
