//! Authorization, decided from the route that matched and the method, never from the path text.
//!
//! Who may call what is written once, in the OpenAPI document: an operation without `security` is public,
//! one with `api_key: [read]` needs any key, one with `api_key: [admin]` needs an admin key. [`AccessTable`]
//! is built from that document, so the served contract and the enforced one cannot drift apart; an
//! operation the document does not know (a method not allowed on a route) needs an admin key. Keys are
//! compared as SHA-256 digests with `subtle`'s constant-time equality, so neither a key's content nor its
//! length shows in the time a comparison takes. A key comes as `Authorization: Bearer <key>`, the scheme in any
//! case (RFC 9110 §11.1); a request with more than one `Authorization` header is refused with a 400 while keys
//! are configured, rather than have one of them win.

use super::error::{ApiError, ErrorKind};
use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a caller needs for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone.
    Public,
    /// Any key (reader or admin).
    Read,
    /// An admin key.
    Admin,
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "public" => Ok(Access::Public),
            "read" | "reader" => Ok(Access::Read),
            "admin" => Ok(Access::Admin),
            other => Err(format!("`{other}`: expected public, read or admin")),
        }
    }
}

/// The scope names the OpenAPI document uses.
pub const READ_SCOPE: &str = "read";
/// See [`READ_SCOPE`].
pub const ADMIN_SCOPE: &str = "admin";

/// (route template, method) → access, from the OpenAPI document.
#[derive(Debug, Clone)]
pub struct AccessTable {
    routes: HashMap<(String, Method), Access>,
}

impl AccessTable {
    /// Reads every operation's security requirement from `doc`.
    pub fn from_document(doc: &serde_json::Value) -> Self {
        let mut routes = HashMap::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, ops) in paths {
                let Some(ops) = ops.as_object() else { continue };
                for (method, op) in ops {
                    let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                        continue;
                    };
                    routes.insert((path.clone(), m), access_of(op));
                }
            }
        }
        Self { routes }
    }

    /// Makes GET (and HEAD) on these route templates public: routes outside the API document that serve
    /// only embedded, data-free files (the web explorer's).
    pub fn with_public_pages(mut self, templates: &[&str]) -> Self {
        for t in templates {
            self.routes
                .insert((t.to_string(), Method::GET), Access::Public);
        }
        self
    }

    /// What `method` on the route template `path` needs; unknown operations need an admin key.
    pub fn get(&self, path: &str, method: &Method) -> Access {
        let m = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.routes
            .get(&(path.to_string(), m.clone()))
            .copied()
            .unwrap_or(Access::Admin)
    }
}

fn access_of(op: &serde_json::Value) -> Access {
    let Some(reqs) = op["security"].as_array() else {
        return Access::Public;
    };
    let mut need = Access::Public;
    for r in reqs {
        for scopes in r.as_object().into_iter().flat_map(|o| o.values()) {
            let scopes: Vec<&str> = scopes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            let a = if scopes.contains(&ADMIN_SCOPE) {
                Access::Admin
            } else {
                Access::Read
            };
            need = need.max(a);
        }
    }
    need
}

/// The configured keys, kept as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    readers: Vec<[u8; 32]>,
    admins: Vec<[u8; 32]>,
}

/// Who is calling, as handlers see it (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Whether the caller may change state and see everything (true when no keys are configured).
    pub admin: bool,
    /// The configured key the caller presented; None when it presented none or no keys are configured.
    pub key: Option<KeyId>,
}

impl Caller {
    /// Who holds what this caller uploads (a checkpoint): `key-<id>` per key, `open` when the service has no
    /// keys (every caller is then the same one).
    pub fn uploader(&self) -> String {
        match self.key {
            Some(k) => format!("key-{}", k.hex()),
            None => "open".into(),
        }
    }
}

/// A stable id of an API key that reveals nothing usable about it: the first 8 bytes of a SHA-256 of the key
/// under a domain prefix (unlike the digests [`Keys`] compares, which are never written anywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(key: &str) -> Self {
        let d = Sha256::digest(format!("skillgraft key id\0{key}").as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        Self(id)
    }

    /// 16 hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    /// Reader and admin keys.
    pub fn new(readers: &[String], admins: &[String]) -> Self {
        Self {
            readers: readers.iter().map(|k| digest(k)).collect(),
            admins: admins.iter().map(|k| digest(k)).collect(),
        }
    }

    /// Whether any key is configured (otherwise the service is open).
    pub fn enabled(&self) -> bool {
        !(self.readers.is_empty() && self.admins.is_empty())
    }

    /// `Some(admin?)` when `given` is a configured key. Every configured key is compared, whatever matches.
    pub fn check(&self, given: &str) -> Option<bool> {
        let d = digest(given);
        let any = |keys: &[[u8; 32]]| {
            keys.iter()
                .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d))
        };
        let admin: bool = any(&self.admins).into();
        let reader: bool = any(&self.readers).into();
        (admin || reader).then_some(admin)
    }
}

/// The key a request presents: `Ok(None)` without a `Bearer` credential (no `Authorization` header, another
/// scheme, a value that is not text), a 400 when the request carries more than one `Authorization` header,
/// since which of them counts would be a guess.
fn key_of(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            "more than one `Authorization` header: send exactly one, `Authorization: Bearer <key>`",
        ));
    }
    Ok(value.to_str().ok().and_then(bearer_token))
}

/// The token of a `Bearer` credential. The scheme is matched in any case (RFC 9110 §11.1: `bearer`, `BEARER`);
/// the token is everything after the one space that follows it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Middleware: refuses callers without the access the matched operation needs; records a [`Caller`].
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let keys = &state.keys;
    if !keys.enabled() {
        req.extensions_mut().insert(Caller {
            admin: true,
            key: None,
        });
        return next.run(req).await;
    }
    let need = match req.extensions().get::<MatchedPath>() {
        Some(p) if p.as_str() == "/metrics" => state.config.metrics_access,
        Some(p) => state.access.get(p.as_str(), req.method()),
        None => Access::Public,
    };
    let key = match key_of(req.headers()) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let admin = match key.map(|k| keys.check(k)) {
        Some(Some(admin)) => Some(admin),
        Some(None) if need > Access::Public => {
            return ApiError::new(ErrorKind::Unauthorized, "invalid API key").into_response()
        }
        None if need > Access::Public => {
            return ApiError::new(
                ErrorKind::Unauthorized,
                "missing `Authorization: Bearer <key>` header",
            )
            .into_response()
        }
        _ => None,
    };
    if need == Access::Admin && admin != Some(true) {
        return ApiError::new(
            ErrorKind::Forbidden,
            "this operation changes state and needs an admin key",
        )
        .into_response();
    }
    let caller = Caller {
        admin: admin == Some(true),
        key: admin.and(key).map(KeyId::of),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_lengths_never_match() {
        let k = Keys::new(&["a".repeat(256)], &["b".into()]);
        assert_eq!(k.check(&"a".repeat(256)), Some(false));
        assert_eq!(k.check("b"), Some(true));
        assert_eq!(k.check(""), None);
        assert_eq!(k.check(&"a".repeat(512)), None);
        assert_eq!(k.check(&"a".repeat(255)), None);
        assert_eq!(k.check("bb"), None);
        // The old comparison took a length difference of 256 for equality when the rest was NUL bytes.
        assert_eq!(k.check(&format!("b{}", "\0".repeat(256))), None);
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for v in ["Bearer k", "bearer k", "BEARER k", "bEaReR k"] {
            assert_eq!(key_of(&headers(&[v])).unwrap(), Some("k"), "{v}");
        }
        // Everything after the one space is the token, as before.
        assert_eq!(key_of(&headers(&["bearer  k"])).unwrap(), Some(" k"));
        assert_eq!(key_of(&headers(&["Bearer "])).unwrap(), Some(""));
        for v in ["Basic k", "Bearerk", "Bearer", "Token k", "bearer\tk"] {
            assert_eq!(key_of(&headers(&[v])).unwrap(), None, "{v}");
        }
        assert_eq!(key_of(&headers(&[])).unwrap(), None);
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        for pair in [
            ["Bearer a", "Bearer b"],
            ["Bearer a", "Bearer a"],
            ["Basic x", "Bearer a"],
        ] {
            let e = key_of(&headers(&pair)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{pair:?}");
            assert!(
                e.message.contains("more than one `Authorization` header"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn every_route_of_the_document_has_an_access_level() {
        let t = AccessTable::from_document(super::super::openapi::document_value());
        assert_eq!(t.get("/health", &Method::GET), Access::Public);
        assert_eq!(t.get("/v1/tasks", &Method::GET), Access::Read);
        assert_eq!(t.get("/v1/tasks/{name}", &Method::DELETE), Access::Admin);
        assert_eq!(
            t.get("/v1/tasks/{name}/predict", &Method::POST),
            Access::Read
        );
        assert_eq!(t.get("/v1/tasks/{name}", &Method::PATCH), Access::Admin);
    }
}
