//! The HTTP service (axum): one base model, many grafted tasks.
//!
//! Handlers parse and validate requests, tokenize off the model thread, and talk to the [`Engine`] over its
//! queue; they never touch tensors. Localization jobs run on their own threads with their own model copy.
//! Errors become status codes in one place ([`error`]); every route is in the OpenAPI document ([`openapi`]),
//! which also says who may call it ([`auth`]). Connections are served by [`listen`] (header-read timeout,
//! connection cap, shutdown deadline).

pub mod api;
pub mod archive;
pub mod auth;
pub mod error;
pub mod explore;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod ui;

use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::validate::BaseFacts;
use crate::graft::Graft;
use crate::model::BaseModel;
use crate::store::service::{FsStore, Store};
use anyhow::Result;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use dashmap::DashMap;
use error::ApiError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Server settings (from flags and environment).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Data directory (tasks, checkpoints, jobs).
    pub data_dir: PathBuf,
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
    /// Largest graft import (`PUT /v1/tasks/{name}/graft`), bytes.
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
    /// The base model (tokenizer, config; its weights are never modified).
    pub base: Arc<BaseModel>,
    /// What graft validation checks against.
    pub facts: BaseFacts,
    /// The engine.
    pub engine: Engine,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Registered tasks.
    pub tasks: DashMap<String, Arc<ServedTask>>,
    /// Stored tasks that could not be loaded, with the reason.
    pub failed: DashMap<String, String>,
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
    next_version: AtomicU64,
}

impl AppState {
    /// A version number never used before (cache key of engine-side heads).
    pub fn fresh_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, name: &str, graft: Graft) -> Arc<ServedTask> {
        let t = Arc::new(ServedTask {
            name: name.to_string(),
            graft,
            version: self.fresh_version(),
        });
        self.tasks.insert(name.to_string(), t.clone());
        self.failed.remove(name);
        t
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

    /// Stores a checked graft as task `name` and registers it. Writes to one name are serialized, and the
    /// registry changes only after the file is durably in place, so the last acknowledged write is what both
    /// the registry and the disk hold.
    pub fn store_task(
        &self,
        name: &str,
        bytes: &[u8],
        graft: Graft,
    ) -> Result<Arc<ServedTask>, ApiError> {
        check_name(name)?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.store
            .put_task(name, bytes)
            .map_err(ApiError::internal)?;
        Ok(self.register(name, graft))
    }

    /// Validates a graft against the base, stores it atomically, and registers it.
    pub fn install_task(&self, name: &str, bytes: &[u8]) -> Result<Arc<ServedTask>, ApiError> {
        check_name(name)?;
        let graft = self.check_graft(bytes)?;
        self.store_task(name, bytes, graft)
    }

    /// Deletes a task (registered or failed to load) from disk and registry; false when unknown.
    pub fn remove_task(&self, name: &str) -> Result<bool, ApiError> {
        let lock = self.name_lock(name);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.tasks.contains_key(name) || self.failed.contains_key(name);
        if !known {
            return Ok(false);
        }
        self.store.delete_task(name).map_err(ApiError::internal)?;
        self.tasks.remove(name);
        self.failed.remove(name);
        Ok(true)
    }

    /// `message` with absolute server paths replaced by placeholders.
    pub fn redact(&self, message: &str) -> String {
        let home = crate::home_dir();
        let roots = [
            (self.config.data_dir.as_path(), "<state>"),
            (self.config.datasets_dir.as_path(), "<data>"),
            (self.base.model.files.dir.as_path(), "<model>"),
            (home.as_path(), "<home>"),
        ];
        error::redact_paths(message, &roots)
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

/// Builds the state: opens the store, loads every stored task (those that fail are reported, not served),
/// starts the engine.
pub fn build_state(base: BaseModel, config: ServerConfig) -> Result<Arc<AppState>> {
    let store: Arc<dyn Store> = Arc::new(FsStore::open(&config.data_dir)?);
    let engine = Engine::start(&base, config.engine.clone())?;
    let facts = BaseFacts::of(&base.model)?;
    let state = Arc::new(AppState {
        jobs: jobs::JobManager::new(config.max_jobs),
        base: Arc::new(base),
        facts,
        engine,
        store: store.clone(),
        tasks: DashMap::new(),
        failed: DashMap::new(),
        metrics: metrics::HttpMetrics::default(),
        keys: auth::Keys::new(&config.api_keys, &config.admin_keys),
        access: auth::AccessTable::from_document(openapi::document_value())
            .with_public_pages(ui::PUBLIC_ROUTES),
        ready: AtomicBool::new(false),
        name_locks: DashMap::new(),
        next_version: AtomicU64::new(1),
        config,
    });
    for name in store.list_tasks()? {
        let loaded = store
            .get_task(&name)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
            .and_then(|b| b.ok_or_else(|| ApiError::not_found("the file disappeared")))
            .and_then(|b| state.check_graft(&b));
        match loaded {
            Ok(g) => {
                state.register(&name, g);
            }
            Err(e) => {
                let why = state.redact(&e.message);
                tracing::error!("stored task `{name}` cannot be served: {why}");
                state.failed.insert(name, why);
            }
        }
    }
    state.jobs.load(&state)?;
    store.check()?;
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
