//! The service over real HTTP on a loopback port, with the real default model: every route, bad inputs,
//! authentication, overload, and restarts (the store survives; interrupted jobs are reported failed).

mod common;

use common::checkpoint::{finetune_quick, tar_of};
use common::http::{request, Server};
use serde_json::{json, Value};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-srv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_job(s: &Server, id: &str) -> Value {
    // Server-sent events until the job ends.
    let resp = s.get(&format!("/v1/localizations/{id}/events"));
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let text = resp.text();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    assert!(!events.is_empty(), "no events: {text}");
    let last = events.last().unwrap().clone();
    assert!(
        ["succeeded", "failed", "cancelled", "not_localized"]
            .contains(&last["state"].as_str().unwrap()),
        "{last}"
    );
    last
}

#[test]
fn service_end_to_end_over_http() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("e2e");
    let state = work.join("state");
    let keys = [
        "--api-key",
        "reader-key",
        "--admin-key",
        "admin-key",
        "--max-json-bytes",
        "65536",
        "--metrics-per-task",
    ];
    let mut s = Server::start(&model, &state, &keys);
    s.auth = Some("admin-key".into());

    // Health, readiness, info, metrics, OpenAPI (served = committed), docs.
    assert_eq!(s.get("/health").json()["status"], "ok");
    assert_eq!(s.get("/ready").json()["status"], "ready");
    let info = s.get("/v1/info").json();
    assert_eq!(info["architecture"], "bert");
    assert_eq!(info["parameters"], 22713216);
    let served = s.get("/openapi.json").text();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    assert_eq!(
        served, committed,
        "served /openapi.json differs from openapi/openapi.json"
    );
    assert!(s.get("/docs").text().contains("/openapi.json"));

    // Authentication: none, wrong, reader on a mutating route.
    let r = request(&s.addr, "GET", "/v1/tasks", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = request(
        &s.addr,
        "GET",
        "/v1/tasks",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = request(
        &s.addr,
        "GET",
        "/v1/tasks",
        &[("Authorization", "Bearer reader-key")],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = request(
        &s.addr,
        "DELETE",
        "/v1/tasks/x",
        &[("Authorization", "Bearer reader-key")],
        b"",
    );
    assert_eq!(r.status, 403);

    // Upload a checkpoint fine-tuned by our CLI, as a tar archive.
    let ft = work.join("ft");
    finetune_quick(&model, &ft);
    let files = [
        "config.json",
        "model.safetensors",
        "skillgraft_head.json",
        "skillgraft_head.safetensors",
        "tokenizer.json",
    ];
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        &tar_of(&ft, &files, None),
        "application/x-tar",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ckpt = r.json()["id"].as_str().unwrap().to_string();
    // Files a checkpoint does not need are not kept.
    let mut with_junk = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("ckpt/notes.txt", b"x".to_vec()),
        ("ckpt/x.safetensors", b"x".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        with_junk
            .append_data(&mut h, name, data.as_slice())
            .unwrap();
    }
    let mut body = with_junk.into_inner().unwrap();
    body.truncate(body.len() - 1024);
    body.extend(tar_of(&ft, &files, None));
    let r = s.call("POST", "/v1/checkpoints", &body, "application/x-tar");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["files"],
        json!(files),
        "only checkpoint files are kept"
    );
    assert_eq!(
        s.get(&format!("/v1/checkpoints/{ckpt}")).json()["id"],
        ckpt.as_str()
    );

    // Bad checkpoints: truncated weights, another architecture, pickle, garbage.
    let st = std::fs::read(ft.join("model.safetensors")).unwrap();
    let trunc = tar_of(
        &ft,
        &files,
        Some(("model.safetensors", st[..st.len() / 2].to_vec())),
    );
    let r = s.call("POST", "/v1/checkpoints", &trunc, "application/x-tar");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("safetensors"));
    let rob = common::fixtures_dir().join("tiny-roberta-cls");
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        &tar_of(&rob, &["config.json", "model.safetensors"], None),
        "application/x-tar",
    );
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("architecture"),
        "{}",
        r.text()
    );
    let pickle_dir = work.join("pickle");
    std::fs::create_dir_all(&pickle_dir).unwrap();
    std::fs::write(pickle_dir.join("pytorch_model.bin"), b"\x80\x02").unwrap();
    std::fs::copy(ft.join("config.json"), pickle_dir.join("config.json")).unwrap();
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        &tar_of(&pickle_dir, &["config.json", "pytorch_model.bin"], None),
        "application/x-tar",
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("pickle"));
    assert_eq!(
        s.call("POST", "/v1/checkpoints", b"not a tar", "application/x-tar")
            .status,
        422
    );

    // A localization job with progress over server-sent events.
    let r = s.json(
        "POST",
        "/v1/localizations",
        &json!({"checkpoint": ckpt, "task_name": "sst2", "task": "sst2", "sparsity": 1e-4,
        "budget": {"retain": 0}, "k": 8, "max_test": 40, "epochs": 2, "calibration": "temperature"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["id"].as_str().unwrap().to_string();
    let last = wait_job(&s, &job);
    assert_eq!(last["state"], "succeeded", "{last}");
    let st = s.get(&format!("/v1/localizations/{job}")).json();
    assert_eq!(st["epoch"], 2);
    assert!(st["graft_size"].as_u64().unwrap() > 500);
    // A fixed size: one rung, measured for magnitude and for the method; no target (retain 0) asked.
    let points = st["retention"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{points:?}");
    assert_eq!(st["registered"], true);
    assert_eq!(
        s.get("/v1/localizations").json().as_array().unwrap().len(),
        1
    );
    assert_eq!(
        s.json(
            "POST",
            "/v1/localizations",
            &json!({"checkpoint": "ckpt-missing", "task_name": "x", "task": "sst2"})
        )
        .status,
        404
    );
    assert_eq!(
        s.json(
            "POST",
            "/v1/localizations",
            &json!({"checkpoint": ckpt, "task_name": "x", "task": "nope"})
        )
        .status,
        400
    );

    // Tasks and prediction.
    let tasks = s.get("/v1/tasks").json();
    assert_eq!(tasks[0]["name"], "sst2");
    assert_eq!(tasks[0]["labels"], json!(["negative", "positive"]));
    let t = s.get("/v1/tasks/sst2").json();
    assert!(t["percent_of_region"].as_f64().unwrap() > 0.0);
    let r = s.json(
        "POST",
        "/v1/tasks/sst2/predict",
        &json!({"inputs": ["a gorgeous , witty , seductive movie .",
        {"text": "boring and far too long"}], "return_logits": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json();
    assert_eq!(p["predictions"].as_array().unwrap().len(), 2);
    let probs = &p["predictions"][0]["probabilities"];
    let total = probs["negative"].as_f64().unwrap() + probs["positive"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(p["predictions"][0]["logits"].as_array().unwrap().len(), 2);
    assert_eq!(p["calibration"], "temperature");
    assert!(
        p["calibration_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("policy temperature")),
        "{p}"
    );
    let p = s
        .json(
            "POST",
            "/v1/tasks/sst2/predict",
            &json!({"inputs": ["fine"], "calibrate": false}),
        )
        .json();
    assert_eq!(p["calibration"], "none");
    assert!(p["predictions"][0]["logits"].is_null());
    let r = s.json("POST", "/v1/tasks/sst2/evaluate", &json!({"examples": [
        {"text": "a masterpiece", "label": "positive"}, {"text": "dreadful and dull", "label": 0}], "bins": 15}));
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["report"]["ece_bins"], 15);
    assert_eq!(e["report"]["n"], 2);

    // Graft download / import, overlap, composition.
    let g = s.get("/v1/tasks/sst2/graft");
    assert_eq!(g.status, 200);
    let r = s.call(
        "PUT",
        "/v1/tasks/sst2-copy/graft",
        &g.body,
        "application/octet-stream",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let o = s.get("/v1/overlap?tasks=sst2,sst2-copy").json();
    assert_eq!(o["jaccard"][0][1], 1.0);
    let r = s.json("POST", "/v1/compositions", &json!({"name": "both", "tasks": ["sst2", "sst2-copy"],
        "data": {"sst2": [{"text": "a masterpiece", "label": "positive"}, {"text": "dreadful", "label": "negative"}]}}));
    assert_eq!(r.status, 201, "{}", r.text());
    let c = r.json();
    assert_eq!(c["task"]["name"], "both");
    assert_eq!(
        c["members"][0]["alone"], c["members"][0]["composed"],
        "identical grafts compose to the same model"
    );

    // Bad inputs: malformed JSON, unknown task, non-UTF-8, oversized body, corrupt graft, bad name.
    let r = s.call(
        "POST",
        "/v1/tasks/sst2/predict",
        b"{\"inputs\": [",
        "application/json",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    let r = s.json("POST", "/v1/tasks/nope/predict", &json!({"inputs": ["x"]}));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));
    let r = s.call(
        "POST",
        "/v1/tasks/sst2/predict",
        b"{\"inputs\": [\"caf\xe9\"]}",
        "application/json",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    let big = json!({"inputs": ["x".repeat(70_000)]});
    let r = s.json("POST", "/v1/tasks/sst2/predict", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    let r = s.json("POST", "/v1/tasks/sst2/predict", &json!({"inputs": []}));
    assert_eq!(r.status, 400);
    let r = s.call(
        "PUT",
        "/v1/tasks/bad/graft",
        &g.body[..g.body.len() / 2],
        "application/octet-stream",
    );
    assert_eq!(r.status, 422);
    let r = s.call(
        "PUT",
        "/v1/tasks/..bad/graft",
        &g.body,
        "application/octet-stream",
    );
    assert_eq!(r.status, 400);
    let m = s.get("/metrics").text();
    assert!(m.contains("skillgraft_http_requests_total{method=\"POST\",route=\"/v1/tasks/{name}/predict\",status=\"200\"}"));
    assert!(m.contains("skillgraft_task_predict_seconds_count{task=\"sst2\"}"));
    assert!(m.contains("skillgraft_jobs{state=\"succeeded\"} 1"));

    // Delete.
    assert_eq!(
        s.call("DELETE", "/v1/tasks/sst2-copy", b"", "application/json")
            .status,
        204
    );
    assert_eq!(
        s.json(
            "POST",
            "/v1/tasks/sst2-copy/predict",
            &json!({"inputs": ["x"]})
        )
        .status,
        404
    );

    // A job interrupted by a crash is reported failed after restart; tasks survive; nothing half-written.
    let r = s.json(
        "POST",
        "/v1/localizations",
        &json!({"checkpoint": ckpt, "task_name": "late", "task": "sst2",
        "k": 8, "max_test": 40, "epochs": 50}),
    );
    let late = r.json()["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.crash();
    let mut s = Server::start(&model, &state, &keys);
    s.auth = Some("admin-key".into());
    let names: Vec<String> = s
        .get("/v1/tasks")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["both", "sst2"]);
    let j = s.get(&format!("/v1/localizations/{late}")).json();
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("restart"));
    assert_eq!(
        s.get(&format!("/v1/localizations/{job}")).json()["state"],
        "succeeded"
    );
    let leftovers: Vec<String> = std::fs::read_dir(state.join("tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".graft"))
        .collect();
    assert!(leftovers.is_empty(), "half-written files: {leftovers:?}");
    let p = s.json(
        "POST",
        "/v1/tasks/sst2/predict",
        &json!({"inputs": ["a masterpiece"]}),
    );
    assert_eq!(p.status, 200);
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let work = tmp("busy");
    // A task without a fine-tuned checkpoint: import a graft made on the fly by the library.
    let s = Server::start(
        &model,
        &work.join("state"),
        &["--queue", "1", "--batch-wait-ms", "0"],
    );
    let graft = common::grafts::synthetic(&common::grafts::base(&model), 0);
    let r = s.call(
        "PUT",
        "/v1/tasks/zero/graft",
        &graft.to_bytes().unwrap(),
        "application/octet-stream",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"inputs": vec!["an endlessly long sentence about nothing in particular at all"; 64]}).to_string();
    let addr = s.addr.clone();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (a, b) = (addr.clone(), body.clone());
            std::thread::spawn(move || {
                let r = request(
                    &a,
                    "POST",
                    "/v1/tasks/zero/predict",
                    &[("Content-Type", "application/json")],
                    b.as_bytes(),
                );
                (r.status, r.header("retry-after").map(str::to_string))
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().any(|(s, _)| *s == 200), "{results:?}");
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        !refused.is_empty(),
        "with a queue of 1, some of 16 concurrent requests must be refused: {results:?}"
    );
    assert!(refused.iter().all(|(_, ra)| ra.as_deref() == Some("1")));
    s.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let work = tmp("plain-logs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--state-dir")
        .arg(work.join("state"))
        .env("SKILLGRAFT_DATA_DIR", common::data_dir())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");
    // Everything the server writes to its stderr (a pipe) until it says, outside the log, that it listens.
    let mut log = String::new();
    let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        log.push_str(&line);
        if line.starts_with("skillgraft listening on http://") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&work);
    // The log line of the same event (tracing's, at info), so the check below looks at real log output.
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("skillgraft listening on http://")),
        "no info log line on stderr:\n{log}"
    );
    assert!(
        !log.contains("\x1b["),
        "log written to a pipe carries ANSI escape codes:\n{log:?}"
    );
}
