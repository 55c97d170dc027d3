//! The command-line face of the library, and its table of contents: the [`Cli`] and its commands, the
//! dispatch, and below them one file a command (or a family of commands) and what they share. Every
//! command parses its flags and calls library code. Commands that report print human text on stdout
//! (tables, a summary line; `bench-serve --vs-raw` a Markdown table), or with `--json` one JSON document;
//! commands that write files (`finetune`, `localize`, `export`, `synthetic`, `task init`) say what they
//! wrote. `serve` runs the HTTP service until stopped, `healthcheck` answers with its exit status, and the
//! hidden `bench-worker` answers timing requests over stdin/stdout. Progress goes to stderr. Every command
//! but `serve` and `healthcheck` runs inside one compute pool ([`run`]).
//!
//! - the commands' files: `finetune`, `localize`, `evaluate`, `task` (init, check, schema), `compose`
//!   (overlap, compose, export, info), `predict` (predict, embed), `selfcheck`, `serve`, `study`,
//!   `synthetic`, `healthcheck`;
//! - the benchmark lab, a wing of its own: `bench/` (bench, bench-serve, the hidden bench-worker);
//! - shared by them: `args` (flag groups), `output` (JSON, progress, exit status), `table` (text tables),
//!   `http` (the HTTP/1.1 client of `healthcheck` and the serving benches).

mod args;
mod bench;
mod compose;
mod evaluate;
mod finetune;
mod healthcheck;
mod http;
mod localize;
mod output;
mod predict;
mod selfcheck;
mod serve;
mod study;
mod synthetic;
mod table;
mod task;

pub use output::Exit;

use anyhow::Result;
use args::ModelArgs;
use clap::{Parser, Subcommand};

/// skillgraft: one pre-trained transformer, many tasks as sparse grafts.
#[derive(Parser, Debug)]
#[command(name = "skillgraft", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune the base model on a task and write an HF directory.
    Finetune(finetune::FinetuneArgs),
    /// Find a fine-tuned checkpoint's graft (the sparse skill region) and write the graft file.
    Localize(localize::LocalizeArgs),
    /// Evaluate a graft side by side with base+head (and base patch / fine-tuned when given the checkpoint).
    Evaluate(evaluate::EvaluateArgs),
    /// Task specs: write a starting spec from a data file, check a spec against its data, print the schema.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Overlap of several tasks' grafts (counts, Jaccard, containment, where they live).
    Overlap(compose::OverlapArgs),
    /// Compose grafts into one (union) and report each task's accuracy under it.
    Compose(compose::ComposeArgs),
    /// Write base + graft as an HF directory.
    Export(compose::ExportArgs),
    /// Describe a model directory or a graft file.
    Info(compose::InfoArgs),
    /// A task's predictions through the serving engine (any device, any precision), with accuracy on its test
    /// split when no texts are given.
    Predict(predict::PredictArgs),
    /// Sentence embeddings (and hidden states) of the base model as .npy files.
    Embed(predict::EmbedArgs),
    /// Check the kernels and the serving engine on a device (a GPU) against the CPU and each other.
    Selfcheck(selfcheck::SelfcheckArgs),
    /// Time forward, forward+backward, optimizer steps and a localization job.
    Bench(bench::BenchArgs),
    /// Timing requests over stdin/stdout for benches/compare.py (interleaved with PyTorch and ONNX Runtime).
    #[command(hide = true)]
    BenchWorker(bench::BenchWorkerArgs),
    /// Run the HTTP service on the base model.
    Serve(serve::ServeArgs),
    /// Drive a server (started as a second process) with 1 vs many tasks: throughput, latency, memory.
    BenchServe(bench::BenchServeArgs),
    /// Run a resumable grid of fine-tunes and localizations and write a Markdown report.
    Study(study::StudyArgs),
    /// Write a random graft for the base model (smoke tests of a deployment, benchmarks).
    Synthetic(synthetic::SyntheticArgs),
    /// Exit 0 when the server on this machine answers /health (or /ready): a container health check.
    Healthcheck(healthcheck::HealthcheckArgs),
}

impl Command {
    /// The model flags of the command, whose `--threads` sizes the compute pool.
    fn model_args(&self) -> Option<&ModelArgs> {
        match self {
            Command::Finetune(a) => Some(&a.model),
            Command::Localize(a) => Some(&a.model),
            Command::Evaluate(a) => Some(&a.model),
            Command::Overlap(a) => Some(&a.model),
            Command::Compose(a) => Some(&a.model),
            Command::Export(a) => Some(&a.model),
            Command::Info(a) => Some(&a.model),
            Command::Predict(a) => Some(&a.model),
            Command::Embed(a) => Some(&a.model),
            Command::Selfcheck(a) => Some(&a.model),
            Command::Bench(a) => Some(&a.model),
            Command::BenchWorker(a) => Some(&a.model),
            Command::Serve(a) => Some(&a.model),
            Command::BenchServe(a) => Some(&a.model),
            Command::Study(a) => Some(&a.model),
            Command::Synthetic(a) => Some(&a.model),
            Command::Healthcheck(_) => None,
            Command::Task(t) => t.model_args(),
        }
    }
}

/// Runs the CLI: the command runs inside the compute thread pool (see [`crate::compute_pool`]).
pub fn run(cli: Cli) -> Result<()> {
    let command = match cli.command {
        Command::Serve(a) => return serve::run(a),
        Command::Healthcheck(a) => return healthcheck::run(a),
        c => c,
    };
    let pool = crate::compute_pool(command.model_args().and_then(|m| m.threads))?;
    pool.install(|| dispatch(command))
}

/// Runs one command (inside the compute pool).
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Finetune(a) => finetune::run(a),
        Command::Localize(a) => localize::cmd_localize(a),
        Command::Evaluate(a) => evaluate::cmd_evaluate(a),
        Command::Task(t) => task::run(t),
        Command::Overlap(a) => compose::cmd_overlap(a),
        Command::Compose(a) => compose::cmd_compose(a),
        Command::Export(a) => compose::cmd_export(a),
        Command::Info(a) => compose::cmd_info(a),
        Command::Predict(a) => predict::run_predict(a),
        Command::Embed(a) => predict::run_embed(a),
        Command::Selfcheck(a) => selfcheck::run(a),
        Command::Bench(a) => bench::run_bench(a),
        Command::BenchWorker(a) => bench::run_worker(a),
        Command::Serve(a) => serve::run(a),
        Command::BenchServe(a) => bench::run_serve(a),
        Command::Study(a) => study::cmd_study(a),
        Command::Synthetic(a) => synthetic::run(a),
        Command::Healthcheck(a) => healthcheck::run(a),
    }
}
