//! Reading fine-tuned checkpoints: ours (with `skillgraft_head.json`), transformers' (the head recognized from
//! its tensor names, class names from `config.json`), or a body whose head the caller names (a prototype
//! head is then built from the base). Every checkpoint is checked against the base (names, shapes, dtypes)
//! and, when a task is named, against the task's labels: the classifier's rows and `config.json`'s
//! `id2label` must agree with it, or the checkpoint is refused with both sides named.

use super::config::{Architecture, ModelConfig};
use super::export::{HeadManifest, HEAD_MANIFEST, HEAD_TENSORS};
use super::heads::{HeadSpec, Pooling};
use super::tokenize::TextEncoder;
use super::weights::WeightInfo;
use super::weights::{LoadedModel, WeightMap};
use crate::data::TaskSpec;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// A fine-tuned checkpoint checked against its base, with its head identified.
pub struct FinetunedModel {
    /// The checkpoint.
    pub model: LoadedModel,
    /// Its head.
    pub head: HeadSpec,
    /// Its task, when the directory says (or the caller named it).
    pub task: Option<TaskSpec>,
    /// The head's tensors (canonical names).
    pub head_tensors: BTreeMap<String, Tensor>,
    /// Class names from `config.json`'s `id2label`, when they are real names (not `LABEL_0`, …).
    pub labels: Option<Vec<String>>,
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
        task.require_for_head(crate::data::HeadNeeds::Prompt)?;
        let ids = task
            .label_words
            .iter()
            .map(|w| tokenizer.label_word_id(w))
            .collect::<Result<Vec<_>>>()?;
        return Ok(HeadSpec::Prompt {
            template: task.template.clone().unwrap_or_default(),
            label_words: task.label_words.clone(),
            label_word_ids: ids,
        });
    }
    bail!("cannot tell the checkpoint's head: it has no classifier.* (sequence classification), cls.predictions.* or lm_head.* (masked LM) tensors and no {HEAD_MANIFEST}: give the head it was fine-tuned with (`--head prototype` on the command line, `head` in an upload or a localization job; a prototype head is built from the base and the task's label descriptions)")
}

/// `config.json`'s `id2label` in class-id order, when present and complete (ids 0..n).
pub fn config_labels(config: &ModelConfig) -> Option<Vec<String>> {
    let map = config.extra.get("id2label")?.as_object()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    pairs.sort();
    if pairs.len() != map.len() || pairs.iter().enumerate().any(|(i, (id, _))| *id != i) {
        return None;
    }
    Some(pairs.into_iter().map(|(_, l)| l).collect())
}

/// Whether labels are transformers' placeholders `LABEL_0`, `LABEL_1`, ….
fn generic(labels: &[String]) -> bool {
    labels
        .iter()
        .enumerate()
        .all(|(i, l)| l == &format!("LABEL_{i}"))
}

/// Checks the head's classes and `config.json`'s `id2label` against each other and against the task.
fn check_labels(
    dir: &Path,
    head: &HeadSpec,
    config_labels: Option<&[String]>,
    task: Option<&TaskSpec>,
) -> Result<()> {
    let d = dir.display();
    let classifier = matches!(
        head,
        HeadSpec::BertClassifier { .. }
            | HeadSpec::RobertaClassifier { .. }
            | HeadSpec::Linear { .. }
    );
    let n = head.num_labels();
    if classifier {
        if let Some(cl) = config_labels {
            if cl.len() != n {
                bail!("{d}: config.json's id2label has {} labels but the classifier has {n} rows: the checkpoint is inconsistent", cl.len());
            }
        }
    }
    let Some(task) = task else { return Ok(()) };
    let m = task.labels.len();
    if n != m {
        let names = config_labels
            .map(|l| format!(" ({})", l.join(", ")))
            .unwrap_or_default();
        bail!(
            "{d}: the checkpoint's {} head has {n} classes{names} but task `{}` has {m} ({}): use the task the checkpoint was fine-tuned on (a task spec with its {n} labels in the same order), or a checkpoint fine-tuned on this task",
            head.kind(),
            task.name,
            task.labels.join(", ")
        );
    }
    if let Some(cl) = config_labels {
        if !generic(cl) && cl != task.labels.as_slice() {
            let mut a = cl.to_vec();
            let mut b = task.labels.clone();
            a.sort();
            b.sort();
            if a == b {
                bail!(
                    "{d}: config.json's id2label orders the classes [{}] but task `{}` orders them [{}]: class ids must agree; reorder `labels` in the task spec to match id2label",
                    cl.join(", "),
                    task.name,
                    task.labels.join(", ")
                );
            }
            bail!(
                "{d}: config.json's id2label names the classes [{}] but task `{}` has [{}]: rename `labels` in the task spec to match id2label (same order), or fix id2label in config.json",
                cl.join(", "),
                task.name,
                task.labels.join(", ")
            );
        }
    }
    Ok(())
}

/// Loads a checkpoint's body and checks it against the base (config, tensor names, shapes, dtypes).
pub fn load_body(dir: &Path, base: &LoadedModel, device: &Device) -> Result<LoadedModel> {
    check_body(dir, &base.config, &WeightInfo::of(&base.weights), device)
}

/// As [`load_body`], against a base described without its weights.
pub fn check_body(
    dir: &Path,
    config: &ModelConfig,
    weights: &WeightInfo,
    device: &Device,
) -> Result<LoadedModel> {
    let model = LoadedModel::load(dir, device)?;
    config
        .check_same_network(&model.config)
        .with_context(|| format!("{} does not fit the base model", dir.display()))?;
    model
        .weights
        .check_matches_base(weights)
        .with_context(|| format!("{} does not fit the base model", dir.display()))?;
    Ok(model)
}

/// Loads a fine-tuned HF directory, checks it against `base`, and identifies its head.
pub fn load_finetuned(
    dir: &Path,
    base: &LoadedModel,
    task: Option<&TaskSpec>,
    tokenizer: &TextEncoder,
    device: &Device,
) -> Result<FinetunedModel> {
    load_finetuned_with(dir, base, task, tokenizer, device, None)
}

/// A checkpoint's head, task and class names: from its manifest, the head given, or its tensor names;
/// checked against the task's labels.
struct Identified {
    head: HeadSpec,
    task: Option<TaskSpec>,
    labels: Option<Vec<String>>,
}

fn identify(
    dir: &Path,
    model: &LoadedModel,
    arch: Architecture,
    task: Option<&TaskSpec>,
    tokenizer: &TextEncoder,
    given: Option<&HeadSpec>,
) -> Result<Identified> {
    let manifest_path = dir.join(HEAD_MANIFEST);
    let manifest = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path)?;
        let m: HeadManifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid head manifest", manifest_path.display()))?;
        Some(m)
    } else {
        None
    };
    let (head, task_from_dir) = match (manifest, given) {
        (Some(m), Some(g)) if m.head.kind() != g.kind() => bail!(
            "{}: its {HEAD_MANIFEST} says the head is {}, but the head given is {}: give {} (or no head)",
            dir.display(),
            m.head.kind(),
            g.kind(),
            m.head.kind()
        ),
        (Some(m), _) => (m.head, m.task),
        (None, Some(g)) => (g.clone(), None),
        (None, None) => (detect_head(&model.weights, arch, task, tokenizer)?, None),
    };
    let labels = config_labels(&model.config);
    let task = task_from_dir.or_else(|| task.cloned());
    check_labels(dir, &head, labels.as_deref(), task.as_ref())?;
    Ok(Identified { head, task, labels })
}

/// The checkpoint's tensors with those of its separate head file (when it has one).
fn all_tensors(
    dir: &Path,
    model: &LoadedModel,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
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
    Ok(all)
}

fn missing_head_tensor(dir: &Path, name: &str, head: &HeadSpec) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: head tensor `{name}` is missing for its {} head: is this a checkpoint with that head? A body fine-tuned behind another head needs that head given (`--head prototype`, or `head` in an upload or a job)",
        dir.display(),
        head.kind()
    )
}

/// As [`load_finetuned`], with the head given by the caller when the checkpoint does not carry it (or to
/// read a body fine-tuned behind another head). A given head whose tensors the checkpoint lacks and that
/// has no trained parameters (prototype) is built from the base.
pub fn load_finetuned_with(
    dir: &Path,
    base: &LoadedModel,
    task: Option<&TaskSpec>,
    tokenizer: &TextEncoder,
    device: &Device,
    given: Option<&HeadSpec>,
) -> Result<FinetunedModel> {
    let model = load_body(dir, base, device)?;
    let arch = base.config.architecture()?;
    let Identified { head, task, labels } = identify(dir, &model, arch, task, tokenizer, given)?;
    let all = all_tensors(dir, &model, device)?;
    let mut head_tensors = BTreeMap::new();
    for name in head.tensor_names(arch) {
        let t = match (all.get(&name), &head) {
            (Some(t), _) => t.clone(),
            (None, HeadSpec::Prototype { descriptions, .. }) => {
                // No trained parameters: the prototypes are the base's embeddings of the descriptions.
                let inputs = super::predict::InputBuilder {
                    tokenizer: tokenizer.clone(),
                    config: base.config.clone(),
                    head: head.clone(),
                    device: device.clone(),
                    dtype: candle_core::DType::F32,
                };
                super::predict::prototype_tensor(base, &inputs, descriptions)?
            }
            (None, _) => return Err(missing_head_tensor(dir, &name, &head)),
        };
        head_tensors.insert(name, t);
    }
    Ok(FinetunedModel {
        model,
        head,
        task,
        head_tensors,
        labels: labels.filter(|l| !generic(l)),
    })
}

/// What a checked checkpoint is (see [`inspect`]).
#[derive(Debug, Clone)]
pub struct CheckpointFacts {
    /// SHA-256 of its weight files.
    pub content_hash: String,
    /// Its head.
    pub head: HeadSpec,
    /// Class names from `config.json`'s `id2label`, when they are real names.
    pub labels: Option<Vec<String>>,
}

/// Checks a checkpoint's body alone against a base described without its weights, on the host CPU (a
/// checkpoint whose head is given with each job): its content hash and `config.json`'s class names.
pub fn inspect_body(dir: &Path, base: &super::BaseInfo) -> Result<(String, Option<Vec<String>>)> {
    let model = check_body(dir, &base.config, &base.weights, &Device::Cpu)?;
    Ok((
        model.weights.content_hash.clone(),
        config_labels(&model.config),
    ))
}

/// Checks a fine-tuned HF directory against a base described without its weights, as
/// [`load_finetuned_with`] does, with the checkpoint read on the host CPU and dropped after: names, shapes,
/// dtypes, head and labels. A prototype head's tensor is not built here (that needs the base's weights);
/// whoever loads the checkpoint for use builds it.
pub fn inspect(
    dir: &Path,
    base: &super::BaseInfo,
    task: Option<&TaskSpec>,
    given: Option<&HeadSpec>,
) -> Result<CheckpointFacts> {
    let model = check_body(dir, &base.config, &base.weights, &Device::Cpu)?;
    let arch = base.config.architecture()?;
    let Identified { head, labels, .. } =
        identify(dir, &model, arch, task, &base.tokenizer, given)?;
    if !matches!(head, HeadSpec::Prototype { .. }) {
        let all = all_tensors(dir, &model, &Device::Cpu)?;
        if let Some(name) = head
            .tensor_names(arch)
            .into_iter()
            .find(|n| !all.contains_key(n))
        {
            return Err(missing_head_tensor(dir, &name, &head));
        }
    }
    Ok(CheckpointFacts {
        content_hash: model.weights.content_hash.clone(),
        head,
        labels: labels.filter(|l| !generic(l)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(labels: &[&str]) -> TaskSpec {
        TaskSpec::with_labels("t", labels.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn labels_are_checked_against_the_task() {
        let dir = Path::new("ckpt");
        let head = HeadSpec::BertClassifier { num_labels: 3 };
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        check_labels(dir, &head, Some(&names), Some(&task(&["a", "b", "c"]))).unwrap();
        let err = check_labels(dir, &head, Some(&names), Some(&task(&["a", "b"])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 classes (a, b, c)") && err.contains("has 2"),
            "{err}"
        );
        let err = check_labels(dir, &head, Some(&names), Some(&task(&["b", "a", "c"])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reorder `labels`"), "{err}");
        let err = check_labels(dir, &head, Some(&names), Some(&task(&["x", "b", "c"])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rename `labels`"), "{err}");
        let generic: Vec<String> = (0..3).map(|i| format!("LABEL_{i}")).collect();
        check_labels(dir, &head, Some(&generic), Some(&task(&["x", "y", "z"]))).unwrap();
        let err = check_labels(dir, &head, Some(&generic[..2]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inconsistent"), "{err}");
    }
}
