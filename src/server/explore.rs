//! Read-only routes the web explorer (`/ui`) needs beyond the core API, usable by any client: what the
//! caller's key may do, the built-in data sets, and per task its placement (layer × module type), its
//! calibration (reliability bins before and after temperature scaling), and held-out examples of its data set.

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::AppState;
use crate::engine::ServedTask;
use crate::graft::placement::placement;
use crate::graft::FlatRegion;
use crate::metrics::{ClassificationReport, ReliabilityBin};
use axum::extract::{Extension, Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

type St = State<Arc<AppState>>;

/// The explorer's routes (all `GET`, under `/v1`; mounted inside the authenticated router).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/tasks/{name}/placement", get(task_placement))
        .route("/v1/tasks/{name}/calibration", get(task_calibration))
        .route("/v1/tasks/{name}/examples", get(task_examples))
}

fn served(s: &AppState, name: &str) -> ApiResult<Arc<ServedTask>> {
    s.task(name)
}

// ------------------------------------------------------------------------------------------------ session

/// What the caller's key may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// Whether the server requires API keys.
    pub auth_required: bool,
    /// `open` (no keys configured), `reader` or `admin`.
    pub role: String,
    /// Whether this key may change state (upload, localize, compose, delete).
    pub can_write: bool,
}

/// What the presented key may do: read only, or also change state.
#[utoipa::path(get, path = "/v1/session", responses((status = 200, body = Session)),
    security(("api_key" = ["read"])))]
pub async fn session(State(s): St, Extension(caller): Extension<Caller>) -> Json<Session> {
    let auth_required = s.keys.enabled();
    let (role, can_write) = match (auth_required, caller.admin) {
        (false, _) => ("open", true),
        (true, true) => ("admin", true),
        (true, false) => ("reader", false),
    };
    Json(Session {
        auth_required,
        role: role.into(),
        can_write,
    })
}

// ----------------------------------------------------------------------------------------------- datasets

/// A data set a localization job can use: a built-in task's, or an uploaded one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dataset {
    /// Name (`task` of a localization request, for built-in data sets).
    pub name: String,
    /// Class names.
    pub labels: Vec<String>,
    /// Whether its files are present in the server's data directory (always true for uploads).
    pub available: bool,
    /// `builtin` or `uploaded`.
    pub kind: String,
    /// Id (`dataset` of a localization request or an evaluation), for uploaded data sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Rows, for uploaded data sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// Rows per split (`train`, `dev`, `test`), for uploaded data sets with a split column.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splits: Option<std::collections::BTreeMap<String, usize>>,
}

/// The built-in tasks (and whether the server has their data), then the uploaded data sets, newest first.
#[utoipa::path(get, path = "/v1/datasets", security(("api_key" = ["read"])), responses((status = 200, body = Vec<Dataset>)))]
pub async fn datasets(State(s): St) -> Json<Vec<Dataset>> {
    let dir = &s.config.datasets_dir;
    let out = crate::data::builtin_task_names()
        .iter()
        .filter_map(|n| crate::data::builtin_task(n))
        .map(|spec| {
            let files: Vec<&String> = match &spec.source {
                Some(crate::data::DataSource::Split { train, dev, test }) => {
                    [Some(train), dev.as_ref(), Some(test)]
                        .into_iter()
                        .flatten()
                        .collect()
                }
                Some(crate::data::DataSource::Single { file }) => vec![file],
                Some(crate::data::DataSource::Table { file, .. }) => vec![file],
                None => Vec::new(),
            };
            Dataset {
                available: !files.is_empty() && files.iter().all(|f| dir.join(f).is_file()),
                name: spec.name,
                labels: spec.labels,
                kind: "builtin".into(),
                id: None,
                rows: None,
                splits: None,
            }
        })
        .chain(
            super::api::datasets::uploaded(&s)
                .into_iter()
                .map(|d| Dataset {
                    name: d.name,
                    labels: d.labels,
                    available: true,
                    kind: "uploaded".into(),
                    id: Some(d.id),
                    rows: Some(d.rows),
                    splits: (!d.split_counts.is_empty()).then_some(d.split_counts),
                }),
        )
        .collect::<Vec<_>>();
    Json(out)
}

// ---------------------------------------------------------------------------------------------- placement

/// Where a task's graft lives, per encoder layer × module type.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPlacement {
    /// Task.
    pub task: String,
    /// Grafted parameters.
    pub graft_size: usize,
    /// Parameters in the graft's region.
    pub region_size: usize,
    /// Row labels (`layer 0`, …, `embeddings` when the region holds them).
    pub layers: Vec<String>,
    /// Column labels (module types: query, key, value, attention_output, ffn_in, ffn_out, bias, layernorm).
    pub modules: Vec<String>,
    /// Grafted parameters per cell (layers × modules).
    pub counts: Vec<Vec<usize>>,
    /// Region parameters per cell (layers × modules).
    pub region_counts: Vec<Vec<usize>>,
}

/// A task's graft counted per encoder layer × module type, beside the region's size in each cell.
#[utoipa::path(get, path = "/v1/tasks/{name}/placement", security(("api_key" = ["read"])), params(("name" = String, Path)),
    responses((status = 200, body = TaskPlacement), (status = 404, body = ErrorBody)))]
pub async fn task_placement(
    State(s): St,
    Path(name): Path<String>,
) -> ApiResult<Json<TaskPlacement>> {
    let t = served(&s, &name)?;
    let st = s.clone();
    let grid = tokio::task::spawn_blocking(move || {
        let region = FlatRegion::over(&t.graft.manifest.region, &st.base.weights)?;
        Ok::<_, anyhow::Error>((
            placement(&t.graft.entries, &region)?,
            t.graft.size(),
            region.len(),
        ))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let (grid, graft_size, region_size) = grid;
    Ok(Json(TaskPlacement {
        task: name,
        graft_size,
        region_size,
        layers: grid.layers,
        modules: grid.modules,
        counts: grid.counts,
        region_counts: grid.region_counts,
    }))
}

// -------------------------------------------------------------------------------------------- calibration

/// One bin of a reliability diagram.
#[derive(Debug, Serialize, ToSchema)]
pub struct Bin {
    /// Lower confidence edge (exclusive; the first bin includes 0).
    pub lower: f64,
    /// Upper confidence edge (inclusive).
    pub upper: f64,
    /// Examples in the bin.
    pub count: usize,
    /// Their accuracy (0 when empty).
    pub accuracy: f64,
    /// Their mean confidence (0 when empty).
    pub confidence: f64,
}

/// Test-set calibration of one model at one temperature.
#[derive(Debug, Serialize, ToSchema)]
pub struct Curve {
    /// Temperature the probabilities were computed with.
    pub temperature: f64,
    /// Test examples.
    pub n: usize,
    /// Accuracy.
    pub accuracy: f64,
    /// Expected calibration error over `bins.len()` equal-width bins.
    pub ece: f64,
    /// Negative log-likelihood.
    pub nll: f64,
    /// Brier score.
    pub brier: f64,
    /// Reliability bins.
    pub bins: Vec<Bin>,
}

impl From<&ClassificationReport> for Curve {
    fn from(r: &ClassificationReport) -> Self {
        Curve {
            temperature: r.temperature,
            n: r.n,
            accuracy: r.accuracy,
            ece: r.ece,
            nll: r.nll,
            brier: r.brier,
            bins: r.reliability.iter().map(Bin::from).collect(),
        }
    }
}

impl From<&ReliabilityBin> for Bin {
    fn from(b: &ReliabilityBin) -> Self {
        Bin {
            lower: b.lower,
            upper: b.upper,
            count: b.count,
            accuracy: b.accuracy,
            confidence: b.confidence,
        }
    }
}

/// One model compared when the graft was made (base+head, base patch, graft, fine-tuned).
#[derive(Debug, Serialize, ToSchema)]
pub struct VariantCalibration {
    /// Variant name.
    pub name: String,
    /// Its grafted parameters.
    pub size: usize,
    /// Temperature fitted on dev.
    pub temperature: f64,
    /// At temperature 1.
    pub before: Curve,
    /// At the fitted temperature.
    pub after: Curve,
}

/// A task's calibration as measured when its graft was made.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskCalibration {
    /// Task.
    pub task: String,
    /// What `predict` applies by default: `temperature` or `none`.
    pub calibration: String,
    /// The temperature `predict` applies, when the calibration decision applies one.
    pub temperature: Option<f64>,
    /// Why (the decision recorded with the graft).
    pub reason: String,
    /// Every variant's test-set calibration before and after temperature scaling (empty for grafts made
    /// without an evaluation, e.g. compositions).
    pub variants: Vec<VariantCalibration>,
}

/// Reliability bins, ECE, NLL and Brier of the task's variants on its test set, before and after temperature
/// scaling, as stored in the graft.
#[utoipa::path(get, path = "/v1/tasks/{name}/calibration", security(("api_key" = ["read"])), params(("name" = String, Path)),
    responses((status = 200, body = TaskCalibration), (status = 404, body = ErrorBody)))]
pub async fn task_calibration(
    State(s): St,
    Path(name): Path<String>,
) -> ApiResult<Json<TaskCalibration>> {
    let t = served(&s, &name)?;
    let variants: Vec<VariantCalibration> = t
        .graft
        .manifest
        .variants()
        .iter()
        .filter_map(|v| v.report())
        .map(|v| VariantCalibration {
            before: Curve::from(&v.test),
            after: Curve::from(&v.test_calibrated),
            name: v.name,
            size: v.size,
            temperature: v.temperature,
        })
        .collect();
    let temperature = super::api::temperature_of(&t);
    Ok(Json(TaskCalibration {
        reason: super::api::calibration_reason(&t),
        task: name,
        calibration: if temperature.is_some() {
            "temperature"
        } else {
            "none"
        }
        .into(),
        temperature,
        variants,
    }))
}

// ----------------------------------------------------------------------------------------------- examples

/// `?limit=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExamplesQuery {
    /// Examples to return (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A labelled example.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelledExample {
    /// Text.
    pub text: String,
    /// Second text of a pair task.
    pub text_b: Option<String>,
    /// Class name.
    pub label: String,
}

/// Held-out examples of the built-in data set a task was made from.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskExamples {
    /// Task.
    pub task: String,
    /// The built-in data set.
    pub dataset: String,
    /// `limit` examples of its test split (the official test set, or the held-out sample of single-file
    /// sets), sampled with a fixed seed: those a localization job with `max_test = limit` evaluates on.
    pub examples: Vec<LabelledExample>,
}

/// Held-out examples of the built-in data set the task was made from: a fixed sample of its test split, the
/// one a job with `max_test = limit` evaluates on (labels as class names, ready for `evaluate` or a
/// composition's `data`). Only built-in data sets are served.
#[utoipa::path(get, path = "/v1/tasks/{name}/examples", security(("api_key" = ["read"])), params(("name" = String, Path), ExamplesQuery),
    responses((status = 200, body = TaskExamples), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn task_examples(
    State(s): St,
    Path(name): Path<String>,
    Query(q): Query<ExamplesQuery>,
) -> ApiResult<Json<TaskExamples>> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let t = served(&s, &name)?;
    // Only a spec identical in data source to a built-in task is read: a graft's manifest names its own
    // files, and those must never point the server at arbitrary paths.
    let spec = t
        .graft
        .manifest
        .task
        .as_ref()
        .and_then(|own| crate::data::builtin_task(&own.name).filter(|b| b.source == own.source))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task `{name}` was not made from a built-in data set"
            ))
        })?;
    let dir = s.config.datasets_dir.clone();
    let spec2 = spec.clone();
    let split = tokio::task::spawn_blocking(move || {
        crate::data::task_split(&spec2, &dir, 1, 0, Some(limit))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        ApiError::not_found(format!(
            "the data of `{}` is not available on this server: {e:#}",
            spec.name
        ))
    })?;
    let examples = split
        .test
        .into_iter()
        .map(|e| LabelledExample {
            label: spec.labels.get(e.label).cloned().unwrap_or_default(),
            text: e.text,
            text_b: e.text_b,
        })
        .collect();
    Ok(Json(TaskExamples {
        task: name,
        dataset: spec.name,
        examples,
    }))
}
