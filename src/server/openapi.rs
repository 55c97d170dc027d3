//! The OpenAPI document (utoipa), served at `/openapi.json` and committed at `openapi/openapi.json`, and a
//! human-readable docs page at `/docs`.

use super::{api, explore};
use axum::response::{Html, IntoResponse};
use utoipa::OpenApi;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "skillgraft", description = "One base model, many grafted tasks: localization jobs, calibrated prediction, task overlap and composition."),
    paths(
        api::health, api::ready, api::metrics, api::info,
        api::upload_checkpoint, api::get_checkpoint, api::delete_checkpoint,
        api::create_localization, api::list_localizations, api::get_localization, api::cancel_localization,
        api::localization_events,
        api::list_tasks, api::get_task, api::put_graft, api::get_graft, api::delete_task,
        api::predict, api::evaluate, api::overlap, api::compose,
        explore::session, explore::datasets, explore::task_placement, explore::task_calibration,
        explore::task_examples,
    ),
    components(schemas(
        api::Health, api::Info, api::CheckpointInfo, api::TaskSummary, api::PredictInput, api::PredictRequest,
        api::Prediction, api::PredictResponse, api::LabelledInput, api::EvaluateRequest, api::EvaluateResponse,
        api::CompositionRequest, api::CompositionResponse,
        super::jobs::LocalizationRequest, super::jobs::JobStatus, super::jobs::JobState,
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

/// The document as pretty JSON (what the committed file holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /openapi.json`.
pub async fn spec() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}

/// `GET /docs`: the API reference rendered by Redoc (loaded by the browser; nothing is downloaded at build
/// time).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html><head><title>skillgraft API</title><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body></html>"#,
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
}
