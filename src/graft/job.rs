//! A localization job end to end: region setup, localization (at a fixed size, or the budget search of
//! [`super::budget`] with its retention curve and verdict), side-by-side evaluation, the graft artifact.
//! The CLI's `localize` and the service's localization jobs both run this.

use super::budget::{search, Budget, Retention, SearchSpec};
use super::evaluate::{evaluate_variants, Variant, VariantReport};
use super::graftable::GraftableModel;
use super::localize::{localize, Localization, LocalizeOptions};
use super::{entries_from_mask, unix_now, BaseRef, Graft, GraftManifest, GRAFT_FORMAT};
use crate::data::{FewShotSplit, TaskSpec};
use crate::model::export::FinetunedModel;
use crate::model::ops::to_f32_vec;
use crate::model::BaseModel;
use crate::train::Progress;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Inputs of a localization job.
pub struct LocalizationJob<'a> {
    /// The base.
    pub base: &'a BaseModel,
    /// The fine-tuned checkpoint (checked against the base).
    pub finetuned: &'a FinetunedModel,
    /// The task.
    pub task: TaskSpec,
    /// Train / dev / test examples.
    pub split: FewShotSplit,
    /// Hyper-parameters.
    pub options: LocalizeOptions,
    /// ECE bins of the evaluation.
    pub bins: usize,
    /// The retention target and search (None: the fixed sparsity of `options`, no curve, no verdict).
    pub budget: Option<Budget>,
    /// Set to stop the job early (it then fails with "cancelled").
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Timings of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTimings {
    /// Building the model instance and flat buffers.
    pub setup_seconds: f64,
    /// Localization proper.
    pub localize_seconds: f64,
    /// Side-by-side evaluation.
    pub evaluate_seconds: f64,
}

/// What a localization job produced.
pub struct LocalizationOutcome {
    /// The graft artifact (manifest metrics filled in).
    pub graft: Graft,
    /// Masks and per-epoch history.
    pub localization: Localization,
    /// Metrics of base+head, base patch, graft and fine-tuned on the test split.
    pub variants: Vec<VariantReport>,
    /// Timings.
    pub timings: JobTimings,
    /// The retention curve and verdict (when the job had a budget).
    pub retention: Option<Retention>,
}

impl LocalizationJob<'_> {
    /// Body values the checkpoint changed outside the region and outside its head (a BERT classifier's
    /// pooler travels with the head).
    fn changed_outside_region(&self) -> Result<usize> {
        let head = self
            .finetuned
            .head
            .tensor_names(self.base.model.config.architecture()?);
        let mut n = 0;
        for (name, ft) in &self.finetuned.model.weights.tensors {
            if self.options.region.contains(name) || head.contains(name) {
                continue;
            }
            let Some(pre) = self.base.model.weights.tensors.get(name) else {
                continue;
            };
            if pre.dims() != ft.dims() {
                continue;
            }
            let (a, b) = (to_f32_vec(pre)?, to_f32_vec(ft)?);
            n += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        }
        Ok(n)
    }

    /// Runs the job.
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> Result<LocalizationOutcome> {
        let t0 = Instant::now();
        let head = self.finetuned.head.clone();
        let inputs = self.base.inputs(head.clone());
        let mut model = GraftableModel::new(
            &self.base.model,
            &self.finetuned.model.weights.tensors,
            self.finetuned.head_tensors.clone(),
            inputs,
            &self.options.region,
        )?;
        model.cancel = self.cancel.clone();
        let setup_seconds = t0.elapsed().as_secs_f64();
        let budget = super::localize::budget(self.options.sparsity, model.region.len());
        let growth =
            self.options.method == super::localize::Method::Paper && self.options.allow_growth;
        let eval_set = if self.split.test.is_empty() {
            &self.split.dev
        } else {
            &self.split.test
        };
        let (loc, retention) = match &self.budget {
            Some(b) => {
                progress(Progress::Message {
                    text: format!(
                        "region: {} tensors, {} parameters",
                        model.region.names.len(),
                        model.region.len()
                    ),
                });
                let parameters = self.base.model.body_parameter_count();
                let spec = SearchSpec {
                    budget: *b,
                    bins: self.bins,
                    body_parameters: parameters,
                };
                let (loc, mut r) =
                    search(&model, &self.split, eval_set, &self.options, spec, progress)?;
                r.changed_outside_region = self.changed_outside_region()?;
                super::budget::explain(&mut r, self.options.method);
                progress(Progress::Message {
                    text: r.summary.clone(),
                });
                (loc, Some(r))
            }
            None => {
                progress(Progress::Message {
                    text: format!(
                        "region: {} tensors, {} parameters; budget {budget} ({:e}): the graft will have {}",
                        model.region.names.len(),
                        model.region.len(),
                        self.options.sparsity,
                        if growth {
                            "about that many parameters (growth allowed: the paper's mask may exceed it)"
                                .to_string()
                        } else {
                            format!("at most {budget} parameters")
                        }
                    ),
                });
                (
                    localize(&model, &self.split, &self.options, progress)?,
                    None,
                )
            }
        };
        let t1 = Instant::now();
        let variants = evaluate_variants(
            &model,
            &self.split,
            eval_set,
            &[
                ("base+head".to_string(), Variant::Mask(&[])),
                ("base patch".to_string(), Variant::Mask(&loc.base_patch)),
                (
                    "graft".to_string(),
                    match &loc.values {
                        Some(v) => Variant::Values(&loc.mask, v),
                        None => Variant::Mask(&loc.mask),
                    },
                ),
                ("fine-tuned".to_string(), Variant::Finetuned),
            ],
            self.bins,
            self.options.calibration,
        )?;
        let evaluate_seconds = t1.elapsed().as_secs_f64();
        let timings = JobTimings {
            setup_seconds,
            localize_seconds: loc.seconds,
            evaluate_seconds,
        };
        let arch = self.base.model.config.architecture()?;
        let head_names = head.tensor_names(arch);
        let head_values = Graft::head_from_tensors(&head_names, &self.finetuned.head_tensors)?;
        let calibration = variants
            .iter()
            .find(|v| v.name == "graft")
            .and_then(|v| v.calibration.clone());
        let metrics = serde_json::json!({
            "calibration": calibration,
            "budget": loc.base_patch.len(),
            "retention": retention,
            "variants": variants,
            "history": loc.history,
            "best_epoch": loc.best_epoch,
            "base_patch_size": loc.base_patch.len(),
            "timings": timings,
            "split": {"k": self.split.k, "seed": self.split.seed, "train": self.split.train.len(),
                       "dev": self.split.dev.len(), "test": self.split.test.len()},
        });
        let manifest = GraftManifest {
            format: GRAFT_FORMAT,
            base: BaseRef {
                name: self.base.name.clone(),
                content_hash: self.base.model.weights.content_hash.clone(),
                architecture: format!("{arch:?}").to_lowercase(),
                parameters: self.base.model.body_parameter_count(),
            },
            region: self.options.region.clone(),
            region_size: model.region.len(),
            size: loc.mask.len(),
            method: self.options.method.name().to_string(),
            hyper_parameters: serde_json::from_value(serde_json::to_value(LocalizeOptions {
                sparsity: retention
                    .as_ref()
                    .map_or(self.options.sparsity, |r| r.chosen_point().sparsity),
                ..self.options.clone()
            })?)?,
            head,
            task: Some(self.task.clone()),
            metrics: serde_json::from_value(metrics)?,
            created_unix: unix_now(),
        };
        let graft = Graft {
            manifest,
            entries: match &loc.values {
                Some(v) => {
                    let mut source = model.ft.clone();
                    for (&i, &x) in loc.mask.iter().zip(v) {
                        source[i as usize] = x;
                    }
                    entries_from_mask(&model.region, &loc.mask, &source)
                }
                None => entries_from_mask(&model.region, &loc.mask, &model.ft),
            },
            head: head_values,
        };
        graft.validate()?;
        Ok(LocalizationOutcome {
            graft,
            localization: loc,
            variants,
            timings,
            retention,
        })
    }
}
