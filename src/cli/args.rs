//! Flag groups that several commands share: where the base model is and how it runs ([`ModelArgs`]), which
//! task and examples ([`DataArgs`], [`SplitArgs`]), a checkpoint's head ([`HeadArgs`]) and the graft's region
//! ([`RegionArgs`]), each with what it builds from its flags.

use crate::data::{self, FewShotSplit, SplitRule, TaskSpec};
use crate::graft::RegionSpec;
use crate::model::{BaseModel, HeadKind, HeadSpec};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;

/// Where the base model is and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Base model: an HF directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "SKILLGRAFT_MODEL_DIR")]
    pub(super) model: Option<PathBuf>,
    /// Compute threads (matmuls and fused ops); default: all cores.
    #[arg(long, env = "SKILLGRAFT_THREADS")]
    pub(super) threads: Option<usize>,
    /// Device: cpu, cuda (GPU 0) or cuda:N (with the `cuda` build feature).
    #[arg(long, env = "SKILLGRAFT_DEVICE", default_value = "cpu")]
    pub(super) device: String,
    /// Inference precision: f32, bf16 or f16 (serving, evaluation, bench; training always runs in f32).
    #[arg(long, env = "SKILLGRAFT_DTYPE", value_parser = ["f32", "bf16", "f16"], default_value = "f32")]
    pub(super) dtype: String,
    /// Maximum tokens per input.
    #[arg(long, default_value_t = 128)]
    pub(super) max_len: usize,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub(super) json: bool,
}

/// Which task and which examples.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Built-in task: sst2, sst5, mr, cr, mpqa, subj.
    #[arg(long)]
    pub(super) task: Option<String>,
    /// A task spec JSON file (instead of --task; see "Task specs" in the README, `skillgraft task init`).
    #[arg(long)]
    pub(super) task_spec: Option<PathBuf>,
    /// Directory of the data sets of built-in tasks.
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// How train and dev are drawn.
    #[command(flatten)]
    pub(super) sample: SplitArgs,
    /// Cap the test set (deterministic subsample) for quick runs.
    #[arg(long)]
    pub(super) max_test: Option<usize>,
}

/// How train and dev are made from a task's data (`--split`, `--k`, `--cap-k`, `--seed`).
#[derive(Args, Debug, Clone)]
pub struct SplitArgs {
    /// How train and dev are made: few-shot (K per class drawn with --seed) or given (the data's own
    /// train/dev/test splits, as they are).
    #[arg(long, value_parser = ["few-shot", "given"], default_value = "few-shot")]
    pub(super) split: String,
    /// Examples per class for train and for dev (few-shot split).
    #[arg(long, default_value_t = 16)]
    pub(super) k: usize,
    /// Take at most half of a class that has fewer than 2K examples instead of refusing (few-shot split).
    #[arg(long)]
    pub(super) cap_k: bool,
    /// Few-shot sampling seed.
    #[arg(long, default_value_t = 42)]
    pub(super) seed: u64,
}

impl SplitArgs {
    /// The split rule these flags describe.
    pub(super) fn rule(&self) -> SplitRule {
        match self.split.as_str() {
            "given" => SplitRule::Given,
            _ => SplitRule::FewShot {
                k: self.k,
                seed: self.seed,
                cap_k: self.cap_k,
            },
        }
    }
}

/// A head given for a checkpoint that does not say its own (e.g. a body fine-tuned with PyTorch behind a
/// prototype head); checkpoints that carry a classifier or a skillgraft head manifest need none.
#[derive(Args, Debug, Clone)]
pub struct HeadArgs {
    /// The checkpoint's head: prototype (built from the base and the task's label descriptions when the
    /// checkpoint has no prototype tensor), bert-classifier, roberta-classifier, linear, prompt.
    #[arg(long = "head")]
    pub(super) kind: Option<HeadKind>,
    /// Prototype-head temperature τ.
    #[arg(long = "head-temperature", default_value_t = 0.05)]
    pub(super) temperature: f64,
}

impl HeadArgs {
    /// The head spec, when one was given.
    pub(super) fn spec(&self, base: &BaseModel, task: &TaskSpec) -> Result<Option<HeadSpec>> {
        self.kind
            .map(|k| base.head_spec(k, task, self.temperature, crate::model::Pooling::Cls))
            .transpose()
    }
}

/// Where a graft may lie: the encoder layers (all, or some), and optionally the embeddings.
#[derive(Args, Debug, Clone)]
pub struct RegionArgs {
    /// Let the graft include the embeddings.
    #[arg(long)]
    pub(super) include_embeddings: bool,
    /// Restrict the region to these encoder layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(super) layers: Option<Vec<usize>>,
}

impl RegionArgs {
    /// The region these flags describe.
    pub(super) fn spec(&self) -> RegionSpec {
        RegionSpec {
            include_embeddings: self.include_embeddings,
            layers: self.layers.clone(),
        }
    }
}

impl ModelArgs {
    /// The device `--device` names (CUDA only in a build with the `cuda` feature).
    pub(super) fn device(&self) -> Result<Device> {
        let ordinal = match self.device.as_str() {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => 0,
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => n,
                _ => bail!("unknown device `{other}` (cpu, cuda or cuda:N)"),
            },
        };
        if !cfg!(feature = "cuda") {
            bail!("this build has no CUDA support: build with scripts/build-cuda.sh (the `cuda` feature)");
        }
        Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
    }

    /// The inference precision `--dtype` names.
    pub(super) fn dtype(&self) -> Result<candle_core::DType> {
        Ok(match self.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            other => bail!("unknown dtype `{other}` (f32, bf16 or f16)"),
        })
    }

    /// Refuses reduced precision for commands that train.
    pub(super) fn require_f32(&self, what: &str) -> Result<()> {
        if self.dtype != "f32" {
            bail!(
                "{what} trains the model and runs in f32 only; drop --dtype {}",
                self.dtype
            );
        }
        Ok(())
    }

    /// Loads the base model (`--model`, or the default directory) on the device, in the dtype.
    pub(super) fn load(&self) -> Result<BaseModel> {
        let dir = self.model.clone().unwrap_or_else(crate::default_model_dir);
        if !dir.exists() {
            bail!(
                "base model directory {} does not exist: run scripts/fetch-model.sh, or pass --model DIR",
                dir.display()
            );
        }
        let mut base = BaseModel::load(&dir, &self.device()?, self.max_len)?;
        base.dtype = self.dtype()?;
        Ok(base)
    }
}

impl DataArgs {
    /// The task: built in (`--task`) or from a spec file (`--task-spec`).
    pub(super) fn task(&self) -> Result<TaskSpec> {
        match (&self.task, &self.task_spec) {
            (Some(name), None) => data::builtin_task(name).with_context(|| {
                format!(
                    "unknown task `{name}` (built-in: {})",
                    data::builtin_task_names().join(", ")
                )
            }),
            (None, Some(path)) => TaskSpec::from_json_file(path),
            (Some(_), Some(_)) => bail!("give --task or --task-spec, not both"),
            (None, None) => bail!("name a task: --task sst2 (or --task-spec FILE)"),
        }
    }

    /// The data sets' directory (`--data-dir`, or the default).
    pub(super) fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(data::data_dir_default)
    }

    /// Train, dev and test of `task` as the split flags say.
    pub(super) fn split(&self, task: &TaskSpec) -> Result<FewShotSplit> {
        data::split_task(task, &self.data_dir(), &self.sample.rule(), self.max_test)
    }
}
