//! `skillgraft synthetic`: writes a random graft for the base model (no skill: a random mask with values moved
//! by up to ±0.01, the SST-2 prototype head), for smoke tests of a deployment and for benchmarks.

use super::args::ModelArgs;
use crate::graft::synthetic::SyntheticTasks;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Options of `skillgraft synthetic`.
#[derive(Args, Debug)]
pub struct SyntheticArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// The graft file to write.
    #[arg(long)]
    out: PathBuf,
    /// Which random graft (the same seed gives the same graft).
    #[arg(long, default_value_t = 0)]
    seed: usize,
    /// Graft size as a fraction of the encoder layers.
    #[arg(long, default_value_t = 1e-4)]
    sparsity: f64,
}

/// Writes the graft.
pub fn run(a: SyntheticArgs) -> Result<()> {
    let base = a.model.load()?;
    let graft = SyntheticTasks::new(&base, a.sparsity)?.graft(a.seed)?;
    crate::store::atomic_write(&a.out, &graft.to_bytes()?)?;
    println!("wrote {} ({} parameters)", a.out.display(), graft.size());
    Ok(())
}
