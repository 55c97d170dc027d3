//! Request bodies: any bytes as each JSON body the API takes (predict, evaluate, composition, localization),
//! then the checks the handlers run before any work. Never a panic; whatever passes the checks is within the
//! documented limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgraft::server::api::compose::CompositionRequest;
use skillgraft::server::api::predict::{
    check_inputs, labelled, EvaluateRequest, PredictRequest, RequestLimits,
};
use skillgraft::server::jobs::LocalizationRequest;

const LIMITS: RequestLimits = RequestLimits {
    max_inputs: 8,
    max_tokens: 64,
};

fn seeds() -> Vec<Vec<u8>> {
    [
        (0u8, r#"{"inputs": ["a fine film", {"text": "a", "text_b": "b"}], "calibrate": false, "return_logits": true}"#),
        (1, r#"{"examples": [{"text": "good", "label": "positive"}, {"text": "bad", "label": 0}], "bins": 15}"#),
        (2, r#"{"name": "ab", "tasks": ["a", "b"], "rule": "last_wins", "data": {"a": [{"text": "x", "label": 1}]}}"#),
        (3, r#"{"checkpoint": "ckpt-1", "task_name": "t", "task": "sst2", "k": 8, "sparsity": 0.001, "epochs": 3, "method": "refit"}"#),
        (3, r#"{"checkpoint": "c", "task_name": "t", "task_spec": {"name": "x", "labels": ["a", "b"], "template": "{sentence} {mask}"}, "train": [{"text": "a", "label": 0}], "dev": [{"text": "b", "label": 1}]}"#),
    ]
    .iter()
    .map(|(k, j)| {
        let mut v = vec![*k];
        v.extend(j.as_bytes());
        v
    })
    .collect()
}

fuzz_target!(init: {
    skillgraft_fuzz::write_seeds(seeds);
}, |data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let labels = vec!["negative".to_string(), "positive".to_string()];
    match kind % 4 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<PredictRequest>(body) {
                if check_inputs("inputs", r.inputs.len(), LIMITS).is_ok() {
                    assert!((1..=LIMITS.max_inputs).contains(&r.inputs.len()));
                }
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<EvaluateRequest>(body) {
                if r.check(LIMITS).is_ok() {
                    assert!((1..=1000).contains(&r.bins));
                    if let Ok((ids, inputs)) = labelled(&labels, &r.examples, "example") {
                        assert_eq!(ids.len(), inputs.len());
                        assert!(ids.iter().all(|&i| i < labels.len()));
                    }
                }
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<CompositionRequest>(body) {
                if r.check().is_ok() {
                    assert!(r.tasks.len() >= 2);
                    assert!(skillgraft::store::service::valid_name(&r.name));
                    for ex in r.data.values() {
                        let _ = labelled(&labels, ex, "example");
                    }
                }
            }
        }
        _ => {
            if let Ok(r) = serde_json::from_slice::<LocalizationRequest>(body) {
                if r.check().is_ok() {
                    assert!(r.sparsity.is_none_or(|s| s > 0.0 && s <= 1.0) && r.epochs <= 1000);
                    let b = r.budget_spec();
                    assert!((0.0..=1.0).contains(&b.retain) && b.ceiling > 0.0 && b.ceiling <= 1.0);
                    assert!(!b.rungs(r.sparsity.unwrap_or(1e-4)).is_empty());
                    assert!(skillgraft::store::service::valid_name(&r.task_name));
                }
            }
        }
    }
});
