//! Batched inference over examples: tokenize, sort by token count (less padding), run, restore order.

use super::heads::{Classifier, HeadSpec};
use super::tokenize::{TextEncoder, TextInput, TokenizedRow};
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

    /// Logits for already-built inputs, in input order: all inputs are tokenized first, then run in batches
    /// of `batch_size` sorted by token count (the least padding that batch size allows).
    pub fn logits_for_texts(
        &self,
        clf: &Classifier,
        texts: &[TextInput],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.tokenizer.tokenize(texts, self.head.uses_prompt())?;
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in length_sorted_batches(&rows, batch_size) {
            let batch: Vec<&TokenizedRow> = chunk.iter().map(|&i| &rows[i]).collect();
            let input =
                self.tokenizer
                    .pad(&batch)
                    .to_input(&self.config, &self.device, self.dtype)?;
            let logits = clf.logits(&input)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

/// Row indices grouped into batches of at most `batch_size`, in order of token count (ties by index).
pub fn length_sorted_batches(rows: &[TokenizedRow], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].ids.len(), i));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(len: usize) -> TokenizedRow {
        TokenizedRow {
            ids: vec![1; len],
            type_ids: vec![0; len],
            mask_position: None,
        }
    }

    #[test]
    fn batches_follow_token_count_and_cover_every_row_once() {
        let rows: Vec<TokenizedRow> = [9, 3, 7, 3, 12, 1, 7].into_iter().map(row).collect();
        let batches = length_sorted_batches(&rows, 3);
        assert_eq!(batches, vec![vec![5, 1, 3], vec![2, 6, 0], vec![4]]);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..rows.len()).collect::<Vec<_>>());
        assert_eq!(length_sorted_batches(&rows, 0).len(), rows.len());
    }
}
