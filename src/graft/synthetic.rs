//! Synthetic tasks for benchmarks, device checks and tests: distinct random grafts of one sparsity on a base
//! model, all with the SST-2 prototype head.

use super::graftable::top_k;
use super::localize::budget;
use super::{entries_from_mask, FlatRegion, Graft, HeadTensor, RegionSpec};
use crate::model::{BaseModel, HeadKind, HeadSpec, Pooling};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// A generator of synthetic grafts for one base.
pub struct SyntheticTasks {
    region_spec: RegionSpec,
    spec: HeadSpec,
    task: crate::data::TaskSpec,
    head: BTreeMap<String, HeadTensor>,
    region: FlatRegion,
    pre: Vec<f32>,
    /// Parameters per graft.
    pub size: usize,
    base_ref: serde_json::Value,
}

impl SyntheticTasks {
    /// Grafts of `sparsity` of the encoder layers of `base`.
    pub fn new(base: &BaseModel, sparsity: f64) -> Result<Self> {
        Self::with_region(base, sparsity, &Default::default())
    }

    /// Grafts of `sparsity` of `region`.
    pub fn with_region(base: &BaseModel, sparsity: f64, region: &RegionSpec) -> Result<Self> {
        let task = crate::data::builtin_task("sst2").context("sst2")?;
        let spec = base.head_spec(HeadKind::Prototype, &task, 0.05, Pooling::Mean)?;
        let head_t = base.init_head(&spec, 0)?;
        let head = Graft::head_from_tensors(&["prototype.weight".to_string()], &head_t)?;
        let region_spec = region.clone();
        let region = FlatRegion::new(&region_spec, &base.model.weights.tensors)?;
        let pre = region.gather(&base.model.weights.tensors)?;
        let size = budget(sparsity, region.len());
        let base_ref = serde_json::json!({
            "name": base.name, "content_hash": base.model.weights.content_hash,
            "architecture": base.model.config.architecture()?.prefix(),
            "parameters": base.model.body_parameter_count(),
        });
        Ok(Self {
            region_spec,
            spec,
            task,
            head,
            region,
            pre,
            size,
            base_ref,
        })
    }

    /// Parameters in the region the grafts are drawn from.
    pub fn region_len(&self) -> usize {
        self.region.len()
    }

    /// Graft number `i`: a random mask, each grafted value moved by up to ±0.01 (deterministic in `i`).
    pub fn graft(&self, i: usize) -> Result<Graft> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let scores: Vec<f32> = (0..self.region.len())
            .map(|_| rng.random::<f32>())
            .collect();
        let mask = top_k(&scores, self.size);
        let mut values = self.pre.clone();
        for &m in &mask {
            values[m as usize] += rng.random_range(-0.01..0.01);
        }
        Ok(Graft {
            manifest: serde_json::from_value(serde_json::json!({
                "format": 1, "base": self.base_ref,
                "region": self.region_spec, "region_size": self.region.len(), "size": self.size, "method": "synthetic",
                "hyper_parameters": null, "head": self.spec, "task": self.task, "metrics": null,
                "created_unix": 0}))?,
            entries: entries_from_mask(&self.region, &mask, &values),
            head: self.head.clone(),
        })
    }
}
