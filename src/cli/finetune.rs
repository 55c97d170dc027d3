//! `skillgraft finetune`: fine-tunes the base model on a task (a head of its kind, SGD or AdamW, optionally an
//! L1 pull towards the pre-trained weights) and writes the result as an HF directory.

use super::args::{DataArgs, ModelArgs};
use super::output::{print_json, Reporter};
use crate::model::export::write_hf_dir;
use crate::model::HeadKind;
use crate::train::optim::OptimizerConfig;
use crate::train::{finetune, FinetuneOptions, TrainScope};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Options of `skillgraft finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Output HF directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Task head.
    #[arg(long, value_enum, default_value = "prototype")]
    head: HeadKind,
    /// Prototype-head temperature τ.
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    /// Pooling of the linear head: cls or mean.
    #[arg(long, value_enum, default_value = "cls")]
    pooling: crate::model::Pooling,
    /// Optimizer.
    #[arg(long, value_parser = ["sgd", "adamw"], default_value = "sgd")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-2)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// λ of an L1 penalty λ‖θ − θ_pre‖₁ on the body, added to the loss (the paper's recipe for AdamW
    /// checkpoints that localize: the optimizer pulls back every weight the task does not need).
    #[arg(long)]
    l1: Option<f64>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Head-only probe steps before the body (scope probe-then-body).
    #[arg(long, default_value_t = 100)]
    probe_steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Evaluate on dev every N steps (best dev checkpoint kept).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Gradient-norm clip (0 = none).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// What trains (default: body for heads without parameters, both otherwise).
    #[arg(long, value_enum)]
    scope: Option<TrainScope>,
    /// Also train the embeddings (frozen by default).
    #[arg(long)]
    train_embeddings: bool,
}

/// Runs the fine-tune.
pub(super) fn run(a: FinetuneArgs) -> Result<()> {
    a.model.require_f32("finetune")?;
    let base = a.model.load()?;
    let task = a.data.task()?;
    let split = a.data.split(&task)?;
    let head = base.head_spec(a.head, &task, a.temperature, a.pooling)?;
    let head_tensors = base.init_head(&head, a.data.sample.seed)?;
    let mut tensors = base.model.weights.deep_clone()?.tensors;
    tensors.extend(head_tensors);
    let optimizer = match a.optimizer.as_str() {
        "adamw" => OptimizerConfig::AdamW {
            lr: a.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
        },
        _ => OptimizerConfig::Sgd {
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
        },
    };
    let scope = a.scope.unwrap_or(match head {
        crate::model::HeadSpec::Prototype { .. } | crate::model::HeadSpec::Prompt { .. } => {
            TrainScope::Body
        }
        _ => TrainScope::Both,
    });
    let opts = FinetuneOptions {
        optimizer,
        steps: a.steps,
        probe_steps: a.probe_steps,
        batch_size: a.batch_size,
        eval_every: a.eval_every,
        clip: (a.clip > 0.0).then_some(a.clip),
        l1: a.l1,
        scope,
        train_embeddings: a.train_embeddings,
        seed: a.data.sample.seed,
    };
    let inputs = base.inputs(head.clone());
    let mut rep = Reporter::new();
    eprintln!(
        "fine-tuning {} on {} (K={}, seed {}: {} train / {} dev / {} test), head {}, scope {:?}",
        base.name,
        task.name,
        split.k,
        split.seed,
        split.train.len(),
        split.dev.len(),
        split.test.len(),
        head.kind(),
        scope
    );
    let (tensors, report) = finetune(tensors, &inputs, &split, &opts, &mut |p| rep.handle(p))?;
    write_hf_dir(&a.out, &base.model, &tensors, &head, Some(&task), a.force)?;
    if a.model.json {
        print_json(&serde_json::json!({"out": a.out, "options": opts, "report": report}))?;
    } else {
        println!(
            "fine-tuned in {:.1}s; best dev accuracy {:.4} at step {}; written to {}",
            report.seconds,
            report.best_dev_accuracy,
            report.best_step,
            a.out.display()
        );
    }
    Ok(())
}
