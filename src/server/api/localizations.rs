//! Localization jobs: start one, list and poll them, follow one over server-sent events, cancel one. Inline
//! training examples are shown to admin keys only.

use super::St;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, ErrorBody, ErrorKind};
use crate::server::jobs::{JobEntry, JobStatus, LocalizationRequest};
use crate::server::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Start a localization job: find the graft of an uploaded checkpoint; the task is registered when it ends.
/// Everything that can be checked is checked before 202 (task, data set, split, labels, checkpoint and
/// head): 400 for a malformed request, 404 for an unknown checkpoint or data set, 422 for content that
/// does not fit (a label out of range, a head the checkpoint cannot take), each naming the field.
#[utoipa::path(post, path = "/v1/localizations", security(("api_key" = ["admin"])), request_body = LocalizationRequest,
    responses((status = 202, body = JobStatus), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_localization(
    State(s): St,
    Json(req): Json<LocalizationRequest>,
) -> ApiResult<(StatusCode, Json<JobStatus>)> {
    req.check().map_err(ApiError::bad_request)?;
    let st = s.clone();
    let r = req.clone();
    super::blocking(move || {
        let pool = crate::compute_pool(Some(st.config.job_threads)).map_err(ApiError::internal)?;
        pool.install(|| crate::server::jobs::prepare(&st, &r))
            .map_err(|e| {
                let msg = format!("{e:#}");
                if msg.starts_with("`checkpoint`: no checkpoint")
                    || msg.starts_with("`dataset`: no data set")
                {
                    ApiError::not_found(msg)
                } else {
                    ApiError::invalid(msg)
                }
            })?;
        Ok(())
    })
    .await?;
    let status = s.jobs.submit(s.clone(), req).map_err(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// All localization jobs, newest first (inline examples for admin keys only).
#[utoipa::path(get, path = "/v1/localizations", security(("api_key" = ["read"])),
    responses((status = 200, body = Vec<JobStatus>)))]
pub async fn list_localizations(
    State(s): St,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<JobStatus>> {
    Json(s.jobs.list().iter().map(|j| j.view(caller.admin)).collect())
}

fn job(s: &AppState, id: &str) -> ApiResult<Arc<JobEntry>> {
    s.jobs
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no localization job `{id}`")))
}

fn status_of(e: &JobEntry) -> ApiResult<JobStatus> {
    Ok(e.status.lock().map_err(ApiError::internal)?.clone())
}

/// A job's state: epoch, mask size, train/dev accuracy, timings (inline examples for admin keys only).
#[utoipa::path(get, path = "/v1/localizations/{id}", security(("api_key" = ["read"])), params(("id" = String, Path)),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorBody)))]
pub async fn get_localization(
    State(s): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobStatus>> {
    Ok(Json(status_of(&*job(&s, &id)?)?.view(caller.admin)))
}

/// Cancel a queued or running job.
#[utoipa::path(delete, path = "/v1/localizations/{id}", security(("api_key" = ["admin"])), params(("id" = String, Path)),
    responses((status = 202, body = JobStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_localization(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobStatus>)> {
    let e = job(&s, &id)?;
    let st = status_of(&e)?;
    if st.ended() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("job `{id}` already ended ({:?})", st.state),
        ));
    }
    e.cancel.store(true, Ordering::Relaxed);
    Ok((StatusCode::ACCEPTED, Json(st)))
}

/// Server-sent events (`event: status`, JSON `JobStatus` data) with the job's state after every change; the
/// stream ends with the state that ends the job.
#[utoipa::path(get, path = "/v1/localizations/{id}/events", security(("api_key" = ["read"])), params(("id" = String, Path)),
    responses((status = 200, description = "A stream of `status` events whose data is a JobStatus as JSON", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn localization_events(
    State(s): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let e = job(&s, &id)?;
    let rx = e.events.subscribe();
    let first = status_of(&e)?;
    let first_done = first.ended();
    // After the message that ends the job, the stream ends too.
    let updates = futures::stream::unfold((rx, first_done), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(m) => {
                    let d = m.ended();
                    return Some((m, (rx, d)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let admin = caller.admin;
    let stream = futures::stream::once(async move { first })
        .chain(updates)
        .map(move |m| {
            let data = serde_json::to_string(&m.view(admin)).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Event::default().event("status").data(data))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
