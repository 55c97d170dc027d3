//! The one place where errors become HTTP status codes and JSON bodies `{"error": {"code", "message"}}`.

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
    /// 409: conflicts with the current state.
    Conflict,
    /// 413: body too large.
    TooLarge,
    /// 422: well-formed but invalid content (wrong architecture, corrupt file).
    Invalid,
    /// 429: overloaded; retry later.
    Overloaded,
    /// 503: not ready.
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
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "payload_too_large",
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
    /// Human message.
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
}

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

    /// 422.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }

    /// 500 (logged).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(ErrorKind::Internal, format!("internal error: {e}"))
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind.code().to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.kind.status(), axum::Json(body)).into_response();
        if self.kind == ErrorKind::Overloaded {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// Middleware: any error response that is not already our JSON (axum's own rejections of malformed JSON,
/// bad paths or queries, oversized bodies, wrong methods) is rewritten as `{"error": {code, message}}`.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let kind = match parts.status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::Invalid,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::Overloaded,
        StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
        s if s.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    let message = if text.trim().is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        text
    };
    let mut out = ApiError::new(kind, message).into_response();
    *out.status_mut() = parts.status;
    out
}
