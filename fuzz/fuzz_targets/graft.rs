//! The graft reader and full validation: any bytes → `Graft::from_bytes` → `validate` against a small
//! synthetic base. Never a panic; an accepted graft satisfies every invariant the engine relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgraft::graft::validate::{validate, BaseFacts, MAX_ABS_VALUE};
use skillgraft::graft::Graft;
use skillgraft::model::Architecture;
use std::sync::OnceLock;

const HIDDEN: usize = 8;

fn facts() -> &'static BaseFacts {
    static F: OnceLock<BaseFacts> = OnceLock::new();
    F.get_or_init(|| BaseFacts {
        content_hash: "fuzzbase".into(),
        architecture: Architecture::Bert,
        hidden: HIDDEN,
        vocab: 50,
        shapes: [
            (
                "encoder.layer.0.attention.self.query.weight",
                vec![HIDDEN, HIDDEN],
            ),
            ("encoder.layer.0.attention.self.query.bias", vec![HIDDEN]),
            ("encoder.layer.0.output.LayerNorm.weight", vec![HIDDEN]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect(),
    })
}

/// Valid grafts for the synthetic base (one per head kind that needs no base MLM head).
fn seeds() -> Vec<Vec<u8>> {
    let heads = [
        serde_json::json!({"kind": "prototype", "descriptions": ["It was bad.", "It was good."], "temperature": 0.05}),
        serde_json::json!({"kind": "linear", "num_labels": 2, "pooling": "mean"}),
        serde_json::json!({"kind": "bert_classifier", "num_labels": 2}),
    ];
    heads
        .iter()
        .filter_map(|head| {
            let spec: skillgraft::model::HeadSpec = serde_json::from_value(head.clone()).ok()?;
            let manifest = serde_json::from_value(serde_json::json!({
                "format": 1, "base": {"name": "fuzz", "content_hash": "fuzzbase", "architecture": "bert", "parameters": 100},
                "region": {}, "region_size": 100, "size": 3, "method": "paper", "hyper_parameters": null,
                "head": spec, "task": null,
                "metrics": {"variants": [{"name": "graft", "temperature": 1.2}]}, "created_unix": 0})).ok()?;
            let head = skillgraft::graft::validate::head_shapes(&spec, facts())
                .into_iter()
                .map(|(n, shape)| {
                    let len = shape.iter().product::<usize>();
                    (n, skillgraft::graft::HeadTensor { shape, values: (0..len).map(|i| i as f32 * 0.01).collect() })
                })
                .collect();
            let g = Graft {
                manifest,
                entries: vec![skillgraft::graft::GraftEntry {
                    name: "encoder.layer.0.attention.self.query.weight".into(),
                    shape: vec![HIDDEN, HIDDEN],
                    indices: vec![1, 5, 9],
                    values: vec![0.5, -0.25, 1.0],
                }],
                head,
            };
            g.to_bytes().ok()
        })
        .collect()
}

fuzz_target!(init: {
    skillgraft_fuzz::write_seeds(seeds);
}, |data: &[u8]| {
    let Ok(g) = Graft::from_bytes(data) else { return };
    if validate(&g, facts()).is_ok() {
        for e in &g.entries {
            let n: usize = facts().shapes[&e.name].iter().product();
            assert!(e.indices.windows(2).all(|w| w[0] < w[1]));
            assert!(e.indices.iter().all(|&i| (i as usize) < n));
            assert!(e.values.iter().all(|v| v.is_finite() && v.abs() <= MAX_ABS_VALUE));
        }
        for h in g.head.values() {
            assert_eq!(h.values.len(), h.shape.iter().product::<usize>());
        }
        // What was accepted survives a round trip.
        let again = Graft::from_bytes(&g.to_bytes().expect("serialize")).expect("re-read");
        assert_eq!(again, g);
    }
});
