//! The web explorer at `/ui` (and `/` redirecting there): a small single-page app whose every asset is
//! compiled into the binary, so it works air-gapped. It talks to the public API only, with the API key the
//! user types (kept in the browser session), and draws its charts as plain SVG in the browser.
//!
//! Responses carry a Content-Security-Policy that allows nothing but this origin, so the page cannot load or
//! send anything elsewhere even by mistake.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_str!(concat!("assets/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("tar.js", JS),
    asset!("tasks.js", JS),
    asset!("overlap.js", JS),
    asset!("jobs.js", JS),
    asset!("compose.js", JS),
];

/// The policy every explorer response carries: this origin only, no inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                format!(
                    "\"{}\"",
                    &hex::encode(Sha256::digest(a.body.as_bytes()))[..20]
                )
            })
            .collect()
    })
}

/// The explorer's route templates. They serve only the embedded, data-free assets, so they are public
/// whatever keys are configured (the app then calls the API with the user's key).
pub const PUBLIC_ROUTES: &[&str] = &["/", "/ui", "/ui/", "/ui/{file}"];

/// The explorer's routes: `/` → `/ui/`, the page at `/ui` and `/ui/`, its files at `/ui/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(&file, &h) }),
        )
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return super::error::ApiError::not_found(format!("no explorer file `{path}`"))
            .into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_no_other_origin() {
        for a in ASSETS {
            let outside: Vec<&str> = a
                .body
                .match_indices("http")
                .map(|(i, _)| &a.body[i..(i + 40).min(a.body.len())])
                .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                .filter(|s| !s.starts_with("http://www.w3.org/"))
                .collect();
            assert!(
                outside.is_empty(),
                "{} names another origin: {outside:?}",
                a.path
            );
            assert!(!a.body.contains("//cdn"), "{} loads from a CDN", a.path);
        }
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let mut missing = Vec::new();
        for a in ASSETS {
            const IMPORT: &str = "from './";
            for (i, _) in a.body.match_indices(IMPORT) {
                let rest = &a.body[i + IMPORT.len()..];
                let name = rest.split('\'').next().unwrap_or("");
                if !ASSETS.iter().any(|b| b.path == name) {
                    missing.push(format!("{} imports {name}", a.path));
                }
            }
        }
        let index = ASSETS[0].body;
        for (i, _) in index.match_indices("/ui/") {
            let name = index[i + 4..].split('"').next().unwrap_or("");
            if !name.is_empty() && !ASSETS.iter().any(|b| b.path == name) {
                missing.push(format!("index.html links {name}"));
            }
        }
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn etags_differ_per_file_and_revalidation_answers_304() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&tags[1]).unwrap(),
        );
        assert_eq!(serve("style.css", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("app.js", &h).status(), StatusCode::OK);
        assert_eq!(serve("nope.js", &h).status(), StatusCode::NOT_FOUND);
        let r = serve("index.html", &HeaderMap::new());
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
    }
}
