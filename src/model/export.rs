//! Writing and reading fine-tuned models as HF directories that transformers can load.
//!
//! Classifier and prompt heads use transformers' own layouts (`bert.`-prefixed body + `classifier.*`, or
//! `cls.predictions.*` / `lm_head.*`). Heads transformers has no class for (linear on a pooled vector,
//! prototypes) keep the base layout for the body and put their tensors in `skillgraft_head.safetensors`.
//! Every directory also carries `skillgraft_head.json` (head spec and task spec). Reading checkpoints back,
//! ours or anyone's, is [`super::checkpoint`] (re-exported here).

pub use super::checkpoint::{detect_head, load_finetuned, load_finetuned_with, FinetunedModel};

use super::config::Architecture;
use super::heads::HeadSpec;
use super::weights::{is_body_name, LoadedModel};
use crate::data::TaskSpec;
use crate::store::{atomic_dir, atomic_write, safetensors_bytes, RawTensor};
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the head manifest written beside the weights.
pub const HEAD_MANIFEST: &str = "skillgraft_head.json";
/// Name of the extra tensor file for heads transformers has no class for.
pub const HEAD_TENSORS: &str = "skillgraft_head.safetensors";
/// Tokenizer files copied from the base into exported directories.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// The head manifest: what head a directory's weights are for, and the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadManifest {
    /// The head.
    pub head: HeadSpec,
    /// The task, when known.
    pub task: Option<TaskSpec>,
}

fn hf_layout(head: &HeadSpec, arch: Architecture) -> (bool, bool, &'static str) {
    // (prefix body, head tensors in the extra file, HF architecture class)
    match (head, arch) {
        (HeadSpec::BertClassifier { .. }, _) => (true, false, "BertForSequenceClassification"),
        (HeadSpec::RobertaClassifier { .. }, _) => {
            (true, false, "RobertaForSequenceClassification")
        }
        (HeadSpec::Prompt { .. }, Architecture::Bert) => (true, false, "BertForMaskedLM"),
        (HeadSpec::Prompt { .. }, Architecture::Roberta) => (true, false, "RobertaForMaskedLM"),
        (_, Architecture::Bert) => (false, true, "BertModel"),
        (_, Architecture::Roberta) => (false, true, "RobertaModel"),
    }
}

/// Writes `tensors` (canonical names: body + head) as an HF directory at `dest`, atomically.
pub fn write_hf_dir(
    dest: &Path,
    base: &LoadedModel,
    tensors: &BTreeMap<String, Tensor>,
    head: &HeadSpec,
    task: Option<&TaskSpec>,
    overwrite: bool,
) -> Result<()> {
    let arch = base.config.architecture()?;
    let (prefix_body, extra_file, class) = hf_layout(head, arch);
    let head_names = head.tensor_names(arch);
    let mut main = Vec::new();
    let mut extra = Vec::new();
    for (name, t) in tensors {
        let is_head = head_names.contains(name);
        if !is_head && !is_body_name(name) {
            continue;
        }
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let stored = match base.weights.stored_dtypes.get(name).map(String::as_str) {
            Some("F16") => safetensors::Dtype::F16,
            Some("BF16") => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::F32,
        };
        let file_name = if is_body_name(name) && prefix_body {
            format!("{}.{name}", arch.prefix())
        } else {
            name.clone()
        };
        let raw = RawTensor::from_f32(file_name, t.dims().to_vec(), &values, stored)?;
        if is_head && extra_file {
            extra.push(raw);
        } else {
            main.push(raw);
        }
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let weights = safetensors_bytes(&main, Some(meta))?;
    let head_bytes = if extra.is_empty() {
        None
    } else {
        Some(safetensors_bytes(&extra, None)?)
    };
    let mut config = serde_json::to_value(&base.config)?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), serde_json::json!([class]));
        if matches!(
            head,
            HeadSpec::BertClassifier { .. } | HeadSpec::RobertaClassifier { .. }
        ) {
            let labels: Vec<String> = match task {
                Some(t) if t.labels.len() == head.num_labels() => t.labels.clone(),
                _ => (0..head.num_labels())
                    .map(|i| format!("LABEL_{i}"))
                    .collect(),
            };
            let id2label: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), serde_json::Value::from(l.clone())))
                .collect();
            let label2id: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
                .collect();
            obj.insert("id2label".into(), id2label.into());
            obj.insert("label2id".into(), label2id.into());
        }
    }
    let manifest = HeadManifest {
        head: head.clone(),
        task: task.cloned(),
    };
    atomic_dir(dest, overwrite, |tmp| {
        atomic_write(&tmp.join("model.safetensors"), &weights)?;
        if let Some(b) = &head_bytes {
            atomic_write(&tmp.join(HEAD_TENSORS), b)?;
        }
        atomic_write(
            &tmp.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        atomic_write(
            &tmp.join(HEAD_MANIFEST),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        for f in TOKENIZER_FILES {
            let src = base.files.dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, tmp.join(f))
                    .with_context(|| format!("cannot copy {}", src.display()))?;
            }
        }
        Ok(())
    })
}
