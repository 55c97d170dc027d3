//! A base model described without its weights: its files, config, tokenizer, device and dtype, and every
//! tensor's shape and stored dtype ([`WeightInfo`], defined beside the weights it describes). A process that hands its weights to one owner (the
//! service gives them to its engine) keeps this beside it: enough to check uploads and grafts against the
//! base, to size regions, and to read the weights again from the files when a job needs its own copy.

use super::heads::{HeadSpec, Pooling};
use super::tokenize::TextEncoder;
use super::weights::{LoadedModel, ModelFiles, WeightInfo};
use super::{BaseModel, HeadKind, ModelConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device};

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
