//! Fine-tuned checkpoints uploaded as tar archives: streamed to a scratch directory (removed whatever
//! happens, also when the request times out or the client leaves), unpacked and checked against the base off
//! the async runtime ([`crate::server::archive`]), and stored by content hash. Identical uploads share one
//! checkpoint; the store records which keys uploaded it (once per key), a delete releases it for the caller's
//! key only, and it is removed when its last uploader deletes it.

use super::{blocking, body_to_file, require_content_type, St};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use crate::server::jobs::HeadRequest;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa::ToSchema;

/// An uploaded, validated checkpoint.
#[derive(Serialize, ToSchema)]
pub struct CheckpointInfo {
    /// Id (content hash prefix).
    pub id: String,
    /// Its head: a kind (`bert_classifier`, `prototype`, …), or `none` when it must be given with a job.
    pub head: String,
    /// Class names from its `config.json` (`id2label`), when they are real names.
    pub labels: Option<Vec<String>>,
    /// Files kept.
    pub files: Vec<String>,
    /// Total bytes.
    pub bytes: u64,
}

/// `?head=…` of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The checkpoint's head when it does not carry one: a kind (`prototype`; its descriptions then come
    /// with the job), or a JSON head `{"kind": "prototype", "labels": [..], "descriptions": [..],
    /// "temperature": 0.05}` (stored with the checkpoint).
    #[serde(default)]
    pub head: Option<String>,
}

/// Content types an upload may have.
const ARCHIVE_TYPES: &[&str] = &[
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/octet-stream",
];

/// Upload a fine-tuned checkpoint as a tar, tar.gz or zip archive (config.json + model.safetensors [+ head
/// and tokenizer files]; other files are ignored); streamed to disk, validated against the base (and its
/// `id2label` against its classifier), stored by content hash. A checkpoint whose head cannot be told from
/// its files (a body fine-tuned behind a prototype head) needs `?head=`. Uploading a checkpoint already
/// stored shares it (the same id); each key that uploaded it holds it once.
#[utoipa::path(post, path = "/v1/checkpoints", security(("api_key" = ["admin"])), params(UploadQuery),
    request_body(content = String, description = "A tar, tar.gz or zip archive of the checkpoint directory", content_type = "application/octet-stream"),
    responses((status = 201, body = CheckpointInfo), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload_checkpoint(
    State(s): St,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<CheckpointInfo>)> {
    require_content_type(&headers, ARCHIVE_TYPES)?;
    let head_request: Option<HeadRequest> = match q.head.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(j) if j.starts_with('{') => Some(serde_json::from_str(j).map_err(|e| {
            ApiError::bad_request(format!("`head`: not a valid head ({e}); e.g. {{\"kind\": \"prototype\", \"descriptions\": [\"It was bad.\", \"It was good.\"]}}"))
        })?),
        Some(kind) => Some(HeadRequest {
            kind: serde_json::from_value(serde_json::Value::String(kind.to_string())).map_err(|_| {
                ApiError::bad_request(format!("`head`: unknown head kind `{kind}` (prototype, bert_classifier, roberta_classifier, linear, prompt)"))
            })?,
            labels: None,
            descriptions: None,
            temperature: None,
        }),
    };
    // Removed when dropped: on success, on error, and when the request is cancelled mid-way.
    let scratch = tempfile::Builder::new()
        .prefix("upload-")
        .tempdir_in(s.store.scratch_dir())
        .map_err(ApiError::internal)?;
    let archive = scratch.path().join("upload.archive");
    let mut file = std::fs::File::create(&archive).map_err(ApiError::internal)?;
    let max = s.config.max_upload_bytes;
    let too_large = || ApiError::too_large(format!("upload larger than {max} bytes"));
    body_to_file(body, &mut file, max, too_large).await?;
    drop(file);
    let st = s.clone();
    // The blocking part owns the scratch directory, so it is removed when that part ends.
    let info = blocking(move || {
        let unpacked = scratch.path().join("ckpt");
        std::fs::create_dir_all(&unpacked).map_err(ApiError::internal)?;
        let redact = |e: anyhow::Error| {
            let msg = format!("{e:#}");
            let msg =
                crate::server::redact::redact_paths(&msg, &[(unpacked.as_path(), "<upload>")]);
            ApiError::invalid(st.redact(&msg))
        };
        let files =
            crate::server::archive::unpack_file(&archive, &unpacked, st.config.max_archive_entries)
                .map_err(redact)?;
        // With a complete head (labels and, for a prototype head, descriptions) the checkpoint is loaded
        // with it and the head is stored beside it; with a kind alone only the body is checked here.
        let complete = head_request.as_ref().and_then(|h| {
            let labels = h.labels.clone()?;
            let mut task = crate::data::TaskSpec::with_labels("checkpoint", labels);
            task.label_descriptions = h.descriptions.clone().unwrap_or_default();
            Some((h, task))
        });
        // Checked on the host CPU against the base's description (its weights stay with the engine).
        let (ft_id, head, labels) = match (&head_request, complete) {
            (_, Some((h, task))) => {
                let spec = h
                    .spec(&st.base, &task)
                    .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
                let facts = crate::model::checkpoint::inspect(
                    &unpacked,
                    &st.base,
                    Some(&task),
                    Some(&spec),
                )
                .map_err(redact)?;
                let manifest = crate::model::export::HeadManifest {
                    head: spec.clone(),
                    task: None,
                };
                std::fs::write(
                    unpacked.join(crate::model::export::HEAD_MANIFEST),
                    serde_json::to_vec_pretty(&manifest).map_err(ApiError::internal)?,
                )
                .map_err(ApiError::internal)?;
                (facts.content_hash, spec.kind().to_string(), facts.labels)
            }
            (Some(h), None) => {
                let (hash, labels) =
                    crate::model::checkpoint::inspect_body(&unpacked, &st.base).map_err(redact)?;
                (
                    hash,
                    format!("{} (given with each job)", h.kind_name()),
                    labels,
                )
            }
            (None, None) => {
                let facts = crate::model::checkpoint::inspect(&unpacked, &st.base, None, None)
                    .map_err(redact)?;
                (
                    facts.content_hash,
                    facts.head.kind().to_string(),
                    facts.labels,
                )
            }
        };
        let mut files = files;
        if unpacked.join(crate::model::export::HEAD_MANIFEST).is_file()
            && !files
                .iter()
                .any(|f| f == crate::model::export::HEAD_MANIFEST)
        {
            files.push(crate::model::export::HEAD_MANIFEST.to_string());
            files.sort();
        }
        let id = format!("ckpt-{}", &ft_id[..16]);
        let bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(unpacked.join(f)).ok())
            .map(|m| m.len())
            .sum();
        st.store
            .put_checkpoint(&id, &caller.uploader(), &|d| {
                for f in &files {
                    std::fs::copy(unpacked.join(f), d.join(f))?;
                }
                Ok(())
            })
            .map_err(ApiError::internal)?;
        drop(scratch);
        Ok(CheckpointInfo {
            id,
            head,
            labels,
            files,
            bytes,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// What a stored checkpoint directory holds.
fn describe(dir: &std::path::Path, id: String) -> ApiResult<CheckpointInfo> {
    let mut files = Vec::new();
    let mut bytes = 0;
    for e in std::fs::read_dir(dir)
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
    let labels = crate::model::config::ModelConfig::from_file(&dir.join("config.json"))
        .ok()
        .and_then(|c| crate::model::checkpoint::config_labels(&c))
        .filter(|l| {
            !l.iter()
                .enumerate()
                .all(|(i, n)| n == &format!("LABEL_{i}"))
        });
    Ok(CheckpointInfo {
        id,
        head,
        labels,
        files,
        bytes,
    })
}

/// Describe an uploaded checkpoint.
#[utoipa::path(get, path = "/v1/checkpoints/{id}", security(("api_key" = ["read"])), params(("id" = String, Path)),
    responses((status = 200, body = CheckpointInfo), (status = 404, body = ErrorBody)))]
pub async fn get_checkpoint(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckpointInfo>> {
    if !crate::store::service::valid_name(&id) {
        return Err(ApiError::not_found(format!("no checkpoint `{id}`")));
    }
    let store = s.store.clone();
    blocking(move || {
        // From object storage, the checkpoint is fetched into this replica's cache first.
        let dir = store
            .checkpoint_dir(&id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no checkpoint `{id}`")))?;
        describe(&dir, id).map(Json)
    })
    .await
}

/// All uploaded checkpoints.
#[utoipa::path(get, path = "/v1/checkpoints", security(("api_key" = ["read"])),
    responses((status = 200, body = Vec<CheckpointInfo>)))]
pub async fn list_checkpoints(State(s): St) -> ApiResult<Json<Vec<CheckpointInfo>>> {
    blocking(move || {
        let ids = s.store.list_checkpoints().map_err(ApiError::internal)?;
        let mut out = Vec::new();
        for id in ids {
            // A checkpoint deleted since the listing is left out.
            if let Some(dir) = s.store.checkpoint_dir(&id).map_err(ApiError::internal)? {
                out.push(describe(&dir, id)?);
            }
        }
        Ok(Json(out))
    })
    .await
}

/// Delete an uploaded checkpoint for the calling key: it is removed when that key was the last to upload it,
/// and stays for the other keys that uploaded it otherwise (409 for a key that never uploaded it).
#[utoipa::path(delete, path = "/v1/checkpoints/{id}", security(("api_key" = ["admin"])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted for this key (removed when it was the last to hold it)"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Uploaded with other keys only; it stays until they delete it")))]
pub async fn delete_checkpoint(
    State(s): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let store = s.store.clone();
    blocking(move || Ok(store.delete_checkpoint(&id, &caller.uploader())?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
