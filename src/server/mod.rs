//! The HTTP service (axum): one base model, many grafted tasks.
//!
//! Handlers parse and validate requests, tokenize off the model thread, and send every forward pass of a served
//! task to the [`Engine`] over its queue. The engine is the one owner of the serving weights (on the serving
//! device, in the serving dtype): they are handed to it at start and no other copy stays resident. Handlers
//! never hold or load tensors: [`AppState::base`] describes the base without its weights (config,
//! tokenizer, every tensor's shape and stored dtype), which is what checking an uploaded checkpoint
//! ([`crate::model::checkpoint::inspect`], on the host CPU off the async runtime) and sizing the regions
//! behind overlap, composition and placement need. A localization job ([`jobs`]) reads its own f32 copy of
//! the base from the model's files on its worker thread, fine-tunes it on its own compute pool, and drops it
//! when it ends. Errors become status codes in one place ([`error`]);
//! every route is in the OpenAPI document ([`openapi`]), which also says who may call it ([`auth`]). Connections
//! are served by [`listen`] (header-read timeout, connection cap, shutdown deadline). State lives in a store that
//! several replicas may share (a directory, or S3-compatible object storage); tasks are loaded from it on demand
//! ([`registry`]), and the [`sync`] thread keeps this replica in step with the others.

pub mod api;
pub mod archive;
pub mod auth;
pub mod error;
pub mod explore;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod redact;
pub mod registry;
pub mod sync;
pub mod ui;

use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::validate::BaseFacts;
use crate::graft::Graft;
use crate::model::{BaseInfo, BaseModel};
use crate::store::service::{ServiceStore, StoreSpec};
use anyhow::Result;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use dashmap::DashMap;
use error::ApiError;
use registry::{Found, TaskRegistry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Server settings (from flags and environment).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Local state directory: the store when none is named, else scratch space and a cache.
    pub data_dir: PathBuf,
    /// Where tasks, checkpoints and job records live (a directory, or `s3://bucket/prefix`).
    pub store: StoreSpec,
    /// How often the change journal is read (a change elsewhere is served here within about this).
    pub sync_interval: Duration,
    /// Bytes of grafts kept in memory (least recently used out).
    pub task_cache_bytes: usize,
    /// A replica whose heartbeat is silent this long is gone (its jobs are reported failed).
    pub replica_dead_after: Duration,
    /// Shared data sets (for built-in tasks in localization jobs and compositions).
    pub datasets_dir: PathBuf,
    /// API keys allowed to read (predict, list); empty = no authentication.
    pub api_keys: Vec<String>,
    /// API keys allowed to change state (upload, localize, delete, import).
    pub admin_keys: Vec<String>,
    /// Who may read `/metrics` when keys are set.
    pub metrics_access: auth::Access,
    /// Whether `/metrics` has per-task latency series (they name every task).
    pub metrics_per_task: bool,
    /// Largest JSON body, bytes.
    pub max_json_bytes: usize,
    /// Largest checkpoint upload, bytes.
    pub max_upload_bytes: usize,
    /// Largest graft import (`PUT /v1/tasks/{name}/graft`), bytes; also the largest graft stored any other
    /// way (a job's, a composition's), so that every stored task can be imported again.
    pub max_graft_bytes: usize,
    /// Largest data set upload (`POST /v1/datasets`), bytes.
    pub max_dataset_bytes: usize,
    /// Most entries (files, directories, links) in an uploaded checkpoint archive.
    pub max_archive_entries: usize,
    /// Texts per prediction request at most.
    pub max_batch_inputs: usize,
    /// Real tokens per request at most (predict, evaluate, a composition's data).
    pub max_request_tokens: usize,
    /// Task names per overlap query at most.
    pub max_overlap_tasks: usize,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Open connections at most (more wait to be accepted).
    pub max_connections: usize,
    /// After SIGTERM, in-flight requests get this long; then the server exits anyway.
    pub shutdown_grace: Duration,
    /// Concurrent localization jobs at most.
    pub max_jobs: usize,
    /// Compute threads of each localization job.
    pub job_threads: usize,
    /// Engine tuning.
    pub engine: EngineConfig,
}

/// Shared state of all handlers.
pub struct AppState {
    /// Settings.
    pub config: ServerConfig,
    /// The base model without its weights (the engine holds those): tokenizer, config, tensor shapes.
    pub base: Arc<BaseInfo>,
    /// What graft validation checks against.
    pub facts: BaseFacts,
    /// The engine.
    pub engine: Engine,
    /// Persistence (shared with the other replicas).
    pub store: Arc<ServiceStore>,
    /// Tasks in memory, loaded on demand.
    pub registry: TaskRegistry,
    /// The sync thread's counters.
    pub sync: sync::SyncStats,
    /// Set on shutdown (stops the sync thread, which then removes the heartbeat).
    pub stopping: Arc<AtomicBool>,
    /// Localization jobs.
    pub jobs: jobs::JobManager,
    /// HTTP metrics.
    pub metrics: metrics::HttpMetrics,
    /// The configured keys.
    pub keys: auth::Keys,
    /// Who may call which operation.
    pub access: auth::AccessTable,
    /// Set once the store was read at start.
    pub ready: AtomicBool,
    name_locks: DashMap<String, Arc<Mutex<()>>>,
}

impl AppState {
    /// A version number never used before (cache key of engine-side heads).
    pub fn fresh_version(&self) -> u64 {
        self.registry.fresh_version()
    }

    /// What is stored under task `name`: from memory, or read from the store (blocking I/O on a miss) and
    /// kept in memory when `keep`.
    pub fn find(&self, name: &str, keep: bool) -> Result<Found, ApiError> {
        if !crate::store::service::valid_name(name) {
            return Ok(Found::Missing);
        }
        if let Some(f) = self.registry.cached(name) {
            return Ok(f);
        }
        let check = |b: &[u8]| self.check_graft(b).map_err(|e| self.redact(&e.message));
        blocking_io(|| self.registry.lookup(&self.store, name, &check, keep))
            .map_err(ApiError::internal)
    }

    /// Task `name`, loaded on a miss; 404 when not stored, 409 when stored but not servable.
    pub fn task(&self, name: &str) -> Result<Arc<ServedTask>, ApiError> {
        match self.find(name, true)? {
            Found::Task(t) => Ok(t),
            Found::Failed(why) => Err(ApiError::conflict(format!(
                "task `{name}` is stored but cannot be served: {why} (import a valid graft or delete it)"
            ))),
            Found::Missing => Err(ApiError::not_found(format!(
                "unknown task `{name}` (GET /v1/tasks lists them)"
            ))),
        }
    }

    /// The lock that serializes every write (import, job result, composition, delete) to task `name`.
    fn name_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.name_locks
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    /// Parses a graft file and validates it fully against the base (422 naming the problem).
    pub fn check_graft(&self, bytes: &[u8]) -> Result<Graft, ApiError> {
        let graft = Graft::from_bytes(bytes).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        crate::graft::validate::validate(&graft, &self.facts)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        Ok(graft)
    }

    /// 413 when a graft file of `bytes` could not be imported again (`PUT /v1/tasks/{name}/graft` refuses a
    /// body over `max_graft_bytes`): what is stored must be importable, so nothing larger is stored, whichever
    /// way it was made (import, localization job, composition). `what` names it in the message.
    pub fn check_importable(&self, what: &str, bytes: &[u8]) -> Result<(), ApiError> {
        let max = self.config.max_graft_bytes;
        if bytes.len() <= max {
            return Ok(());
        }
        Err(ApiError::too_large(format!(
            "{what} would be {} bytes, over the graft import limit of {max} bytes (--max-graft-bytes, \
             SKILLGRAFT_MAX_GRAFT_BYTES); every stored task must be importable again, so it is not stored",
            bytes.len()
        )))
    }

    /// Stores a checked graft as task `name` and registers it (413, nothing stored, when the file is over the
    /// import limit: [`Self::check_importable`]). Writes to one name are serialized, and the registry changes
    /// only after the file is durably in place, so the last acknowledged write is what both the registry and
    /// the disk hold.
    pub fn store_task(
        &self,
        name: &str,
        bytes: &[u8],
        graft: Graft,
    ) -> Result<Arc<ServedTask>, ApiError> {
        check_name(name)?;
        self.check_importable(&format!("the graft of task `{name}`"), bytes)?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = self.registry.ticket();
        self.store
            .put_task(name, bytes)
            .map_err(ApiError::internal)?;
        Ok(self.registry.stored(name, graft, ticket))
    }

    /// Validates a graft against the base, stores it atomically, and registers it.
    pub fn install_task(&self, name: &str, bytes: &[u8]) -> Result<Arc<ServedTask>, ApiError> {
        check_name(name)?;
        let graft = self.check_graft(bytes)?;
        self.store_task(name, bytes, graft)
    }

    /// Deletes a task (served or not servable) from the store and memory; false when not stored.
    pub fn remove_task(&self, name: &str) -> Result<bool, ApiError> {
        if !crate::store::service::valid_name(name) {
            return Ok(false);
        }
        let lock = self.name_lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let deleted = self.store.delete_task(name).map_err(ApiError::internal)?;
        self.registry.invalidate([name]);
        Ok(deleted)
    }

    /// Stops the sync thread, which removes this replica's heartbeat (its unfinished jobs are then reported
    /// failed by the others at once).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Err(e) = self.store.replicas().leave() {
            tracing::warn!("cannot remove this replica's heartbeat: {e:#}");
        }
    }

    /// `message` with absolute server paths replaced by placeholders.
    pub fn redact(&self, message: &str) -> String {
        let home = crate::home_dir();
        let roots = [
            (self.config.data_dir.as_path(), "<state>"),
            (self.config.datasets_dir.as_path(), "<data>"),
            (self.base.files.dir.as_path(), "<model>"),
            (home.as_path(), "<home>"),
        ];
        redact::redact_paths(message, &roots)
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if crate::store::service::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid task name `{name}`: {}",
            crate::store::service::NAME_RULE
        )))
    }
}

/// Runs blocking I/O from a handler: on the multi-threaded runtime without stalling its other tasks.
fn blocking_io<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Builds the state: opens the store (tasks load on demand), settles jobs of replicas that are gone, starts
/// the engine and the sync thread.
pub fn build_state(base: BaseModel, config: ServerConfig) -> Result<Arc<AppState>> {
    let replica = crate::store::replicas::new_replica_id();
    let store = Arc::new(ServiceStore::open(
        &config.store,
        &config.data_dir,
        replica,
        config.replica_dead_after,
    )?);
    store.replicas().beat()?;
    let start_seq = store.journal().head()?;
    let info = BaseInfo::of(&base);
    let facts = BaseFacts::of_info(&info)?;
    // The weights go to the engine: from here on it holds the only copy.
    let engine = Engine::start_owned(base, config.engine.clone())?;
    let state = Arc::new(AppState {
        jobs: jobs::JobManager::new(config.max_jobs),
        base: Arc::new(info),
        facts,
        engine,
        store: store.clone(),
        registry: TaskRegistry::new(config.task_cache_bytes),
        sync: sync::SyncStats::default(),
        stopping: Arc::new(AtomicBool::new(false)),
        metrics: metrics::HttpMetrics::default(),
        keys: auth::Keys::new(&config.api_keys, &config.admin_keys),
        access: auth::AccessTable::from_document(openapi::document_value())
            .with_public_pages(ui::PUBLIC_ROUTES),
        ready: AtomicBool::new(false),
        name_locks: DashMap::new(),
        config,
    });
    tracing::info!(
        "store {} (replica {}), journal at {start_seq}",
        store.location(),
        store.replicas().id()
    );
    state.jobs.load(&state)?;
    store.check()?;
    sync::start(
        Arc::downgrade(&state),
        start_seq,
        sync::SyncConfig {
            interval: state.config.sync_interval,
            heartbeat: (state.config.replica_dead_after / 5).max(Duration::from_millis(200)),
        },
        state.stopping.clone(),
    );
    state.ready.store(true, Ordering::Relaxed);
    Ok(state)
}

/// The router with every route, middleware and limit.
pub fn router(state: Arc<AppState>) -> Router {
    let cfg = &state.config;
    let uploads = Router::new()
        .route(
            "/v1/checkpoints",
            post(api::checkpoints::upload_checkpoint).get(api::checkpoints::list_checkpoints),
        )
        .layer(DefaultBodyLimit::max(cfg.max_upload_bytes));
    let datasets = Router::new()
        .route(
            "/v1/datasets",
            post(api::datasets::upload_dataset).get(explore::datasets),
        )
        .layer(DefaultBodyLimit::max(cfg.max_dataset_bytes));
    let grafts = Router::new()
        .route(
            "/v1/tasks/{name}/graft",
            put(api::tasks::put_graft).get(api::tasks::get_graft),
        )
        .layer(DefaultBodyLimit::max(cfg.max_graft_bytes));
    let json = Router::new()
        .route("/v1/info", get(api::health::info))
        .route(
            "/v1/checkpoints/{id}",
            get(api::checkpoints::get_checkpoint).delete(api::checkpoints::delete_checkpoint),
        )
        .route(
            "/v1/localizations",
            post(api::localizations::create_localization)
                .get(api::localizations::list_localizations),
        )
        .route(
            "/v1/localizations/{id}",
            get(api::localizations::get_localization)
                .delete(api::localizations::cancel_localization),
        )
        .route(
            "/v1/localizations/{id}/events",
            get(api::localizations::localization_events),
        )
        .route(
            "/v1/datasets/{id}",
            get(api::datasets::get_dataset).delete(api::datasets::delete_dataset),
        )
        .route(
            "/v1/schemas/task-spec",
            get(api::datasets::task_spec_schema),
        )
        .route("/v1/tasks", get(api::tasks::list_tasks))
        .route(
            "/v1/tasks/{name}",
            get(api::tasks::get_task).delete(api::tasks::delete_task),
        )
        .route("/v1/tasks/{name}/predict", post(api::predict::predict))
        .route("/v1/tasks/{name}/evaluate", post(api::predict::evaluate))
        .route("/v1/overlap", get(api::compose::overlap))
        .route("/v1/compositions", post(api::compose::compose))
        .merge(explore::routes())
        .layer(DefaultBodyLimit::max(cfg.max_json_bytes));
    Router::new()
        .route("/health", get(api::health::health))
        .route("/ready", get(api::health::ready))
        .route("/metrics", get(api::health::metrics))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .merge(ui::routes())
        .route("/docs/redoc.standalone.js", get(openapi::docs_bundle))
        .merge(json)
        .merge(uploads)
        .merge(datasets)
        .merge(grafts)
        .fallback(|| async { ApiError::not_found("no such route (see /docs)") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(middleware::from_fn(error::finish))
        .with_state(state)
}

/// Serves until SIGINT/SIGTERM, then finishes in-flight requests within the configured deadline.
pub async fn serve(state: Arc<AppState>) -> Result<()> {
    listen::serve(state.clone(), router(state)).await
}
