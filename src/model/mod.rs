//! Model code: BERT/RoBERTa encoders, task heads, loading, tokenization and the kernels under them.
//!
//! The encoder is our own (not candle-transformers'): candle's fused LayerNorm has no backward pass, so a
//! model built on it silently trains only its head. Ours is differentiable end to end, on custom ops with
//! hand-written backward passes, one interface on every device ([`ops`]). Loading: a base model's HF directory
//! ([`weights`], [`config`]) into a [`BaseModel`] (weights, tokenizer, device, dtype), or described without its
//! weights ([`info`]); fine-tuned checkpoints
//! ([`checkpoint`]); writing fine-tuned models back as HF directories ([`export`]). On top: the [`encoder`], the
//! task [`heads`] (and [`pooled_head`]: heads that read one pooled vector, evaluated on the host), batched
//! inference ([`predict`]) over [`tokenize`]d batches.

pub mod checkpoint;
pub mod config;
pub mod encoder;
pub mod export;
pub mod heads;
pub mod info;
pub mod ops;
pub mod pooled_head;
pub mod predict;
pub mod tokenize;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use encoder::{Encoder, EncoderInput};
pub use heads::{Classifier, HeadSpec, Pooling, TaskHead};
pub use info::BaseInfo;
pub use tokenize::{EncodedBatch, TextEncoder, TextInput, TokenizedRow};
pub use weights::WeightInfo;
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
pub fn to_hash_map(
    tensors: &BTreeMap<String, Tensor>,
) -> std::collections::HashMap<String, Tensor> {
    tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The base model a process serves: weights, tokenizer, device, and a display name.
#[derive(Clone)]
pub struct BaseModel {
    /// Config and weights.
    pub model: LoadedModel,
    /// Tokenizer.
    pub tokenizer: TextEncoder,
    /// Compute device.
    pub device: candle_core::Device,
    /// Inference dtype (f32, or bf16/f16 for reduced-precision serving); training always runs in f32.
    pub dtype: candle_core::DType,
    /// Display name (the directory name).
    pub name: String,
}

impl BaseModel {
    /// Loads an HF directory (needs `tokenizer.json`); `max_len` caps tokens per input.
    pub fn load(
        dir: &std::path::Path,
        device: &candle_core::Device,
        max_len: usize,
    ) -> Result<Self> {
        let model = LoadedModel::load(dir, device)?;
        let Some(tok) = &model.files.tokenizer else {
            bail!("{} has no tokenizer.json", dir.display());
        };
        let tokenizer = TextEncoder::from_file(tok, &model.config, max_len)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dtype: candle_core::DType::F32,
            name,
        })
    }

    /// An input builder for a head on this base (in f32, for training and for f32 inference).
    pub fn inputs(&self, head: HeadSpec) -> predict::InputBuilder {
        predict::InputBuilder {
            tokenizer: self.tokenizer.clone(),
            config: self.model.config.clone(),
            head,
            device: self.device.clone(),
            dtype: candle_core::DType::F32,
        }
    }

    /// An input builder for inference in this base's dtype.
    pub fn inference_inputs(&self, head: HeadSpec) -> predict::InputBuilder {
        predict::InputBuilder {
            dtype: self.dtype,
            ..self.inputs(head)
        }
    }

    /// Builds a head spec of `kind` for a task on this base (label-word ids from this tokenizer; `pooling`
    /// applies to linear heads).
    pub fn head_spec(
        &self,
        kind: HeadKind,
        task: &crate::data::TaskSpec,
        temperature: f64,
        pooling: Pooling,
    ) -> Result<HeadSpec> {
        head_spec_for(&self.tokenizer, kind, task, temperature, pooling)
    }

    /// Fresh head tensors for a new task (prototypes computed from this base).
    pub fn init_head(&self, spec: &HeadSpec, seed: u64) -> Result<BTreeMap<String, Tensor>> {
        match spec {
            HeadSpec::Prototype { descriptions, .. } => {
                let t = predict::prototype_tensor(
                    &self.model,
                    &self.inputs(spec.clone()),
                    descriptions,
                )?;
                Ok(BTreeMap::from([("prototype.weight".to_string(), t)]))
            }
            _ => heads::init_head_tensors(
                spec,
                &self.model.config,
                &self.model.weights.tensors,
                seed,
            ),
        }
    }
}

/// A head spec of `kind` for a task, label-word ids from `tokenizer`.
pub(crate) fn head_spec_for(
    tokenizer: &TextEncoder,
    kind: HeadKind,
    task: &crate::data::TaskSpec,
    temperature: f64,
    pooling: Pooling,
) -> Result<HeadSpec> {
    let n = task.labels.len();
    Ok(match kind {
        HeadKind::Prototype => {
            task.require_for_head(crate::data::HeadNeeds::Prototype)?;
            HeadSpec::Prototype {
                descriptions: task.label_descriptions.clone(),
                temperature,
            }
        }
        HeadKind::BertClassifier => HeadSpec::BertClassifier { num_labels: n },
        HeadKind::RobertaClassifier => HeadSpec::RobertaClassifier { num_labels: n },
        HeadKind::Linear => HeadSpec::Linear {
            num_labels: n,
            pooling,
        },
        HeadKind::Prompt => {
            task.require_for_head(crate::data::HeadNeeds::Prompt)?;
            let ids = task
                .label_words
                .iter()
                .map(|w| tokenizer.label_word_id(w))
                .collect::<Result<Vec<_>>>()?;
            HeadSpec::Prompt {
                template: task.template.clone().unwrap_or_default(),
                label_words: task.label_words.clone(),
                label_word_ids: ids,
            }
        }
    })
}

/// Head kinds a user can ask for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Frozen prototypes (base embeddings of label descriptions), cosine / τ.
    Prototype,
    /// BERT pooler + linear classifier (HF BertForSequenceClassification).
    BertClassifier,
    /// RoBERTa dense + out_proj (HF RobertaForSequenceClassification).
    RobertaClassifier,
    /// One linear layer on [CLS].
    Linear,
    /// The base's masked-LM head on a prompt template, one label word per class.
    Prompt,
}
