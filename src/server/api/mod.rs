//! Route handlers, one file per concept: service health ([`health`]), checkpoint uploads ([`checkpoints`]),
//! localization jobs ([`localizations`]), tasks and their graft files ([`tasks`]), prediction and evaluation
//! ([`predict`]), overlap and composition ([`compose`]). Each handler validates its input, does I/O,
//! tokenization and other long work off the async runtime, and returns JSON; errors go through
//! [`ApiError`](super::error::ApiError).

pub mod checkpoints;
pub mod compose;
pub mod datasets;
pub mod health;
pub mod localizations;
pub mod predict;
pub mod tasks;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::engine::ServedTask;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use std::sync::Arc;

type St = State<Arc<AppState>>;

/// A stored task (loaded on a miss); 404 when unknown, 409 when it is stored but cannot be served.
fn task(s: &AppState, name: &str) -> ApiResult<Arc<ServedTask>> {
    s.task(name)
}

/// Class names of a task (`LABEL_i` when the graft names none).
fn labels_of(t: &ServedTask) -> Vec<String> {
    match &t.graft.manifest.task {
        Some(spec) if spec.labels.len() == t.head().num_labels() => spec.labels.clone(),
        _ => (0..t.head().num_labels())
            .map(|i| format!("LABEL_{i}"))
            .collect(),
    }
}

/// The temperature `predict` applies by default: the one the graft's calibration decision applies (none
/// when it declined). Grafts made before decisions were recorded keep the temperature fitted on dev.
pub(crate) fn temperature_of(t: &ServedTask) -> Option<f64> {
    let m = &t.graft.manifest;
    if let Some(d) = m.calibration() {
        return (d.method.as_deref() == Some("temperature"))
            .then_some(d.temperature)
            .flatten();
    }
    m.variants()
        .iter()
        .find(|v| v.name.as_deref() == Some("graft"))?
        .temperature
}

/// Why the task's calibration is what it is (the recorded decision's reason).
pub(crate) fn calibration_reason(t: &ServedTask) -> String {
    match t.graft.manifest.calibration().and_then(|d| d.reason.as_deref()) {
        Some(r) => r.to_string(),
        None if temperature_of(t).is_some() => {
            "temperature fitted on dev, applied (a graft made before calibration decisions were recorded)"
                .into()
        }
        None => "no temperature stored with the graft".into(),
    }
}

/// 415 unless the request's `Content-Type` is one of `allowed`.
fn require_content_type(headers: &HeaderMap, allowed: &[&str]) -> ApiResult<()> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if allowed.contains(&given.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            super::error::ErrorKind::UnsupportedMediaType,
            format!(
                "Content-Type `{given}` is not accepted here; send {}",
                allowed.join(" or ")
            ),
        ))
    }
}

/// Runs blocking work on tokio's blocking pool; a panic in it is a 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// Whether a body error is a length limit's ([`http_body_util::Limited`], which `DefaultBodyLimit` and
/// `RequestBodyLimit` put around a body): told by the error's type, found along its source chain (axum wraps
/// it in one [`axum::Error`] or more), never by its message.
fn cut_by_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Streams a request body into `file`, refused with `too_large()` once it passes `max` bytes (also when the
/// server's own body limit cuts it); an interrupted upload is a 400. Returns the bytes written.
async fn body_to_file(
    body: axum::body::Body,
    file: &mut std::fs::File,
    max: usize,
    too_large: impl Fn() -> ApiError,
) -> ApiResult<usize> {
    use futures::StreamExt;
    use std::io::Write;
    let mut total = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if cut_by_length_limit(&e) {
                too_large()
            } else {
                ApiError::bad_request(format!("upload interrupted: {e}"))
            }
        })?;
        total += chunk.len();
        if total > max {
            return Err(too_large());
        }
        file.write_all(&chunk).map_err(ApiError::internal)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::error::ErrorKind;
    use axum::body::{Body, Bytes};

    async fn upload(body: Body, max: usize) -> ApiResult<usize> {
        let mut file = tempfile::tempfile().unwrap();
        body_to_file(body, &mut file, max, || ApiError::too_large("too large")).await
    }

    #[tokio::test]
    async fn a_body_cut_by_a_length_limit_is_413() {
        let limited = http_body_util::Limited::new(Body::from(vec![0u8; 100]), 10);
        let e = upload(Body::new(limited), 1000).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
        // Past `max` itself.
        let e = upload(Body::from(vec![0u8; 100]), 10).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
        assert_eq!(upload(Body::from(vec![0u8; 100]), 100).await.unwrap(), 100);
    }

    #[tokio::test]
    async fn an_interrupted_body_is_400_whatever_its_message_says() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other(
                "connection reset: proxy length limit hit",
            )),
        ];
        let e = upload(Body::from_stream(futures::stream::iter(chunks)), 1000)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
        assert!(e.message.starts_with("upload interrupted"), "{}", e.message);
    }
}
