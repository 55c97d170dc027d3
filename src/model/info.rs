//! A base model described without its weights: its files, config, tokenizer, device and dtype, and every
//! tensor's shape and stored dtype ([`WeightInfo`]). A process that hands its weights to one owner (the
//! service gives them to its engine) keeps this beside it: enough to check uploads and grafts against the
//! base, to size regions, and to read the weights again from the files when a job needs its own copy.

use super::heads::{HeadSpec, Pooling};
use super::tokenize::TextEncoder;
use super::weights::{LoadedModel, ModelFiles, WeightMap};
use super::{BaseModel, HeadKind, ModelConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::collections::BTreeMap;

/// Every tensor's shape and stored dtype, by canonical name, and the weight files' content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightInfo {
    /// Shape of every tensor.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Stored dtype of every tensor, as safetensors names it.
    pub stored_dtypes: BTreeMap<String, String>,
    /// SHA-256 of the weight files.
    pub content_hash: String,
}

impl WeightInfo {
    /// The shapes and dtypes of loaded weights.
    pub fn of(weights: &WeightMap) -> Self {
        Self {
            shapes: weights
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec()))
                .collect(),
            stored_dtypes: weights.stored_dtypes.clone(),
            content_hash: weights.content_hash.clone(),
        }
    }

    /// Number of values in the body tensors (embeddings, encoder, pooler).
    pub fn body_parameter_count(&self) -> usize {
        self.shapes
            .iter()
            .filter(|(n, _)| super::weights::is_body_name(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// A base model without its weights.
#[derive(Clone)]
pub struct BaseInfo {
    /// Display name (the directory name).
    pub name: String,
    /// Where the model's files are.
    pub files: ModelFiles,
    /// Parsed config.json.
    pub config: ModelConfig,
    /// Tokenizer.
    pub tokenizer: TextEncoder,
    /// Compute device.
    pub device: Device,
    /// Inference dtype.
    pub dtype: DType,
    /// Shapes and stored dtypes of the weights.
    pub weights: WeightInfo,
}

impl BaseInfo {
    /// The description of a loaded base.
    pub fn of(base: &BaseModel) -> Self {
        Self {
            name: base.name.clone(),
            files: base.model.files.clone(),
            config: base.model.config.clone(),
            tokenizer: base.tokenizer.clone(),
            device: base.device.clone(),
            dtype: base.dtype,
            weights: WeightInfo::of(&base.model.weights),
        }
    }

    /// Builds a head spec of `kind` for a task on this base (see [`BaseModel::head_spec`]).
    pub fn head_spec(
        &self,
        kind: HeadKind,
        task: &crate::data::TaskSpec,
        temperature: f64,
        pooling: Pooling,
    ) -> Result<HeadSpec> {
        super::head_spec_for(&self.tokenizer, kind, task, temperature, pooling)
    }

    /// The base with its weights read again from its files, in f32 on its device: a copy of its own for
    /// whoever needs one for a while (a localization job). Refused when the files changed since this base
    /// was described.
    pub fn load(&self) -> Result<BaseModel> {
        let model = LoadedModel::load(&self.files.dir, &self.device)?;
        if model.weights.content_hash != self.weights.content_hash {
            bail!(
                "the base model's weight files changed since the server started (content hash {} now, {} then): restart the server",
                model.weights.content_hash,
                self.weights.content_hash
            );
        }
        Ok(BaseModel {
            model,
            tokenizer: self.tokenizer.clone(),
            device: self.device.clone(),
            dtype: DType::F32,
            name: self.name.clone(),
        })
    }
}
