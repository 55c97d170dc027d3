//! The benchmark lab, a wing of the command line of its own: `skillgraft bench` ([`compute`]: forward,
//! backward, optimizer, graft and localization rows, and through [`engine`] the serving engine's rows and
//! graft-size table), `skillgraft bench-serve` ([`serve`]: a server process under task-count phases; with
//! `--vs-raw`, [`vs_raw`]: the server against the raw model) and the hidden `skillgraft bench-worker`
//! ([`worker`], for `benches/compare.py`).
//!
//! What the benchmarks share stands below them: [`harness`] (medians, timers, CPU clocks, inputs) and
//! [`server`] (the server under test: started, fed tasks, read from `/metrics`), which talks over the command
//! line's one HTTP/1.1 client (`cli/http.rs`). Arrows run one way: `vs_raw` takes the options from `serve`,
//! both take `server` and `harness`, and nothing below imports what stands above it.

mod compute;
mod engine;
mod harness;
mod serve;
mod server;
mod vs_raw;
mod worker;

pub use compute::BenchArgs;
pub use serve::BenchServeArgs;
pub use worker::BenchWorkerArgs;

use anyhow::Result;

/// Runs `skillgraft bench`.
pub(super) fn run_bench(a: BenchArgs) -> Result<()> {
    compute::run(a)
}

/// Runs `skillgraft bench-serve`: the task-count phases, or with `--vs-raw` the comparison with the raw
/// model.
pub(super) fn run_serve(a: BenchServeArgs) -> Result<()> {
    if a.vs_raw {
        vs_raw::run(&a)
    } else {
        serve::run(&a)
    }
}

/// Runs the hidden `skillgraft bench-worker`.
pub(super) fn run_worker(a: BenchWorkerArgs) -> Result<()> {
    worker::run(a)
}
