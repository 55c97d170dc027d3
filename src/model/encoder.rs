//! The BERT-family transformer encoder (BERT and RoBERTa), differentiable end to end.
//!
//! One definition serves inference and training: weights are plain tensors, and the ones being trained are
//! `Var`s sharing storage with them. Weight names mirror HF (`embeddings.*`, `encoder.layer.N.*`). The two
//! families differ only in position ids (BERT: 0..s; RoBERTa: `padding_idx + 1 + rank among non-pad tokens`)
//! and in the number of token types, both handled in [`EncodedBatch`](super::tokenize::EncodedBatch).

use super::config::ModelConfig;
use super::ops::{attention, layer_norm, linear, linear_gelu, linear_residual, softmax_last_dim};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Inputs of one forward pass, already on the model's device.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// Token ids, (batch, seq), u32.
    pub input_ids: Tensor,
    /// Token type ids, (batch, seq), u32.
    pub token_type_ids: Tensor,
    /// Position ids, (batch, seq), u32.
    pub position_ids: Tensor,
    /// 1 for real tokens, 0 for padding, (batch, seq), float.
    pub attention_mask: Tensor,
    /// Additive attention bias: 0 for real tokens, a large negative value for padding, (batch, 1, 1, seq).
    pub attention_bias: Tensor,
    /// Flat indices (row * seq + position) of each row's mask token, for prompt heads.
    pub mask_positions: Option<Tensor>,
}

/// Per-row corrections applied after dense and LayerNorm layers, for batches whose rows belong to different
/// tasks (each a sparse delta on the shared weights). `x` is the layer input and `y` its fresh output, both
/// flattened to (tokens, features); implementations update `y` in place. Layers for which [`adjusts`]
/// is false are not shown to the hooks, so they may run fused with what follows them (bias + GELU, bias +
/// residual).
///
/// [`adjusts`]: RowAdjust::adjusts
pub trait RowAdjust {
    /// Whether the layer named `name` gets corrections (default: every layer).
    fn adjusts(&self, _name: &str) -> bool {
        true
    }
    /// After the dense layer named `name` (e.g. `encoder.layer.0.attention.self.query`).
    fn after_dense(&self, name: &str, x: &Tensor, y: &Tensor) -> Result<()>;
    /// After the LayerNorm named `name`, with its epsilon.
    fn after_norm(&self, name: &str, x: &Tensor, y: &Tensor, eps: f64) -> Result<()>;
}

/// A dense layer `x W^T + b` with HF weight layout (out, in).
#[derive(Debug, Clone)]
pub struct Dense {
    /// (out, in).
    pub weight: Tensor,
    /// (out).
    pub bias: Tensor,
    /// Canonical name prefix of the weights.
    pub name: String,
}

impl Dense {
    /// Loads `weight` and `bias` under `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
            name: vb.prefix(),
        })
    }

    /// The adjustments that apply to this layer, if any.
    fn hook<'a>(&self, adjust: Option<&'a dyn RowAdjust>) -> Option<&'a dyn RowAdjust> {
        adjust.filter(|a| a.adjusts(&self.name))
    }

    /// Applies the layer, then the row adjustments (if any).
    pub fn forward_with(&self, x: &Tensor, adjust: Option<&dyn RowAdjust>) -> Result<Tensor> {
        let y = self.forward(x)?;
        if let Some(a) = self.hook(adjust) {
            let in_dim = x.dims()[x.rank() - 1];
            let out_dim = self.weight.dim(0)?;
            a.after_dense(
                &self.name,
                &x.reshape((x.elem_count() / in_dim, in_dim))?,
                &y.reshape((y.elem_count() / out_dim, out_dim))?,
            )?;
        }
        Ok(y)
    }

    /// `gelu(layer(x))`, the adjustments (if any) applied before the activation; fused when there are none.
    pub fn forward_gelu_with(&self, x: &Tensor, adjust: Option<&dyn RowAdjust>) -> Result<Tensor> {
        match self.hook(adjust) {
            Some(_) => super::ops::gelu(&self.forward_with(x, adjust)?),
            None => linear_gelu(x, &self.weight, &self.bias),
        }
    }

    /// `layer(x) + residual`, the adjustments (if any) applied before the sum; fused when there are none.
    pub fn forward_residual_with(
        &self,
        x: &Tensor,
        residual: &Tensor,
        adjust: Option<&dyn RowAdjust>,
    ) -> Result<Tensor> {
        match self.hook(adjust) {
            Some(_) => self.forward_with(x, adjust)? + residual,
            None => linear_residual(x, &self.weight, &self.bias, residual),
        }
    }

    /// Applies the layer to the last dimension of `x` (any rank ≥ 2).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, &self.bias)
    }
}

/// LayerNorm parameters (`weight`, `bias`) and epsilon.
#[derive(Debug, Clone)]
pub struct Norm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
    /// Canonical name prefix of the weights.
    pub name: String,
}

impl Norm {
    /// Loads `weight` and `bias` under `vb`.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
            name: vb.prefix(),
        })
    }

    /// Normalizes, then applies the row adjustments (if any).
    pub fn forward_with(&self, x: &Tensor, adjust: Option<&dyn RowAdjust>) -> Result<Tensor> {
        let y = self.forward(x)?;
        if let Some(a) = adjust.filter(|a| a.adjusts(&self.name)) {
            let d = x.dims()[x.rank() - 1];
            a.after_norm(
                &self.name,
                &x.reshape((x.elem_count() / d, d))?,
                &y.reshape((y.elem_count() / d, d))?,
                self.eps,
            )?;
        }
        Ok(y)
    }

    /// Normalizes the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Word, position and token-type embeddings followed by LayerNorm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// (vocab, hidden); also the tied decoder of masked-LM heads.
    pub word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: Norm,
}

impl Embeddings {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: vb.get((cfg.vocab_size, h), "word_embeddings.weight")?,
            position: vb.get(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type: vb.get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?,
            norm: Norm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    fn forward(&self, input: &EncoderInput) -> Result<Tensor> {
        let (b, s) = input.input_ids.dims2()?;
        let h = self.word.dim(1)?;
        let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, s, h))
        };
        let x = lookup(&self.word, &input.input_ids)?;
        let x = (x + lookup(&self.position, &input.position_ids)?)?;
        let x = (x + lookup(&self.token_type, &input.token_type_ids)?)?;
        self.norm.forward(&x)
    }
}

/// One transformer layer (post-LayerNorm, as in BERT).
#[derive(Debug, Clone)]
pub struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    out_norm: Norm,
    heads: usize,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let att = vb.pp("attention");
        Ok(Self {
            query: Dense::load(att.pp("self").pp("query"), h, h)?,
            key: Dense::load(att.pp("self").pp("key"), h, h)?,
            value: Dense::load(att.pp("self").pp("value"), h, h)?,
            attn_out: Dense::load(att.pp("output").pp("dense"), h, h)?,
            attn_norm: Norm::load(att.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            ffn_in: Dense::load(vb.pp("intermediate").pp("dense"), h, i)?,
            ffn_out: Dense::load(vb.pp("output").pp("dense"), i, h)?,
            out_norm: Norm::load(vb.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        attention_bias: &Tensor,
        adj: Option<&dyn RowAdjust>,
    ) -> Result<Tensor> {
        let q = self.query.forward_with(x, adj)?;
        let k = self.key.forward_with(x, adj)?;
        let v = self.value.forward_with(x, adj)?;
        let ctx = attention(&q, &k, &v, attention_bias, self.heads)?;
        let a = self
            .attn_norm
            .forward_with(&self.attn_out.forward_residual_with(&ctx, x, adj)?, adj)?;
        let f = self.ffn_in.forward_gelu_with(&a, adj)?;
        self.out_norm
            .forward_with(&self.ffn_out.forward_residual_with(&f, &a, adj)?, adj)
    }
}

impl Layer {
    /// The layer's output at each sequence's first token only, (batch, 1, hidden): keys and values come from
    /// every token, everything after attention runs on one row per sequence. Equal to row 0 of
    /// [`Layer::forward`] (other rows never feed it), at about a sixth of the cost for 25-token inputs.
    fn forward_first_token(&self, x: &Tensor, attention_bias: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let dh = h / self.heads;
        let first = x.narrow(1, 0, 1)?.contiguous()?;
        let heads = |t: &Tensor, rows: usize| -> Result<Tensor> {
            t.reshape((b, rows, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(
            &(self.query.forward(&first)? * (1.0 / (dh as f64).sqrt()))?,
            1,
        )?;
        let k = heads(&self.key.forward(x)?, s)?;
        let v = heads(&self.value.forward(x)?, s)?;
        let scores = q
            .matmul(&k.t()?)?
            .broadcast_add(&attention_bias.reshape((b, 1, 1, s))?)?;
        let ctx = softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, 1, h))?;
        let a = self
            .attn_norm
            .forward(&self.attn_out.forward_residual_with(&ctx, &first, None)?)?;
        let f = self.ffn_in.forward_gelu_with(&a, None)?;
        self.out_norm
            .forward(&self.ffn_out.forward_residual_with(&f, &a, None)?)
    }
}

/// The encoder body: embeddings and transformer layers (no pooler; poolers belong to task heads).
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Embedding block.
    pub embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Compute dtype (f32 normally, f64 in gradient checks).
    pub dtype: DType,
}

impl Encoder {
    /// Builds the encoder from weights under `embeddings.*` and `encoder.layer.N.*`.
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp("encoder").pp("layer").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            dtype: vb.dtype(),
        })
    }

    /// Hidden states of the last layer, (batch, seq, hidden).
    pub fn forward(&self, input: &EncoderInput) -> Result<Tensor> {
        self.forward_with(input, None)
    }

    /// Last-layer hidden states of each sequence's first token, (batch, 1, hidden): what [CLS]-pooled heads
    /// read, with the last layer computed for those rows only (see [`Layer::forward_first_token`]).
    pub fn forward_first_token(&self, input: &EncoderInput) -> Result<Tensor> {
        let Some((last, inner)) = self.layers.split_last() else {
            return self.embeddings.forward(input)?.narrow(1, 0, 1);
        };
        let mut x = self.embeddings.forward(input)?;
        for layer in inner {
            x = layer.forward(&x, &input.attention_bias, None)?;
        }
        last.forward_first_token(&x, &input.attention_bias)
    }

    /// Hidden states with per-row adjustments of the encoder layers (rows of different tasks in one batch).
    pub fn forward_with(
        &self,
        input: &EncoderInput,
        adjust: Option<&dyn RowAdjust>,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input)?;
        for layer in &self.layers {
            x = layer.forward(&x, &input.attention_bias, adjust)?;
        }
        Ok(x)
    }
}
