//! Large grafts (10% of the model) with the real default model: imported over HTTP past the old 16 MiB limit
//! and served with the logits and probabilities of the same graft applied in place (≤ 1e-5), on both CPU
//! correction paths (a graft spread over every encoder layer takes the sparse path; one packed into two
//! layers is dense enough there for the dense-delta path); in mixed engine batches, each task's rows get
//! what they get alone, bit for bit.

mod common;

use candle_core::{DType, Device};
use common::grafts;
use common::http::Server;
use serde_json::json;
use skillgraft::engine::{Engine, EngineConfig, ServedTask};
use skillgraft::graft::synthetic::SyntheticTasks;
use skillgraft::graft::{Graft, RegionSpec};
use skillgraft::model::heads::Classifier;
use skillgraft::model::ops::DENSE_SITE_DENSITY;
use skillgraft::model::{to_hash_map, BaseModel, TextInput};
use std::collections::BTreeMap;
use std::sync::Arc;

const TEXTS: [&str; 5] = [
    "a gorgeous , witty , seductive movie .",
    "boring and far too long",
    "the plot is thin but the acting carries it",
    "i have seen better student films",
    "an instant classic",
];

/// A synthetic graft of `share` of the whole model, drawn from `layers` (None: every encoder layer).
fn graft_of_model(base: &BaseModel, share: f64, layers: Option<Vec<usize>>) -> Graft {
    let region = RegionSpec {
        include_embeddings: false,
        layers,
    };
    let probe = SyntheticTasks::with_region(base, 0.0, &region).expect("region");
    let entries = share * base.model.body_parameter_count() as f64;
    let gen = SyntheticTasks::with_region(base, entries / probe.region_len() as f64, &region)
        .expect("synthetic grafts");
    gen.graft(3).expect("graft")
}

/// The densest share of any 2-D tensor the graft touches.
fn densest_weight(g: &Graft) -> f64 {
    g.entries
        .iter()
        .filter(|e| e.shape.len() == 2)
        .map(|e| e.indices.len() as f64 / e.shape.iter().product::<usize>() as f64)
        .fold(0.0, f64::max)
}

/// Logits of `texts` with the graft written into a copy of the base in place (the reference).
fn in_place_logits(base: &BaseModel, g: &Graft, texts: &[&str]) -> Vec<Vec<f32>> {
    let mut tensors = base.model.weights.deep_clone().expect("clone").tensors;
    let applied = g.apply(&tensors).expect("apply");
    tensors.extend(g.head_tensors(&Device::Cpu).expect("head"));
    let spec = g.manifest.head.clone();
    let clf = Classifier::load(
        &to_hash_map(&tensors),
        &base.model.config,
        &spec,
        DType::F32,
        &Device::Cpu,
    )
    .expect("classifier");
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::single(*t)).collect();
    let l = base
        .inputs(spec)
        .logits_for_texts(&clf, &inputs, 8)
        .expect("logits");
    applied.revert().expect("revert");
    l
}

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn ten_percent_grafts_import_over_http_and_serve_what_applying_them_in_place_gives() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let base = grafts::base(&model);
    let wide = graft_of_model(&base, 0.1, None);
    let deep = graft_of_model(&base, 0.1, Some(vec![0, 1]));
    assert!(
        densest_weight(&wide) < DENSE_SITE_DENSITY,
        "the spread graft takes the sparse path"
    );
    assert!(
        densest_weight(&deep) >= DENSE_SITE_DENSITY,
        "the packed graft takes the dense-delta path somewhere ({} < {DENSE_SITE_DENSITY})",
        densest_weight(&deep)
    );
    let bodies: Vec<(&str, &Graft, Vec<u8>)> = [("wide", &wide), ("deep", &deep)]
        .into_iter()
        .map(|(n, g)| (n, g, g.to_bytes().expect("bytes")))
        .collect();
    for (_, g, b) in &bodies {
        let share = g.size() as f64 / base.model.body_parameter_count() as f64;
        assert!((share - 0.1).abs() < 1e-3, "a 10% graft ({share})");
        assert!(
            b.len() > 16 << 20,
            "{} bytes: over the old 16 MiB limit",
            b.len()
        );
    }
    let base_logits = in_place_logits(&base, &grafts::synthetic(&base, 0), &TEXTS);
    let state = std::env::temp_dir().join(format!("sg-large-grafts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let s = Server::start(&model, &state, &["--threads", "2"]);
    let mut labels = Vec::new();
    for (name, g, body) in &bodies {
        let r = s.call(
            "PUT",
            &format!("/v1/tasks/{name}/graft"),
            body,
            "application/octet-stream",
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let t = r.json();
        assert_eq!(t["graft_size"], json!(g.size()), "{name}");
        labels = t["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|l| l.as_str().expect("label").to_string())
            .collect::<Vec<String>>();
    }
    assert_eq!(labels.len(), 2, "the SST-2 prototype head");
    // Both tasks asked at once (their rows may share passes): each gets its in-place logits.
    let answers: Vec<(String, serde_json::Value)> = std::thread::scope(|sc| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|(name, _, _)| {
                let s = &s;
                sc.spawn(move || {
                    let r = s.json(
                        "POST",
                        &format!("/v1/tasks/{name}/predict"),
                        &json!({"inputs": TEXTS, "return_logits": true}),
                    );
                    assert_eq!(r.status, 200, "{name}: {}", r.text());
                    (name.to_string(), r.json())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for ((name, p), (_, g, _)) in answers.iter().zip(&bodies) {
        let want = in_place_logits(&base, g, &TEXTS);
        let preds = p["predictions"].as_array().expect("predictions");
        let got: Vec<Vec<f32>> = preds
            .iter()
            .map(|q| {
                q["logits"]
                    .as_array()
                    .expect("logits")
                    .iter()
                    .map(|v| v.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect();
        let d = max_abs(&got, &want);
        assert!(
            d <= 1e-5,
            "{name}: served logits differ from in place by {d}"
        );
        assert!(
            max_abs(&want, &base_logits) > 1e-3,
            "{name}: the graft must change the logits for this test to mean anything"
        );
        let temp = p["temperature"].as_f64().expect("temperature");
        for (q, w) in preds.iter().zip(&want) {
            let m = w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = w.iter().map(|&v| ((v as f64 - m) / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            for (label, ei) in labels.iter().zip(&e) {
                let got = q["probabilities"][label.as_str()]
                    .as_f64()
                    .expect("probability");
                assert!(
                    (got - ei / z).abs() <= 1e-5,
                    "{name} {label}: {got} vs {}",
                    ei / z
                );
            }
        }
    }
    // Past the limit (32 MiB by default): 413 with the service's error body, nothing stored.
    let r = s.call(
        "PUT",
        "/v1/tasks/huge/graft",
        &vec![0u8; (32 << 20) + 1],
        "application/octet-stream",
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    assert_eq!(s.get("/v1/tasks/huge").status, 404);
    s.stop();
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn large_grafts_in_mixed_engine_batches_get_their_in_place_logits_and_ignore_their_batch_mates() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let base = grafts::base(&model);
    let tasks: Vec<Arc<ServedTask>> = [
        graft_of_model(&base, 0.01, None),
        graft_of_model(&base, 0.05, Some(vec![2])),
        grafts::synthetic(&base, 40),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, graft)| {
        Arc::new(ServedTask {
            name: format!("t{i}"),
            graft,
            version: i as u64 + 1,
        })
    })
    .collect();
    assert!(densest_weight(&tasks[1].graft) >= DENSE_SITE_DENSITY);
    assert!(densest_weight(&tasks[0].graft) < DENSE_SITE_DENSITY);
    let inputs: Vec<TextInput> = TEXTS.iter().map(|t| TextInput::single(*t)).collect();
    let batch = base.tokenizer.encode(&inputs, false).expect("tokens");
    let engine = Engine::start(
        &base,
        EngineConfig {
            max_wait: std::time::Duration::from_millis(300),
            threads: 2,
            ..Default::default()
        },
    )
    .expect("engine");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let together: Vec<Vec<Vec<f32>>> = rt.block_on(async {
        let all = futures::future::join_all(
            tasks
                .iter()
                .map(|t| engine.logits(t.clone(), batch.clone())),
        )
        .await;
        all.into_iter().map(|r| r.expect("logits")).collect()
    });
    let mut alone = Vec::new();
    for t in &tasks {
        alone.push(
            rt.block_on(engine.logits(t.clone(), batch.clone()))
                .expect("logits"),
        );
    }
    let mut seen = BTreeMap::new();
    for ((t, mixed), own) in tasks.iter().zip(&together).zip(&alone) {
        assert_eq!(
            mixed, own,
            "{}: a row's logits depend on its batch mates",
            t.name
        );
        let want = in_place_logits(&base, &t.graft, &TEXTS);
        let d = max_abs(mixed, &want);
        assert!(d <= 1e-5, "{}: {d} from the graft applied in place", t.name);
        seen.insert(t.name.clone(), want);
    }
    assert!(max_abs(&seen["t0"], &seen["t1"]) > 1e-3, "the tasks differ");
}
