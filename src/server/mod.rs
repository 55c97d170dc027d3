//! The HTTP service (axum): one base model, many grafted tasks.
//!
//! Handlers parse and validate requests, tokenize off the model thread, and talk to the [`Engine`] over its
//! queue; they never touch tensors. Localization jobs run on their own threads with their own model copy.
//! Errors become status codes in one place ([`error`]); every route is in the OpenAPI document ([`openapi`]).

pub mod api;
pub mod error;
pub mod explore;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod ui;

use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::Graft;
use crate::model::BaseModel;
use crate::store::service::{FsStore, Store};
use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use dashmap::DashMap;
use error::{ApiError, ErrorKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Largest JSON body, bytes.
    pub max_json_bytes: usize,
    /// Largest upload (checkpoint tar, graft file), bytes.
    pub max_upload_bytes: usize,
    /// Texts per prediction request at most.
    pub max_batch_inputs: usize,
    /// Request timeout.
    pub request_timeout: Duration,
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
    /// The engine.
    pub engine: Engine,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Registered tasks.
    pub tasks: DashMap<String, Arc<ServedTask>>,
    /// Localization jobs.
    pub jobs: jobs::JobManager,
    /// HTTP metrics.
    pub metrics: metrics::HttpMetrics,
    /// Set once the store was read at start.
    pub ready: AtomicBool,
    next_version: AtomicU64,
}

impl AppState {
    /// A version number never used before (cache key of engine-side heads).
    pub fn fresh_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers (or replaces) a task in memory.
    pub fn register(&self, name: &str, graft: Graft) -> Arc<ServedTask> {
        let t = Arc::new(ServedTask {
            name: name.to_string(),
            graft,
            version: self.fresh_version(),
        });
        self.tasks.insert(name.to_string(), t.clone());
        t
    }

    /// Validates a graft against the base, stores it atomically, and registers it.
    pub fn install_task(&self, name: &str, bytes: &[u8]) -> Result<Arc<ServedTask>, ApiError> {
        if !crate::store::service::valid_name(name) {
            return Err(ApiError::bad_request(format!(
                "invalid task name `{name}`: {}",
                crate::store::service::NAME_RULE
            )));
        }
        let graft = Graft::from_bytes(bytes).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        graft
            .check_base(
                &self.base.model.weights.tensors,
                &self.base.model.weights.content_hash,
            )
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        self.store
            .put_task(name, bytes)
            .map_err(ApiError::internal)?;
        Ok(self.register(name, graft))
    }
}

/// Builds the state: opens the store, loads every stored task, starts the engine.
pub fn build_state(base: BaseModel, config: ServerConfig) -> Result<Arc<AppState>> {
    let store: Arc<dyn Store> = Arc::new(FsStore::open(&config.data_dir)?);
    let engine = Engine::start(&base, config.engine.clone())?;
    let state = Arc::new(AppState {
        jobs: jobs::JobManager::new(config.max_jobs),
        base: Arc::new(base),
        engine,
        store: store.clone(),
        tasks: DashMap::new(),
        metrics: metrics::HttpMetrics::default(),
        ready: AtomicBool::new(false),
        next_version: AtomicU64::new(1),
        config,
    });
    for name in store.list_tasks()? {
        let Some(bytes) = store.get_task(&name)? else {
            continue;
        };
        match Graft::from_bytes(&bytes).and_then(|g| {
            g.check_base(
                &state.base.model.weights.tensors,
                &state.base.model.weights.content_hash,
            )?;
            Ok(g)
        }) {
            Ok(g) => {
                state.register(&name, g);
            }
            Err(e) => tracing::warn!("stored task `{name}` skipped: {e:#}"),
        }
    }
    state.jobs.load(&state)?;
    store.check()?;
    state.ready.store(true, Ordering::Relaxed);
    Ok(state)
}

fn key_of(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares secrets in time independent of where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn any_key_matches(keys: &[String], given: &str) -> bool {
    keys.iter().fold(false, |ok, k| {
        ok | constant_time_eq(k.as_bytes(), given.as_bytes())
    })
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let cfg = &state.config;
    if cfg.api_keys.is_empty() && cfg.admin_keys.is_empty() {
        return next.run(req).await;
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !req.uri().path().ends_with("/predict")
        && !req.uri().path().ends_with("/evaluate");
    let Some(given) = key_of(&req) else {
        return ApiError::new(
            ErrorKind::Unauthorized,
            "missing `Authorization: Bearer <key>` header",
        )
        .into_response();
    };
    let admin = any_key_matches(&cfg.admin_keys, given);
    let reader = admin || any_key_matches(&cfg.api_keys, given);
    if !reader {
        return ApiError::new(ErrorKind::Unauthorized, "invalid API key").into_response();
    }
    if mutating && !admin {
        return ApiError::new(
            ErrorKind::Forbidden,
            "this route changes state and needs an admin key",
        )
        .into_response();
    }
    next.run(req).await
}

async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = std::time::Instant::now();
    let span = tracing::info_span!("request", %method, route = %route);
    let resp = {
        let _g = span.enter();
        next.run(req).await
    };
    let secs = start.elapsed().as_secs_f64();
    state
        .metrics
        .record(method.as_str(), &route, resp.status().as_u16(), secs);
    tracing::debug!(%method, route = %route, status = resp.status().as_u16(), seconds = secs, "request");
    resp
}

/// The router with every route, middleware and limit.
pub fn router(state: Arc<AppState>) -> Router {
    let cfg = &state.config;
    let uploads = Router::new()
        .route("/v1/checkpoints", post(api::upload_checkpoint))
        .route(
            "/v1/tasks/{name}/graft",
            put(api::put_graft).get(api::get_graft),
        )
        .layer(DefaultBodyLimit::max(cfg.max_upload_bytes));
    let v1 = Router::new()
        .route("/v1/info", get(api::info))
        .route(
            "/v1/checkpoints/{id}",
            get(api::get_checkpoint).delete(api::delete_checkpoint),
        )
        .route(
            "/v1/localizations",
            post(api::create_localization).get(api::list_localizations),
        )
        .route(
            "/v1/localizations/{id}",
            get(api::get_localization).delete(api::cancel_localization),
        )
        .route(
            "/v1/localizations/{id}/events",
            get(api::localization_events),
        )
        .route("/v1/tasks", get(api::list_tasks))
        .route(
            "/v1/tasks/{name}",
            get(api::get_task).delete(api::delete_task),
        )
        .route("/v1/tasks/{name}/predict", post(api::predict))
        .route("/v1/tasks/{name}/evaluate", post(api::evaluate))
        .route("/v1/overlap", get(api::overlap))
        .route("/v1/compositions", post(api::compose))
        .merge(explore::routes())
        .layer(DefaultBodyLimit::max(cfg.max_json_bytes))
        .merge(uploads)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .merge(ui::routes())
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route (see /docs)") })
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        .with_state(state)
}

/// Serves until SIGINT/SIGTERM, then finishes in-flight requests.
pub async fn serve(state: Arc<AppState>) -> Result<()> {
    let addr = state.config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!("skillgraft listening on http://{}", listener.local_addr()?);
    eprintln!("skillgraft listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing in-flight requests");
}
