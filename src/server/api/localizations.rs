//! Localization jobs: start one, list and poll them, follow one over server-sent events, cancel one — on any
//! replica, whichever runs the job. Inline training examples are shown to admin keys only.

use super::{blocking, St};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, ErrorBody, ErrorKind};
use crate::server::jobs::{JobEntry, JobStatus, LocalizationRequest};
use crate::server::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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
    blocking(move || {
        let prepared = crate::server::jobs::prepare(&st, &r)?;
        Ok(prepared.check(&st, &r)?)
    })
    .await?;
    let st = s.clone();
    let status =
        blocking(move || st.jobs.submit(st.clone(), req).map_err(ApiError::internal)).await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// All localization jobs, newest first (inline examples for admin keys only).
#[utoipa::path(get, path = "/v1/localizations", security(("api_key" = ["read"])),
    responses((status = 200, body = Vec<JobStatus>)))]
pub async fn list_localizations(
    State(s): St,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<JobStatus>>> {
    let st = s.clone();
    let all = blocking(move || st.jobs.list(&st).map_err(ApiError::internal)).await?;
    Ok(Json(all.iter().map(|j| j.view(caller.admin)).collect()))
}

/// A job's state, from this replica or the store; 404 when unknown.
async fn status(s: &Arc<AppState>, id: &str) -> ApiResult<JobStatus> {
    let st = s.clone();
    let i = id.to_string();
    blocking(move || st.jobs.status(&st, &i).map_err(ApiError::internal))
        .await?
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
    Ok(Json(status(&s, &id).await?.view(caller.admin)))
}

/// Cancel a queued or running job (through any replica: the one running it stops it at its next heartbeat).
#[utoipa::path(delete, path = "/v1/localizations/{id}", security(("api_key" = ["admin"])), params(("id" = String, Path)),
    responses((status = 202, body = JobStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_localization(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobStatus>)> {
    let st = status(&s, &id).await?;
    if st.ended() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("job `{id}` already ended ({:?})", st.state),
        ));
    }
    match s.jobs.local(&id) {
        Some(e) => e.cancel.store(true, Ordering::Relaxed),
        None => {
            let state = s.clone();
            let i = id.clone();
            blocking(move || {
                crate::server::jobs::records::request_cancel(&state, &i).map_err(ApiError::internal)
            })
            .await?
        }
    }
    Ok((StatusCode::ACCEPTED, Json(st)))
}

/// Server-sent events (`event: status`, JSON `JobStatus` data) with the job's state after every change; the
/// stream ends with the state that ends the job. For a job running on another replica, its stored record is
/// read every sync interval.
#[utoipa::path(get, path = "/v1/localizations/{id}/events", security(("api_key" = ["read"])), params(("id" = String, Path)),
    responses((status = 200, description = "A stream of `status` events whose data is a JobStatus as JSON", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn localization_events(
    State(s): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let Some(e) = s.jobs.local(&id) else {
        let first = status(&s, &id).await?;
        let updates = remote_updates(s.clone(), &first);
        return Ok(sse(first, updates, caller.admin));
    };
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
    Ok(sse(first, updates, caller.admin))
}

/// The event stream: `first`, then `updates` (each a job state), as `status` events.
fn sse(
    first: JobStatus,
    updates: impl futures::Stream<Item = JobStatus> + Send + 'static,
    admin: bool,
) -> Response {
    let done = first.ended();
    let stream = futures::stream::once(async move { first })
        .chain(updates.take_while(move |_| futures::future::ready(!done)))
        .map(move |m| {
            let data = serde_json::to_string(&m.view(admin)).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Event::default().event("status").data(data))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The states of a job another replica runs: its stored record whenever it changes (read every sync
/// interval), until it ends.
fn remote_updates(
    s: Arc<AppState>,
    first: &JobStatus,
) -> impl futures::Stream<Item = JobStatus> + Send + 'static {
    let every = s.config.sync_interval;
    let id = first.id.clone();
    let shown = serde_json::to_string(first).unwrap_or_default();
    futures::stream::unfold((s, shown, false), move |(s, last, ended)| {
        let id = id.clone();
        async move {
            if ended {
                return None;
            }
            loop {
                tokio::time::sleep(every).await;
                let st = s.clone();
                let i = id.clone();
                let now = tokio::task::spawn_blocking(move || st.jobs.status(&st, &i))
                    .await
                    .ok()?
                    .ok()??;
                let text = serde_json::to_string(&now).unwrap_or_default();
                if text != last {
                    let done = now.ended();
                    return Some((now, (s, text, done)));
                }
            }
        }
    })
}
