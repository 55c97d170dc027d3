//! Route handlers. Each validates its input, does I/O or tokenization off the model thread, and returns
//! JSON; errors go through [`ApiError`].

use super::error::{ApiError, ApiResult, ErrorBody, ErrorKind};
use super::jobs::{JobState, JobStatus, LocalizationRequest};
use super::AppState;
use crate::data::Example;
use crate::engine::ServedTask;
use crate::graft::overlap::{compose as compose_grafts, overlap as overlap_of, ConflictRule};
use crate::graft::{FlatRegion, Graft};
use crate::metrics::{evaluate_logits, softmax_rows, ClassificationReport};
use crate::model::export::load_finetuned;
use crate::model::TextInput;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use utoipa::ToSchema;

type St = State<Arc<AppState>>;

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

/// Readiness: the model is loaded and the store is readable.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn ready(State(s): St) -> ApiResult<Json<Health>> {
    if !s.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(ErrorKind::Unavailable, "still loading"));
    }
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.check())
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, format!("store not usable: {e:#}")))?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, body = String, content_type = "text/plain")))]
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
    /// Registered tasks.
    pub tasks: usize,
    /// skillgraft version.
    pub version: String,
}

/// The base model, device, threads and version.
#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = Info)))]
pub async fn info(State(s): St) -> ApiResult<Json<Info>> {
    let region = FlatRegion::new(&Default::default(), &s.base.model.weights.tensors)
        .map_err(ApiError::internal)?;
    Ok(Json(Info {
        model: s.base.name.clone(),
        content_hash: s.base.model.weights.content_hash.clone(),
        architecture: s.base.model.config.model_type.clone(),
        parameters: s.base.model.body_parameter_count(),
        region_parameters: region.len(),
        device: format!("{:?}", s.base.device),
        threads: s.config.engine.threads,
        job_threads: s.config.job_threads,
        tasks: s.tasks.len(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

// ------------------------------------------------------------------------------------------- checkpoints

/// An uploaded, validated checkpoint.
#[derive(Serialize, ToSchema)]
pub struct CheckpointInfo {
    /// Id (content hash prefix).
    pub id: String,
    /// Head found in the checkpoint.
    pub head: String,
    /// Files kept.
    pub files: Vec<String>,
    /// Total bytes.
    pub bytes: u64,
}

fn unpack_tar(archive: &std::path::Path, dest: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(file);
    let mut names = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_path_buf();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if name.ends_with(".bin")
            || name.ends_with(".pt")
            || name.ends_with(".pth")
            || name.ends_with(".pkl")
        {
            anyhow::bail!(
                "`{name}` is a pickle file; pickle files are refused: upload safetensors weights"
            );
        }
        let allowed = name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name == crate::model::export::HEAD_MANIFEST
            || name.starts_with("tokenizer")
            || name == "special_tokens_map.json"
            || name == "vocab.txt"
            || name == "vocab.json"
            || name == "merges.txt";
        if !allowed || name.starts_with('.') {
            continue;
        }
        let mut out = std::fs::File::create(dest.join(&name))?;
        std::io::copy(&mut entry, &mut out)?;
        out.sync_all()?;
        names.push(name);
    }
    if names.is_empty() {
        anyhow::bail!("the archive holds no checkpoint files (config.json, model.safetensors)");
    }
    names.sort();
    Ok(names)
}

/// Upload a fine-tuned checkpoint as a tar archive (config.json + model.safetensors [+ tokenizer files]);
/// streamed to disk, validated against the base, stored by content hash.
#[utoipa::path(post, path = "/v1/checkpoints", request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = CheckpointInfo), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_checkpoint(
    State(s): St,
    body: Body,
) -> ApiResult<(StatusCode, Json<CheckpointInfo>)> {
    let scratch = s.store.scratch_dir();
    let tmp = scratch.join(format!("upload-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&tmp).map_err(ApiError::internal)?;
    let archive = tmp.join("upload.tar");
    let result = async {
        let mut file = std::fs::File::create(&archive).map_err(ApiError::internal)?;
        let mut stream = body.into_data_stream();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                if format!("{e}").contains("length limit") {
                    ApiError::new(
                        ErrorKind::TooLarge,
                        format!("upload larger than {} bytes", s.config.max_upload_bytes),
                    )
                } else {
                    ApiError::bad_request(format!("upload interrupted: {e}"))
                }
            })?;
            total += chunk.len();
            if total > s.config.max_upload_bytes {
                return Err(ApiError::new(
                    ErrorKind::TooLarge,
                    format!("upload larger than {} bytes", s.config.max_upload_bytes),
                ));
            }
            file.write_all(&chunk).map_err(ApiError::internal)?;
        }
        file.sync_all().map_err(ApiError::internal)?;
        let st = s.clone();
        let tmp2 = tmp.clone();
        tokio::task::spawn_blocking(move || -> ApiResult<CheckpointInfo> {
            let unpacked = tmp2.join("ckpt");
            std::fs::create_dir_all(&unpacked).map_err(ApiError::internal)?;
            let files = unpack_tar(&tmp2.join("upload.tar"), &unpacked)
                .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
            let base = &st.base;
            let ft = load_finetuned(&unpacked, &base.model, None, &base.tokenizer, &base.device)
                .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
            let id = format!("ckpt-{}", &ft.model.weights.content_hash[..16]);
            let bytes: u64 = files
                .iter()
                .filter_map(|f| std::fs::metadata(unpacked.join(f)).ok())
                .map(|m| m.len())
                .sum();
            st.store
                .put_checkpoint(&id, &|d| {
                    for f in &files {
                        std::fs::copy(unpacked.join(f), d.join(f))?;
                    }
                    Ok(())
                })
                .map_err(ApiError::internal)?;
            Ok(CheckpointInfo {
                id,
                head: ft.head.kind().into(),
                files,
                bytes,
            })
        })
        .await
        .map_err(ApiError::internal)?
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|info| (StatusCode::CREATED, Json(info)))
}

/// Describe an uploaded checkpoint.
#[utoipa::path(get, path = "/v1/checkpoints/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CheckpointInfo), (status = 404, body = ErrorBody)))]
pub async fn get_checkpoint(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckpointInfo>> {
    let dir = s.store.checkpoint_dir(&id);
    if !crate::store::service::valid_name(&id) || !dir.is_dir() {
        return Err(ApiError::not_found(format!("no checkpoint `{id}`")));
    }
    let mut files = Vec::new();
    let mut bytes = 0;
    for e in std::fs::read_dir(&dir)
        .map_err(ApiError::internal)?
        .flatten()
    {
        files.push(e.file_name().to_string_lossy().to_string());
        bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
    }
    files.sort();
    let head = std::fs::read_to_string(dir.join(crate::model::export::HEAD_MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_str::<crate::model::export::HeadManifest>(&t).ok())
        .map(|m| m.head.kind().to_string())
        .unwrap_or_else(|| "from tensor names".into());
    Ok(Json(CheckpointInfo {
        id,
        head,
        files,
        bytes,
    }))
}

/// Delete an uploaded checkpoint.
#[utoipa::path(delete, path = "/v1/checkpoints/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_checkpoint(State(s): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match s.store.delete_checkpoint(&id).map_err(ApiError::internal)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no checkpoint `{id}`"))),
    }
}

// ------------------------------------------------------------------------------------------ localizations

/// Start a localization job: find the graft of an uploaded checkpoint; the task is registered when it ends.
#[utoipa::path(post, path = "/v1/localizations", request_body = LocalizationRequest,
    responses((status = 202, body = JobStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_localization(
    State(s): St,
    Json(req): Json<LocalizationRequest>,
) -> ApiResult<(StatusCode, Json<JobStatus>)> {
    if !crate::store::service::valid_name(&req.task_name) {
        return Err(ApiError::bad_request(format!(
            "invalid task_name `{}`: {}",
            req.task_name,
            crate::store::service::NAME_RULE
        )));
    }
    if !crate::store::service::valid_name(&req.checkpoint)
        || !s.store.checkpoint_dir(&req.checkpoint).is_dir()
    {
        return Err(ApiError::not_found(format!(
            "no checkpoint `{}` (upload it to /v1/checkpoints)",
            req.checkpoint
        )));
    }
    if !(req.sparsity > 0.0 && req.sparsity <= 1.0) || req.epochs > 1000 {
        return Err(ApiError::bad_request(
            "sparsity must be in (0, 1] and epochs at most 1000",
        ));
    }
    match (&req.task, &req.train, &req.dev) {
        (Some(t), None, None) if crate::data::builtin_task(t).is_none() => {
            return Err(ApiError::bad_request(format!(
                "unknown task `{t}` (built-in: {})",
                crate::data::builtin_task_names().join(", ")
            )))
        }
        (None, None, _) | (_, Some(_), None) | (_, None, Some(_)) => {
            return Err(ApiError::bad_request(
                "give a built-in `task`, or inline `train` and `dev` examples",
            ))
        }
        _ => {}
    }
    let status = s.jobs.submit(s.clone(), req).map_err(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// All localization jobs, newest first.
#[utoipa::path(get, path = "/v1/localizations", responses((status = 200, body = Vec<JobStatus>)))]
pub async fn list_localizations(State(s): St) -> Json<Vec<JobStatus>> {
    Json(s.jobs.list())
}

fn job(s: &AppState, id: &str) -> ApiResult<Arc<super::jobs::JobEntry>> {
    s.jobs
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no localization job `{id}`")))
}

/// A job's state: epoch, mask size, train/dev accuracy, timings.
#[utoipa::path(get, path = "/v1/localizations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorBody)))]
pub async fn get_localization(State(s): St, Path(id): Path<String>) -> ApiResult<Json<JobStatus>> {
    let e = job(&s, &id)?;
    let st = e.status.lock().map_err(ApiError::internal)?.clone();
    Ok(Json(st))
}

/// Cancel a queued or running job.
#[utoipa::path(delete, path = "/v1/localizations/{id}", params(("id" = String, Path)),
    responses((status = 202, body = JobStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_localization(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobStatus>)> {
    let e = job(&s, &id)?;
    let st = e.status.lock().map_err(ApiError::internal)?.clone();
    if !matches!(st.state, JobState::Queued | JobState::Running) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("job `{id}` already ended ({:?})", st.state),
        ));
    }
    e.cancel.store(true, Ordering::Relaxed);
    Ok((StatusCode::ACCEPTED, Json(st)))
}

/// Server-sent events with the job's state after every change (event `status`, JSON data); ends when the
/// job ends.
#[utoipa::path(get, path = "/v1/localizations/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of JobStatus JSON"), (status = 404, body = ErrorBody)))]
pub async fn localization_events(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let e = job(&s, &id)?;
    let rx = e.events.subscribe();
    let first = serde_json::to_string(&*e.status.lock().map_err(ApiError::internal)?)
        .map_err(ApiError::internal)?;
    fn done(t: &str) -> bool {
        serde_json::from_str::<JobStatus>(t)
            .map(|j| !matches!(j.state, JobState::Queued | JobState::Running))
            .unwrap_or(false)
    }
    let first_done = done(&first);
    // After the message that ends the job, the stream ends too.
    let updates = futures::stream::unfold((rx, first_done), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(m) => {
                    let d = done(&m);
                    return Some((m, (rx, d)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::stream::once(async move { first })
        .chain(updates)
        .map(|m| Ok::<_, std::convert::Infallible>(Event::default().event("status").data(m)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ------------------------------------------------------------------------------------------------- tasks

/// A registered task.
#[derive(Serialize, ToSchema)]
pub struct TaskSummary {
    /// Name.
    pub name: String,
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
    /// Temperature fitted on dev for the graft (applied by predict when calibrating).
    pub temperature: Option<f64>,
    /// Stored metrics (accuracy, ECE of base+head / base patch / graft / fine-tuned).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

fn labels_of(t: &ServedTask) -> Vec<String> {
    match &t.graft.manifest.task {
        Some(spec) if spec.labels.len() == t.head().num_labels() => spec.labels.clone(),
        _ => (0..t.head().num_labels())
            .map(|i| format!("LABEL_{i}"))
            .collect(),
    }
}

/// The calibration a response reports: `temperature` when one was applied, else `none`.
fn calibration_name(temperature: Option<f64>) -> &'static str {
    if temperature.is_some() {
        "temperature"
    } else {
        "none"
    }
}

fn temperature_of(t: &ServedTask) -> Option<f64> {
    t.graft.manifest.metrics["variants"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == "graft")?["temperature"]
        .as_f64()
}

fn summary(t: &ServedTask) -> TaskSummary {
    let m = &t.graft.manifest;
    let variants: Vec<serde_json::Value> = m.metrics["variants"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|r| {
                    serde_json::json!({"name": r["name"], "size": r["size"], "accuracy": r["test"]["accuracy"],
                    "ece": r["test"]["ece"], "ece_bins": r["test"]["ece_bins"],
                    "ece_after_temperature": r["test_calibrated"]["ece"], "temperature": r["temperature"]})
                })
                .collect()
        })
        .unwrap_or_default();
    TaskSummary {
        name: t.name.clone(),
        labels: labels_of(t),
        head: t.head().kind().into(),
        graft_size: t.graft.size(),
        percent_of_region: 100.0 * m.region_fraction(),
        percent_of_model: 100.0 * m.model_fraction(),
        method: m.method.clone(),
        temperature: temperature_of(t),
        metrics: serde_json::json!({"variants": variants}),
    }
}

fn task(s: &AppState, name: &str) -> ApiResult<Arc<ServedTask>> {
    s.tasks.get(name).map(|t| t.clone()).ok_or_else(|| {
        ApiError::not_found(format!("unknown task `{name}` (GET /v1/tasks lists them)"))
    })
}

/// All registered tasks.
#[utoipa::path(get, path = "/v1/tasks", responses((status = 200, body = Vec<TaskSummary>)))]
pub async fn list_tasks(State(s): St) -> Json<Vec<TaskSummary>> {
    let mut v: Vec<TaskSummary> = s.tasks.iter().map(|t| summary(&t)).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Json(v)
}

/// One task: labels, head, graft size, stored metrics, temperature.
#[utoipa::path(get, path = "/v1/tasks/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TaskSummary), (status = 404, body = ErrorBody)))]
pub async fn get_task(State(s): St, Path(name): Path<String>) -> ApiResult<Json<TaskSummary>> {
    let t = task(&s, &name)?;
    Ok(Json(summary(&t)))
}

/// Import a graft file made elsewhere (e.g. by `skillgraft localize`) as task `name` (replaces it).
#[utoipa::path(put, path = "/v1/tasks/{name}/graft", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = TaskSummary), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_graft(
    State(s): St,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<TaskSummary>> {
    let st = s.clone();
    let t = tokio::task::spawn_blocking(move || st.install_task(&name, &body))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(summary(&t)))
}

/// Download a task's graft file.
#[utoipa::path(get, path = "/v1/tasks/{name}/graft", params(("name" = String, Path)),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream"), (status = 404, body = ErrorBody)))]
pub async fn get_graft(State(s): St, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    task(&s, &name)?;
    let bytes = s
        .store
        .get_task(&name)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("unknown task `{name}`")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// Delete a task.
#[utoipa::path(delete, path = "/v1/tasks/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_task(State(s): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    task(&s, &name)?;
    s.store.delete_task(&name).map_err(ApiError::internal)?;
    s.tasks.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------------------- prediction

/// One input: a text, or a text pair.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictInput {
    /// A single text.
    Text(String),
    /// A text (and optional second text).
    Pair {
        /// First text.
        text: String,
        /// Second text.
        #[serde(default)]
        text_b: Option<String>,
    },
}

/// A prediction request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PredictRequest {
    /// Texts (or pairs) to classify.
    pub inputs: Vec<PredictInput>,
    /// Apply the task's temperature (fitted on dev) to the probabilities (default true).
    #[serde(default = "yes")]
    pub calibrate: bool,
    /// Also return raw logits.
    #[serde(default)]
    pub return_logits: bool,
}

fn yes() -> bool {
    true
}

/// One prediction.
#[derive(Serialize, ToSchema)]
pub struct Prediction {
    /// Predicted class name.
    pub label: String,
    /// Its index.
    pub label_id: usize,
    /// Probability of every class, by name.
    pub probabilities: BTreeMap<String, f64>,
    /// Raw logits, when asked.
    pub logits: Option<Vec<f32>>,
}

/// A prediction response.
#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    /// Task.
    pub task: String,
    /// `none` or `temperature`.
    pub calibration: String,
    /// Temperature applied (1.0 for none).
    pub temperature: f64,
    /// One per input, in order.
    pub predictions: Vec<Prediction>,
}

fn to_texts(s: &AppState, t: &ServedTask, inputs: Vec<PredictInput>) -> ApiResult<Vec<TextInput>> {
    if inputs.is_empty() {
        return Err(ApiError::bad_request("`inputs` is empty"));
    }
    if inputs.len() > s.config.max_batch_inputs {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!(
                "{} inputs; at most {} per request",
                inputs.len(),
                s.config.max_batch_inputs
            ),
        ));
    }
    let examples: Vec<Example> = inputs
        .into_iter()
        .map(|i| match i {
            PredictInput::Text(text) => Example {
                text,
                text_b: None,
                label: 0,
            },
            PredictInput::Pair { text, text_b } => Example {
                text,
                text_b,
                label: 0,
            },
        })
        .collect();
    t.head()
        .inputs(&examples, s.base.tokenizer.mask_token())
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))
}

async fn logits_for(
    s: &Arc<AppState>,
    t: &Arc<ServedTask>,
    texts: Vec<TextInput>,
) -> ApiResult<Vec<Vec<f32>>> {
    let st = s.clone();
    let prompt = t.head().uses_prompt();
    let batch = tokio::task::spawn_blocking(move || st.base.tokenizer.encode(&texts, prompt))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(s.engine.logits(t.clone(), batch).await?)
}

/// Classify texts with a task: label, probabilities for every label, and the calibration applied.
#[utoipa::path(post, path = "/v1/tasks/{name}/predict", params(("name" = String, Path)), request_body = PredictRequest,
    responses((status = 200, body = PredictResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn predict(
    State(s): St,
    Path(name): Path<String>,
    Json(req): Json<PredictRequest>,
) -> ApiResult<Json<PredictResponse>> {
    let start = std::time::Instant::now();
    let t = task(&s, &name)?;
    let texts = to_texts(&s, &t, req.inputs)?;
    let logits = logits_for(&s, &t, texts).await?;
    let temperature = if req.calibrate {
        temperature_of(&t)
    } else {
        None
    };
    let temp = temperature.unwrap_or(1.0);
    let labels = labels_of(&t);
    let probs = softmax_rows(&logits, temp);
    let predictions = probs
        .into_iter()
        .zip(logits)
        .map(|(p, l)| {
            let id = crate::metrics::argmax(&p);
            Prediction {
                label: labels.get(id).cloned().unwrap_or_default(),
                label_id: id,
                probabilities: labels.iter().cloned().zip(p).collect(),
                logits: req.return_logits.then_some(l),
            }
        })
        .collect();
    s.metrics.record_task(&name, start.elapsed().as_secs_f64());
    Ok(Json(PredictResponse {
        task: name,
        calibration: calibration_name(temperature).into(),
        temperature: temp,
        predictions,
    }))
}

/// A labelled example for evaluation; the label is a class name or index.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LabelledInput {
    /// Text.
    pub text: String,
    /// Optional second text.
    #[serde(default)]
    pub text_b: Option<String>,
    /// Class name or index.
    #[schema(value_type = Object)]
    pub label: serde_json::Value,
}

/// An evaluation request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluateRequest {
    /// Labelled examples.
    pub examples: Vec<LabelledInput>,
    /// ECE bins (default 10).
    #[serde(default = "ten")]
    pub bins: usize,
    /// Apply the task's temperature (default true).
    #[serde(default = "yes")]
    pub calibrate: bool,
}

fn ten() -> usize {
    10
}

/// Metrics of a task on labelled examples.
#[derive(Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// Task.
    pub task: String,
    /// `none` or `temperature`.
    pub calibration: String,
    /// Metrics (accuracy, macro-F1, ECE with its bin count, NLL, Brier, reliability bins).
    #[schema(value_type = Object)]
    pub report: ClassificationReport,
}

/// Label ids (a label is a class name or an index) and model inputs of labelled examples.
fn labelled(
    t: &ServedTask,
    examples: &[LabelledInput],
    what: &str,
) -> ApiResult<(Vec<usize>, Vec<PredictInput>)> {
    let labels = labels_of(t);
    let mut ids = Vec::with_capacity(examples.len());
    let mut inputs = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        let id = match &e.label {
            serde_json::Value::Number(n) => {
                n.as_u64().map(|v| v as usize).filter(|&v| v < labels.len())
            }
            serde_json::Value::String(l) => labels.iter().position(|x| x == l),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} {i}: label {} is not one of {labels:?}",
                e.label
            ))
        })?;
        ids.push(id);
        inputs.push(PredictInput::Pair {
            text: e.text.clone(),
            text_b: e.text_b.clone(),
        });
    }
    Ok((ids, inputs))
}

/// Evaluate a task on labelled examples: accuracy, macro-F1, ECE (bins named), NLL, Brier, reliability bins.
#[utoipa::path(post, path = "/v1/tasks/{name}/evaluate", params(("name" = String, Path)), request_body = EvaluateRequest,
    responses((status = 200, body = EvaluateResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn evaluate(
    State(s): St,
    Path(name): Path<String>,
    Json(req): Json<EvaluateRequest>,
) -> ApiResult<Json<EvaluateResponse>> {
    let t = task(&s, &name)?;
    if req.bins == 0 || req.bins > 1000 {
        return Err(ApiError::bad_request("bins must be between 1 and 1000"));
    }
    let (ids, inputs) = labelled(&t, &req.examples, "example")?;
    let texts = to_texts(&s, &t, inputs)?;
    let logits = logits_for(&s, &t, texts).await?;
    let temperature = if req.calibrate {
        temperature_of(&t)
    } else {
        None
    };
    let report = evaluate_logits(&logits, &ids, temperature.unwrap_or(1.0), req.bins)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(Json(EvaluateResponse {
        task: name,
        calibration: calibration_name(temperature).into(),
        report,
    }))
}

// ------------------------------------------------------------------------------- overlap and composition

/// `?tasks=a,b,c`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OverlapQuery {
    /// Comma-separated task names.
    pub tasks: String,
}

/// Overlap of tasks' grafts: counts, Jaccard and containment matrices, random baseline, per-layer and
/// per-module breakdowns.
#[utoipa::path(get, path = "/v1/overlap", params(OverlapQuery),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn overlap(
    State(s): St,
    Query(q): Query<OverlapQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let names: Vec<String> = q
        .tasks
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("name at least one task: ?tasks=a,b"));
    }
    let tasks: Vec<Arc<ServedTask>> = names
        .iter()
        .map(|n| task(&s, n))
        .collect::<ApiResult<_>>()?;
    let region_spec = tasks[0].graft.manifest.region.clone();
    if tasks.iter().any(|t| t.graft.manifest.region != region_spec) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the tasks' grafts use different regions",
        ));
    }
    let st = s.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let region = FlatRegion::new(&region_spec, &st.base.model.weights.tensors)?;
        let grafts: Vec<Graft> = tasks.iter().map(|t| t.graft.clone()).collect();
        Ok(serde_json::to_value(overlap_of(&names, &grafts, &region)?)?)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    Ok(Json(report))
}

/// A composition request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompositionRequest {
    /// Name of the new composed task.
    pub name: String,
    /// Member tasks (order matters for `last_wins`).
    pub tasks: Vec<String>,
    /// `mean` or `last_wins`.
    #[serde(default = "mean_rule")]
    #[schema(value_type = String)]
    pub rule: ConflictRule,
    /// Labelled examples per member task, to measure each one's accuracy under the composition.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: BTreeMap<String, Vec<LabelledInput>>,
}

fn mean_rule() -> ConflictRule {
    ConflictRule::Mean
}

/// A composed task and how each member fares under it.
#[derive(Serialize, ToSchema)]
pub struct CompositionResponse {
    /// The new task.
    pub task: TaskSummary,
    /// Per member: accuracy alone and under the composition (when data was given).
    #[schema(value_type = Object)]
    pub members: Vec<serde_json::Value>,
}

/// Compose tasks' grafts (union; shared coordinates by rule) into a new task with the first member's head;
/// with data, report each member's accuracy alone and under the composition.
#[utoipa::path(post, path = "/v1/compositions", request_body = CompositionRequest,
    responses((status = 201, body = CompositionResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn compose(
    State(s): St,
    Json(req): Json<CompositionRequest>,
) -> ApiResult<(StatusCode, Json<CompositionResponse>)> {
    if req.tasks.len() < 2 {
        return Err(ApiError::bad_request(
            "a composition needs at least two tasks",
        ));
    }
    let members: Vec<Arc<ServedTask>> = req
        .tasks
        .iter()
        .map(|n| task(&s, n))
        .collect::<ApiResult<_>>()?;
    let region_spec = members[0].graft.manifest.region.clone();
    if members
        .iter()
        .any(|t| t.graft.manifest.region != region_spec)
    {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the tasks' grafts use different regions",
        ));
    }
    let st = s.clone();
    let rule = req.rule;
    let names = req.tasks.clone();
    let mems = members.clone();
    let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let region = FlatRegion::new(&region_spec, &st.base.model.weights.tensors)?;
        let grafts: Vec<Graft> = mems.iter().map(|t| t.graft.clone()).collect();
        let mut composed = grafts[0].clone();
        composed.entries = compose_grafts(&grafts, &region, rule)?;
        composed.manifest.size = composed.size();
        composed.manifest.method = format!("compose({rule:?})").to_lowercase();
        composed.manifest.hyper_parameters = serde_json::json!({"members": names, "rule": rule});
        composed.manifest.metrics = serde_json::json!({});
        composed.manifest.created_unix = crate::graft::unix_now();
        composed.to_bytes()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let st = s.clone();
    let name = req.name.clone();
    let composed = tokio::task::spawn_blocking(move || st.install_task(&name, &bytes))
        .await
        .map_err(ApiError::internal)??;
    let mut report = Vec::new();
    for m in &members {
        let Some(examples) = req.data.get(&m.name) else {
            report.push(serde_json::json!({"task": m.name}));
            continue;
        };
        let (ids, inputs) = labelled(m, examples, &format!("task {}: example", m.name))?;
        let texts = to_texts(&s, m, inputs)?;
        let alone = logits_for(&s, m, texts.clone()).await?;
        // The member's own head on the composed body.
        let mut graft = composed.graft.clone();
        graft.head = m.graft.head.clone();
        graft.manifest.head = m.graft.manifest.head.clone();
        let under_task = Arc::new(ServedTask {
            name: format!("{}@{}", m.name, req.name),
            graft,
            version: s.fresh_version(),
        });
        let under = logits_for(&s, &under_task, texts).await?;
        let acc = |l: &[Vec<f32>]| crate::model::predict::accuracy(l, &ids);
        report.push(serde_json::json!({"task": m.name, "examples": ids.len(), "alone": acc(&alone), "composed": acc(&under)}));
    }
    Ok((
        StatusCode::CREATED,
        Json(CompositionResponse {
            task: summary(&composed),
            members: report,
        }),
    ))
}
