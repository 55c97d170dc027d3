//! Synthetic grafts made with the library (no fine-tuning): the SST-2 prototype head on the base, with an
//! optional set of grafted values, ready to import over HTTP.
#![allow(dead_code)]

use serde_json::json;
use skillgraft::graft::{Graft, GraftEntry};
use skillgraft::model::BaseModel;

/// A tensor every BERT base has.
pub const QUERY0: &str = "encoder.layer.0.attention.self.query.weight";

/// The base model, loaded once per test process.
pub fn base(model: &std::path::Path) -> BaseModel {
    BaseModel::load(model, &candle_core::Device::Cpu, 128).expect("load base")
}

/// A valid graft: SST-2 prototype head, and `k` grafted values in [`QUERY0`] (each 0.01 × (i + 1)).
pub fn synthetic(base: &BaseModel, k: usize) -> Graft {
    let task = skillgraft::data::builtin_task("sst2").expect("sst2");
    let spec = base
        .head_spec(
            skillgraft::model::HeadKind::Prototype,
            &task,
            0.05,
            skillgraft::model::Pooling::Mean,
        )
        .expect("head spec");
    let head = base.init_head(&spec, 0).expect("head");
    let shape = base.model.weights.tensors[QUERY0].dims().to_vec();
    let entries = if k == 0 {
        vec![]
    } else {
        vec![GraftEntry {
            name: QUERY0.into(),
            shape,
            indices: (0..k as u32).map(|i| i * 7).collect(),
            values: (0..k).map(|i| 0.01 * (i + 1) as f32).collect(),
        }]
    };
    Graft {
        manifest: serde_json::from_value(json!({
            "format": 1, "base": {"name": base.name, "content_hash": base.model.weights.content_hash,
                "architecture": "bert", "parameters": base.model.body_parameter_count()},
            "region": {}, "region_size": 10_000_000, "size": k, "method": "none", "hyper_parameters": null,
            "head": spec, "task": task,
            "metrics": {"variants": [{"name": "graft", "temperature": 1.5}]}, "created_unix": 0}))
        .expect("manifest"),
        entries,
        head: Graft::head_from_tensors(&["prototype.weight".to_string()], &head).expect("head tensors"),
    }
}
