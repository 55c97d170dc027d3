//! Heads that need only one pooled vector per input (prototype and linear heads), evaluated on the host.
//!
//! A batch that mixes tasks pools every row once on the device and copies the pooled vectors to the host in
//! one transfer; each row's own head is then a few dot products (classes × hidden), so serving many tasks
//! costs no per-task device work. The math is exactly [`TaskHead::forward`](super::TaskHead::forward)'s.

use super::heads::{first_token, mean_pool, unit_rows, HeadSpec, Pooling};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Which pooled vector a head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PooledInput {
    /// The first token's hidden state.
    Cls,
    /// The mean over real tokens.
    Mean,
    /// The mean over real tokens, L2-normalized (sentence embedding).
    UnitMean,
}

/// A head evaluated on the host from one pooled vector per input.
#[derive(Debug, Clone)]
pub struct PooledHead {
    /// What it reads.
    pub input: PooledInput,
    /// (classes × hidden), row-major.
    weight: Vec<f32>,
    /// Per class (empty: none).
    bias: Vec<f32>,
    /// Logits are divided by this (prototype temperature; 1 for linear heads).
    scale: f32,
    classes: usize,
    hidden: usize,
}

impl PooledHead {
    /// The host head for `spec` from its tensors (name → (shape, values)), or `None` when the head needs more
    /// than a pooled vector (classifier poolers, prompt heads).
    pub fn from_spec(
        spec: &HeadSpec,
        tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        hidden: usize,
    ) -> Result<Option<Self>> {
        let classes = spec.num_labels();
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (s, v) = tensors
                .get(name)
                .with_context(|| format!("head tensor `{name}` is missing"))?;
            if s.as_slice() != shape {
                bail!("head tensor `{name}` has shape {s:?}, expected {shape:?}");
            }
            Ok(v.clone())
        };
        Ok(match spec {
            HeadSpec::Prototype { temperature, .. } => {
                if !(temperature.is_finite() && *temperature > 0.0) {
                    bail!("prototype temperature {temperature} must be finite and > 0");
                }
                Some(Self {
                    input: PooledInput::UnitMean,
                    weight: get("prototype.weight", &[classes, hidden])?,
                    bias: Vec::new(),
                    scale: *temperature as f32,
                    classes,
                    hidden,
                })
            }
            HeadSpec::Linear { pooling, .. } => Some(Self {
                input: match pooling {
                    Pooling::Cls => PooledInput::Cls,
                    Pooling::Mean => PooledInput::Mean,
                },
                weight: get("classifier.weight", &[classes, hidden])?,
                bias: get("classifier.bias", &[classes])?,
                scale: 1.0,
                classes,
                hidden,
            }),
            _ => None,
        })
    }

    /// Class logits of one pooled vector.
    pub fn logits(&self, pooled: &[f32]) -> Vec<f32> {
        (0..self.classes)
            .map(|c| {
                let w = &self.weight[c * self.hidden..(c + 1) * self.hidden];
                let mut z: f32 = w.iter().zip(pooled).map(|(a, b)| a * b).sum();
                if let Some(b) = self.bias.get(c) {
                    z += b;
                }
                z / self.scale
            })
            .collect()
    }

    /// Host bytes held.
    pub fn bytes(&self) -> usize {
        (self.weight.len() + self.bias.len()) * 4
    }
}

/// One pooled vector per row of `hidden` (batch, seq, hidden), computed in f32 on its device and copied to the
/// host in one transfer; `mask` is the attention mask (batch, seq).
pub fn pooled_vectors(hidden: &Tensor, mask: &Tensor, input: PooledInput) -> Result<Vec<Vec<f32>>> {
    let hidden = hidden.to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?;
    let pooled = match input {
        PooledInput::Cls => first_token(&hidden)?,
        PooledInput::Mean => mean_pool(&hidden, &mask)?,
        PooledInput::UnitMean => unit_rows(&mean_pool(&hidden, &mask)?)?,
    };
    Ok(pooled.to_vec2::<f32>()?)
}
