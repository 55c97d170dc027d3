//! The one place where errors become HTTP status codes and JSON bodies `{"error": {"code", "message"}}`.
//!
//! Every response leaves through [`finish`], the outermost middleware: it gives each request an id
//! (`x-request-id`), turns any error that is not already our JSON (axum's rejections, the timeout layer's 408,
//! a caught panic) into our JSON, and replaces the body of every 5xx with a generic message naming the request
//! id; the detail is logged with that id, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Error kinds the API reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed request (bad JSON, bad parameter).
    BadRequest,
    /// 401: missing or invalid API key.
    Unauthorized,
    /// 403: the key may not do this.
    Forbidden,
    /// 404: unknown task, checkpoint or job.
    NotFound,
    /// 408: the request took longer than the server's timeout.
    Timeout,
    /// 409: conflicts with the current state.
    Conflict,
    /// 413: body or request too large.
    TooLarge,
    /// 415: wrong content type.
    UnsupportedMediaType,
    /// 422: well-formed but invalid content (wrong architecture, corrupt file).
    Invalid,
    /// 429: overloaded; retry later.
    Overloaded,
    /// 503: not ready, or shutting down.
    Unavailable,
    /// 500: a bug or an I/O failure.
    Internal,
}

impl ErrorKind {
    fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn of_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
            StatusCode::FORBIDDEN => ErrorKind::Forbidden,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::REQUEST_TIMEOUT => ErrorKind::Timeout,
            StatusCode::CONFLICT => ErrorKind::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::Invalid,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::Overloaded,
            StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
            s if s.is_server_error() => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        }
    }

    fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Invalid => "invalid_content",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An API error: a kind and a message that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    /// Kind (decides the status code).
    pub kind: ErrorKind,
    /// Human message (for a 500 it is logged, and the client sees a generic one).
    pub message: String,
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`bad_request`, `not_found`, `invalid_content`, `overloaded`, …).
    pub code: String,
    /// What went wrong and what to fix.
    pub message: String,
    /// The request's id (also in the `x-request-id` header); the server log has the details under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The detail of a 500, carried from the handler to [`finish`] (which logs it) in a response extension.
#[derive(Clone)]
struct InternalDetail(String);

impl ApiError {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, m)
    }

    /// 404.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }

    /// 409.
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }

    /// 413.
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, m)
    }

    /// 422.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }

    /// 500: the detail is logged under the request id; the client sees a generic message.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Internal, format!("{e:#}"))
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Overloaded(_) => {
                ApiError::new(ErrorKind::Overloaded, e.to_string())
            }
            crate::engine::EngineError::Stopped => {
                ApiError::new(ErrorKind::Unavailable, e.to_string())
            }
            crate::engine::EngineError::Task(m) => ApiError::invalid(m),
            crate::engine::EngineError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl From<crate::server::jobs::ResolveError> for ApiError {
    fn from(e: crate::server::jobs::ResolveError) -> Self {
        use crate::server::jobs::ResolveError;
        match e {
            ResolveError::NoCheckpoint(_) | ResolveError::NoDataset(_) => {
                ApiError::not_found(e.to_string())
            }
            ResolveError::Invalid(e) => ApiError::invalid(format!("{e:#}")),
            ResolveError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::store::service::CheckpointDeleteError> for ApiError {
    fn from(e: crate::store::service::CheckpointDeleteError) -> Self {
        use crate::store::service::CheckpointDeleteError;
        match e {
            CheckpointDeleteError::Missing(_) => ApiError::not_found(e.to_string()),
            CheckpointDeleteError::NotHeld(_) => ApiError::conflict(e.to_string()),
            CheckpointDeleteError::Store(e) => ApiError::internal(e),
        }
    }
}

fn body_of(kind: ErrorKind, message: String, request_id: Option<String>) -> axum::Json<ErrorBody> {
    axum::Json(ErrorBody {
        error: ErrorDetail {
            code: kind.code().to_string(),
            message,
            request_id,
        },
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal {
            let mut resp = (
                self.kind.status(),
                body_of(self.kind, "internal error".into(), None),
            )
                .into_response();
            resp.extensions_mut().insert(InternalDetail(self.message));
            return resp;
        }
        let mut resp = (self.kind.status(), body_of(self.kind, self.message, None)).into_response();
        if self.kind == ErrorKind::Overloaded {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// A request's id, in the request's extensions for handlers that want to log it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware (outermost): request id, JSON for every error, generic 5xx bodies with the detail logged.
pub async fn finish(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = format!("{:016x}", rand::random::<u64>());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let status = resp.status();
    let id_header = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"));
    if !(status.is_client_error() || status.is_server_error()) {
        resp.headers_mut().insert("x-request-id", id_header);
        return resp;
    }
    let kind = ErrorKind::of_status(status);
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut out = if status.is_server_error() {
        let detail = match resp.extensions().get::<InternalDetail>() {
            Some(d) => d.0.clone(),
            None => body_text(resp).await,
        };
        tracing::error!(request_id = %id, %method, path = %path, status = status.as_u16(), "{detail}");
        let message = format!(
            "{}; the server log has the details under request id {id}",
            status.canonical_reason().unwrap_or("server error")
        );
        (status, body_of(kind, message, Some(id))).into_response()
    } else if is_json {
        resp
    } else {
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let text = body_text(resp).await;
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        };
        let mut r = (status, body_of(kind, message, None)).into_response();
        if let Some(v) = retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    out.headers_mut().insert("x-request-id", id_header);
    out
}

async fn body_text(resp: Response) -> String {
    axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default()
}
