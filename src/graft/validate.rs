//! Full validation of a graft against the base that will serve it, before anything serves it.
//!
//! [`Graft::from_bytes`](super::Graft::from_bytes) checks that a file is internally consistent (lengths,
//! sorted in-range indices, finite body values). [`validate`] checks everything else a server needs so that
//! a graft can never fail, or produce non-finite numbers, inside a shared batch: the base's hash; every
//! grafted tensor's name and shape against the base; the head's tensors — exactly the names the head kind
//! has, each with the shape the head spec and the base's sizes imply; label count, label descriptions and
//! label words matching the head; prompt label-word ids inside the vocabulary; every value finite and no
//! larger in magnitude than [`MAX_ABS_VALUE`]; the prototype temperature τ and the stored calibration
//! temperatures finite and inside sane bounds. Each refusal names the tensor or field at fault.

use super::Graft;
use crate::model::config::Architecture;
use crate::model::heads::HeadSpec;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// Largest magnitude of any grafted or head value. Base weights of BERT-family models are below 10 or so;
/// values near f32's range overflow to infinity in the forward pass.
pub const MAX_ABS_VALUE: f32 = 1.0e4;
/// Bounds of a prototype head's τ (class scores are cosines divided by τ).
pub const PROTOTYPE_TEMPERATURE: (f64, f64) = (1.0e-4, 1.0e4);
/// Bounds of a stored calibration temperature (logits are divided by it before the softmax).
pub const CALIBRATION_TEMPERATURE: (f64, f64) = (1.0e-3, 1.0e3);
/// Most classes a head may have.
pub const MAX_LABELS: usize = 1000;

/// What validation needs to know about the base.
#[derive(Debug, Clone)]
pub struct BaseFacts {
    /// SHA-256 of the base's weight files.
    pub content_hash: String,
    /// Its architecture.
    pub architecture: Architecture,
    /// Hidden size.
    pub hidden: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Every base tensor's shape by canonical name.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl BaseFacts {
    /// The facts of a loaded base model.
    pub fn of(model: &crate::model::weights::LoadedModel) -> Result<Self> {
        let weights = crate::model::WeightInfo::of(&model.weights);
        Self::of_parts(&model.config, &weights)
    }

    /// The facts of a base described without its weights.
    pub fn of_info(base: &crate::model::BaseInfo) -> Result<Self> {
        Self::of_parts(&base.config, &base.weights)
    }

    fn of_parts(
        config: &crate::model::ModelConfig,
        weights: &crate::model::WeightInfo,
    ) -> Result<Self> {
        Ok(Self {
            content_hash: weights.content_hash.clone(),
            architecture: config.architecture()?,
            hidden: config.hidden_size,
            vocab: config.vocab_size,
            shapes: weights.shapes.clone(),
        })
    }
}

/// The head tensors `spec` needs on this base, with their shapes.
pub fn head_shapes(spec: &HeadSpec, base: &BaseFacts) -> BTreeMap<String, Vec<usize>> {
    let (h, n, v) = (base.hidden, spec.num_labels(), base.vocab);
    let shapes: Vec<Vec<usize>> = match spec {
        HeadSpec::BertClassifier { .. } | HeadSpec::RobertaClassifier { .. } => {
            vec![vec![h, h], vec![h], vec![n, h], vec![n]]
        }
        HeadSpec::Linear { .. } => vec![vec![n, h], vec![n]],
        HeadSpec::Prompt { .. } => vec![vec![h, h], vec![h], vec![h], vec![h], vec![v]],
        HeadSpec::Prototype { .. } => vec![vec![n, h]],
    };
    spec.tensor_names(base.architecture)
        .into_iter()
        .zip(shapes)
        .collect()
}

fn check_values(what: &str, values: &[f32]) -> Result<()> {
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || v.abs() > MAX_ABS_VALUE)
    {
        bail!("{what}: value {v} at position {i} is not finite or larger in magnitude than {MAX_ABS_VALUE}");
    }
    Ok(())
}

fn check_range(what: &str, v: f64, (lo, hi): (f64, f64)) -> Result<()> {
    if !(v.is_finite() && v >= lo && v <= hi) {
        bail!("{what} is {v}; it must be a finite number between {lo} and {hi}");
    }
    Ok(())
}

/// Checks that `graft` can be served by `base`; the error names the first problem found.
pub fn validate(graft: &Graft, base: &BaseFacts) -> Result<()> {
    graft.validate()?;
    let m = &graft.manifest;
    if m.base.content_hash != base.content_hash {
        bail!(
            "graft was made for base `{}` ({}…), not this base ({}…)",
            m.base.name,
            m.base
                .content_hash
                .get(..12)
                .unwrap_or(&m.base.content_hash),
            base.content_hash.get(..12).unwrap_or("")
        );
    }
    for e in &graft.entries {
        let Some(shape) = base.shapes.get(&e.name) else {
            bail!("graft touches `{}`, which the base does not have", e.name);
        };
        if shape != &e.shape {
            bail!(
                "graft tensor `{}` has shape {:?}, the base {:?}",
                e.name,
                e.shape,
                shape
            );
        }
        check_values(&format!("graft tensor `{}`", e.name), &e.values)?;
    }
    check_head(graft, base)?;
    check_task(graft)?;
    check_calibration(m)
}

fn check_head(graft: &Graft, base: &BaseFacts) -> Result<()> {
    let spec = &graft.manifest.head;
    let n = spec.num_labels();
    if !(1..=MAX_LABELS).contains(&n) {
        bail!(
            "head `{}` has {n} classes; 1 to {MAX_LABELS} are allowed",
            spec.kind()
        );
    }
    match spec {
        HeadSpec::Prompt {
            template,
            label_words,
            label_word_ids,
        } => {
            if label_words.len() != label_word_ids.len() {
                bail!(
                    "prompt head: {} label words but {} label word ids",
                    label_words.len(),
                    label_word_ids.len()
                );
            }
            if let Some(id) = label_word_ids.iter().find(|&&id| id as usize >= base.vocab) {
                bail!(
                    "prompt head: label word id {id} is outside the vocabulary ({} tokens)",
                    base.vocab
                );
            }
            if template.matches("{mask}").count() != 1 || !template.contains("{sentence}") {
                bail!("prompt head: template {template:?} needs {{sentence}} and exactly one {{mask}}");
            }
        }
        HeadSpec::Prototype {
            descriptions,
            temperature,
        } => {
            if descriptions.iter().any(|d| d.trim().is_empty()) {
                bail!("prototype head: a class description is empty");
            }
            check_range(
                "prototype head temperature τ",
                *temperature,
                PROTOTYPE_TEMPERATURE,
            )?;
        }
        _ => {}
    }
    let expected = head_shapes(spec, base);
    for name in graft.head.keys() {
        if !expected.contains_key(name) {
            bail!(
                "head tensor `{name}` does not belong to a `{}` head (expected {:?})",
                spec.kind(),
                expected.keys().collect::<Vec<_>>()
            );
        }
    }
    for (name, shape) in &expected {
        let t = graft.head.get(name).with_context(|| {
            format!(
                "the `{}` head needs tensor `head.{name}`, which the graft lacks",
                spec.kind()
            )
        })?;
        if &t.shape != shape {
            bail!(
                "head tensor `{name}` has shape {:?}; a `{}` head with {n} classes on this base needs {shape:?}",
                t.shape,
                spec.kind()
            );
        }
        check_values(&format!("head tensor `{name}`"), &t.values)?;
    }
    Ok(())
}

fn check_task(graft: &Graft) -> Result<()> {
    let spec = &graft.manifest.head;
    let Some(task) = &graft.manifest.task else {
        return Ok(());
    };
    task.validate()
        .context("the graft's task spec is not valid")?;
    if task.labels.len() != spec.num_labels() {
        bail!(
            "the task has {} labels but the head {} classes",
            task.labels.len(),
            spec.num_labels()
        );
    }
    match spec {
        HeadSpec::Prototype { descriptions, .. }
            if !task.label_descriptions.is_empty() && &task.label_descriptions != descriptions =>
        {
            bail!(
                "the task's label descriptions {:?} do not match the prototype head's {:?}",
                task.label_descriptions,
                descriptions
            )
        }
        HeadSpec::Prompt { label_words, .. }
            if !task.label_words.is_empty() && &task.label_words != label_words =>
        {
            bail!(
                "the task's label words {:?} do not match the prompt head's {:?}",
                task.label_words,
                label_words
            )
        }
        _ => Ok(()),
    }
}

fn check_calibration(m: &super::GraftManifest) -> Result<()> {
    // The calibration decision `predict` applies (`temperature` when its method is `temperature`).
    if let Some(d) = m.calibration() {
        for (field, t) in [
            ("temperature", d.temperature),
            ("fitted_temperature", d.fitted_temperature),
        ] {
            if let Some(t) = t {
                check_range(
                    &format!("stored calibration decision's {field}"),
                    t,
                    CALIBRATION_TEMPERATURE,
                )?;
            }
        }
    }
    for v in m.variants() {
        if let Some(t) = v.temperature {
            let name = v.name.as_deref().unwrap_or("?");
            check_range(
                &format!("stored calibration temperature of `{name}`"),
                t,
                CALIBRATION_TEMPERATURE,
            )?;
        }
    }
    Ok(())
}
