//! What the engine keeps per task between batches: the task's graft in the form its batches need, on the
//! model's device, built on first use and kept in a cache bounded in bytes (least recently used out first).
//!
//! - A task whose graft touches only encoder layers is served in mixed batches: its deltas (graft value − base
//!   value) packed for the sparse per-row corrections ([`SparsePack`]).
//! - A task whose graft touches the embeddings is served on its own: its indices and values on the device
//!   ([`ResidentGraft`]), written into the weights in place for its rows and reverted after.
//! - Its head: on the host for prototype and linear heads ([`PooledHead`]), on the device otherwise.

use super::ServedTask;
use crate::graft::ResidentGraft;
use crate::model::ops::{SiteDelta, SiteKind, SparsePack};
use crate::model::pooled_head::PooledHead;
use crate::model::{to_hash_map, ModelConfig, TaskHead};
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How a task's body graft is served.
pub enum Body {
    /// Sparse per-row corrections in a shared forward pass.
    Mixed(SparsePack),
    /// Written into the weights in place for a forward pass of its own.
    InPlace(ResidentGraft),
}

/// How a task's head is evaluated.
pub enum Head {
    /// On the host, from a pooled vector.
    Pooled(PooledHead),
    /// On the device, from the hidden states.
    Device(TaskHead),
}

/// A task ready to be served.
pub struct Resident {
    /// Its body graft.
    pub body: Body,
    /// Its head.
    pub head: Head,
    /// Bytes it holds (device and host).
    pub bytes: usize,
}

/// The encoder's dense and LayerNorm layers ("sites"), by canonical name prefix.
pub struct Sites {
    /// Kinds, by site index.
    pub kinds: Vec<SiteKind>,
    /// Site index by name prefix (e.g. `encoder.layer.0.attention.self.query`).
    pub index: HashMap<String, usize>,
}

impl Sites {
    /// Every `encoder.layer.*` weight: 2-D weights are dense layers, 1-D weights LayerNorms.
    pub fn of(tensors: &BTreeMap<String, Tensor>) -> Self {
        let mut kinds = Vec::new();
        let mut index = HashMap::new();
        for (name, t) in tensors {
            let Some(prefix) = name.strip_suffix(".weight") else {
                continue;
            };
            if !name.starts_with("encoder.layer.") {
                continue;
            }
            let kind = match t.dims() {
                [out_dim, in_dim] => SiteKind::Dense {
                    in_dim: *in_dim,
                    out_dim: *out_dim,
                },
                [dim] => SiteKind::Norm { dim: *dim },
                _ => continue,
            };
            index.insert(prefix.to_string(), kinds.len());
            kinds.push(kind);
        }
        Self { kinds, index }
    }

    /// The site and whether `name` is its weight (else its bias), for a graft tensor name.
    fn of_tensor(&self, name: &str) -> Option<(usize, bool)> {
        if let Some(p) = name.strip_suffix(".weight") {
            return self.index.get(p).map(|&s| (s, true));
        }
        let p = name.strip_suffix(".bias")?;
        self.index.get(p).map(|&s| (s, false))
    }
}

/// The cache of resident tasks.
pub struct ResidentCache {
    entries: HashMap<(String, u64), (Arc<Resident>, u64)>,
    clock: u64,
    bytes: usize,
    max_bytes: usize,
}

impl ResidentCache {
    /// An empty cache holding at most `max_bytes` (at least one task is always kept).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            clock: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes held and tasks held.
    pub fn usage(&self) -> (usize, usize) {
        (self.bytes, self.entries.len())
    }

    /// The task's resident form, built by `build` on a miss. Older versions of the same name are dropped.
    pub fn get_or_build(
        &mut self,
        task: &ServedTask,
        build: impl FnOnce() -> Result<Resident>,
    ) -> Result<Arc<Resident>> {
        self.clock += 1;
        let key = (task.name.clone(), task.version);
        if let Some((r, used)) = self.entries.get_mut(&key) {
            *used = self.clock;
            return Ok(r.clone());
        }
        let stale: Vec<_> = self
            .entries
            .keys()
            .filter(|(n, v)| n == &task.name && *v != task.version)
            .cloned()
            .collect();
        for k in stale {
            self.remove(&k);
        }
        let r = Arc::new(build()?);
        self.bytes += r.bytes;
        self.entries.insert(key.clone(), (r.clone(), self.clock));
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let oldest = self
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.remove(&k),
                None => break,
            }
        }
        Ok(r)
    }

    fn remove(&mut self, key: &(String, u64)) {
        if let Some((r, _)) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(r.bytes);
        }
    }
}

/// Whether a task can share forward passes with others (its graft touches only encoder layers).
pub fn mixable(task: &ServedTask, sites: &Sites) -> bool {
    task.graft
        .entries
        .iter()
        .all(|e| sites.of_tensor(&e.name).is_some())
}

/// Builds a task's resident form on `device` in `dtype`, against the engine's own weights `tensors`.
pub fn build(
    task: &ServedTask,
    tensors: &BTreeMap<String, Tensor>,
    sites: &Sites,
    config: &ModelConfig,
    word_embeddings: &Tensor,
    device: &Device,
    dtype: DType,
) -> Result<Resident> {
    let graft = &task.graft;
    let (body, body_bytes) = if mixable(task, sites) {
        let mut per_site: BTreeMap<usize, SiteDelta> = BTreeMap::new();
        for e in &graft.entries {
            let (s, is_weight) = sites
                .of_tensor(&e.name)
                .ok_or_else(|| anyhow!("graft tensor `{}` is not an encoder layer", e.name))?;
            let t = e.base_tensor(tensors)?;
            let n = t.elem_count();
            if let Some(&bad) = e.indices.iter().find(|&&i| i as usize >= n) {
                bail!("graft tensor `{}`: index {bad} out of range", e.name);
            }
            let idx = Tensor::from_slice(&e.indices, e.indices.len(), t.device())?;
            let base: Vec<f32> = t
                .flatten_all()?
                .index_select(&idx, 0)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            let pairs = e
                .indices
                .iter()
                .zip(e.values.iter().zip(&base))
                .map(|(&i, (&v, &b))| (i, v - b));
            let d = per_site.entry(s).or_default();
            if is_weight {
                d.weight.extend(pairs);
            } else {
                d.bias.extend(pairs);
            }
        }
        let deltas: Vec<(usize, SiteDelta)> = per_site.into_iter().collect();
        let pack = SparsePack::new(&sites.kinds, &deltas, device)?;
        let bytes = pack.bytes();
        (Body::Mixed(pack), bytes)
    } else {
        let g = graft.resident(device, dtype)?;
        let bytes = g.bytes();
        (Body::InPlace(g), bytes)
    };
    let head_tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = graft
        .head
        .iter()
        .map(|(k, h)| (k.clone(), (h.shape.clone(), h.values.clone())))
        .collect();
    let spec = &graft.manifest.head;
    let (head, head_bytes) = match PooledHead::from_spec(spec, &head_tensors, config.hidden_size)? {
        Some(h) => {
            let b = h.bytes();
            (Head::Pooled(h), b)
        }
        None => {
            let tensors = graft.head_tensors(device)?;
            let bytes = tensors.values().map(|t| t.elem_count() * 4).sum();
            let vb = candle_nn::VarBuilder::from_tensors(to_hash_map(&tensors), dtype, device);
            let h = TaskHead::load(spec, vb, config, word_embeddings)?;
            (Head::Device(h), bytes)
        }
    };
    Ok(Resident {
        body,
        head,
        bytes: body_bytes + head_bytes,
    })
}
