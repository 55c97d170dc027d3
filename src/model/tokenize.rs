//! Tokenization into padded batches, and the per-architecture position/type ids.

use super::config::{Architecture, ModelConfig};
use super::encoder::EncoderInput;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

/// One text (or text pair) to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct TextInput {
    /// First segment.
    pub text: String,
    /// Optional second segment.
    pub text_b: Option<String>,
}

impl TextInput {
    /// A single-segment input.
    pub fn single(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            text_b: None,
        }
    }
}

/// One tokenized input before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedRow {
    /// Token ids with special tokens.
    pub ids: Vec<u32>,
    /// Token type ids.
    pub type_ids: Vec<u32>,
    /// Position of the mask token, when the input is a prompt.
    pub mask_position: Option<u32>,
}

/// A padded batch of token ids on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBatch {
    /// Token ids, row-major (batch × seq).
    pub ids: Vec<u32>,
    /// Token type ids.
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// Position of the mask token in each row, when the inputs are prompts.
    pub mask_positions: Option<Vec<u32>>,
}

impl EncodedBatch {
    /// Number of real (non-padding) tokens.
    pub fn real_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }

    /// Tokens of row `r` up to its last real one (padding comes last).
    pub fn row_len(&self, r: usize) -> usize {
        self.mask
            .get(r * self.seq..(r + 1) * self.seq)
            .and_then(|m| m.iter().rposition(|&v| v != 0))
            .map_or(1, |p| p + 1)
    }

    /// A batch of the given (batch, row) pairs, padded with `pad` to the longest of them.
    pub fn from_rows(rows: &[(&EncodedBatch, usize)], pad: u32) -> EncodedBatch {
        let seq = rows.iter().map(|(b, r)| b.row_len(*r)).max().unwrap_or(1);
        let n = rows.len();
        let mut out = EncodedBatch {
            ids: vec![pad; n * seq],
            type_ids: vec![0; n * seq],
            mask: vec![0; n * seq],
            batch: n,
            seq,
            mask_positions: rows
                .iter()
                .all(|(b, _)| b.mask_positions.is_some())
                .then(Vec::new),
        };
        for (k, (b, r)) in rows.iter().enumerate() {
            let len = b.row_len(*r).min(b.seq);
            let (src, dst) = (r * b.seq, k * seq);
            out.ids[dst..dst + len].copy_from_slice(&b.ids[src..src + len]);
            out.type_ids[dst..dst + len].copy_from_slice(&b.type_ids[src..src + len]);
            out.mask[dst..dst + len].copy_from_slice(&b.mask[src..src + len]);
            if let (Some(all), Some(p)) = (out.mask_positions.as_mut(), b.mask_positions.as_ref()) {
                all.push(p.get(*r).copied().unwrap_or(0));
            }
        }
        out
    }

    /// Rows `range` of this batch (same padded length).
    pub fn rows(&self, range: std::ops::Range<usize>) -> EncodedBatch {
        let (a, b) = (range.start * self.seq, range.end * self.seq);
        EncodedBatch {
            ids: self.ids[a..b].to_vec(),
            type_ids: self.type_ids[a..b].to_vec(),
            mask: self.mask[a..b].to_vec(),
            batch: range.len(),
            seq: self.seq,
            mask_positions: self
                .mask_positions
                .as_ref()
                .map(|p| p[range.clone()].to_vec()),
        }
    }

    /// Position ids: BERT counts from 0; RoBERTa from `pad + 1` over non-padding tokens (HF's rule).
    pub fn position_ids(&self, arch: Architecture, pad_id: u32) -> Vec<u32> {
        let mut out = vec![0u32; self.ids.len()];
        for r in 0..self.batch {
            let row = r * self.seq;
            let mut count = 0u32;
            for p in 0..self.seq {
                out[row + p] = match arch {
                    Architecture::Bert => p as u32,
                    Architecture::Roberta => {
                        if self.ids[row + p] != pad_id {
                            count += 1;
                            pad_id + count
                        } else {
                            pad_id
                        }
                    }
                };
            }
        }
        out
    }

    /// Moves the batch to `device` as an [`EncoderInput`] in the compute `dtype`.
    pub fn to_input(
        &self,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<EncoderInput> {
        let arch = cfg.architecture()?;
        let shape = (self.batch, self.seq);
        let input_ids = Tensor::from_vec(self.ids.clone(), shape, device)?;
        let types: Vec<u32> = if cfg.type_vocab_size <= 1 {
            vec![0; self.type_ids.len()]
        } else {
            self.type_ids.clone()
        };
        let token_type_ids = Tensor::from_vec(types, shape, device)?;
        let position_ids = Tensor::from_vec(self.position_ids(arch, cfg.pad_id()), shape, device)?;
        let maskf: Vec<f32> = self.mask.iter().map(|&m| m as f32).collect();
        let attention_mask = Tensor::from_vec(maskf.clone(), shape, device)?.to_dtype(dtype)?;
        // Large enough to zero padding in softmax, small enough to stay finite in the compute dtype.
        let masked = if dtype == DType::F16 {
            -30_000.0
        } else {
            f32::MIN / 2.0
        };
        let bias: Vec<f32> = maskf
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { masked })
            .collect();
        let attention_bias =
            Tensor::from_vec(bias, (self.batch, 1, 1, self.seq), device)?.to_dtype(dtype)?;
        let mask_positions = match &self.mask_positions {
            Some(p) => {
                let flat: Vec<u32> = p
                    .iter()
                    .enumerate()
                    .map(|(r, &pos)| (r * self.seq) as u32 + pos)
                    .collect();
                Some(Tensor::from_vec(flat, self.batch, device)?)
            }
            None => None,
        };
        Ok(EncoderInput {
            input_ids,
            token_type_ids,
            position_ids,
            attention_mask,
            attention_bias,
            mask_positions,
        })
    }
}

/// A tokenizer bound to one model: padding id, mask token, maximum length.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    pad_id: u32,
    mask_token: Option<(String, u32)>,
    max_len: usize,
}

impl TextEncoder {
    /// Loads `tokenizer.json`; `max_len` is capped by the model's position table.
    pub fn from_file(path: &Path, cfg: &ModelConfig, max_len: usize) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let mask_token = ["[MASK]", "<mask>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t).map(|id| (t.to_string(), id)));
        let arch = cfg.architecture()?;
        let table = match arch {
            Architecture::Bert => cfg.max_position_embeddings,
            Architecture::Roberta => cfg
                .max_position_embeddings
                .saturating_sub(cfg.pad_id() as usize + 1),
        };
        if max_len < 4 {
            bail!("max length {max_len} is too small");
        }
        Ok(Self {
            tokenizer,
            pad_id: cfg.pad_id(),
            mask_token,
            max_len: max_len.min(table),
        })
    }

    /// The mask token's text, if the vocabulary has one.
    pub fn mask_token(&self) -> Option<&str> {
        self.mask_token.as_ref().map(|(t, _)| t.as_str())
    }

    /// Maximum tokens per row.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of `text` without special tokens.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The single token id of a label word: tries ` word` (byte-level BPE) then `word`.
    pub fn label_word_id(&self, word: &str) -> Result<u32> {
        for candidate in [format!(" {word}"), word.to_string()] {
            let ids = self.ids(&candidate)?;
            if ids.len() == 1 {
                return Ok(ids[0]);
            }
        }
        bail!("label word `{word}` is not a single token in this vocabulary")
    }

    /// Cuts `text` so that it tokenizes to at most `max_tokens` tokens (cut at a token boundary).
    pub fn truncate_text(&self, text: &str, max_tokens: usize) -> Result<String> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        if enc.len() <= max_tokens {
            return Ok(text.to_string());
        }
        let cut = enc.get_offsets()[max_tokens].0;
        Ok(text.get(..cut).unwrap_or(text).trim_end().to_string())
    }

    /// Tokenizes and pads a batch (dynamic padding to the longest row, at most `max_len`).
    /// With `want_mask`, every row must contain exactly one mask token (prompt inputs).
    pub fn encode(&self, inputs: &[TextInput], want_mask: bool) -> Result<EncodedBatch> {
        let rows = self.tokenize(inputs, want_mask)?;
        Ok(self.pad(&rows.iter().collect::<Vec<_>>()))
    }

    /// Tokenizes each input (special tokens added, cut to `max_len`), without padding. With `want_mask`,
    /// every row must contain exactly one mask token (prompt inputs). Errors name the input's index.
    pub fn tokenize(&self, inputs: &[TextInput], want_mask: bool) -> Result<Vec<TokenizedRow>> {
        if inputs.is_empty() {
            bail!("empty batch");
        }
        let mut rows = Vec::with_capacity(inputs.len());
        for (i, inp) in inputs.iter().enumerate() {
            let enc = match &inp.text_b {
                Some(b) => self.tokenizer.encode((inp.text.as_str(), b.as_str()), true),
                None => self.tokenizer.encode(inp.text.as_str(), true),
            }
            .map_err(|e| anyhow!("tokenizer failed on input {i}: {e}"))?;
            let mut ids = enc.get_ids().to_vec();
            let mut type_ids = enc.get_type_ids().to_vec();
            if ids.len() > self.max_len {
                if want_mask {
                    bail!(
                        "input {i} has {} tokens, more than the maximum {}; shorten it before prompting",
                        ids.len(),
                        self.max_len
                    );
                }
                let last = ids[ids.len() - 1];
                ids.truncate(self.max_len);
                type_ids.truncate(self.max_len);
                ids[self.max_len - 1] = last;
            }
            let mask_position = if want_mask {
                let Some((tok, mid)) = &self.mask_token else {
                    bail!("this tokenizer has no mask token; prompt heads need one");
                };
                let hits: Vec<usize> = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, &t)| t == *mid)
                    .map(|(p, _)| p)
                    .collect();
                if hits.len() != 1 {
                    bail!(
                        "input {i} contains {} mask tokens `{tok}`; a prompt needs exactly one",
                        hits.len()
                    );
                }
                Some(hits[0] as u32)
            } else {
                None
            };
            rows.push(TokenizedRow {
                ids,
                type_ids,
                mask_position,
            });
        }
        Ok(rows)
    }

    /// Pads tokenized rows to the longest of them (mask positions kept when every row has one).
    pub fn pad(&self, rows: &[&TokenizedRow]) -> EncodedBatch {
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
        let batch = rows.len();
        let mut ids = vec![self.pad_id; batch * seq];
        let mut type_ids = vec![0u32; batch * seq];
        let mut mask = vec![0u32; batch * seq];
        for (r, row) in rows.iter().enumerate() {
            let at = r * seq;
            ids[at..at + row.ids.len()].copy_from_slice(&row.ids);
            type_ids[at..at + row.type_ids.len()].copy_from_slice(&row.type_ids);
            mask[at..at + row.ids.len()].fill(1);
        }
        let mask_positions = rows
            .iter()
            .map(|r| r.mask_position)
            .collect::<Option<Vec<u32>>>()
            .filter(|_| !rows.is_empty());
        EncodedBatch {
            ids,
            type_ids,
            mask,
            batch,
            seq,
            mask_positions,
        }
    }
}
