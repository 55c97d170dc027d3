//! The command-line face of the library: every subcommand parses flags, calls library code, and prints a
//! human table or (`--json`) one JSON document on stdout. Progress goes to stderr.

mod bench;
mod bench_serve;
mod bench_worker;
mod engine_bench;
mod healthcheck;
mod predict;
mod selfcheck;
mod synthetic;
mod table;

use crate::data::{self, FewShotSplit, TaskSpec};
use crate::graft::evaluate::{evaluate_variants, Variant};
use crate::graft::job::LocalizationJob;
use crate::graft::localize::{GraftableModel, LocalizeOptions, Method};
use crate::graft::overlap::{compose, overlap, ConflictRule};
use crate::graft::{unix_now, FlatRegion, Graft, RegionSpec};
use crate::model::export::{load_finetuned, write_hf_dir};
use crate::model::{BaseModel, HeadKind};
use crate::train::optim::OptimizerConfig;
use crate::train::{finetune, FinetuneOptions, Progress, TrainScope};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use table::Table;

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
    Finetune(FinetuneArgs),
    /// Find a fine-tuned checkpoint's graft (the sparse skill region) and write the graft file.
    Localize(LocalizeArgs),
    /// Evaluate a graft side by side with base+head (and base patch / fine-tuned when given the checkpoint).
    Evaluate(EvaluateArgs),
    /// Overlap of several tasks' grafts (counts, Jaccard, containment, where they live).
    Overlap(OverlapArgs),
    /// Compose grafts into one (union) and report each task's accuracy under it.
    Compose(ComposeArgs),
    /// Write base + graft as an HF directory.
    Export(ExportArgs),
    /// Describe a model directory or a graft file.
    Info(InfoArgs),
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
    BenchWorker(bench_worker::BenchWorkerArgs),
    /// Run the HTTP service on the base model.
    Serve(ServeArgs),
    /// Drive a server (started as a second process) with 1 vs many tasks: throughput, latency, memory.
    BenchServe(bench_serve::BenchServeArgs),
    /// Run a resumable grid of fine-tunes and localizations and write a Markdown report.
    Study(StudyArgs),
    /// Write a random graft for the base model (smoke tests of a deployment, benchmarks).
    Synthetic(synthetic::SyntheticArgs),
    /// Exit 0 when the server on this machine answers /health (or /ready): a container health check.
    Healthcheck(healthcheck::HealthcheckArgs),
}

/// Options of `skillgraft study` (lists are comma-separated).
#[derive(Args, Debug)]
struct StudyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tasks.
    #[arg(long, value_delimiter = ',', default_value = "sst2,mr,cr,subj")]
    tasks: Vec<String>,
    /// Few-shot seeds.
    #[arg(long, value_delimiter = ',', default_value = "13,21,42")]
    seeds: Vec<u64>,
    /// Examples per class.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    ks: Vec<usize>,
    /// Head protocols.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "prototype")]
    heads: Vec<HeadKind>,
    /// Fine-tuning optimizers: sgd, adamw, adamw-l1.
    #[arg(long, value_delimiter = ',', default_value = "sgd")]
    optimizers: Vec<String>,
    /// Localization methods.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "magnitude,paper,l1,saliency,refit"
    )]
    methods: Vec<Method>,
    /// Graft budgets.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,1e-3")]
    sparsities: Vec<f64>,
    /// Fine-tuning steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Dev evaluation interval.
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Mask-optimization epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Test-set cap per task.
    #[arg(long)]
    max_test: Option<usize>,
    /// Cache of fine-tunes and finished cells (a rerun continues from it).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Data sets.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Method of the grafts the analyses use (calibration, out of distribution, overlap, composition).
    #[arg(long, value_enum, default_value = "paper")]
    analysis_method: Method,
    /// Budget of the analysed grafts.
    #[arg(long, default_value_t = 1e-4)]
    analysis_sparsity: f64,
    /// Out-of-distribution pairs source:target (comma-separated; "" for none).
    #[arg(long, value_delimiter = ',', default_value = "sst2:mr,sst2:cr")]
    ood: Vec<String>,
    /// Composition pairs a:b (comma-separated; "" for none).
    #[arg(long, value_delimiter = ',', default_value = "sst2:subj,mr:cr")]
    pairs: Vec<String>,
    /// A JSON study configuration (several grids, analyses); replaces the grid and analysis flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the report from what the cache already holds; train and localize nothing.
    #[arg(long)]
    cached_only: bool,
    /// The Markdown report (plots go to `plots/` beside it).
    #[arg(long, default_value = "docs/RESULTS.md")]
    report: PathBuf,
    /// All cells as JSON.
    #[arg(long, default_value = "docs/results.json")]
    results_json: PathBuf,
}

/// Options of `skillgraft serve` (every flag also reads an environment variable).
#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Listen address.
    #[arg(long, env = "SKILLGRAFT_ADDR", default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Service state directory (tasks, checkpoints, jobs); default $SKILLGRAFT_HOME/data. With --store
    /// s3://…, only local scratch space and a cache.
    #[arg(long, env = "SKILLGRAFT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where state lives, shared by every replica that names it: a directory (default: the state directory)
    /// or s3://bucket/prefix (credentials, region and AWS_ENDPOINT_URL from the usual AWS variables).
    #[arg(long, env = "SKILLGRAFT_STORE")]
    store: Option<String>,
    /// How often to read the store's change journal, ms: a task changed through another replica is served
    /// here within about this plus one load.
    #[arg(long, env = "SKILLGRAFT_SYNC_MS", default_value_t = 1000)]
    sync_ms: u64,
    /// Bytes of grafts kept in memory (loaded on first use, least recently used out).
    #[arg(long, env = "SKILLGRAFT_TASK_CACHE_BYTES", default_value_t = 256 << 20)]
    task_cache_bytes: usize,
    /// Seconds without a heartbeat after which another replica counts as gone (its jobs reported failed).
    #[arg(long, env = "SKILLGRAFT_REPLICA_DEAD_SECS", default_value_t = 15)]
    replica_dead_secs: u64,
    /// Data sets for built-in tasks.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API keys for read and predict routes (comma-separated); none = no authentication.
    #[arg(long, env = "SKILLGRAFT_API_KEYS", value_delimiter = ',')]
    api_key: Vec<String>,
    /// Admin keys for routes that change state (comma-separated).
    #[arg(long, env = "SKILLGRAFT_ADMIN_KEYS", value_delimiter = ',')]
    admin_key: Vec<String>,
    /// Largest JSON request body, bytes.
    #[arg(long, env = "SKILLGRAFT_MAX_JSON_BYTES", default_value_t = 2 << 20)]
    max_json_bytes: usize,
    /// Largest checkpoint upload (tar), bytes.
    #[arg(long, env = "SKILLGRAFT_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    max_upload_bytes: usize,
    /// Largest graft import (PUT /v1/tasks/{name}/graft), bytes.
    #[arg(long, env = "SKILLGRAFT_MAX_GRAFT_BYTES", default_value_t = 16 << 20)]
    max_graft_bytes: usize,
    /// Most entries in an uploaded checkpoint archive.
    #[arg(long, env = "SKILLGRAFT_MAX_ARCHIVE_ENTRIES", default_value_t = 64)]
    max_archive_entries: usize,
    /// Texts per prediction request at most.
    #[arg(long, env = "SKILLGRAFT_MAX_BATCH_INPUTS", default_value_t = 256)]
    max_batch_inputs: usize,
    /// Real tokens per request at most (predict, evaluate, composition data); more is refused with 413.
    #[arg(long, env = "SKILLGRAFT_MAX_REQUEST_TOKENS", default_value_t = 16384)]
    max_request_tokens: usize,
    /// Task names per overlap query at most.
    #[arg(long, env = "SKILLGRAFT_MAX_OVERLAP_TASKS", default_value_t = 32)]
    max_overlap_tasks: usize,
    /// Request timeout, seconds.
    #[arg(long, env = "SKILLGRAFT_TIMEOUT_SECS", default_value_t = 120)]
    timeout_secs: u64,
    /// Time a client has to send a request's headers, seconds.
    #[arg(long, env = "SKILLGRAFT_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Open connections at most.
    #[arg(long, env = "SKILLGRAFT_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// After SIGTERM, seconds in-flight requests get before the server exits anyway.
    #[arg(long, env = "SKILLGRAFT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Who may read /metrics when keys are set: public, read (any key) or admin.
    #[arg(long, env = "SKILLGRAFT_METRICS_ACCESS", default_value = "read")]
    metrics_access: crate::server::auth::Access,
    /// Per-task latency series in /metrics (they name every task).
    #[arg(long, env = "SKILLGRAFT_METRICS_PER_TASK")]
    metrics_per_task: bool,
    /// Concurrent localization jobs.
    #[arg(long, env = "SKILLGRAFT_MAX_JOBS", default_value_t = 1)]
    max_jobs: usize,
    /// Compute threads of each localization job.
    #[arg(long, env = "SKILLGRAFT_JOB_THREADS", default_value_t = 1)]
    job_threads: usize,
    /// Engine queue capacity (requests beyond it get 429).
    #[arg(long, env = "SKILLGRAFT_QUEUE", default_value_t = 256)]
    queue: usize,
    /// Real tokens per engine batch at most.
    #[arg(long, env = "SKILLGRAFT_MAX_BATCH_TOKENS", default_value_t = 4096)]
    max_batch_tokens: usize,
    /// How long the engine waits for a batch to fill, milliseconds.
    #[arg(long, env = "SKILLGRAFT_BATCH_WAIT_MS", default_value_t = 2)]
    batch_wait_ms: u64,
    /// Bytes of per-task state (sparse deltas on the device, heads) the engine keeps; least recently used
    /// tasks are rebuilt on their next request.
    #[arg(long, env = "SKILLGRAFT_MAX_RESIDENT_BYTES", default_value_t = 1 << 30)]
    max_resident_bytes: usize,
    /// Cost of one forward pass in padded tokens when the engine cuts a batch by length (0 = by device:
    /// 32 on the CPU, 1024 on a GPU; a huge value = one pass padded to the longest text).
    #[arg(long, env = "SKILLGRAFT_PASS_OVERHEAD_TOKENS", default_value_t = 0)]
    pass_overhead_tokens: usize,
}

/// Where the base model is and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Base model: an HF directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "SKILLGRAFT_MODEL_DIR")]
    model: Option<PathBuf>,
    /// Compute threads (matmuls and fused ops); default: all cores.
    #[arg(long, env = "SKILLGRAFT_THREADS")]
    threads: Option<usize>,
    /// Device: cpu, cuda (GPU 0) or cuda:N (with the `cuda` build feature).
    #[arg(long, env = "SKILLGRAFT_DEVICE", default_value = "cpu")]
    device: String,
    /// Inference precision: f32, bf16 or f16 (serving, evaluation, bench; training always runs in f32).
    #[arg(long, env = "SKILLGRAFT_DTYPE", value_parser = ["f32", "bf16", "f16"], default_value = "f32")]
    dtype: String,
    /// Maximum tokens per input.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

/// Which task and which examples.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Built-in task: sst2, sst5, mr, cr, mpqa, subj.
    #[arg(long)]
    task: Option<String>,
    /// A task spec JSON file (instead of --task).
    #[arg(long)]
    task_spec: Option<PathBuf>,
    /// Directory of the data sets.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Examples per class for train and for dev.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Few-shot sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cap the test set (deterministic subsample) for quick runs.
    #[arg(long)]
    max_test: Option<usize>,
}

#[derive(Args, Debug)]
struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Output HF directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Task head.
    #[arg(long, value_enum, default_value = "prototype")]
    head: HeadKind,
    /// Prototype-head temperature τ.
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Pooling of the linear head: cls or mean.
    #[arg(long, value_enum, default_value = "cls")]
    pooling: crate::model::Pooling,
    /// Optimizer.
    #[arg(long, value_parser = ["sgd", "adamw"], default_value = "sgd")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-2)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// λ of a proximal L1 pull ‖θ − θ_pre‖₁ (sparser fine-tuning, localizes better with AdamW).
    #[arg(long)]
    l1: Option<f64>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Head-only probe steps before the body (scope probe-then-body).
    #[arg(long, default_value_t = 100)]
    probe_steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Evaluate on dev every N steps (best dev checkpoint kept).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Gradient-norm clip (0 = none).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// What trains (default: body for heads without parameters, both otherwise).
    #[arg(long, value_enum)]
    scope: Option<TrainScope>,
    /// Also train the embeddings (frozen by default).
    #[arg(long)]
    train_embeddings: bool,
}

#[derive(Args, Debug, Clone)]
struct RegionArgs {
    /// Let the graft include the embeddings.
    #[arg(long)]
    include_embeddings: bool,
    /// Restrict the region to these encoder layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
}

impl RegionArgs {
    fn spec(&self) -> RegionSpec {
        RegionSpec {
            include_embeddings: self.include_embeddings,
            layers: self.layers.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct LocalizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The fine-tuned HF directory (from `finetune`, or transformers' save_pretrained).
    #[arg(long)]
    finetuned: PathBuf,
    /// Output graft file.
    #[arg(long)]
    out: PathBuf,
    /// Method.
    #[arg(long, value_enum, default_value = "paper")]
    method: Method,
    /// Graft budget as a fraction of the region.
    #[arg(long, default_value_t = 1e-4)]
    sparsity: f64,
    /// Mask-optimization epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mask learning rate η.
    #[arg(long, default_value_t = 1e7)]
    mask_lr: f64,
    /// Sigmoid bias β.
    #[arg(long, default_value_t = 10.0)]
    sigmoid_bias: f64,
    /// Relative L1 strength (method l1).
    #[arg(long, default_value_t = 0.1)]
    l1_lambda: f64,
    /// Adam learning rate of the re-fitted values (method refit).
    #[arg(long, default_value_t = 1e-3)]
    refit_lr: f64,
    /// Batch size for gradient accumulation.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Seed of the mask initialisation.
    #[arg(long, default_value_t = 0)]
    mask_seed: u64,
    #[command(flatten)]
    region: RegionArgs,
    /// ECE bins.
    #[arg(long, default_value_t = 10)]
    bins: usize,
}

#[derive(Args, Debug)]
struct EvaluateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The graft file.
    #[arg(long)]
    graft: PathBuf,
    /// The fine-tuned checkpoint, to add the base patch and fine-tuned rows.
    #[arg(long)]
    finetuned: Option<PathBuf>,
    /// Evaluate on another task with the same labels (out of distribution), e.g. mr, cr.
    #[arg(long)]
    eval_task: Vec<String>,
    /// ECE bins.
    #[arg(long, default_value_t = 10)]
    bins: usize,
}

#[derive(Args, Debug)]
struct OverlapArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Graft files.
    #[arg(required = true, num_args = 1..)]
    grafts: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct ComposeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Graft files (order matters for last-wins).
    #[arg(required = true, num_args = 1..)]
    grafts: Vec<PathBuf>,
    /// Rule for coordinates several grafts set.
    #[arg(long, value_enum, default_value = "mean")]
    rule: ConflictRule,
    /// Output graft file (body union; head of the first graft).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the data sets (to measure each task's accuracy).
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Few-shot seed of the evaluation split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Cap each task's test set.
    #[arg(long)]
    max_test: Option<usize>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The graft file.
    #[arg(long)]
    graft: PathBuf,
    /// Output HF directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A graft file to describe instead of the model.
    #[arg(long)]
    graft: Option<PathBuf>,
}

impl ModelArgs {
    fn device(&self) -> Result<Device> {
        let ordinal = match self.device.as_str() {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => 0,
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => n,
                _ => bail!("unknown device `{other}` (cpu, cuda or cuda:N)"),
            },
        };
        if !cfg!(feature = "cuda") {
            bail!("this build has no CUDA support: build with scripts/build-cuda.sh (the `cuda` feature)");
        }
        Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
    }

    fn dtype(&self) -> Result<candle_core::DType> {
        Ok(match self.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            other => bail!("unknown dtype `{other}` (f32, bf16 or f16)"),
        })
    }

    /// Refuses reduced precision for commands that train.
    fn require_f32(&self, what: &str) -> Result<()> {
        if self.dtype != "f32" {
            bail!(
                "{what} trains the model and runs in f32 only; drop --dtype {}",
                self.dtype
            );
        }
        Ok(())
    }

    fn load(&self) -> Result<BaseModel> {
        let dir = self.model.clone().unwrap_or_else(crate::default_model_dir);
        if !dir.exists() {
            bail!(
                "base model directory {} does not exist: run scripts/fetch-model.sh, or pass --model DIR",
                dir.display()
            );
        }
        let mut base = BaseModel::load(&dir, &self.device()?, self.max_len)?;
        base.dtype = self.dtype()?;
        Ok(base)
    }
}

impl DataArgs {
    fn task(&self) -> Result<TaskSpec> {
        match (&self.task, &self.task_spec) {
            (Some(name), None) => data::builtin_task(name).with_context(|| {
                format!(
                    "unknown task `{name}` (built-in: {})",
                    data::builtin_task_names().join(", ")
                )
            }),
            (None, Some(path)) => TaskSpec::from_json_file(path),
            (Some(_), Some(_)) => bail!("give --task or --task-spec, not both"),
            (None, None) => bail!("name a task: --task sst2 (or --task-spec FILE)"),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(data::data_dir_default)
    }

    fn split(&self, task: &TaskSpec) -> Result<FewShotSplit> {
        data::task_split(task, &self.data_dir(), self.k, self.seed, self.max_test)
    }
}

/// Progress reporting to stderr: a bar on a terminal, periodic lines otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    quiet_steps: bool,
}

impl Reporter {
    fn new() -> Self {
        Self {
            bar: None,
            quiet_steps: !std::io::stderr().is_terminal(),
        }
    }

    fn handle(&mut self, p: Progress) {
        match p {
            Progress::Step { stage, step, total, loss } => {
                if self.quiet_steps {
                    return;
                }
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b
                });
                bar.set_length(total as u64);
                bar.set_prefix(stage);
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}"));
                if step == total {
                    bar.finish_and_clear();
                    self.bar = None;
                }
            }
            Progress::Eval(e) => {
                let line = format!(
                    "[{}] step {:>5}  train loss {:.4}  dev acc {:.4}  dev loss {:.4}",
                    e.stage, e.step, e.train_loss, e.dev_accuracy, e.dev_loss
                );
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Progress::Epoch(e) => eprintln!(
                "epoch {:>3}  mask {:>8}  flips {:>6}  train acc {:.4}  dev acc {:.4}  loss {:.4}  {:.2}s",
                e.epoch, e.mask_size, e.flips, e.train_accuracy, e.dev_accuracy, e.loss, e.seconds
            ),
            Progress::Message { text } => eprintln!("{text}"),
        }
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn variants_table(rows: &[crate::graft::evaluate::VariantReport], bins: usize) -> Table {
    let mut t = Table::new(&[
        "model",
        "params",
        "train acc",
        "dev acc",
        "test acc",
        "macro-F1",
        &format!("ECE({bins})"),
        "NLL",
        "Brier",
        "T",
        "ECE@T",
    ]);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            r.size.to_string(),
            format!("{:.4}", r.train_accuracy),
            format!("{:.4}", r.dev_accuracy),
            format!("{:.4}", r.test.accuracy),
            format!("{:.4}", r.test.macro_f1),
            format!("{:.4}", r.test.ece),
            format!("{:.4}", r.test.nll),
            format!("{:.4}", r.test.brier),
            format!("{:.3}", r.temperature),
            format!("{:.4}", r.test_calibrated.ece),
        ]);
    }
    t
}

impl Command {
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
        }
    }
}

/// Runs the CLI: the command runs inside the compute thread pool (see [`crate::compute_pool`]).
pub fn run(cli: Cli) -> Result<()> {
    let command = match cli.command {
        Command::Serve(a) => return cmd_serve(a),
        Command::Healthcheck(a) => return healthcheck::run(a),
        c => c,
    };
    let pool = crate::compute_pool(command.model_args().and_then(|m| m.threads))?;
    pool.install(|| dispatch(command))
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Finetune(a) => cmd_finetune(a),
        Command::Localize(a) => cmd_localize(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Overlap(a) => cmd_overlap(a),
        Command::Compose(a) => cmd_compose(a),
        Command::Export(a) => cmd_export(a),
        Command::Info(a) => cmd_info(a),
        Command::Predict(a) => predict::run_predict(a),
        Command::Embed(a) => predict::run_embed(a),
        Command::Selfcheck(a) => selfcheck::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchWorker(a) => bench_worker::run(a),
        Command::Serve(a) => cmd_serve(a),
        Command::BenchServe(a) => bench_serve::run(a),
        Command::Study(a) => cmd_study(a),
        Command::Synthetic(a) => synthetic::run(a),
        Command::Healthcheck(a) => healthcheck::run(a),
    }
}

fn cmd_finetune(a: FinetuneArgs) -> Result<()> {
    a.model.require_f32("finetune")?;
    let base = a.model.load()?;
    let task = a.data.task()?;
    let split = a.data.split(&task)?;
    let head = base.head_spec(a.head, &task, a.temperature, a.pooling)?;
    let head_tensors = base.init_head(&head, a.data.seed)?;
    let mut tensors = base.model.weights.deep_clone()?.tensors;
    tensors.extend(head_tensors);
    let optimizer = match a.optimizer.as_str() {
        "adamw" => OptimizerConfig::AdamW {
            lr: a.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
        },
        _ => OptimizerConfig::Sgd {
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
        },
    };
    let scope = a.scope.unwrap_or(match head {
        crate::model::HeadSpec::Prototype { .. } | crate::model::HeadSpec::Prompt { .. } => {
            TrainScope::Body
        }
        _ => TrainScope::Both,
    });
    let opts = FinetuneOptions {
        optimizer,
        steps: a.steps,
        probe_steps: a.probe_steps,
        batch_size: a.batch_size,
        eval_every: a.eval_every,
        clip: (a.clip > 0.0).then_some(a.clip),
        l1: a.l1,
        scope,
        train_embeddings: a.train_embeddings,
        seed: a.data.seed,
    };
    let inputs = base.inputs(head.clone());
    let mut rep = Reporter::new();
    eprintln!(
        "fine-tuning {} on {} (K={}, seed {}: {} train / {} dev / {} test), head {}, scope {:?}",
        base.name,
        task.name,
        split.k,
        split.seed,
        split.train.len(),
        split.dev.len(),
        split.test.len(),
        head.kind(),
        scope
    );
    let (tensors, report) = finetune(tensors, &inputs, &split, &opts, &mut |p| rep.handle(p))?;
    write_hf_dir(&a.out, &base.model, &tensors, &head, Some(&task), a.force)?;
    if a.model.json {
        print_json(&serde_json::json!({"out": a.out, "options": opts, "report": report}))?;
    } else {
        println!(
            "fine-tuned in {:.1}s; best dev accuracy {:.4} at step {}; written to {}",
            report.seconds,
            report.best_dev_accuracy,
            report.best_step,
            a.out.display()
        );
    }
    Ok(())
}

fn cmd_localize(a: LocalizeArgs) -> Result<()> {
    a.model.require_f32("localize")?;
    let base = a.model.load()?;
    let named = a.data.task.is_some() || a.data.task_spec.is_some();
    let hint = if named { Some(a.data.task()?) } else { None };
    let ft = load_finetuned(
        &a.finetuned,
        &base.model,
        hint.as_ref(),
        &base.tokenizer,
        &base.device,
    )?;
    let task = match hint {
        Some(t) => t,
        None => ft
            .task
            .clone()
            .context("the checkpoint does not say its task: name it with --task or --task-spec")?,
    };
    let split = a.data.split(&task)?;
    let options = LocalizeOptions {
        method: a.method,
        sparsity: a.sparsity,
        epochs: a.epochs,
        lr: a.mask_lr,
        sigmoid_bias: a.sigmoid_bias,
        l1_lambda: a.l1_lambda,
        refit_lr: a.refit_lr,
        batch_size: a.batch_size,
        seed: a.mask_seed,
        region: a.region.spec(),
    };
    let job = LocalizationJob {
        base: &base,
        finetuned: &ft,
        task,
        split,
        options,
        bins: a.bins,
        cancel: None,
    };
    let mut rep = Reporter::new();
    let out = job.run(&mut |p| rep.handle(p))?;
    out.graft.save(&a.out)?;
    let m = &out.graft.manifest;
    if a.model.json {
        print_json(&serde_json::json!({
            "out": a.out, "size": m.size, "region_size": m.region_size,
            "region_fraction": m.region_fraction(), "model_fraction": m.model_fraction(),
            "method": m.method, "best_epoch": out.localization.best_epoch,
            "variants": out.variants, "history": out.localization.history, "timings": out.timings,
        }))?;
    } else {
        println!(
            "graft: {} parameters = {:.3e} of the region ({}), {:.3e} of the model; method {}, best epoch {}",
            m.size,
            m.region_fraction(),
            m.region_size,
            m.model_fraction(),
            m.method,
            out.localization.best_epoch
        );
        println!("{}", variants_table(&out.variants, a.bins));
        println!(
            "times: setup {:.2}s, localization {:.2}s, evaluation {:.2}s; written to {}",
            out.timings.setup_seconds,
            out.timings.localize_seconds,
            out.timings.evaluate_seconds,
            a.out.display()
        );
    }
    Ok(())
}

/// Reads a graft file and checks that it belongs to `base`.
fn load_checked_graft(path: &std::path::Path, base: &BaseModel) -> Result<Graft> {
    let g = Graft::load(path)?;
    g.check_base(
        &base.model.weights.tensors,
        &base.model.weights.content_hash,
    )
    .with_context(|| format!("{}", path.display()))?;
    Ok(g)
}

/// Base weights with a graft applied (a detached copy), for use as a "fine-tuned" body.
fn grafted_body(base: &BaseModel, graft: &Graft) -> Result<BTreeMap<String, candle_core::Tensor>> {
    let copy = base.model.weights.deep_clone()?.tensors;
    let applied = graft.apply(&copy)?;
    drop(applied);
    Ok(copy)
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    a.model.require_f32(
        "evaluate (use `skillgraft predict --dtype` for reduced-precision inference)",
    )?;
    let base = a.model.load()?;
    let graft = load_checked_graft(&a.graft, &base)?;
    let task = match (&a.data.task, &a.data.task_spec, &graft.manifest.task) {
        (None, None, Some(t)) => t.clone(),
        _ => a.data.task()?,
    };
    let split = a.data.split(&task)?;
    let head = graft.manifest.head.clone();
    let head_tensors = graft.head_tensors(&base.device)?;
    let ft_body = match &a.finetuned {
        Some(dir) => {
            load_finetuned(dir, &base.model, Some(&task), &base.tokenizer, &base.device)?
                .model
                .weights
                .tensors
        }
        None => grafted_body(&base, &graft)?,
    };
    let model = GraftableModel::new(
        &base.model,
        &ft_body,
        head_tensors,
        base.inputs(head),
        &graft.manifest.region,
    )?;
    let mask = graft.flat_indices(&model.region)?;
    let budget = mask.len();
    let abs: Vec<f32> = model.delta.iter().map(|d| d.abs()).collect();
    let base_patch = crate::graft::localize::top_k(&abs, budget);
    let mut variants = vec![("base+head".to_string(), Variant::Mask(&[]))];
    if a.finetuned.is_some() {
        variants.push(("base patch".to_string(), Variant::Mask(&base_patch)));
    }
    variants.push(("graft".to_string(), Variant::Mask(&mask)));
    if a.finetuned.is_some() {
        variants.push(("fine-tuned".to_string(), Variant::Finetuned));
    }
    let mut results = serde_json::Map::new();
    let in_dist = evaluate_variants(&model, &split, &split.test, &variants, a.bins)?;
    if !a.model.json {
        println!(
            "{} (in distribution, {} test examples)",
            task.name,
            split.test.len()
        );
        println!("{}", variants_table(&in_dist, a.bins));
    }
    results.insert(task.name.clone(), serde_json::to_value(&in_dist)?);
    for other in &a.eval_task {
        let ot = data::builtin_task(other).with_context(|| format!("unknown task `{other}`"))?;
        if ot.labels.len() != task.labels.len() {
            bail!(
                "task `{other}` has {} labels, `{}` has {}",
                ot.labels.len(),
                task.name,
                task.labels.len()
            );
        }
        let osplit = data::task_split(
            &ot,
            &a.data.data_dir(),
            a.data.k,
            a.data.seed,
            a.data.max_test,
        )?;
        let r = evaluate_variants(&model, &split, &osplit.test, &variants, a.bins)?;
        if !a.model.json {
            println!(
                "{} → {} (out of distribution, {} examples)",
                task.name,
                other,
                osplit.test.len()
            );
            println!("{}", variants_table(&r, a.bins));
        }
        results.insert(other.clone(), serde_json::to_value(&r)?);
    }
    if a.model.json {
        print_json(&serde_json::json!({"bins": a.bins, "results": results}))?;
    }
    Ok(())
}

fn load_grafts(paths: &[PathBuf], base: &BaseModel) -> Result<(Vec<String>, Vec<Graft>)> {
    let mut names = Vec::new();
    let mut grafts = Vec::new();
    for p in paths {
        let g = load_checked_graft(p, base)?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        names.push(
            g.manifest
                .task
                .as_ref()
                .map(|t| format!("{}:{stem}", t.name))
                .unwrap_or(stem),
        );
        grafts.push(g);
    }
    let r0 = &grafts[0].manifest.region;
    if grafts.iter().any(|g| &g.manifest.region != r0) {
        bail!("the grafts were localized over different regions; overlap needs one region");
    }
    Ok((names, grafts))
}

fn matrix_table(title: &str, names: &[String], m: &[Vec<String>]) -> Table {
    let mut header = vec![title.to_string()];
    header.extend(names.iter().cloned());
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&refs);
    for (n, row) in names.iter().zip(m) {
        let mut r = vec![n.clone()];
        r.extend(row.iter().cloned());
        t.row(r);
    }
    t
}

fn cmd_overlap(a: OverlapArgs) -> Result<()> {
    let base = a.model.load()?;
    let (names, grafts) = load_grafts(&a.grafts, &base)?;
    let region = FlatRegion::new(&grafts[0].manifest.region, &base.model.weights.tensors)?;
    let rep = overlap(&names, &grafts, &region)?;
    if a.model.json {
        return print_json(&serde_json::to_value(&rep)?);
    }
    let fmt_u = |m: &Vec<Vec<usize>>| {
        m.iter()
            .map(|r| r.iter().map(|v| v.to_string()).collect())
            .collect::<Vec<Vec<String>>>()
    };
    let fmt_f = |m: &Vec<Vec<f64>>| {
        m.iter()
            .map(|r| r.iter().map(|v| format!("{v:.4}")).collect())
            .collect::<Vec<Vec<String>>>()
    };
    println!(
        "{}",
        matrix_table("|A∩B|", &names, &fmt_u(&rep.intersection))
    );
    println!("{}", matrix_table("Jaccard", &names, &fmt_f(&rep.jaccard)));
    println!(
        "{}",
        matrix_table("random Jaccard", &names, &fmt_f(&rep.random_jaccard))
    );
    println!(
        "{}",
        matrix_table("containment", &names, &fmt_f(&rep.containment))
    );
    let mut layers: Vec<String> = rep
        .breakdown
        .iter()
        .flat_map(|b| b.by_layer.keys().cloned())
        .collect();
    layers.sort();
    layers.dedup();
    let mut modules: Vec<String> = rep
        .breakdown
        .iter()
        .flat_map(|b| b.by_module.keys().cloned())
        .collect();
    modules.sort();
    modules.dedup();
    for (title, keys, get) in [
        (
            "by layer",
            &layers,
            (|b: &crate::graft::overlap::Breakdown, k: &str| b.by_layer.get(k).copied())
                as fn(&_, &str) -> Option<usize>,
        ),
        ("by module", &modules, |b, k| b.by_module.get(k).copied()),
    ] {
        let mut header = vec![title.to_string()];
        header.extend(keys.iter().cloned());
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&refs);
        for (n, b) in names.iter().zip(&rep.breakdown) {
            let mut row = vec![n.clone()];
            row.extend(keys.iter().map(|k| get(b, k).unwrap_or(0).to_string()));
            t.row(row);
        }
        println!("{t}");
    }
    Ok(())
}

fn cmd_compose(a: ComposeArgs) -> Result<()> {
    a.model.require_f32("compose")?;
    let base = a.model.load()?;
    let (names, grafts) = load_grafts(&a.grafts, &base)?;
    let region = FlatRegion::new(&grafts[0].manifest.region, &base.model.weights.tensors)?;
    let entries = compose(&grafts, &region, a.rule)?;
    let mut composed = grafts[0].clone();
    composed.entries = entries;
    composed.manifest.size = composed.size();
    composed.manifest.method = format!("compose({:?})", a.rule).to_lowercase();
    composed.manifest.hyper_parameters = serde_json::json!({"members": names, "rule": a.rule});
    composed.manifest.metrics = serde_json::json!({});
    composed.manifest.created_unix = unix_now();
    let data_dir = a.data_dir.clone().unwrap_or_else(data::data_dir_default);
    let mut rows = Vec::new();
    for (name, g) in names.iter().zip(&grafts) {
        let Some(task) = &g.manifest.task else {
            rows.push(
                serde_json::json!({"task": name, "note": "graft has no task spec; not evaluated"}),
            );
            continue;
        };
        let split = data::task_split(task, &data_dir, 16, a.seed, a.max_test)?;
        let labels: Vec<usize> = split.test.iter().map(|e| e.label).collect();
        let inst_tensors = {
            let mut t = base.model.weights.deep_clone()?.tensors;
            t.extend(g.head_tensors(&base.device)?);
            t
        };
        let inst = crate::train::TaskInstance::new(
            inst_tensors,
            base.inputs(g.manifest.head.clone()),
            |_| false,
        )?;
        let alone = {
            let applied = g.apply(&inst.tensors)?;
            let acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
            applied.revert()?;
            acc
        };
        let under = {
            let applied = composed.apply(&inst.tensors)?;
            let acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
            applied.revert()?;
            acc
        };
        let base_acc = crate::model::predict::accuracy(&inst.logits(&split.test, 64)?, &labels);
        rows.push(serde_json::json!({"task": name, "base_head": base_acc, "alone": alone, "composed": under,
            "test_examples": split.test.len()}));
    }
    if let Some(out) = &a.out {
        composed.manifest.metrics = serde_json::json!({"members": rows});
        composed.save(out)?;
    }
    if a.model.json {
        return print_json(
            &serde_json::json!({"size": composed.size(), "rule": a.rule, "tasks": rows, "out": a.out}),
        );
    }
    println!(
        "composed graft: {} parameters from {} grafts (rule {:?})",
        composed.size(),
        grafts.len(),
        a.rule
    );
    let mut t = Table::new(&["task", "base+head", "graft alone", "under composition"]);
    for r in &rows {
        let f = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_f64())
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        };
        t.row(vec![
            r["task"].as_str().unwrap_or("?").to_string(),
            f("base_head"),
            f("alone"),
            f("composed"),
        ]);
    }
    println!("{t}");
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let base = a.model.load()?;
    let graft = load_checked_graft(&a.graft, &base)?;
    let mut tensors = grafted_body(&base, &graft)?;
    tensors.extend(graft.head_tensors(&base.device)?);
    write_hf_dir(
        &a.out,
        &base.model,
        &tensors,
        &graft.manifest.head,
        graft.manifest.task.as_ref(),
        a.force,
    )?;
    if a.model.json {
        print_json(&serde_json::json!({"out": a.out, "size": graft.size()}))
    } else {
        println!(
            "base + graft ({} parameters) written to {}",
            graft.size(),
            a.out.display()
        );
        Ok(())
    }
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    if let Some(p) = &a.graft {
        let g = Graft::load(p)?;
        let v = serde_json::json!({"manifest": g.manifest, "tensors": g.entries.len(), "size": g.size(),
            "head_tensors": g.head.keys().collect::<Vec<_>>()});
        return print_json(&v);
    }
    let base = a.model.load()?;
    let cfg = &base.model.config;
    let v = serde_json::json!({
        "name": base.name, "dir": base.model.files.dir, "architecture": cfg.model_type,
        "content_hash": base.model.weights.content_hash,
        "parameters": base.model.body_parameter_count(),
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
        "tensors": base.model.weights.tensors.len(),
        "region_parameters": FlatRegion::new(&RegionSpec::default(), &base.model.weights.tensors)?.len(),
    });
    if a.model.json {
        print_json(&v)
    } else {
        for (k, val) in v.as_object().into_iter().flatten() {
            println!("{k:>18}: {val}");
        }
        Ok(())
    }
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    let threads = a
        .model
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let base = a.model.load()?;
    let secs = std::time::Duration::from_secs;
    let data_dir = a
        .state_dir
        .unwrap_or_else(|| crate::home_dir().join("data"));
    let store = match &a.store {
        Some(s) => crate::store::service::StoreSpec::parse(s)?,
        None => crate::store::service::StoreSpec::Dir(data_dir.clone()),
    };
    let config = crate::server::ServerConfig {
        addr: a.addr,
        data_dir,
        store,
        sync_interval: std::time::Duration::from_millis(a.sync_ms.max(10)),
        task_cache_bytes: a.task_cache_bytes,
        replica_dead_after: secs(a.replica_dead_secs.max(1)),
        datasets_dir: a.data_dir.unwrap_or_else(data::data_dir_default),
        api_keys: a.api_key.into_iter().filter(|k| !k.is_empty()).collect(),
        admin_keys: a.admin_key.into_iter().filter(|k| !k.is_empty()).collect(),
        metrics_access: a.metrics_access,
        metrics_per_task: a.metrics_per_task,
        max_json_bytes: a.max_json_bytes,
        max_upload_bytes: a.max_upload_bytes,
        max_graft_bytes: a.max_graft_bytes,
        max_archive_entries: a.max_archive_entries,
        max_batch_inputs: a.max_batch_inputs,
        max_request_tokens: a.max_request_tokens,
        max_overlap_tasks: a.max_overlap_tasks,
        request_timeout: secs(a.timeout_secs),
        header_timeout: secs(a.header_timeout_secs),
        max_connections: a.max_connections,
        shutdown_grace: secs(a.shutdown_grace_secs),
        max_jobs: a.max_jobs,
        job_threads: a.job_threads,
        engine: crate::engine::EngineConfig {
            queue_capacity: a.queue,
            max_batch_tokens: a.max_batch_tokens,
            max_wait: std::time::Duration::from_millis(a.batch_wait_ms),
            threads,
            max_resident_bytes: a.max_resident_bytes,
            pass_overhead_tokens: a.pass_overhead_tokens,
        },
    };
    eprintln!(
        "base {} ({} parameters); local state in {}; {} compute thread(s)",
        base.name,
        base.model.body_parameter_count(),
        config.data_dir.display(),
        threads
    );
    let state = crate::server::build_state(base, config)?;
    eprintln!(
        "store {} (tasks load on first use); replica {}",
        state.store.location(),
        state.store.replicas().id()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(crate::server::serve(state.clone()));
    state.shutdown();
    // Work still running past the shutdown deadline (a long computation) is abandoned, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

fn cmd_study(a: StudyArgs) -> Result<()> {
    a.model.require_f32("study")?;
    let base = a.model.load()?;
    let nonempty = |v: Vec<String>| v.into_iter().filter(|s| !s.trim().is_empty()).collect();
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<crate::study::StudyConfig>(&text)
                .with_context(|| format!("{} is not a valid study configuration", path.display()))?
        }
        None => crate::study::StudyConfig {
            grids: vec![crate::study::GridSpec {
                tasks: a.tasks,
                seeds: a.seeds,
                ks: a.ks,
                heads: a.heads,
                optimizers: a.optimizers,
                methods: a.methods,
                sparsities: a.sparsities,
            }],
            steps: a.steps,
            eval_every: a.eval_every,
            epochs: a.epochs,
            max_test: a.max_test,
            analysis: crate::study::AnalysisSpec {
                method: a.analysis_method,
                sparsity: a.analysis_sparsity,
                ood: nonempty(a.ood),
                pairs: nonempty(a.pairs),
            },
            cache_dir: PathBuf::new(),
            data_dir: PathBuf::new(),
        },
    };
    cfg.cache_dir = a
        .cache_dir
        .unwrap_or_else(|| crate::home_dir().join("study"));
    cfg.data_dir = a.data_dir.unwrap_or_else(data::data_dir_default);
    let command = std::iter::once("skillgraft".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let results = crate::study::run(&base, &cfg, a.cached_only)?;
    crate::study::write(&results, &command, &a.report, &a.results_json)?;
    if a.model.json {
        print_json(
            &serde_json::json!({"cells": results.cells.len(), "report": a.report, "results": a.results_json}),
        )
    } else {
        println!(
            "{} cells; report written to {}",
            results.cells.len(),
            a.report.display()
        );
        Ok(())
    }
}
