//! Uploaded data sets: a CSV, TSV, JSON-lines or `LABEL SENTENCE` file streamed to a scratch file (capped at
//! `max_dataset_bytes`), checked and normalized off the runtime ([`crate::data::dataset`]), stored by
//! content hash through the service's store ([`ServiceStore`](crate::store::service::ServiceStore): a
//! directory or object storage, shared by every replica) beside tasks; listed with the built-in data sets
//! (`GET /v1/datasets`), deleted. Localization jobs and evaluations refer to them by id. The JSON Schema of
//! task specs is served here too.

use super::{blocking, body_to_file, St};
use crate::data::dataset::{normalize, DatasetInfo, DatasetOptions};
use crate::data::FileFormat;
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

/// How to read an uploaded data file (all optional: the file is inspected for the rest).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatasetQuery {
    /// Display name (default: `filename` without extension).
    #[serde(default)]
    pub name: Option<String>,
    /// The file's name, which helps tell its format (e.g. `reviews.csv`).
    #[serde(default)]
    pub filename: Option<String>,
    /// `csv`, `tsv`, `jsonl` or `label_sentence` (default: from `filename` and the first line).
    #[serde(default)]
    pub format: Option<String>,
    /// Text column (default: guessed: a column named text/sentence/…, else the longest values).
    #[serde(default)]
    pub text_column: Option<String>,
    /// Second text column of sentence pairs.
    #[serde(default)]
    pub text_b_column: Option<String>,
    /// Label column (default: guessed: a column named label/class/…, else the fewest distinct values).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Split column with values train, dev (validation) and test (default: guessed).
    #[serde(default)]
    pub split_column: Option<String>,
    /// Class names in class-id order, comma-separated (default: the label values, sorted); must hold every
    /// value the file uses. Give the order a checkpoint's `id2label` uses.
    #[serde(default)]
    pub labels: Option<String>,
}

/// Upload a labelled data set (CSV or TSV with a header row, JSON lines, or `LABEL SENTENCE` lines; UTF-8,
/// or Latin-1 decoded byte for byte). It is checked (at least two labels, no empty text, valid split
/// values, `labels` covering every value) and stored by content hash; the answer says what was found.
#[utoipa::path(post, path = "/v1/datasets", security(("api_key" = ["admin"])), params(DatasetQuery),
    request_body(content = String, description = "The data file", content_type = "text/csv"),
    responses((status = 201, body = Object, description = "The stored data set (DatasetInfo)"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_dataset(
    State(s): St,
    Query(q): Query<DatasetQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<DatasetInfo>)> {
    let format = q
        .format
        .as_deref()
        .map(FileFormat::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("`format`: {e:#}")))?;
    let labels = q.labels.as_deref().map(|l| {
        l.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
    });
    let opts = DatasetOptions {
        name: q.name.clone(),
        format,
        text_column: q.text_column.clone(),
        text_b_column: q.text_b_column.clone(),
        label_column: q.label_column.clone(),
        split_column: q.split_column.clone(),
        labels,
    };
    let file_name = q.filename.clone().unwrap_or_else(|| "upload".into());
    let max = s.config.max_dataset_bytes;
    let scratch = tempfile::Builder::new()
        .prefix("dataset-")
        .tempfile_in(s.store.scratch_dir())
        .map_err(ApiError::internal)?;
    let mut file = scratch.reopen().map_err(ApiError::internal)?;
    let too_large = || {
        ApiError::too_large(format!(
            "data set larger than {max} bytes (SKILLGRAFT_MAX_DATASET_BYTES)"
        ))
    };
    let total = body_to_file(body, &mut file, max, too_large).await?;
    drop(file);
    if total == 0 {
        return Err(ApiError::bad_request(
            "the body is empty: send the data file as the request body",
        ));
    }
    let st = s.clone();
    let info = blocking(move || {
        let bytes = std::fs::read(scratch.path()).map_err(ApiError::internal)?;
        let (mut info, jsonl) = normalize(&bytes, &file_name, &opts)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        info.created_unix = crate::graft::unix_now();
        let description = serde_json::to_vec(&info).map_err(ApiError::internal)?;
        st.store
            .put_dataset(&info.id, &jsonl, &description)
            .map_err(ApiError::internal)?;
        Ok(info)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Uploaded data sets, newest first.
pub fn uploaded(s: &crate::server::AppState) -> Vec<DatasetInfo> {
    let mut v: Vec<DatasetInfo> = s
        .store
        .list_datasets()
        .unwrap_or_default()
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    v.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.id.cmp(&b.id)));
    v
}

/// Describe an uploaded data set.
#[utoipa::path(get, path = "/v1/datasets/{id}", security(("api_key" = ["read"])), params(("id" = String, Path)),
    responses((status = 200, body = Object, description = "The data set (DatasetInfo)"), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(State(s): St, Path(id): Path<String>) -> ApiResult<Json<DatasetInfo>> {
    blocking(move || {
        crate::server::jobs::dataset_info(&s, &id)
            .map_err(ApiError::internal)?
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found(format!("no data set `{id}` (GET /v1/datasets lists them)"))
            })
    })
    .await
}

/// Delete an uploaded data set (tasks made from it stay).
#[utoipa::path(delete, path = "/v1/datasets/{id}", security(("api_key" = ["admin"])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_dataset(State(s): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id2 = id.clone();
    match blocking(move || s.store.delete_dataset(&id2).map_err(ApiError::internal)).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no data set `{id}`"))),
    }
}

/// The JSON Schema of task specs (`task_spec` of a job; files for `--task-spec`).
#[utoipa::path(get, path = "/v1/schemas/task-spec", security(("api_key" = ["read"])),
    responses((status = 200, body = Object, description = "JSON Schema (draft 2020-12)")))]
pub async fn task_spec_schema() -> Json<serde_json::Value> {
    Json(crate::data::spec::schema())
}
