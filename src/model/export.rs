//! Writing and reading fine-tuned models as HF directories that transformers can load.
//!
//! Classifier and prompt heads use transformers' own layouts (`bert.`-prefixed body + `classifier.*`, or
//! `cls.predictions.*` / `lm_head.*`). Heads transformers has no class for (linear on a pooled vector,
//! prototypes) keep the base layout for the body and put their tensors in `skillgraft_head.safetensors`.
//! Every directory also carries `skillgraft_head.json` (head spec and task spec).

use super::config::Architecture;
use super::heads::{HeadSpec, Pooling};
use super::tokenize::TextEncoder;
use super::weights::{is_body_name, LoadedModel, WeightMap};
use crate::data::TaskSpec;
use crate::store::{atomic_dir, atomic_write, safetensors_bytes, RawTensor};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
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

/// A fine-tuned checkpoint checked against its base, with its head identified.
pub struct FinetunedModel {
    /// The checkpoint.
    pub model: LoadedModel,
    /// Its head.
    pub head: HeadSpec,
    /// Its task, when the directory says.
    pub task: Option<TaskSpec>,
    /// The head's tensors (canonical names).
    pub head_tensors: BTreeMap<String, Tensor>,
}

/// Infers the head of a checkpoint without a manifest from its tensor names (transformers layouts).
pub fn detect_head(
    weights: &WeightMap,
    arch: Architecture,
    task: Option<&TaskSpec>,
    tokenizer: &TextEncoder,
) -> Result<HeadSpec> {
    let rows = |name: &str| {
        weights
            .tensors
            .get(name)
            .and_then(|t| t.dims().first().copied())
    };
    if let Some(n) = rows("classifier.out_proj.weight") {
        return Ok(HeadSpec::RobertaClassifier { num_labels: n });
    }
    if let Some(n) = rows("classifier.weight") {
        if arch == Architecture::Bert && weights.tensors.contains_key("pooler.dense.weight") {
            return Ok(HeadSpec::BertClassifier { num_labels: n });
        }
        return Ok(HeadSpec::Linear {
            num_labels: n,
            pooling: Pooling::Cls,
        });
    }
    if weights.tensors.contains_key("cls.predictions.bias")
        || weights.tensors.contains_key("lm_head.bias")
    {
        let task = task.context(
            "the checkpoint has a masked-LM head: name the task (its template and label words) to use it as a prompt head",
        )?;
        let ids = task
            .label_words
            .iter()
            .map(|w| tokenizer.label_word_id(w))
            .collect::<Result<Vec<_>>>()?;
        return Ok(HeadSpec::Prompt {
            template: task.template.clone(),
            label_words: task.label_words.clone(),
            label_word_ids: ids,
        });
    }
    bail!("cannot tell the checkpoint's head: it has no classifier.*, cls.predictions.* or lm_head.* tensors and no {HEAD_MANIFEST}")
}

/// Loads a fine-tuned HF directory, checks it against `base`, and identifies its head.
pub fn load_finetuned(
    dir: &Path,
    base: &LoadedModel,
    task: Option<&TaskSpec>,
    tokenizer: &TextEncoder,
    device: &Device,
) -> Result<FinetunedModel> {
    let model = LoadedModel::load(dir, device)?;
    base.config
        .check_same_network(&model.config)
        .with_context(|| format!("{} does not fit the base model", dir.display()))?;
    model
        .weights
        .check_matches_base(&base.weights)
        .with_context(|| format!("{} does not fit the base model", dir.display()))?;
    let arch = base.config.architecture()?;
    let manifest_path = dir.join(HEAD_MANIFEST);
    let (head, task_from_dir) = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path)?;
        let m: HeadManifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid head manifest", manifest_path.display()))?;
        (m.head, m.task)
    } else {
        (detect_head(&model.weights, arch, task, tokenizer)?, None)
    };
    let mut all = model.weights.tensors.clone();
    let extra = dir.join(HEAD_TENSORS);
    if extra.is_file() {
        let files = super::weights::ModelFiles {
            dir: dir.to_path_buf(),
            config: dir.join("config.json"),
            tokenizer: None,
            weights: vec![extra],
        };
        all.extend(WeightMap::load(&files, device)?.tensors);
    }
    let mut head_tensors = BTreeMap::new();
    for name in head.tensor_names(arch) {
        let t = all
            .get(&name)
            .with_context(|| format!("{}: head tensor `{name}` is missing", dir.display()))?;
        head_tensors.insert(name, t.clone());
    }
    Ok(FinetunedModel {
        model,
        head,
        task: task_from_dir.or_else(|| task.cloned()),
        head_tensors,
    })
}
