//! Tasks: list and describe them (also those stored but failed to load), import and download graft files,
//! delete. Every write to one name goes through [`AppState::install_task`] / [`AppState::remove_task`],
//! which serialize writes per name.

use super::{
    blocking, calibration_reason, labels_of, require_content_type, task, temperature_of, St,
};
use crate::engine::ServedTask;
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use crate::server::registry::Found;
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Whether a stored task is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Loaded and served.
    Ready,
    /// Stored, but its graft could not be loaded (see `error`); not served.
    Failed,
}

/// A task. For a task that failed to load, only `name`, `state` and `error` are meaningful.
#[derive(Serialize, ToSchema)]
pub struct TaskSummary {
    /// Name.
    pub name: String,
    /// Served, or failed to load.
    pub state: TaskState,
    /// Why it failed to load.
    pub error: Option<String>,
    /// Class names.
    pub labels: Vec<String>,
    /// Head kind.
    pub head: String,
    /// Grafted parameters.
    pub graft_size: usize,
    /// Percent of the region.
    pub percent_of_region: f64,
    /// Percent of all body parameters.
    pub percent_of_model: f64,
    /// Localization method.
    pub method: String,
    /// The temperature `predict` applies when calibrating (none when the calibration decision declined).
    pub temperature: Option<f64>,
    /// Why: the calibration decision recorded with the graft (cross-validation on dev).
    pub calibration_reason: String,
    /// How much of the fine-tuning gain the graft keeps (absent for grafts made before retention targets,
    /// imported without one, or composed).
    pub retention: Option<TaskRetention>,
    /// Stored metrics (accuracy, ECE of base+head / base patch / graft / fine-tuned; the retention curve).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

/// A task's retention at a glance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskRetention {
    /// Share of the fine-tuning gain on dev the graft keeps (absent when fine-tuning gained nothing on dev).
    pub kept: Option<f64>,
    /// The same share on the test split.
    pub test_kept: Option<f64>,
    /// The target the job had.
    pub target: f64,
    /// `retained`, `not_localized` (registered anyway) or `no_gain` (fine-tuning gained nothing on dev).
    pub verdict: String,
    /// The verdict in a sentence.
    pub summary: String,
}

fn task_retention(m: &crate::graft::GraftManifest) -> Option<TaskRetention> {
    let r = m.retention()?;
    let p = r.chosen_point();
    Some(TaskRetention {
        kept: p.retained,
        test_kept: p.test_retained,
        target: r.target,
        verdict: match r.verdict {
            crate::graft::budget::Verdict::Retained => "retained",
            crate::graft::budget::Verdict::NotLocalized => "not_localized",
            crate::graft::budget::Verdict::NoGain => "no_gain",
        }
        .into(),
        summary: r.summary.clone(),
    })
}

/// The summary of a served task.
pub(super) fn summary(t: &ServedTask) -> TaskSummary {
    let m = &t.graft.manifest;
    let variants: Vec<serde_json::Value> = m
        .variants()
        .iter()
        .map(|r| {
            let test = r.test.as_ref();
            serde_json::json!({"name": r.name, "size": r.size, "accuracy": test.and_then(|t| t.accuracy.as_ref()),
                "ece": test.and_then(|t| t.ece.as_ref()), "ece_bins": test.and_then(|t| t.ece_bins.as_ref()),
                "ece_after_temperature": r.test_calibrated.as_ref().and_then(|t| t.ece.as_ref()),
                "temperature": r.temperature})
        })
        .collect();
    TaskSummary {
        name: t.name.clone(),
        state: TaskState::Ready,
        error: None,
        labels: labels_of(t),
        head: t.head().kind().into(),
        graft_size: t.graft.size(),
        percent_of_region: 100.0 * m.region_fraction(),
        percent_of_model: 100.0 * m.model_fraction(),
        method: m.method.clone(),
        temperature: temperature_of(t),
        calibration_reason: calibration_reason(t),
        retention: task_retention(m),
        metrics: serde_json::json!({"variants": variants, "calibration": m.calibration(),
            "retention": m.retention_record()}),
    }
}

fn failed_summary(name: &str, error: &str) -> TaskSummary {
    TaskSummary {
        name: name.to_string(),
        state: TaskState::Failed,
        error: Some(error.to_string()),
        labels: vec![],
        head: String::new(),
        graft_size: 0,
        percent_of_region: 0.0,
        percent_of_model: 0.0,
        method: String::new(),
        temperature: None,
        calibration_reason: String::new(),
        retention: None,
        metrics: serde_json::json!({}),
    }
}

/// All stored tasks: those served (`state: ready`) and those that cannot be (`state: failed`, `error`). Each
/// stored graft is read (tasks not in memory are not kept there), so this costs one store read per task.
#[utoipa::path(get, path = "/v1/tasks", security(("api_key" = ["read"])), responses((status = 200, body = Vec<TaskSummary>)))]
pub async fn list_tasks(State(s): St) -> ApiResult<Json<Vec<TaskSummary>>> {
    let st = s.clone();
    let v = blocking(move || {
        let mut v = Vec::new();
        for name in st.store.list_tasks().map_err(ApiError::internal)? {
            // Deleted between the listing and the read: not listed.
            if let Some(t) = describe(&st, &name, false)? {
                v.push(t);
            }
        }
        v.sort_by(|a: &TaskSummary, b| a.name.cmp(&b.name));
        Ok(v)
    })
    .await?;
    Ok(Json(v))
}

/// The summary of what is stored under `name` (kept in memory when `keep`); None when nothing is.
fn describe(s: &AppState, name: &str, keep: bool) -> ApiResult<Option<TaskSummary>> {
    Ok(match s.find(name, keep)? {
        Found::Task(t) => Some(summary(&t)),
        Found::Failed(why) => Some(failed_summary(name, &why)),
        Found::Missing => None,
    })
}

/// One task: labels, head, graft size, stored metrics, temperature (or why it failed to load).
#[utoipa::path(get, path = "/v1/tasks/{name}", security(("api_key" = ["read"])), params(("name" = String, Path)),
    responses((status = 200, body = TaskSummary), (status = 404, body = ErrorBody)))]
pub async fn get_task(State(s): St, Path(name): Path<String>) -> ApiResult<Json<TaskSummary>> {
    let st = s.clone();
    let n = name.clone();
    blocking(move || describe(&st, &n, true))
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("unknown task `{name}` (GET /v1/tasks lists them)"))
        })
}

/// Import a graft file made elsewhere (e.g. by `skillgraft localize`) as task `name`, replacing it. The
/// graft is validated fully against the base first (422 naming the problem). Concurrent imports to one name
/// are applied one after the other: the last one acknowledged is what is served and stored.
#[utoipa::path(put, path = "/v1/tasks/{name}/graft", security(("api_key" = ["admin"])), params(("name" = String, Path)),
    request_body(content = String, description = "A graft file", content_type = "application/octet-stream"),
    responses((status = 200, body = TaskSummary)))]
pub async fn put_graft(
    State(s): St,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TaskSummary>> {
    require_content_type(&headers, &["application/octet-stream"])?;
    let st = s.clone();
    let t = blocking(move || st.install_task(&name, &body)).await?;
    Ok(Json(summary(&t)))
}

/// Download a task's graft file.
#[utoipa::path(get, path = "/v1/tasks/{name}/graft", security(("api_key" = ["read"])), params(("name" = String, Path)),
    responses((status = 200, body = String, description = "The graft file", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody)))]
pub async fn get_graft(State(s): St, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    task(&s, &name)?;
    let store = s.store.clone();
    let bytes = blocking(move || {
        store
            .get_task(&name)
            .map_err(ApiError::internal)?
            .map(|(bytes, _)| bytes)
            .ok_or_else(|| ApiError::not_found(format!("unknown task `{name}`")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// Delete a task (also one that failed to load).
#[utoipa::path(delete, path = "/v1/tasks/{name}", security(("api_key" = ["admin"])), params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_task(State(s): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let st = s.clone();
    let n = name.clone();
    if blocking(move || st.remove_task(&n)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "unknown task `{name}` (GET /v1/tasks lists them)"
        )))
    }
}
