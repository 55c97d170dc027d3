//! `config.json` of an HF BERT/RoBERTa directory.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The encoder families the model code implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// BERT (and BERT-shaped models such as MiniLM): absolute positions from 0, token types.
    Bert,
    /// RoBERTa: positions start at `padding_idx + 1`, one token type.
    Roberta,
}

impl Architecture {
    /// The prefix transformers puts before body weights in task-head checkpoints (`bert.` / `roberta.`).
    pub fn prefix(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta => "roberta",
        }
    }
}

fn default_eps() -> f64 {
    1e-12
}

/// The fields of an HF `config.json` the model code uses (unknown fields are kept for export).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `bert`, `roberta`, `xlm-roberta` ...
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward inner width.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block (only `gelu` is supported).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Size of the position-embedding table.
    pub max_position_embeddings: usize,
    /// Number of token types.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Every other field, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_type_vocab() -> usize {
    2
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let cfg: ModelConfig = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid BERT/RoBERTa config.json", path.display())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the model code can run this configuration.
    pub fn validate(&self) -> Result<()> {
        self.architecture()?;
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_python") {
            bail!(
                "hidden_act `{}` is not supported (only exact `gelu`)",
                self.hidden_act
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if let Some(kind) = self
            .extra
            .get("position_embedding_type")
            .and_then(|v| v.as_str())
        {
            if kind != "absolute" {
                bail!("position_embedding_type `{kind}` is not supported (only `absolute`)");
            }
        }
        Ok(())
    }

    /// The encoder family, from `model_type`.
    pub fn architecture(&self) -> Result<Architecture> {
        match self.model_type.as_str() {
            "bert" => Ok(Architecture::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Ok(Architecture::Roberta),
            other => bail!("model_type `{other}` is not supported (BERT or RoBERTa families only)"),
        }
    }

    /// Id of the padding token (0 for BERT, 1 for RoBERTa when the config does not say).
    pub fn pad_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(match self.architecture() {
            Ok(Architecture::Roberta) => 1,
            _ => 0,
        })
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks that a fine-tuned checkpoint's config describes the same network as the base's.
    pub fn check_same_network(&self, other: &ModelConfig) -> Result<()> {
        let pairs = [
            ("vocab_size", self.vocab_size, other.vocab_size),
            ("hidden_size", self.hidden_size, other.hidden_size),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                other.num_hidden_layers,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                other.num_attention_heads,
            ),
            (
                "intermediate_size",
                self.intermediate_size,
                other.intermediate_size,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                other.max_position_embeddings,
            ),
            (
                "type_vocab_size",
                self.type_vocab_size,
                other.type_vocab_size,
            ),
        ];
        if self.architecture()? != other.architecture()? {
            bail!(
                "architecture mismatch: base is `{}`, checkpoint is `{}`",
                self.model_type,
                other.model_type
            );
        }
        for (name, a, b) in pairs {
            if a != b {
                bail!("config mismatch: base has {name} = {a}, checkpoint has {name} = {b}");
            }
        }
        Ok(())
    }
}
