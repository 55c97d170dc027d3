//! The OpenAPI document (utoipa), served at `/openapi.json` and committed at `openapi/openapi.json`, and the
//! docs page at `/docs`, rendered by a pinned Redoc bundle compiled into the binary (no CDN).
//!
//! Handlers declare their own parameters, bodies, specific responses and access level (`security`); the
//! responses every operation of a kind can give (401/403 by access level, 400/413/415/422 for operations
//! with a body, 408 and 500 for all) are added here in one pass, so the document lists every status the
//! server can answer.

use super::{api, explore};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::{json, Value};
use std::sync::LazyLock;
use utoipa::OpenApi;

/// The API description, as utoipa derives it from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "skillgraft", description = "One base model, many grafted tasks: localization jobs, calibrated prediction, task overlap and composition. Send keys as `Authorization: Bearer <key>`; operations with scope `read` take any key, those with scope `admin` an admin key."),
    paths(
        api::health::health, api::health::ready, api::health::metrics, api::health::info,
        api::checkpoints::upload_checkpoint, api::checkpoints::list_checkpoints, api::checkpoints::get_checkpoint,
        api::checkpoints::delete_checkpoint,
        api::datasets::upload_dataset, api::datasets::get_dataset, api::datasets::delete_dataset,
        api::datasets::task_spec_schema,
        api::localizations::create_localization, api::localizations::list_localizations,
        api::localizations::get_localization, api::localizations::cancel_localization,
        api::localizations::localization_events,
        api::tasks::list_tasks, api::tasks::get_task, api::tasks::put_graft, api::tasks::get_graft,
        api::tasks::delete_task,
        api::predict::predict, api::predict::evaluate, api::compose::overlap, api::compose::compose,
        spec, docs, docs_bundle,
        explore::session, explore::datasets, explore::task_placement, explore::task_calibration,
        explore::task_examples,
    ),
    components(schemas(
        api::health::Health, api::health::Readiness, api::health::Info, api::checkpoints::CheckpointInfo,
        api::tasks::TaskSummary, api::tasks::TaskState, api::tasks::TaskRetention, api::predict::PredictInput, api::predict::PredictRequest,
        api::predict::Prediction, api::predict::PredictResponse, api::predict::LabelledInput, api::predict::Label,
        api::predict::EvaluateRequest, api::predict::EvaluateResponse,
        api::compose::CompositionRequest, api::compose::CompositionResponse, api::compose::MemberReport,
        api::compose::Rule, super::jobs::LocalizationRequest, super::jobs::JobStatus, super::jobs::JobState,
        super::jobs::HeadRequest, super::jobs::BudgetRequest,
        super::jobs::MethodName, super::jobs::InlineExample,
        super::error::ErrorBody, super::error::ErrorDetail,
        explore::Session, explore::Dataset, explore::TaskPlacement, explore::Bin, explore::Curve,
        explore::VariantCalibration, explore::TaskCalibration, explore::LabelledExample, explore::TaskExamples,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Rule for task, checkpoint and job names in path parameters (as `crate::store::service::valid_name`).
const NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";

fn error_response(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

/// The document every route serves and the server enforces, with the shared responses added.
pub fn document_value() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        complete(&mut doc);
        doc
    });
    &DOC
}

fn complete(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for ops in paths.values_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            complete_operation(op);
        }
    }
}

fn complete_operation(op: &mut Value) {
    let scopes: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["api_key"].as_array())
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let has_body = op.get("requestBody").is_some();
    let mut add: Vec<(&str, &str)> = vec![
        ("408", "The request took longer than the server's timeout."),
        (
            "500",
            "Internal error: a generic message with the request id; the detail is in the server log.",
        ),
    ];
    if !scopes.is_empty() {
        add.push(("401", "Missing or unknown API key."));
        add.push((
            "403",
            "The key may not do this (an admin key is needed, or /metrics is set to admin).",
        ));
    }
    if has_body {
        add.push(("400", "Malformed request (bad JSON, bad parameter)."));
        add.push(("413", "Body or request larger than the server's limits."));
        add.push(("415", "Wrong `Content-Type`."));
        add.push((
            "422",
            "Well-formed but invalid content (fields of the wrong type, a corrupt or foreign file).",
        ));
    }
    if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
        for (code, description) in add {
            responses
                .entry(code)
                .or_insert_with(|| error_response(description));
        }
    }
    // Binary bodies are byte strings, not arrays of integers.
    for media in ["application/octet-stream", "application/x-tar"] {
        if let Some(c) = op.pointer_mut(&format!("/requestBody/content/{}", escape(media))) {
            c["schema"] = json!({"type": "string", "format": "binary"});
        }
        if let Some(rs) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
            for r in rs.values_mut() {
                if let Some(c) = r.pointer_mut(&format!("/content/{}", escape(media))) {
                    c["schema"] = json!({"type": "string", "format": "binary"});
                }
            }
        }
    }
    if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
        for p in params {
            if p["in"] == "path" && matches!(p["name"].as_str(), Some("name" | "id")) {
                p["schema"] = json!({"type": "string", "pattern": NAME_PATTERN});
            }
        }
    }
}

fn escape(media: &str) -> String {
    media.replace('~', "~0").replace('/', "~1")
}

/// The document as pretty JSON (what the committed file holds).
pub fn document() -> String {
    serde_json::to_string_pretty(document_value()).unwrap_or_default()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, body = Object, description = "The OpenAPI document")))]
pub async fn spec() -> impl IntoResponse {
    static TEXT: LazyLock<String> = LazyLock::new(document);
    ([(header::CONTENT_TYPE, "application/json")], TEXT.as_str())
}

/// Redoc 2.5.2's standalone bundle (see `assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("assets/redoc/redoc.standalone.js");

fn subresource_integrity() -> &'static str {
    static SRI: LazyLock<String> = LazyLock::new(|| {
        use sha2::Digest;
        let d = sha2::Sha384::digest(REDOC_JS);
        use base64::Engine;
        format!(
            "sha384-{}",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
    });
    &SRI
}

/// The API reference, rendered by the bundled Redoc.
#[utoipa::path(get, path = "/docs", responses((status = 200, body = String, content_type = "text/html")))]
pub async fn docs() -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html><head><title>skillgraft API</title><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="/docs/redoc.standalone.js" integrity="{}"></script>
</body></html>"#,
        subresource_integrity()
    ))
}

/// The bundled Redoc script the docs page loads.
#[utoipa::path(get, path = "/docs/redoc.standalone.js", responses((status = 200, body = String, content_type = "text/javascript")))]
pub async fn docs_bundle() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let doc = super::document();
        if std::env::var("SKILLGRAFT_WRITE_OPENAPI").as_deref() == Ok("1") {
            std::fs::write(path, &doc).expect("write openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == doc,
            "openapi/openapi.json is stale: regenerate it with SKILLGRAFT_WRITE_OPENAPI=1 cargo test --release --lib openapi"
        );
    }

    #[test]
    fn the_bundled_redoc_is_the_pinned_one() {
        use sha2::Digest;
        let hex = hex::encode(sha2::Sha256::digest(super::REDOC_JS));
        let readme = include_str!("assets/redoc/README.md");
        assert!(
            readme.contains(&hex),
            "assets/redoc/README.md does not record the bundle's hash {hex}"
        );
    }
}
