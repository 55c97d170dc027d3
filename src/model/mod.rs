//! Model code: BERT/RoBERTa encoders, task heads, loading and tokenization.
//!
//! The encoder is our own (not candle-transformers'): candle's fused LayerNorm has no backward pass, so a
//! model built on it silently trains only its head. Ours is differentiable end to end ([`ops`]).

pub mod config;
pub mod encoder;
pub mod heads;
pub mod ops;
pub mod tokenize;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use encoder::{Encoder, EncoderInput};
pub use heads::{Classifier, HeadSpec, Pooling, TaskHead};
pub use tokenize::{EncodedBatch, TextEncoder, TextInput};
pub use weights::{LoadedModel, ModelFiles, WeightMap};

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::BTreeMap;

/// The trainable tensors of a model instance: `Var`s that share storage with the model's tensors.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    /// Canonical names, sorted.
    pub names: Vec<String>,
    /// The variables, aligned with `names`.
    pub vars: Vec<Var>,
}

impl ParamSet {
    /// Replaces the selected tensors of `tensors` by variables (a copy each) and returns them.
    pub fn make_trainable(
        tensors: &mut BTreeMap<String, Tensor>,
        select: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let mut set = ParamSet::default();
        for (name, t) in tensors.iter_mut() {
            if select(name) {
                let var = Var::from_tensor(t)?;
                *t = var.as_tensor().clone();
                set.names.push(name.clone());
                set.vars.push(var);
            }
        }
        Ok(set)
    }

    /// Total number of trainable values.
    pub fn numel(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// The gradient of every variable; an error names the first one that received none (a cut graph).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.vars.len());
        for (name, var) in self.names.iter().zip(&self.vars) {
            match grads.get(var.as_tensor()) {
                Some(g) => out.push(g.clone()),
                None => bail!(
                    "trainable tensor `{name}` received no gradient: the autograd graph is cut"
                ),
            }
        }
        Ok(out)
    }
}

/// A tensor map keyed the way candle's `VarBuilder` expects.
pub fn to_hash_map(tensors: &BTreeMap<String, Tensor>) -> std::collections::HashMap<String, Tensor> {
    tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
