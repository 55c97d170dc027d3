//! Liveness, readiness, metrics and facts about the served model.

use super::{blocking, St};
use crate::graft::FlatRegion;
use crate::server::error::{ApiError, ApiResult, ErrorBody, ErrorKind};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness, and how many of the tasks loaded so far could not be served.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `degraded` when some stored tasks cannot be served (`GET /v1/tasks` says which and why).
    pub status: String,
    /// Tasks in memory (tasks load from the store on first use).
    pub tasks: usize,
    /// Stored tasks found not servable (among those loaded so far).
    pub tasks_failed: usize,
}

/// Readiness: the model is loaded and the store is usable; 200 also when some tasks failed to load (status
/// `degraded`: the others are served).
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Readiness), (status = 503, body = ErrorBody)))]
pub async fn ready(State(s): St) -> ApiResult<Json<Readiness>> {
    if !s.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(ErrorKind::Unavailable, "still loading"));
    }
    let store = s.store.clone();
    blocking(move || {
        store
            .check()
            .map_err(|e| ApiError::new(ErrorKind::Unavailable, format!("store not usable: {e:#}")))
    })
    .await?;
    let (tasks, failed) = s.registry.counts();
    Ok(Json(Readiness {
        status: if failed == 0 { "ready" } else { "degraded" }.into(),
        tasks,
        tasks_failed: failed,
    }))
}

/// Prometheus metrics (text format). Needs a key when keys are set (`SKILLGRAFT_METRICS_ACCESS`).
#[utoipa::path(get, path = "/metrics", security(("api_key" = ["read"])),
    responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): St) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s),
    )
}

/// Facts about the served model.
#[derive(Serialize, ToSchema)]
pub struct Info {
    /// Base model name.
    pub model: String,
    /// SHA-256 of its weight files.
    pub content_hash: String,
    /// `bert` / `roberta`.
    pub architecture: String,
    /// Parameters of the body.
    pub parameters: usize,
    /// Parameters of the default graft region (encoder layers).
    pub region_parameters: usize,
    /// Compute device.
    pub device: String,
    /// Engine compute threads.
    pub threads: usize,
    /// Threads per localization job.
    pub job_threads: usize,
    /// Tasks in memory (tasks load from the store on first use).
    pub tasks: usize,
    /// Where tasks, checkpoints and jobs are stored (a directory, or `s3://bucket/prefix`).
    pub store: String,
    /// This replica's id (its heartbeat in the store).
    pub replica: String,
    /// Real tokens one request may hold at most (predict, evaluate, composition data).
    pub max_request_tokens: usize,
    /// Texts one prediction request may hold at most.
    pub max_batch_inputs: usize,
    /// skillgraft version.
    pub version: String,
}

/// The base model, device, threads, limits and version.
#[utoipa::path(get, path = "/v1/info", security(("api_key" = ["read"])), responses((status = 200, body = Info)))]
pub async fn info(State(s): St) -> ApiResult<Json<Info>> {
    let region =
        FlatRegion::over(&Default::default(), &s.base.weights).map_err(ApiError::internal)?;
    Ok(Json(Info {
        model: s.base.name.clone(),
        content_hash: s.base.weights.content_hash.clone(),
        architecture: s.base.config.model_type.clone(),
        parameters: s.base.weights.body_parameter_count(),
        region_parameters: region.len(),
        device: format!("{:?}", s.base.device),
        threads: s.config.engine.threads,
        job_threads: s.config.job_threads,
        tasks: s.registry.counts().0,
        store: match &s.config.store {
            crate::store::service::StoreSpec::Dir(_) => "directory".into(),
            crate::store::service::StoreSpec::S3(url) => url.clone(),
        },
        replica: s.store.replicas().id().to_string(),
        max_request_tokens: s.config.max_request_tokens,
        max_batch_inputs: s.config.max_batch_inputs,
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}
