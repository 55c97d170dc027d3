//! Fine-tuned checkpoints uploaded as tar archives: streamed to a scratch directory (removed whatever
//! happens, also when the request times out or the client leaves), unpacked and checked against the base off
//! the async runtime ([`crate::server::archive`]), and stored by content hash.

use super::{blocking, require_content_type, St};
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use std::io::Write;
use utoipa::ToSchema;

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

/// Content types an upload may have.
const ARCHIVE_TYPES: &[&str] = &["application/x-tar", "application/octet-stream"];

/// Upload a fine-tuned checkpoint as a tar archive (config.json + model.safetensors [+ head and tokenizer
/// files]; other files are ignored); streamed to disk, validated against the base, stored by content hash.
#[utoipa::path(post, path = "/v1/checkpoints", security(("api_key" = ["admin"])),
    request_body(content = String, description = "A tar archive of the checkpoint directory", content_type = "application/octet-stream"),
    responses((status = 201, body = CheckpointInfo)))]
pub async fn upload_checkpoint(
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<CheckpointInfo>)> {
    require_content_type(&headers, ARCHIVE_TYPES)?;
    // Removed when dropped: on success, on error, and when the request is cancelled mid-way.
    let scratch = tempfile::Builder::new()
        .prefix("upload-")
        .tempdir_in(s.store.scratch_dir())
        .map_err(ApiError::internal)?;
    let archive = scratch.path().join("upload.tar");
    let mut file = std::fs::File::create(&archive).map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    let too_large = || {
        ApiError::too_large(format!(
            "upload larger than {} bytes",
            s.config.max_upload_bytes
        ))
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if format!("{e}").contains("length limit") {
                too_large()
            } else {
                ApiError::bad_request(format!("upload interrupted: {e}"))
            }
        })?;
        total += chunk.len();
        if total > s.config.max_upload_bytes {
            return Err(too_large());
        }
        file.write_all(&chunk).map_err(ApiError::internal)?;
    }
    drop(file);
    let st = s.clone();
    // The blocking part owns the scratch directory, so it is removed when that part ends.
    let info = blocking(move || {
        let unpacked = scratch.path().join("ckpt");
        std::fs::create_dir_all(&unpacked).map_err(ApiError::internal)?;
        let reader = std::fs::File::open(&archive).map_err(ApiError::internal)?;
        let (ft, files) = crate::server::archive::unpack_and_check(
            std::io::BufReader::new(reader),
            &unpacked,
            &st.base,
            st.config.max_archive_entries,
        )
        .map_err(|e| {
            let msg = format!("{e:#}");
            let msg = crate::server::error::redact_paths(&msg, &[(unpacked.as_path(), "<upload>")]);
            ApiError::invalid(st.redact(&msg))
        })?;
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
        drop(scratch);
        Ok(CheckpointInfo {
            id,
            head: ft.head.kind().into(),
            files,
            bytes,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
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
    })
    .await
}

/// Delete an uploaded checkpoint.
#[utoipa::path(delete, path = "/v1/checkpoints/{id}", security(("api_key" = ["admin"])), params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_checkpoint(State(s): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let store = s.store.clone();
    let id2 = id.clone();
    match blocking(move || store.delete_checkpoint(&id2).map_err(ApiError::internal)).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no checkpoint `{id}`"))),
    }
}
