//! Fine-tuning: a model instance with its own weights, a training loop with best-dev selection, and
//! helpers shared with localization (cross-entropy batches, prototype heads).

pub mod optim;

use crate::data::{Example, FewShotSplit};
use crate::model::heads::Classifier;
use crate::model::ops::{to_f32_vec, write_f32};
use crate::model::predict::{accuracy, InputBuilder};
use crate::model::{to_hash_map, Architecture, ParamSet, TextInput, TokenizedRow};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use optim::{Optimizer, OptimizerConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// A model instance for one task: its own tensors (body + head), the trainable subset and two classifiers
/// over the same storage: one that records gradients (training) and one that does not (evaluation).
pub struct TaskInstance {
    /// All tensors under canonical names (both classifiers share their storage).
    pub tensors: BTreeMap<String, Tensor>,
    /// The trainable subset.
    pub params: ParamSet,
    /// Encoder + head, its trainable tensors the variables of `params` (for losses to differentiate).
    pub classifier: Classifier,
    /// The same encoder + head over detached views of the same storage: every in-place write to a variable
    /// is seen here too, but a forward pass records no graph and takes the fused inference ops.
    pub frozen: Classifier,
    /// Tokenization for this head.
    pub inputs: InputBuilder,
}

impl TaskInstance {
    /// Builds an instance from `tensors`; the names selected by `trainable` become variables.
    pub fn new(
        mut tensors: BTreeMap<String, Tensor>,
        inputs: InputBuilder,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let params = ParamSet::make_trainable(&mut tensors, trainable)?;
        let classifier = Classifier::load(
            &to_hash_map(&tensors),
            &inputs.config,
            &inputs.head,
            inputs.dtype,
            &inputs.device,
        )?;
        let detached: BTreeMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect();
        let frozen = Classifier::load(
            &to_hash_map(&detached),
            &inputs.config,
            &inputs.head,
            inputs.dtype,
            &inputs.device,
        )?;
        Ok(Self {
            tensors,
            params,
            classifier,
            frozen,
            inputs,
        })
    }

    /// Logits of examples at the current values of the variables (no gradient, no graph).
    pub fn logits(&self, examples: &[Example], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        self.inputs.logits(&self.frozen, examples, batch_size)
    }

    /// Accuracy on examples.
    pub fn accuracy(&self, examples: &[Example], batch_size: usize) -> Result<f64> {
        let labels: Vec<usize> = examples.iter().map(|e| e.label).collect();
        Ok(accuracy(&self.logits(examples, batch_size)?, &labels))
    }

    /// Mean cross-entropy of one batch, as a differentiable scalar.
    pub fn batch_loss(&self, texts: &[TextInput], labels: &[usize]) -> Result<Tensor> {
        let enc = self
            .inputs
            .tokenizer
            .encode(texts, self.inputs.head.uses_prompt())?;
        let input = enc.to_input(&self.inputs.config, &self.inputs.device, self.inputs.dtype)?;
        let logits = self.classifier.logits(&input)?;
        let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let y = Tensor::from_vec(y, labels.len(), &self.inputs.device)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &y)?)
    }

    /// Σ_i `weights[i]` · cross-entropy of example i, as a differentiable scalar. The examples are run in
    /// sub-batches of similar length (at most `max_tokens` padded tokens each, or one example), whose losses
    /// are summed into one graph: the same value and gradient as one padded batch, with little padding.
    pub fn weighted_loss(
        &self,
        texts: &[TextInput],
        labels: &[usize],
        weights: &[f32],
        max_tokens: usize,
    ) -> Result<Tensor> {
        if texts.len() != labels.len() || texts.len() != weights.len() || texts.is_empty() {
            bail!(
                "internal: {} texts, {} labels, {} weights",
                texts.len(),
                labels.len(),
                weights.len()
            );
        }
        let rows = self
            .inputs
            .tokenizer
            .tokenize(texts, self.inputs.head.uses_prompt())?;
        let mut total: Option<Tensor> = None;
        for part in token_budget_batches(&rows, max_tokens) {
            let picked: Vec<&TokenizedRow> = part.iter().map(|&i| &rows[i]).collect();
            let input = self.inputs.tokenizer.pad(&picked).to_input(
                &self.inputs.config,
                &self.inputs.device,
                self.inputs.dtype,
            )?;
            let logits = self.classifier.logits(&input)?;
            let dev = &self.inputs.device;
            let y: Vec<u32> = part.iter().map(|&i| labels[i] as u32).collect();
            let y = Tensor::from_vec(y, (part.len(), 1), dev)?;
            let w: Vec<f32> = part.iter().map(|&i| weights[i]).collect();
            let w = Tensor::from_vec(w, part.len(), dev)?.to_dtype(logits.dtype())?;
            let picked = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?
                .gather(&y, 1)?
                .squeeze(1)?;
            let loss = (picked * w)?.sum_all()?.neg()?;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
        }
        total.ok_or_else(|| anyhow::anyhow!("internal: no examples"))
    }

    /// Current values of the trainable tensors.
    pub fn snapshot(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .params
            .vars
            .iter()
            .map(|v| to_f32_vec(v.as_tensor()))
            .collect::<candle_core::Result<_>>()?)
    }

    /// Writes values back into the trainable tensors in place.
    pub fn restore(&self, values: &[Vec<f32>]) -> Result<()> {
        for (v, vals) in self.params.vars.iter().zip(values) {
            write_f32(v.as_tensor(), |w| w.copy_from_slice(vals))?;
        }
        Ok(())
    }
}

/// Row indices sorted by token count and cut into batches of at most `max_tokens` padded tokens (a row
/// longer than that is a batch of its own).
pub fn token_budget_batches(rows: &[TokenizedRow], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].ids.len(), i));
    let mut out: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let len = rows[i].ids.len();
        match out.last_mut() {
            // Sorted ascending, so this row is the longest of the batch it joins.
            Some(b) if (b.len() + 1) * len <= max_tokens => b.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

/// One epoch of mask optimization (epoch 0 = the starting mask).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// Epoch.
    pub epoch: usize,
    /// Size of the rounded mask.
    pub mask_size: usize,
    /// Entries that differ from the base patch.
    pub flips: usize,
    /// Train accuracy of the rounded mask.
    pub train_accuracy: f64,
    /// Dev accuracy of the rounded mask.
    pub dev_accuracy: f64,
    /// Mean training loss at the relaxed mask (none for epoch 0, the starting mask).
    pub loss: Option<f64>,
    /// Size of the rounded mask before it was projected onto the budget (paper's method, when it grew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unprojected_size: Option<usize>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

/// Which tensors fine-tuning updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainScope {
    /// Only the head (a linear probe).
    Head,
    /// Only the body (head frozen).
    Body,
    /// Body and head together.
    Both,
    /// A head-only probe first, then the body with the head frozen.
    ProbeThenBody,
}

/// Fine-tuning options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneOptions {
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Optimizer steps (of the body stage for `probe_then_body`).
    pub steps: usize,
    /// Steps of the head-only probe stage (`probe_then_body` only).
    pub probe_steps: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Evaluate on dev every this many steps; the best dev checkpoint is kept.
    pub eval_every: usize,
    /// Global gradient-norm clip.
    pub clip: Option<f64>,
    /// λ of the L1 penalty λ‖θ − θ_pre‖₁ on the body, a term of the loss (the head is not penalized).
    pub l1: Option<f64>,
    /// What trains.
    pub scope: TrainScope,
    /// Also train the embeddings (frozen by default, as in the paper).
    pub train_embeddings: bool,
    /// Shuffling seed.
    pub seed: u64,
}

/// One dev evaluation during fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimizer step.
    pub step: usize,
    /// Stage (`probe` or `main`).
    pub stage: String,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Dev accuracy.
    pub dev_accuracy: f64,
    /// Dev mean cross-entropy.
    pub dev_loss: f64,
}

/// What fine-tuning did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// Every dev evaluation.
    pub history: Vec<EvalPoint>,
    /// Step of the kept checkpoint.
    pub best_step: usize,
    /// Its dev accuracy.
    pub best_dev_accuracy: f64,
    /// Wall time.
    pub seconds: f64,
}

/// Progress of a long job, for progress bars and event streams.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// A training step finished.
    Step {
        /// Stage.
        stage: String,
        /// Step number (1-based).
        step: usize,
        /// Total steps of the stage.
        total: usize,
        /// Batch loss.
        loss: f64,
    },
    /// A dev evaluation.
    Eval(EvalPoint),
    /// A localization epoch finished.
    Epoch(EpochReport),
    /// Free-form status.
    Message {
        /// Text.
        text: String,
    },
}

fn mean_ce(logits: &[Vec<f32>], labels: &[usize]) -> f64 {
    let n = logits.len().max(1) as f64;
    logits
        .iter()
        .zip(labels)
        .map(|(row, &y)| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| ((v as f64) - m).exp()).sum();
            -((row[y] as f64) - m - z.ln())
        })
        .sum::<f64>()
        / n
}

/// The trainable-name predicate of a fine-tuning stage.
pub fn scope_selector(
    scope: TrainScope,
    head_names: Vec<String>,
    train_embeddings: bool,
) -> impl Fn(&str) -> bool {
    move |name: &str| {
        let body =
            name.starts_with("encoder.") || (train_embeddings && name.starts_with("embeddings."));
        let head = head_names.iter().any(|h| h == name) && name != "prototype.weight";
        match scope {
            TrainScope::Head => head,
            TrainScope::Body => body,
            TrainScope::Both | TrainScope::ProbeThenBody => body || head,
        }
    }
}

/// Fine-tunes `tensors` (base body + initial head) on the split's train set, selecting the checkpoint with
/// the best dev accuracy (ties: lower dev loss, then earlier). Returns the final tensors and a report.
pub fn finetune(
    tensors: BTreeMap<String, Tensor>,
    inputs: &InputBuilder,
    split: &FewShotSplit,
    opts: &FinetuneOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(BTreeMap<String, Tensor>, FinetuneReport)> {
    let start = Instant::now();
    if split.train.is_empty() || split.dev.is_empty() {
        bail!("fine-tuning needs training and dev examples");
    }
    if opts.batch_size == 0 || opts.eval_every == 0 {
        bail!("batch size and eval interval must be positive");
    }
    let arch = inputs.config.architecture()?;
    let head_names = inputs.head.tensor_names(arch);
    let stages: Vec<(&str, TrainScope, usize)> = match opts.scope {
        TrainScope::ProbeThenBody => vec![
            ("probe", TrainScope::Head, opts.probe_steps),
            ("main", TrainScope::Body, opts.steps),
        ],
        s => vec![("main", s, opts.steps)],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut tensors = tensors;
    let mut history = Vec::new();
    let mut best_step = 0;
    let mut best_dev = f64::NEG_INFINITY;
    let dev_labels: Vec<usize> = split.dev.iter().map(|e| e.label).collect();
    let train_texts = inputs.texts(&split.train)?;
    for (stage, scope, steps) in stages {
        let select = scope_selector(scope, head_names.clone(), opts.train_embeddings);
        let inst = TaskInstance::new(tensors, inputs.clone(), select)?;
        if inst.params.vars.is_empty() {
            bail!(
                "nothing to train in stage `{stage}` (scope {scope:?} with head `{}`)",
                inputs.head.kind()
            );
        }
        let anchors = match opts.l1 {
            Some(l) if l > 0.0 => Some(optim::L1Penalty {
                lambda: l,
                anchors: inst
                    .snapshot()?
                    .into_iter()
                    .zip(&inst.params.names)
                    .map(|(v, name)| (!head_names.contains(name)).then_some(v))
                    .collect(),
            }),
            _ => None,
        };
        let mut opt = Optimizer::new(opts.optimizer.clone(), &inst.params, opts.clip, anchors)?;
        let mut best: Option<Vec<Vec<f32>>> = None;
        let mut stage_best = f64::NEG_INFINITY;
        let mut stage_best_loss = f64::INFINITY;
        let mut order: Vec<usize> = Vec::new();
        let mut cursor = 0;
        let mut loss_sum = 0.0;
        let mut loss_n = 0usize;
        for step in 1..=steps {
            if cursor + opts.batch_size > order.len() {
                order = (0..split.train.len()).collect();
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let idx = &order[cursor..(cursor + opts.batch_size).min(order.len())];
            cursor += opts.batch_size;
            let texts: Vec<TextInput> = idx.iter().map(|&i| train_texts[i].clone()).collect();
            let labels: Vec<usize> = idx.iter().map(|&i| split.train[i].label).collect();
            let loss = inst.batch_loss(&texts, &labels)?;
            let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !loss_v.is_finite() {
                bail!("training diverged at step {step} (loss {loss_v}); lower the learning rate");
            }
            let grads = loss.backward()?;
            let g = inst.params.gradients(&grads)?;
            opt.step(&inst.params, &g)?;
            loss_sum += loss_v;
            loss_n += 1;
            progress(Progress::Step {
                stage: stage.to_string(),
                step,
                total: steps,
                loss: loss_v,
            });
            if step % opts.eval_every == 0 || step == steps {
                let logits = inst.logits(&split.dev, 64)?;
                let acc = accuracy(&logits, &dev_labels);
                let dl = mean_ce(&logits, &dev_labels);
                let point = EvalPoint {
                    step,
                    stage: stage.to_string(),
                    train_loss: loss_sum / loss_n.max(1) as f64,
                    dev_accuracy: acc,
                    dev_loss: dl,
                };
                loss_sum = 0.0;
                loss_n = 0;
                progress(Progress::Eval(point.clone()));
                history.push(point);
                if acc > stage_best || (acc == stage_best && dl < stage_best_loss) {
                    stage_best = acc;
                    stage_best_loss = dl;
                    best = Some(inst.snapshot()?);
                    if stage == "main" {
                        best_step = step;
                        best_dev = acc;
                    }
                }
            }
        }
        if let Some(b) = &best {
            inst.restore(b)?;
        }
        // Detach: the next stage (or the caller) gets plain tensors with the kept values.
        tensors = inst
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.detach()))
            .collect();
    }
    Ok((
        tensors,
        FinetuneReport {
            history,
            best_step,
            best_dev_accuracy: best_dev,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// True when names of this architecture's body are the encoder layers (the default graft region).
pub fn is_encoder_layer(name: &str) -> bool {
    name.starts_with("encoder.layer.")
}

/// The architecture of an instance's config (convenience for callers holding an [`InputBuilder`]).
pub fn architecture(inputs: &InputBuilder) -> Result<Architecture> {
    inputs.config.architecture()
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn token_budget_batches_sort_by_length_and_respect_the_budget() {
        let rows: Vec<TokenizedRow> = [5usize, 30, 4, 6, 12, 40, 7]
            .into_iter()
            .map(|n| TokenizedRow {
                ids: vec![1; n],
                type_ids: vec![0; n],
                mask_position: None,
            })
            .collect();
        let b = token_budget_batches(&rows, 24);
        assert_eq!(b, vec![vec![2, 0, 3], vec![6, 4], vec![1], vec![5]]);
        for batch in &b {
            let longest = batch.iter().map(|&i| rows[i].ids.len()).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 24);
        }
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, (0..rows.len()).collect::<Vec<_>>());
    }
}
