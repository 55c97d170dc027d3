//! Batched inference over examples: tokenize, sort by length (less padding), run, restore order.

use super::heads::{Classifier, HeadSpec};
use super::tokenize::{TextEncoder, TextInput};
use super::ModelConfig;
use crate::data::Example;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Everything needed to turn texts into model inputs for one task head.
#[derive(Clone)]
pub struct InputBuilder {
    /// Tokenizer bound to the model.
    pub tokenizer: TextEncoder,
    /// The model config (position ids, pad id).
    pub config: ModelConfig,
    /// The head (prompt heads wrap inputs in their template).
    pub head: HeadSpec,
    /// Compute device.
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
}

impl InputBuilder {
    /// Model inputs for examples, in the head's format.
    pub fn texts(&self, examples: &[Example]) -> Result<Vec<TextInput>> {
        self.head.inputs(examples, self.tokenizer.mask_token())
    }

    /// Logits for every example, in input order, computed in length-sorted batches of `batch_size`.
    pub fn logits(
        &self,
        clf: &Classifier,
        examples: &[Example],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let texts = self.texts(examples)?;
        self.logits_for_texts(clf, &texts, batch_size)
    }

    /// Logits for already-built inputs, in input order.
    pub fn logits_for_texts(
        &self,
        clf: &Classifier,
        texts: &[TextInput],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let batch_size = batch_size.max(1);
        let lengths: Vec<usize> = texts
            .iter()
            .map(|t| t.text.len() + t.text_b.as_ref().map_or(0, |b| b.len()))
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (lengths[i], i));
        let mut out = vec![Vec::new(); texts.len()];
        let prompt = self.head.uses_prompt();
        for chunk in order.chunks(batch_size) {
            let batch: Vec<TextInput> = chunk.iter().map(|&i| texts[i].clone()).collect();
            let enc = self.tokenizer.encode(&batch, prompt)?;
            let input = enc.to_input(&self.config, &self.device, self.dtype)?;
            let logits = clf.logits(&input)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

/// Fraction of rows whose argmax equals the label.
pub fn accuracy(logits: &[Vec<f32>], labels: &[usize]) -> f64 {
    if logits.is_empty() {
        return 0.0;
    }
    let correct = logits
        .iter()
        .zip(labels)
        .filter(|(row, &y)| argmax_f32(row) == y)
        .count();
    correct as f64 / logits.len() as f64
}

/// Index of the largest value (first on ties).
pub fn argmax_f32(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Prototype tensor (classes × hidden) for a prototype head: the base model's unit-norm mean-pooled
/// embeddings of one description per class.
pub fn prototype_tensor(
    base: &super::LoadedModel,
    inputs: &InputBuilder,
    descriptions: &[String],
) -> Result<Tensor> {
    if descriptions.len() < 2 {
        bail!("a prototype head needs one description per class (at least two)");
    }
    let vb = candle_nn::VarBuilder::from_tensors(
        super::to_hash_map(&base.weights.tensors),
        inputs.dtype,
        &inputs.device,
    );
    let encoder = super::Encoder::load(vb, &base.config)?;
    let texts: Vec<TextInput> = descriptions
        .iter()
        .map(|d| TextInput::single(d.clone()))
        .collect();
    let enc = inputs.tokenizer.encode(&texts, false)?;
    let input = enc.to_input(&base.config, &inputs.device, inputs.dtype)?;
    let hidden = encoder.forward(&input)?;
    Ok(super::heads::sentence_embeddings(&hidden, &input)?
        .to_dtype(DType::F32)?
        .contiguous()?)
}
