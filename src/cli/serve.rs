//! `skillgraft serve`: the HTTP service on the base model, configured by flags (each also read from an
//! environment variable), until stopped.

use super::args::ModelArgs;
use crate::data;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Options of `skillgraft serve` (every flag also reads an environment variable).
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
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

/// Runs the service until it is stopped (SIGTERM or Ctrl-C), then shuts it down.
pub(super) fn run(a: ServeArgs) -> Result<()> {
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
