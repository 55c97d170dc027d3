//! The command-line face of the library: every subcommand parses its flags and calls library code. Commands
//! that report print a human table on stdout, or with `--json` one JSON document; commands that write files
//! (`finetune`, `localize`, `export`, `synthetic`, `task init`) say what they wrote. `serve` runs the HTTP
//! service until stopped, `healthcheck` answers with its exit status, and the hidden `bench-worker` answers
//! timing requests over stdin/stdout. Progress goes to stderr. Every command but `serve` and `healthcheck`
//! runs inside one compute pool ([`run`]).

mod bench;
mod bench_http;
mod bench_serve;
mod bench_worker;
mod compose;
mod engine_bench;
mod evaluate;
mod healthcheck;
mod localize;
mod predict;
mod selfcheck;
mod serve_vs_raw;
mod study;
mod synthetic;
mod table;
mod task;

use crate::data::{self, FewShotSplit, SplitRule, TaskSpec};
use crate::graft::RegionSpec;
use crate::model::export::write_hf_dir;
use crate::model::{BaseModel, HeadKind, HeadSpec};
use crate::train::optim::OptimizerConfig;
use crate::train::{finetune, FinetuneOptions, Progress, TrainScope};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

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
    BenchWorker(bench_worker::BenchWorkerArgs),
    /// Run the HTTP service on the base model.
    Serve(ServeArgs),
    /// Drive a server (started as a second process) with 1 vs many tasks: throughput, latency, memory.
    BenchServe(bench_serve::BenchServeArgs),
    /// Run a resumable grid of fine-tunes and localizations and write a Markdown report.
    Study(study::StudyArgs),
    /// Write a random graft for the base model (smoke tests of a deployment, benchmarks).
    Synthetic(synthetic::SyntheticArgs),
    /// Exit 0 when the server on this machine answers /health (or /ready): a container health check.
    Healthcheck(healthcheck::HealthcheckArgs),
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
    #[arg(long, env = "SKILLGRAFT_MAX_GRAFT_BYTES", default_value_t = 32 << 20)]
    max_graft_bytes: usize,
    /// Largest data set upload (POST /v1/datasets), bytes.
    #[arg(long, env = "SKILLGRAFT_MAX_DATASET_BYTES", default_value_t = 64 << 20)]
    max_dataset_bytes: usize,
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
    /// Longest the engine waits for a batch to fill, milliseconds (only for as many requests as were active
    /// around its last batch: a lone client's requests run at once).
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
    /// A task spec JSON file (instead of --task; see "Task specs" in the README, `skillgraft task init`).
    #[arg(long)]
    task_spec: Option<PathBuf>,
    /// Directory of the data sets of built-in tasks.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How train and dev are drawn.
    #[command(flatten)]
    sample: SplitArgs,
    /// Cap the test set (deterministic subsample) for quick runs.
    #[arg(long)]
    max_test: Option<usize>,
}

/// How train and dev are made from a task's data (`--split`, `--k`, `--cap-k`, `--seed`).
#[derive(Args, Debug, Clone)]
pub struct SplitArgs {
    /// How train and dev are made: few-shot (K per class drawn with --seed) or given (the data's own
    /// train/dev/test splits, as they are).
    #[arg(long, value_parser = ["few-shot", "given"], default_value = "few-shot")]
    split: String,
    /// Examples per class for train and for dev (few-shot split).
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Take at most half of a class that has fewer than 2K examples instead of refusing (few-shot split).
    #[arg(long)]
    cap_k: bool,
    /// Few-shot sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl SplitArgs {
    /// The split rule these flags describe.
    fn rule(&self) -> SplitRule {
        match self.split.as_str() {
            "given" => SplitRule::Given,
            _ => SplitRule::FewShot {
                k: self.k,
                seed: self.seed,
                cap_k: self.cap_k,
            },
        }
    }
}

/// A head given for a checkpoint that does not say its own (e.g. a body fine-tuned with PyTorch behind a
/// prototype head); checkpoints that carry a classifier or a skillgraft head manifest need none.
#[derive(Args, Debug, Clone)]
pub struct HeadArgs {
    /// The checkpoint's head: prototype (built from the base and the task's label descriptions when the
    /// checkpoint has no prototype tensor), bert-classifier, roberta-classifier, linear, prompt.
    #[arg(long = "head")]
    kind: Option<HeadKind>,
    /// Prototype-head temperature τ.
    #[arg(long = "head-temperature", default_value_t = 0.05)]
    temperature: f64,
}

impl HeadArgs {
    /// The head spec, when one was given.
    fn spec(&self, base: &BaseModel, task: &TaskSpec) -> Result<Option<HeadSpec>> {
        self.kind
            .map(|k| base.head_spec(k, task, self.temperature, crate::model::Pooling::Cls))
            .transpose()
    }
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
    /// λ of an L1 penalty λ‖θ − θ_pre‖₁ on the body, added to the loss (the paper's recipe for AdamW
    /// checkpoints that localize: the optimizer pulls back every weight the task does not need).
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
        data::split_task(task, &self.data_dir(), &self.sample.rule(), self.max_test)
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
                "epoch {:>3}  mask {:>8}{}  flips {:>6}  train acc {:.4}  dev acc {:.4}  loss {}  {:.2}s",
                e.epoch,
                e.mask_size,
                e.unprojected_size
                    .map_or(String::new(), |g| format!(" (projected from {g})")),
                e.flips,
                e.train_accuracy,
                e.dev_accuracy,
                e.loss.map_or("-".to_string(), |l| format!("{l:.4}")),
                e.seconds
            ),
            Progress::Message { text } => eprintln!("{text}"),
        }
    }
}

/// An error that ends the process with its own exit status (the message goes to stderr as usual).
#[derive(Debug)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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
            Command::Task(t) => t.model_args(),
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
        Command::Bench(a) => bench::run(a),
        Command::BenchWorker(a) => bench_worker::run(a),
        Command::Serve(a) => cmd_serve(a),
        Command::BenchServe(a) => bench_serve::run(a),
        Command::Study(a) => study::cmd_study(a),
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
    let head_tensors = base.init_head(&head, a.data.sample.seed)?;
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
        seed: a.data.sample.seed,
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
        max_dataset_bytes: a.max_dataset_bytes,
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
