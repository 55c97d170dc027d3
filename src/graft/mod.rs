//! Grafts: sparse task skills stored as (index, fine-tuned value) pairs per base tensor, applied to and
//! reverted from a loaded base model in place.
//!
//! File format (one safetensors file): for every touched base tensor `NAME`, `graft.NAME.indices` (U32, flat
//! row-major indices into the tensor, strictly increasing) and `graft.NAME.values` (F32, the fine-tuned
//! values there); the head's tensors as `head.NAME` (F32); and in the header metadata, key `skillgraft`, a
//! JSON [`GraftManifest`] (base model hash, region, method and hyper-parameters, metrics, head and task).

pub mod budget;
pub mod evaluate;
pub mod graftable;
pub mod job;
pub mod localize;
pub mod manifest;
pub mod methods;
pub mod overlap;
pub mod placement;
pub mod region;
pub mod synthetic;
pub mod validate;

use crate::model::ops::{scatter_set, to_f32_vec};
use crate::store::{atomic_write, safetensors_bytes, RawTensor};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
pub use manifest::{BaseRef, GraftManifest};
pub use region::{FlatRegion, RegionSpec};
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the graft file format.
pub const GRAFT_FORMAT: u32 = 1;

/// The grafted values of one base tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct GraftEntry {
    /// Canonical tensor name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Flat indices, strictly increasing.
    pub indices: Vec<u32>,
    /// Fine-tuned values at those indices.
    pub values: Vec<f32>,
}

impl GraftEntry {
    /// The base tensor this entry changes, checked to exist with the entry's shape.
    pub fn base_tensor<'t>(&self, tensors: &'t BTreeMap<String, Tensor>) -> Result<&'t Tensor> {
        let Some(t) = tensors.get(&self.name) else {
            bail!(
                "graft touches `{}`, which the base does not have",
                self.name
            );
        };
        if t.dims() != self.shape.as_slice() {
            bail!(
                "graft tensor `{}` has shape {:?}, the base {:?}",
                self.name,
                self.shape,
                t.dims()
            );
        }
        Ok(t)
    }
}

/// A head tensor carried by a graft.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values (row-major).
    pub values: Vec<f32>,
}

/// A task's graft: sparse body values plus the task head.
#[derive(Debug, Clone, PartialEq)]
pub struct Graft {
    /// Metadata.
    pub manifest: GraftManifest,
    /// Touched tensors, sorted by name.
    pub entries: Vec<GraftEntry>,
    /// Head tensors by canonical name.
    pub head: BTreeMap<String, HeadTensor>,
}

/// The values a graft overwrote, to put back.
#[derive(Debug)]
pub struct AppliedGraft {
    /// (target tensor, indices on its device, the values it held there).
    saved: Vec<(Tensor, Tensor, Tensor)>,
}

impl AppliedGraft {
    /// Restores the overwritten values (bit for bit), on the tensors' own device.
    pub fn revert(self) -> Result<()> {
        for (t, idx, old) in self.saved.into_iter().rev() {
            scatter_set(&t, &idx, &old)?;
        }
        Ok(())
    }
}

/// A graft's indices and values uploaded to a device in a model's dtype, ready to be written into the weights
/// in place (and reverted) without host round trips.
#[derive(Debug, Clone)]
pub struct ResidentGraft {
    /// (tensor name, shape, indices (u32), values in the model's dtype).
    entries: Vec<(String, Vec<usize>, Tensor, Tensor)>,
}

impl ResidentGraft {
    /// Bytes the graft occupies on its device.
    pub fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|(_, _, i, v)| i.elem_count() * 4 + v.elem_count() * v.dtype().size_in_bytes())
            .sum()
    }

    /// Writes the values into the model tensors in place and returns what they overwrote.
    pub fn apply(&self, tensors: &BTreeMap<String, Tensor>) -> Result<AppliedGraft> {
        let mut applied = AppliedGraft {
            saved: Vec::with_capacity(self.entries.len()),
        };
        let result = (|| -> Result<()> {
            for (name, shape, idx, values) in &self.entries {
                let t = tensors.get(name).with_context(|| {
                    format!("graft touches `{name}`, which the model does not have")
                })?;
                if t.dims() != shape.as_slice() {
                    bail!(
                        "graft tensor `{name}` has shape {shape:?}, the model {:?}",
                        t.dims()
                    );
                }
                if t.dtype() != values.dtype() || !t.device().same_device(values.device()) {
                    bail!("graft tensor `{name}`: made for another dtype or device than the model");
                }
                let old = t.flatten_all()?.index_select(idx, 0)?;
                scatter_set(t, idx, values)?;
                applied.saved.push((t.clone(), idx.clone(), old));
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(applied),
            Err(e) => {
                applied.revert()?;
                Err(e)
            }
        }
    }
}

/// Converts a sorted list of flat region indices into per-tensor entries with values from `source`.
pub fn entries_from_mask(region: &FlatRegion, flat: &[u32], source: &[f32]) -> Vec<GraftEntry> {
    let mut entries: Vec<GraftEntry> = Vec::new();
    for &f in flat {
        let t = region.tensor_of(f as usize);
        let local = (f as usize - region.offsets[t]) as u32;
        let name = &region.names[t];
        if entries.last().is_none_or(|e| &e.name != name) {
            entries.push(GraftEntry {
                name: name.clone(),
                shape: region.shapes[t].clone(),
                indices: Vec::new(),
                values: Vec::new(),
            });
        }
        if let Some(e) = entries.last_mut() {
            e.indices.push(local);
            e.values.push(source[f as usize]);
        }
    }
    entries
}

impl Graft {
    /// Number of grafted parameters.
    pub fn size(&self) -> usize {
        self.entries.iter().map(|e| e.indices.len()).sum()
    }

    /// Flat region indices of the graft (sorted), for overlap computations.
    pub fn flat_indices(&self, region: &FlatRegion) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.size());
        for e in &self.entries {
            let Some(t) = region.names.iter().position(|n| n == &e.name) else {
                bail!("graft tensor `{}` is outside the region", e.name);
            };
            out.extend(e.indices.iter().map(|&i| region.offsets[t] as u32 + i));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Flat region indices (sorted) and the graft's own values at them: the point θ_pre + graft.
    pub fn flat_point(&self, region: &FlatRegion) -> Result<(Vec<u32>, Vec<f32>)> {
        entries_point(&self.entries, region)
    }

    /// The budget the graft was localized at, ⌈sparsity · region size⌉, when its hyper-parameters say
    /// (else its size).
    pub fn budget(&self) -> usize {
        self.manifest
            .sparsity()
            .filter(|s| *s > 0.0 && *s <= 1.0)
            .map_or(self.size(), |s| {
                localize::budget(s, self.manifest.region_size)
            })
    }

    /// Checks internal consistency: lengths, sorted in-range indices, finite values.
    pub fn validate(&self) -> Result<()> {
        for e in &self.entries {
            let n: usize = e.shape.iter().product();
            if e.indices.len() != e.values.len() {
                bail!(
                    "graft entry `{}`: {} indices but {} values",
                    e.name,
                    e.indices.len(),
                    e.values.len()
                );
            }
            if e.indices.windows(2).any(|w| w[0] >= w[1]) {
                bail!(
                    "graft entry `{}`: indices are not strictly increasing",
                    e.name
                );
            }
            if e.indices.last().is_some_and(|&i| i as usize >= n) {
                bail!(
                    "graft entry `{}`: index out of range for shape {:?}",
                    e.name,
                    e.shape
                );
            }
            if e.values.iter().any(|v| !v.is_finite()) {
                bail!("graft entry `{}`: non-finite value", e.name);
            }
        }
        for (name, h) in &self.head {
            if h.values.len() != h.shape.iter().product::<usize>() {
                bail!(
                    "head tensor `{name}`: {} values for shape {:?}",
                    h.values.len(),
                    h.shape
                );
            }
        }
        if self.size() != self.manifest.size {
            bail!(
                "graft manifest says {} parameters, the file holds {}",
                self.manifest.size,
                self.size()
            );
        }
        Ok(())
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut raws = Vec::new();
        for e in &self.entries {
            raws.push(RawTensor::from_u32(
                format!("graft.{}.indices", e.name),
                &e.indices,
            ));
            raws.push(RawTensor::from_f32(
                format!("graft.{}.values", e.name),
                vec![e.values.len()],
                &e.values,
                safetensors::Dtype::F32,
            )?);
        }
        for (name, h) in &self.head {
            raws.push(RawTensor::from_f32(
                format!("head.{name}"),
                h.shape.clone(),
                &h.values,
                safetensors::Dtype::F32,
            )?);
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert(
            "skillgraft".to_string(),
            serde_json::to_string(&self.manifest)?,
        );
        meta.insert("shapes".to_string(), {
            let shapes: BTreeMap<&str, &Vec<usize>> = self
                .entries
                .iter()
                .map(|e| (e.name.as_str(), &e.shape))
                .collect();
            serde_json::to_string(&shapes)?
        });
        safetensors_bytes(&raws, Some(meta))
    }

    /// Parses safetensors bytes, with errors that say what is wrong (never a panic).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("not a valid graft file (safetensors: {e})"))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("not a valid graft file (safetensors header: {e})"))?;
        let meta = header
            .metadata()
            .as_ref()
            .context("not a graft file: no skillgraft metadata")?;
        let manifest: GraftManifest = serde_json::from_str(
            meta.get("skillgraft")
                .context("not a graft file: no skillgraft metadata")?,
        )
        .context("graft metadata is not valid")?;
        if manifest.format != GRAFT_FORMAT {
            bail!(
                "graft format {} is not supported (this build reads {GRAFT_FORMAT})",
                manifest.format
            );
        }
        let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_str(
            meta.get("shapes")
                .context("graft file has no tensor shapes")?,
        )
        .context("graft shapes are not valid")?;
        let mut entries = Vec::new();
        let mut head = BTreeMap::new();
        let read_f32 = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let v = st
                .tensor(name)
                .map_err(|e| anyhow::anyhow!("graft file: {name}: {e}"))?;
            if v.dtype() != safetensors::Dtype::F32 {
                bail!("graft file: `{name}` must be F32");
            }
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((v.shape().to_vec(), vals))
        };
        for (name, shape) in &shapes {
            let iname = format!("graft.{name}.indices");
            let v = st
                .tensor(&iname)
                .map_err(|e| anyhow::anyhow!("graft file: {iname}: {e}"))?;
            if v.dtype() != safetensors::Dtype::U32 {
                bail!("graft file: `{iname}` must be U32");
            }
            let indices = v
                .data()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let (_, values) = read_f32(&format!("graft.{name}.values"))?;
            entries.push(GraftEntry {
                name: name.clone(),
                shape: shape.clone(),
                indices,
                values,
            });
        }
        for name in st.names() {
            if let Some(h) = name.strip_prefix("head.") {
                let (shape, values) = read_f32(name)?;
                head.insert(h.to_string(), HeadTensor { shape, values });
            } else if !name.starts_with("graft.") {
                bail!("graft file: unexpected tensor `{name}`");
            }
        }
        let g = Graft {
            manifest,
            entries,
            head,
        };
        g.validate()?;
        Ok(g)
    }

    /// Writes the graft atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_write(path, &self.to_bytes()?)
    }

    /// Reads a graft file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read graft {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
    }

    /// Checks that the graft fits a loaded base (hash, names, shapes).
    pub fn check_base(&self, tensors: &BTreeMap<String, Tensor>, content_hash: &str) -> Result<()> {
        if self.manifest.base.content_hash != content_hash {
            bail!(
                "graft was made for base `{}` ({}…), not this base ({}…)",
                self.manifest.base.name,
                &self.manifest.base.content_hash.get(..12).unwrap_or(""),
                content_hash.get(..12).unwrap_or("")
            );
        }
        for e in &self.entries {
            e.base_tensor(tensors)?;
        }
        Ok(())
    }

    /// Uploads the graft's indices and values to `device` in `dtype`.
    pub fn resident(&self, device: &Device, dtype: candle_core::DType) -> Result<ResidentGraft> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let n = e.indices.len();
            let idx = Tensor::from_slice(&e.indices, n, device)?;
            let values = Tensor::from_slice(&e.values, n, device)?.to_dtype(dtype)?;
            entries.push((e.name.clone(), e.shape.clone(), idx, values));
        }
        Ok(ResidentGraft { entries })
    }

    /// Writes the graft's values into the model tensors in place (on their device) and returns what it
    /// overwrote.
    pub fn apply(&self, tensors: &BTreeMap<String, Tensor>) -> Result<AppliedGraft> {
        let Some(first) = tensors.values().next() else {
            bail!("graft: the model has no tensors");
        };
        let resident = self.resident(first.device(), first.dtype())?;
        resident.apply(tensors)
    }

    /// The head tensors as candle tensors on `device`.
    pub fn head_tensors(&self, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, h) in &self.head {
            out.insert(
                name.clone(),
                Tensor::from_vec(h.values.clone(), h.shape.clone(), device)?,
            );
        }
        Ok(out)
    }

    /// Head tensors taken from a tensor map.
    pub fn head_from_tensors(
        names: &[String],
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, HeadTensor>> {
        let mut out = BTreeMap::new();
        for n in names {
            let t = tensors
                .get(n)
                .with_context(|| format!("head tensor `{n}` is missing"))?;
            out.insert(
                n.clone(),
                HeadTensor {
                    shape: t.dims().to_vec(),
                    values: to_f32_vec(t)?,
                },
            );
        }
        Ok(out)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Flat region indices (sorted) of graft entries and their values.
pub fn entries_point(entries: &[GraftEntry], region: &FlatRegion) -> Result<(Vec<u32>, Vec<f32>)> {
    let mut pairs = Vec::new();
    for e in entries {
        let Some(t) = region.names.iter().position(|n| n == &e.name) else {
            bail!("graft tensor `{}` is outside the region", e.name);
        };
        let o = region.offsets[t] as u32;
        pairs.extend(e.indices.iter().zip(&e.values).map(|(&i, &v)| (o + i, v)));
    }
    pairs.sort_unstable_by_key(|p| p.0);
    Ok(pairs.into_iter().unzip())
}
