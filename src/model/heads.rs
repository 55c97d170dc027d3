//! Task heads on top of the encoder, and the full classifier (encoder + head).

use super::config::{Architecture, ModelConfig};
use super::encoder::{Dense, Encoder, EncoderInput, Norm};
use super::ops::gelu;
use crate::data::Example;
use crate::model::tokenize::TextInput;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// How a sentence vector is taken from the hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token ([CLS] / `<s>`).
    Cls,
    /// Mean over non-padding tokens.
    Mean,
}

/// What a task head is (serializable; its tensors live beside it, see [`HeadSpec::tensor_names`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadSpec {
    /// BERT pooler (dense + tanh on [CLS]) then a linear classifier: HF `BertForSequenceClassification`.
    BertClassifier {
        /// Classes.
        num_labels: usize,
    },
    /// RoBERTa classifier: dense + tanh + `out_proj` on `<s>`: HF `RobertaForSequenceClassification`.
    RobertaClassifier {
        /// Classes.
        num_labels: usize,
    },
    /// One linear layer on a pooled hidden state.
    Linear {
        /// Classes.
        num_labels: usize,
        /// Pooling.
        pooling: Pooling,
    },
    /// Masked-LM logits of one label word per class at the prompt's mask token (the base's own LM head).
    Prompt {
        /// Template with `{sentence}` and `{mask}`.
        template: String,
        /// One word per class.
        label_words: Vec<String>,
        /// Their token ids.
        label_word_ids: Vec<u32>,
    },
    /// Cosine similarity of the mean-pooled embedding to one frozen prototype per class, divided by a
    /// temperature: no trained parameters, so the whole task lives in the body.
    Prototype {
        /// One description per class; prototypes are the base model's embeddings of these.
        descriptions: Vec<String>,
        /// Softmax temperature τ.
        temperature: f64,
    },
}

impl HeadSpec {
    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        match self {
            HeadSpec::BertClassifier { num_labels }
            | HeadSpec::RobertaClassifier { num_labels }
            | HeadSpec::Linear { num_labels, .. } => *num_labels,
            HeadSpec::Prompt { label_word_ids, .. } => label_word_ids.len(),
            HeadSpec::Prototype { descriptions, .. } => descriptions.len(),
        }
    }

    /// Short name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadSpec::BertClassifier { .. } => "bert_classifier",
            HeadSpec::RobertaClassifier { .. } => "roberta_classifier",
            HeadSpec::Linear { .. } => "linear",
            HeadSpec::Prompt { .. } => "prompt",
            HeadSpec::Prototype { .. } => "prototype",
        }
    }

    /// Canonical names of the head's own tensors (the prompt head's tied decoder is the body's word embeddings).
    pub fn tensor_names(&self, arch: Architecture) -> Vec<String> {
        let v: &[&str] = match (self, arch) {
            (HeadSpec::BertClassifier { .. }, _) => &[
                "pooler.dense.weight",
                "pooler.dense.bias",
                "classifier.weight",
                "classifier.bias",
            ],
            (HeadSpec::RobertaClassifier { .. }, _) => &[
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias",
            ],
            (HeadSpec::Linear { .. }, _) => &["classifier.weight", "classifier.bias"],
            (HeadSpec::Prompt { .. }, Architecture::Bert) => &[
                "cls.predictions.transform.dense.weight",
                "cls.predictions.transform.dense.bias",
                "cls.predictions.transform.LayerNorm.weight",
                "cls.predictions.transform.LayerNorm.bias",
                "cls.predictions.bias",
            ],
            (HeadSpec::Prompt { .. }, Architecture::Roberta) => &[
                "lm_head.dense.weight",
                "lm_head.dense.bias",
                "lm_head.layer_norm.weight",
                "lm_head.layer_norm.bias",
                "lm_head.bias",
            ],
            (HeadSpec::Prototype { .. }, _) => &["prototype.weight"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Whether inputs must be wrapped in the prompt template.
    pub fn uses_prompt(&self) -> bool {
        matches!(self, HeadSpec::Prompt { .. })
    }

    /// Turns examples into model inputs for this head (prompt heads fill the template).
    pub fn inputs(
        &self,
        examples: &[Example],
        mask_token: Option<&str>,
    ) -> anyhow::Result<Vec<TextInput>> {
        match self {
            HeadSpec::Prompt { template, .. } => {
                let mask = mask_token.context("prompt head needs a tokenizer with a mask token")?;
                Ok(examples
                    .iter()
                    .map(|e| {
                        TextInput::single(crate::data::spec::render_template(template, e, mask))
                    })
                    .collect())
            }
            _ => Ok(examples
                .iter()
                .map(|e| TextInput {
                    text: e.text.clone(),
                    text_b: e.text_b.clone(),
                })
                .collect()),
        }
    }
}

/// A loaded task head.
#[derive(Debug, Clone)]
pub enum TaskHead {
    /// Pooler + classifier.
    BertClassifier {
        /// Pooler dense (tanh).
        pooler: Dense,
        /// Classifier.
        classifier: Dense,
    },
    /// RoBERTa's dense + tanh + out_proj.
    RobertaClassifier {
        /// Dense (tanh).
        dense: Dense,
        /// Output projection.
        out_proj: Dense,
    },
    /// Linear on a pooled vector.
    Linear {
        /// Classifier.
        classifier: Dense,
        /// Pooling.
        pooling: Pooling,
    },
    /// Masked-LM label-word scores.
    Prompt {
        /// Transform dense (GELU).
        dense: Dense,
        /// Transform LayerNorm.
        norm: Norm,
        /// Decoder rows of the label words (tied word embeddings), (classes, hidden).
        decoder: Tensor,
        /// Decoder bias at the label words, (classes).
        bias: Tensor,
    },
    /// Frozen prototypes.
    Prototype {
        /// Unit-norm prototypes, (classes, hidden).
        prototypes: Tensor,
        /// τ.
        temperature: f64,
    },
}

/// Mean over real tokens: `mask` is (batch, seq), 1 for real tokens.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?;
    summed.broadcast_div(&counts)
}

/// The first token's hidden state.
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

fn pool(hidden: &Tensor, input: &EncoderInput, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => first_token(hidden),
        Pooling::Mean => mean_pool(hidden, &input.attention_mask),
    }
}

/// L2-normalizes rows (norms clamped at 1e-12).
pub fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Mean-pooled, L2-normalized sentence embeddings (the sentence-transformers recipe).
pub fn sentence_embeddings(hidden: &Tensor, input: &EncoderInput) -> Result<Tensor> {
    unit_rows(&mean_pool(hidden, &input.attention_mask)?)
}

impl TaskHead {
    /// Builds the head from its tensors under their canonical names; `word_embeddings` is the tied decoder.
    pub fn load(
        spec: &HeadSpec,
        vb: VarBuilder,
        cfg: &ModelConfig,
        word_embeddings: &Tensor,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let n = spec.num_labels();
        Ok(match spec {
            HeadSpec::BertClassifier { .. } => TaskHead::BertClassifier {
                pooler: Dense::load(vb.pp("pooler").pp("dense"), h, h)?,
                classifier: Dense::load(vb.pp("classifier"), h, n)?,
            },
            HeadSpec::RobertaClassifier { .. } => TaskHead::RobertaClassifier {
                dense: Dense::load(vb.pp("classifier").pp("dense"), h, h)?,
                out_proj: Dense::load(vb.pp("classifier").pp("out_proj"), h, n)?,
            },
            HeadSpec::Linear { pooling, .. } => TaskHead::Linear {
                classifier: Dense::load(vb.pp("classifier"), h, n)?,
                pooling: *pooling,
            },
            HeadSpec::Prompt { label_word_ids, .. } => {
                let ids = Tensor::from_vec(label_word_ids.clone(), n, word_embeddings.device())?;
                let (dense, norm, bias) = match cfg
                    .architecture()
                    .map_err(candle_core::Error::wrap)?
                {
                    Architecture::Bert => {
                        let t = vb.pp("cls").pp("predictions");
                        (
                            Dense::load(t.pp("transform").pp("dense"), h, h)?,
                            Norm::load(t.pp("transform").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
                            t.get(cfg.vocab_size, "bias")?,
                        )
                    }
                    Architecture::Roberta => {
                        let t = vb.pp("lm_head");
                        (
                            Dense::load(t.pp("dense"), h, h)?,
                            Norm::load(t.pp("layer_norm"), h, cfg.layer_norm_eps)?,
                            t.get(cfg.vocab_size, "bias")?,
                        )
                    }
                };
                TaskHead::Prompt {
                    dense,
                    norm,
                    decoder: word_embeddings.index_select(&ids, 0)?,
                    bias: bias.index_select(&ids, 0)?,
                }
            }
            HeadSpec::Prototype { temperature, .. } => TaskHead::Prototype {
                prototypes: vb.get((n, h), "prototype.weight")?,
                temperature: *temperature,
            },
        })
    }

    /// Whether the head reads nothing but each sequence's first token ([CLS] / `<s>`).
    pub fn reads_first_token_only(&self) -> bool {
        matches!(
            self,
            TaskHead::BertClassifier { .. }
                | TaskHead::RobertaClassifier { .. }
                | TaskHead::Linear {
                    pooling: Pooling::Cls,
                    ..
                }
        )
    }

    /// Class logits, (batch, classes).
    pub fn forward(&self, hidden: &Tensor, input: &EncoderInput) -> Result<Tensor> {
        match self {
            TaskHead::BertClassifier { pooler, classifier } => {
                let pooled = pooler.forward(&first_token(hidden)?)?.tanh()?;
                classifier.forward(&pooled)
            }
            TaskHead::RobertaClassifier { dense, out_proj } => {
                let x = dense.forward(&first_token(hidden)?)?.tanh()?;
                out_proj.forward(&x)
            }
            TaskHead::Linear {
                classifier,
                pooling,
            } => classifier.forward(&pool(hidden, input, *pooling)?),
            TaskHead::Prompt {
                dense,
                norm,
                decoder,
                bias,
            } => {
                let Some(pos) = &input.mask_positions else {
                    candle_core::bail!("prompt head: the batch has no mask positions");
                };
                let (b, s, h) = hidden.dims3()?;
                let at_mask = hidden.reshape((b * s, h))?.index_select(pos, 0)?;
                let x = norm.forward(&gelu(&dense.forward(&at_mask)?)?)?;
                x.matmul(&decoder.t()?)?.broadcast_add(bias)
            }
            TaskHead::Prototype {
                prototypes,
                temperature,
            } => {
                let e = sentence_embeddings(hidden, input)?;
                (e.matmul(&prototypes.t()?)? / *temperature)?.contiguous()
            }
        }
    }
}

/// Encoder + task head: a text classifier.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The body.
    pub encoder: Encoder,
    /// The head.
    pub head: TaskHead,
}

impl Classifier {
    /// Builds encoder and head from one tensor map (canonical names).
    pub fn load(
        tensors: &HashMap<String, Tensor>,
        cfg: &ModelConfig,
        spec: &HeadSpec,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, device);
        let encoder = Encoder::load(vb.clone(), cfg)?;
        let head = TaskHead::load(spec, vb, cfg, &encoder.embeddings.word)?;
        Ok(Self { encoder, head })
    }

    /// Class logits, (batch, classes). Heads that read only the first token get the last layer computed for
    /// that token alone ([`Encoder::forward_first_token`]).
    pub fn logits(&self, input: &EncoderInput) -> Result<Tensor> {
        let hidden = if self.head.reads_first_token_only() {
            self.encoder.forward_first_token(input)?
        } else {
            self.encoder.forward(input)?
        };
        self.head.forward(&hidden, input)
    }
}

/// Fresh tensors for a new head of `spec` (classifier weights N(0, 0.02) from `seed`, zero biases; poolers
/// and masked-LM heads copied from the base; prototypes are computed by the caller).
pub fn init_head_tensors(
    spec: &HeadSpec,
    cfg: &ModelConfig,
    base: &BTreeMap<String, Tensor>,
    seed: u64,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let arch = cfg.architecture()?;
    let h = cfg.hidden_size;
    let n = spec.num_labels();
    let device = base
        .values()
        .next()
        .map(|t| t.device().clone())
        .unwrap_or(Device::Cpu);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut random = |rows: usize, cols: usize| -> anyhow::Result<Tensor> {
        let v: Vec<f32> = (0..rows * cols).map(|_| normal.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(v, (rows, cols), &device)?)
    };
    let zeros = |len: usize| Tensor::zeros(len, DType::F32, &device);
    let mut out = BTreeMap::new();
    match spec {
        HeadSpec::BertClassifier { .. } => {
            for p in ["pooler.dense.weight", "pooler.dense.bias"] {
                let t = match base.get(p) {
                    Some(t) => t.copy()?,
                    None if p.ends_with("weight") => random(h, h)?,
                    None => zeros(h)?,
                };
                out.insert(p.to_string(), t);
            }
            out.insert("classifier.weight".into(), random(n, h)?);
            out.insert("classifier.bias".into(), zeros(n)?);
        }
        HeadSpec::RobertaClassifier { .. } => {
            out.insert("classifier.dense.weight".into(), random(h, h)?);
            out.insert("classifier.dense.bias".into(), zeros(h)?);
            out.insert("classifier.out_proj.weight".into(), random(n, h)?);
            out.insert("classifier.out_proj.bias".into(), zeros(n)?);
        }
        HeadSpec::Linear { .. } => {
            out.insert("classifier.weight".into(), random(n, h)?);
            out.insert("classifier.bias".into(), zeros(n)?);
        }
        HeadSpec::Prompt { .. } => {
            for name in spec.tensor_names(arch) {
                let t = base.get(&name).with_context(|| {
                    format!(
                        "the base model has no masked-LM head (`{name}` is missing); use a prototype or linear head"
                    )
                })?;
                out.insert(name, t.copy()?);
            }
        }
        HeadSpec::Prototype { .. } => {
            bail!("prototype heads are computed from the base model, not initialised")
        }
    }
    Ok(out)
}
