//! Safe multi-tenancy (issue 8), over real HTTP against the release binary and the default model: who may call
//! what (every operation of the OpenAPI document × four callers; the bearer scheme in any case, one
//! `Authorization` header at most), graft validation on import, writes to one name, stored tasks that fail to
//! load, request budgets, shutdown and header deadlines, all-or-nothing compositions, upload hygiene, and what
//! readers may see.

mod common;

use common::grafts::{self, QUERY0};
use common::http::{request, Resp, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const READER: &str = "reader-key";
const ADMIN: &str = "admin-key";
const KEYS: [&str; 4] = ["--api-key", READER, "--admin-key", ADMIN];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-ten-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn call(s: &Server, key: Option<&str>, method: &str, path: &str, ct: &str, body: &[u8]) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut h: Vec<(&str, &str)> = vec![("Content-Type", ct)];
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    request(&s.addr, method, path, &h, body)
}

fn put_graft(s: &Server, name: &str, bytes: &[u8]) -> Resp {
    call(
        s,
        Some(ADMIN),
        "PUT",
        &format!("/v1/tasks/{name}/graft"),
        "application/octet-stream",
        bytes,
    )
}

fn predict(s: &Server, name: &str) -> Resp {
    call(
        s,
        Some(READER),
        "POST",
        &format!("/v1/tasks/{name}/predict"),
        "application/json",
        json!({"inputs": ["a gorgeous , witty , seductive movie ."]})
            .to_string()
            .as_bytes(),
    )
}

/// Typed graft metrics from JSON.
fn from_json(v: Value) -> Option<skillgraft::graft::manifest::GraftMetrics> {
    serde_json::from_value(v).expect("graft metrics")
}

fn message(r: &Resp) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_operation_of_the_document_refuses_callers_without_access() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("auth");
    let s = Server::start(&model, &work.join("state"), &KEYS);
    let doc: Value = request(&s.addr, "GET", "/openapi.json", &[], b"").json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.len() >= 15,
        "the document lists {} paths",
        paths.len()
    );
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let scopes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["api_key"].as_array())
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            let need = if scopes.contains(&"admin") {
                "admin"
            } else if scopes.is_empty() {
                "public"
            } else {
                "read"
            };
            let m = method.to_uppercase();
            // Independent of the document: every operation that changes state must need an admin key, and
            // everything under /v1 (and /metrics) must need some key.
            let reads = m == "GET" || path.ends_with("/predict") || path.ends_with("/evaluate");
            assert!(
                reads || need == "admin",
                "{m} {path} changes state but the document gives it to `{need}`"
            );
            if path.starts_with("/v1") || path == "/metrics" {
                assert_ne!(need, "public", "{m} {path} must need a key");
            }
            // Path parameters that spell other routes' last segments must not change the decision.
            for value in ["x", "predict", "evaluate", "graft"] {
                let p = path.replace("{name}", value).replace("{id}", value);
                let p = if p == "/v1/overlap" {
                    "/v1/overlap?tasks=x".into()
                } else {
                    p
                };
                for (who, key) in [
                    ("nobody", None),
                    ("wrong", Some("not-a-key")),
                    ("reader", Some(READER)),
                    ("admin", Some(ADMIN)),
                ] {
                    let r = call(&s, key, &m, &p, "application/json", b"{}");
                    let expected: &[u16] = match (need, who) {
                        ("public", _) => &[],
                        (_, "nobody") | (_, "wrong") => &[401],
                        ("admin", "reader") => &[403],
                        _ => &[],
                    };
                    if expected.is_empty() {
                        assert!(
                            ![401, 403].contains(&r.status),
                            "{who} on {m} {p} ({need}): {} {}",
                            r.status,
                            r.text()
                        );
                    } else {
                        assert!(
                            expected.contains(&r.status),
                            "{who} on {m} {p} ({need}): expected {expected:?}, got {} {}",
                            r.status,
                            r.text()
                        );
                        assert!(r.json()["error"]["code"].is_string());
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 15 * 16, "only {checked} calls checked");
    // A method the document does not list needs an admin key.
    let r = call(
        &s,
        Some(READER),
        "PATCH",
        "/v1/tasks/x",
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_one_authorization_header_is_allowed() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("scheme");
    let s = Server::start(&model, &work.join("state"), &KEYS);
    let get = |path: &str, auth: &[&str]| {
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        request(&s.addr, "GET", path, &h, b"")
    };
    // RFC 9110 §11.1: the scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = get("/v1/tasks", &[&format!("{scheme} {READER}")]);
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
        // The scheme's case does not change who the caller is: a reader still may not delete.
        let h = format!("{scheme} {READER}");
        let r = request(
            &s.addr,
            "DELETE",
            "/v1/tasks/x",
            &[("Authorization", &h)],
            b"",
        );
        assert_eq!(r.status, 403, "{scheme}: {}", r.text());
        let h = format!("{scheme} {ADMIN}");
        let r = request(
            &s.addr,
            "DELETE",
            "/v1/tasks/x",
            &[("Authorization", &h)],
            b"",
        );
        assert_eq!(r.status, 404, "{scheme}: {}", r.text());
    }
    // Other schemes and a wrong key are refused as before.
    for auth in [
        format!("Basic {READER}"),
        format!("bearer{READER}"),
        "bearer nope".into(),
    ] {
        let r = get("/v1/tasks", &[&auth]);
        assert_eq!(r.status, 401, "{auth}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    // Two `Authorization` headers: which one counts would be a guess, so neither does.
    let admin = format!("Bearer {ADMIN}");
    let reader = format!("Bearer {READER}");
    for pair in [
        [admin.as_str(), "Bearer nope"],
        ["Bearer nope", admin.as_str()],
        [reader.as_str(), reader.as_str()],
    ] {
        for path in ["/v1/tasks", "/health"] {
            let r = get(path, &pair);
            assert_eq!(r.status, 400, "{path} with {pair:?}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "bad_request");
            assert!(
                message(&r).contains("more than one `Authorization` header"),
                "{}",
                message(&r)
            );
        }
    }
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn invalid_grafts_are_refused_and_never_reach_other_tenants() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("grafts");
    let s = Server::start(&model, &work.join("state"), &KEYS);
    let base = grafts::base(&model);
    let good = grafts::synthetic(&base, 50);
    let r = put_graft(&s, "good", &good.to_bytes().unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    type Breaker = Box<dyn Fn(&mut skillgraft::graft::Graft)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "head shape",
            Box::new(|g| g.head.get_mut("prototype.weight").unwrap().shape = vec![4, 192]),
            "shape",
        ),
        (
            "descriptions",
            Box::new(|g| {
                if let Some(t) = g.manifest.task.as_mut() {
                    t.label_descriptions = vec!["It was fine.".into(), "It was dull.".into()];
                }
            }),
            "descriptions",
        ),
        (
            "huge head value",
            Box::new(|g| g.head.get_mut("prototype.weight").unwrap().values[3] = 3.4e38),
            "magnitude",
        ),
        (
            "NaN head value",
            Box::new(|g| g.head.get_mut("prototype.weight").unwrap().values[0] = f32::NAN),
            "finite",
        ),
        (
            "inf body value",
            Box::new(|g| g.entries[0].values[1] = f32::INFINITY),
            "finite",
        ),
        (
            "huge body value",
            Box::new(|g| g.entries[0].values[1] = 1e30),
            "magnitude",
        ),
        ("tau 0", Box::new(|g| set_tau(g, 0.0)), "temperature"),
        (
            "tau 1e-300",
            Box::new(|g| set_tau(g, 1e-300)),
            "temperature",
        ),
        ("tau -5", Box::new(|g| set_tau(g, -5.0)), "temperature"),
        (
            "calibration 0",
            Box::new(|g| {
                g.manifest.metrics =
                    from_json(json!({"variants": [{"name": "graft", "temperature": 0.0}]}))
            }),
            "temperature",
        ),
        (
            "calibration 1e-300",
            Box::new(|g| {
                g.manifest.metrics =
                    from_json(json!({"variants": [{"name": "graft", "temperature": 1e-300}]}))
            }),
            "temperature",
        ),
        (
            "calibration -5",
            Box::new(|g| {
                g.manifest.metrics =
                    from_json(json!({"variants": [{"name": "graft", "temperature": -5.0}]}))
            }),
            "temperature",
        ),
        (
            "calibration decision 1e-300",
            Box::new(|g| {
                g.manifest.metrics = from_json(
                    json!({"calibration": {"method": "temperature", "temperature": 1e-300}}),
                )
            }),
            "temperature",
        ),
        (
            "extra head tensor",
            Box::new(|g| {
                let t = g.head["prototype.weight"].clone();
                g.head.insert("classifier.weight".into(), t);
            }),
            "classifier.weight",
        ),
        (
            "body shape",
            Box::new(|g| g.entries[0].shape = vec![384 * 384]),
            "shape",
        ),
        (
            "unknown tensor",
            Box::new(|g| g.entries[0].name = "encoder.layer.99.x.weight".into()),
            "does not have",
        ),
    ];
    for (what, brk, needle) in &cases {
        let mut g = good.clone();
        brk(&mut g);
        let r = put_graft(&s, "bad", &g.to_bytes().unwrap());
        assert_eq!(r.status, 422, "{what}: {} {}", r.status, r.text());
        assert!(
            message(&r).to_lowercase().contains(needle),
            "{what}: the message should name `{needle}`: {}",
            message(&r)
        );
        assert_eq!(
            call(&s, Some(READER), "GET", "/v1/tasks/bad", "", b"").status,
            404,
            "{what}"
        );
    }
    // The good task still serves finite probabilities.
    let r = predict(&s, "good");
    assert_eq!(r.status, 200, "{}", r.text());
    let p = &r.json()["predictions"][0]["probabilities"];
    let total: f64 = p
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().expect("finite"))
        .sum();
    assert!((total - 1.0).abs() < 1e-9);
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

fn set_tau(g: &mut skillgraft::graft::Graft, tau: f64) {
    if let skillgraft::model::HeadSpec::Prototype { temperature, .. } = &mut g.manifest.head {
        *temperature = tau;
    }
}

#[test]
fn writes_to_one_name_are_serialized_and_failed_loads_are_reported() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("writes");
    let state = work.join("state");
    let s = Server::start(&model, &state, &KEYS);
    let base = grafts::base(&model);
    let uploads: Vec<Vec<u8>> = (1..=8)
        .map(|k| grafts::synthetic(&base, k * 10).to_bytes().unwrap())
        .collect();
    for round in 0..10 {
        let codes: Vec<u16> = std::thread::scope(|sc| {
            let hs: Vec<_> = uploads
                .iter()
                .map(|b| sc.spawn(|| put_graft(&s, "t0", b).status))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(codes.iter().all(|&c| c == 200), "round {round}: {codes:?}");
        let stored = std::fs::read(state.join("tasks/t0.graft")).unwrap();
        let i = uploads.iter().position(|u| *u == stored);
        assert!(
            i.is_some(),
            "round {round}: the stored file is none of the uploads"
        );
        let served = call(&s, Some(READER), "GET", "/v1/tasks/t0", "", b"").json();
        assert_eq!(
            served["graft_size"].as_u64(),
            Some((i.unwrap() as u64 + 1) * 10),
            "round {round}: the registry and the disk disagree"
        );
        let g = call(&s, Some(READER), "GET", "/v1/tasks/t0/graft", "", b"");
        assert_eq!(g.body, stored, "round {round}");
    }
    s.stop();
    // A temporary file left by a crash (two hours ago), one that may belong to a live writer sharing the
    // directory (just now), and a stored task that cannot be loaded.
    let stale = state.join("tasks/.t0.graft.3102.tmp");
    std::fs::write(&stale, b"half").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    std::fs::write(state.join("tasks/.t1.graft.abc.tmp"), b"in flight").unwrap();
    std::fs::write(state.join("tasks/broken.graft"), b"not a graft").unwrap();
    let s = Server::start(&model, &state, &KEYS);
    let hidden: Vec<String> = std::fs::read_dir(state.join("tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert_eq!(
        hidden,
        vec![".t1.graft.abc.tmp"],
        "only the stale temporary goes"
    );
    let tasks = call(&s, Some(READER), "GET", "/v1/tasks", "", b"").json();
    let broken = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "broken")
        .expect("the broken task is listed");
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("graft"),
        "{broken}"
    );
    assert_eq!(predict(&s, "broken").status, 409);
    assert_eq!(predict(&s, "t0").status, 200);
    // Tasks load on first use: once found, the broken one is reported by /ready too.
    let ready = request(&s.addr, "GET", "/ready", &[], b"").json();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["tasks_failed"], 1, "{ready}");
    let r = call(&s, Some(ADMIN), "DELETE", "/v1/tasks/broken", "", b"");
    assert_eq!(r.status, 204);
    assert!(!state.join("tasks/broken.graft").exists());
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn budgets_deadlines_and_all_or_nothing_compositions() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("budget");
    let state = work.join("state");
    let args = [
        KEYS.as_slice(),
        &[
            "--max-request-tokens",
            "64",
            "--max-overlap-tasks",
            "3",
            "--max-graft-bytes",
            "200000",
            "--header-timeout-secs",
            "1",
            "--timeout-secs",
            "2",
            "--shutdown-grace-secs",
            "1",
        ],
    ]
    .concat();
    let s = Server::start(&model, &state, &args);
    let base = grafts::base(&model);
    for (name, k) in [("a", 10), ("b", 20)] {
        assert_eq!(
            put_graft(&s, name, &grafts::synthetic(&base, k).to_bytes().unwrap()).status,
            200
        );
    }
    // Token budget.
    let long =
        json!({"inputs": vec!["a long sentence with quite a few words in it, going on and on"; 8]});
    let r = call(
        &s,
        Some(READER),
        "POST",
        "/v1/tasks/a/predict",
        "application/json",
        long.to_string().as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(message(&r).contains("tokens"), "{}", r.text());
    assert_eq!(predict(&s, "a").status, 200);
    // Overlap's task limit.
    let r = call(
        &s,
        Some(READER),
        "GET",
        "/v1/overlap?tasks=a,b,a,b",
        "",
        b"",
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        call(&s, Some(READER), "GET", "/v1/overlap?tasks=a,b", "", b"").status,
        200
    );
    // A composition with a bad label creates nothing.
    let r = call(&s, Some(ADMIN), "POST", "/v1/compositions", "application/json",
        json!({"name": "ab", "tasks": ["a", "b"], "data": {"b": [{"text": "fine", "label": "nope"}]}}).to_string().as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        call(&s, Some(READER), "GET", "/v1/tasks/ab", "", b"").status,
        404
    );
    assert!(!state.join("tasks/ab.graft").exists());
    let r = call(
        &s,
        Some(ADMIN),
        "POST",
        "/v1/compositions",
        "application/json",
        json!({"name": "ab", "tasks": ["a", "b"], "data": {"b": [{"text": "fine", "label": 1}]}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["members"][1]["examples"], 1);
    // Graft imports have their own small limit.
    let r = put_graft(&s, "big", &vec![0u8; 300_000]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    // A client that never finishes its headers is disconnected.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "half-sent headers kept open {:?}",
        t.elapsed()
    );
    // A stalled upload times out with JSON, and leaves no scratch files.
    let mut up = TcpStream::connect(&s.addr).unwrap();
    up.write_all(
        format!("POST /v1/checkpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/x-tar\r\nContent-Length: 100000\r\n\r\n").as_bytes(),
    )
    .unwrap();
    up.write_all(&[0u8; 1000]).unwrap();
    up.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = up.read(&mut chunk) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.windows(4).any(|w| w == b"}}\r\n") || String::from_utf8_lossy(&raw).contains("}}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_dir(state.join("tmp")).unwrap().count(),
        0,
        "scratch files left"
    );
    // SIGTERM with a request still hanging finishes within the deadline.
    let mut hang = TcpStream::connect(&s.addr).unwrap();
    hang.write_all(
        format!("PUT /v1/tasks/h/graft HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nxx").as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn readers_see_no_job_inputs_no_task_names_in_metrics_and_no_internal_errors() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("exposure");
    let state = work.join("state");
    let s = Server::start(&model, &state, &KEYS);
    let base = grafts::base(&model);
    assert_eq!(
        put_graft(
            &s,
            "secret-task",
            &grafts::synthetic(&base, 5).to_bytes().unwrap()
        )
        .status,
        200
    );
    assert_eq!(predict(&s, "secret-task").status, 200);
    assert_eq!(request(&s.addr, "GET", "/metrics", &[], b"").status, 401);
    let m = call(&s, Some(READER), "GET", "/metrics", "", b"");
    assert_eq!(m.status, 200);
    assert!(m.text().contains("skillgraft_http_requests_total"));
    assert!(!m.text().contains("secret-task"), "metrics name a task");
    // A job on a junk checkpoint is refused before it is accepted, without naming server paths.
    std::fs::create_dir_all(state.join("checkpoints/ckpt-junk")).unwrap();
    std::fs::write(state.join("checkpoints/ckpt-junk/config.json"), b"{}").unwrap();
    let ex = json!([{"text": "private sentence one", "label": 0}, {"text": "private sentence two", "label": 1}]);
    let r = call(&s, Some(ADMIN), "POST", "/v1/localizations", "application/json",
        json!({"checkpoint": "ckpt-junk", "task_name": "j", "task": "sst2", "train": ex, "dev": ex}).to_string().as_bytes());
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(message(&r).starts_with("`checkpoint`"), "{}", r.text());
    assert!(
        !r.text().contains(state.to_str().unwrap()),
        "absolute path in a job error: {}",
        r.text()
    );
    // A job with inline examples on the base model's own body (a prototype head given): accepted; its
    // record stays, with the inputs visible to admins only.
    std::fs::create_dir_all(state.join("checkpoints/ckpt-base")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), state.join("checkpoints/ckpt-base").join(f)).unwrap();
    }
    let r = call(
        &s,
        Some(ADMIN),
        "POST",
        "/v1/localizations",
        "application/json",
        json!({"checkpoint": "ckpt-base", "task_name": "j", "task": "sst2", "train": ex, "dev": ex,
            "head": {"kind": "prototype"}, "epochs": 1})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let j = call(
            &s,
            Some(ADMIN),
            "GET",
            &format!("/v1/localizations/{id}"),
            "",
            b"",
        )
        .json();
        if matches!(j["state"].as_str(), Some("succeeded" | "failed")) || Instant::now() > deadline
        {
            break j;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        matches!(job["state"].as_str(), Some("succeeded" | "failed")),
        "{job}"
    );
    assert!(job["request"]["train"].is_array(), "admins see the inputs");
    let err = job["error"].as_str().unwrap_or_default();
    assert!(
        !err.contains(state.to_str().unwrap()),
        "absolute path in a job error: {err}"
    );
    for path in [
        format!("/v1/localizations/{id}"),
        "/v1/localizations".into(),
        format!("/v1/localizations/{id}/events"),
    ] {
        let r = call(&s, Some(READER), "GET", &path, "", b"");
        assert_eq!(r.status, 200);
        assert!(
            !r.text().contains("private sentence"),
            "{path} shows job inputs to a reader"
        );
    }
    // An internal error answers a generic message with a request id (the detail is logged).
    std::fs::create_dir_all(state.join("tasks/victim.graft/inner")).unwrap();
    let r = put_graft(
        &s,
        "victim",
        &grafts::synthetic(&base, 5).to_bytes().unwrap(),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    let id = r.json()["error"]["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert!(!r.text().contains(state.to_str().unwrap()), "{}", r.text());
    assert!(!r.text().contains("cannot move"), "{}", r.text());
    // Checkpoint errors name no server paths.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "ckpt/config.json", &b"{}"[..])
        .unwrap();
    let r = call(
        &s,
        Some(ADMIN),
        "POST",
        "/v1/checkpoints",
        "application/x-tar",
        &b.into_inner().unwrap(),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(!r.text().contains(state.to_str().unwrap()), "{}", r.text());
    assert!(!r.text().contains("/tmp/"), "{}", r.text());
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
    let _ = QUERY0;
}

/// `synthetic(k)` with its entries moved by `shift` columns: grafts with different shifts touch disjoint
/// coordinates, so a composition of them holds all their entries.
fn shifted(base: &skillgraft::model::BaseModel, k: usize, shift: u32) -> Vec<u8> {
    let mut g = grafts::synthetic(base, k);
    for e in &mut g.entries {
        for i in &mut e.indices {
            *i += shift;
        }
    }
    g.to_bytes().unwrap()
}

#[test]
fn what_a_composition_stores_can_be_imported_again() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("compose-limit");
    let state = work.join("state");
    let limit = 250_000usize;
    let args = [KEYS.as_slice(), &["--max-graft-bytes", "250000"]].concat();
    let s = Server::start(&model, &state, &args);
    let base = grafts::base(&model);
    // Each member fits the import limit; their union (40,000 entries, 8 bytes each) does not.
    for (name, shift) in [("big1", 0), ("big2", 1)] {
        let bytes = shifted(&base, 20_000, shift);
        assert!(bytes.len() < limit && 2 * bytes.len() > limit);
        assert_eq!(put_graft(&s, name, &bytes).status, 200);
    }
    let r = call(
        &s,
        Some(ADMIN),
        "POST",
        "/v1/compositions",
        "application/json",
        json!({"name": "too-big", "tasks": ["big1", "big2"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    assert!(
        message(&r).contains("250000"),
        "names the limit: {}",
        r.text()
    );
    assert!(
        message(&r).contains("SKILLGRAFT_MAX_GRAFT_BYTES"),
        "{}",
        r.text()
    );
    assert_eq!(
        call(&s, Some(READER), "GET", "/v1/tasks/too-big", "", b"").status,
        404
    );
    assert!(
        !state.join("tasks/too-big.graft").exists(),
        "nothing stored"
    );
    // A composition under the limit round-trips through the import.
    assert_eq!(
        put_graft(&s, "small", &shifted(&base, 1_000, 2)).status,
        200
    );
    let r = call(
        &s,
        Some(ADMIN),
        "POST",
        "/v1/compositions",
        "application/json",
        json!({"name": "fits", "tasks": ["big1", "small"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let bytes = call(&s, Some(READER), "GET", "/v1/tasks/fits/graft", "", b"").body;
    assert!(bytes.len() <= limit);
    let r = put_graft(&s, "fits-again", &bytes);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["graft_size"], 21_000);
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

/// A tar of the base model's own files: a checkpoint (a body without a head; `?head=prototype`) that costs
/// no fine-tuning.
fn base_checkpoint(model: &std::path::Path) -> Vec<u8> {
    common::checkpoint::tar_of(
        model,
        &["config.json", "model.safetensors", "tokenizer.json"],
        None,
    )
}

#[test]
fn a_checkpoint_uploaded_by_two_admins_stays_until_both_delete_it() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    const ADMIN2: &str = "second-admin-key";
    let work = tmp("ckpt-owners");
    let state = work.join("state");
    let keys = format!("{ADMIN},{ADMIN2}");
    let s = Server::start(&model, &state, &["--api-key", READER, "--admin-key", &keys]);
    let tar = base_checkpoint(&model);
    let upload = |key: &str| {
        let r = call(
            &s,
            Some(key),
            "POST",
            "/v1/checkpoints?head=prototype",
            "application/x-tar",
            &tar,
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    let id = upload(ADMIN);
    // The same key uploading again holds it once; another key shares the same content id.
    assert_eq!(upload(ADMIN), id);
    assert_eq!(upload(ADMIN2), id);
    let path = format!("/v1/checkpoints/{id}");
    let r = call(&s, Some(ADMIN), "DELETE", &path, "", b"");
    assert_eq!(r.status, 204, "{}", r.text());
    // The other uploader still has it.
    let r = call(&s, Some(READER), "GET", &path, "", b"");
    assert_eq!(
        r.status,
        200,
        "one admin's delete removed another's upload: {}",
        r.text()
    );
    let listed = call(&s, Some(READER), "GET", "/v1/checkpoints", "", b"").json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str()),
        "{listed}"
    );
    // The first admin holds it no more (its two uploads counted once).
    let r = call(&s, Some(ADMIN), "DELETE", &path, "", b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(call(&s, Some(READER), "GET", &path, "", b"").status, 200);
    // The last uploader's delete removes it, with its record of uploaders.
    let r = call(&s, Some(ADMIN2), "DELETE", &path, "", b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(call(&s, Some(READER), "GET", &path, "", b"").status, 404);
    assert_eq!(call(&s, Some(ADMIN2), "DELETE", &path, "", b"").status, 404);
    assert!(!state.join("checkpoints").join(&id).exists());
    assert!(!state
        .join("checkpoint-uploaders")
        .join(format!("{id}.json"))
        .exists());
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}
