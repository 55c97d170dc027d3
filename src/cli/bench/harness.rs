//! What every benchmark of the wing shares: medians and a repeat-until-enough timer, CPU clocks (of this
//! process and of another), and the inputs they time (random token batches, the base with a linear head).

use crate::model::{BaseModel, EncodedBatch};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Instant;

/// The middle value (the upper one of an even count); NaN for none.
pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median seconds of `f` over repeated runs (2 warm-ups, then at least 5 runs or `min_seconds`, at most
/// 1000 runs). `f` must wait for its device work to finish (see [`synced`]).
pub(super) fn time_it(min_seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed().as_secs_f64() < min_seconds {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 1000 {
            break;
        }
    }
    Ok(median(&times))
}

/// Runs `f`, then waits for `device` to finish the work it queued (GPUs run asynchronously).
pub(super) fn synced<T>(device: &candle_core::Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let out = f()?;
    device.synchronize()?;
    Ok(out)
}

/// CPU seconds (user + system) this process has used.
pub(super) fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used.
pub(super) fn cpu_seconds_of(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = s.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// A batch of random token ids, every token real.
pub(super) fn random_batch(batch: usize, seq: usize, seed: u64) -> EncodedBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(1000..20000))
        .collect();
    all_real(ids, batch, seq)
}

/// A batch of `batch` rows of `seq` token ids (row after row), every token real, one segment.
pub(super) fn all_real(ids: Vec<u32>, batch: usize, seq: usize) -> EncodedBatch {
    EncodedBatch {
        type_ids: vec![0; ids.len()],
        mask: vec![1; ids.len()],
        ids,
        batch,
        seq,
        mask_positions: None,
    }
}

/// The base weights plus a fixed random linear head (`classifier.*`, 2 classes) for timing.
pub(super) fn with_linear_head(base: &BaseModel) -> Result<BTreeMap<String, Tensor>> {
    let dev = &base.device;
    let mut tensors = base.model.weights.tensors.clone();
    let h = base.model.config.hidden_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let w: Vec<f32> = (0..2 * h).map(|_| rng.random_range(-0.05..0.05)).collect();
    tensors.insert(
        "classifier.weight".into(),
        Tensor::from_vec(w, (2, h), dev)?,
    );
    tensors.insert("classifier.bias".into(), Tensor::zeros(2, DType::F32, dev)?);
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[3.0, 100.0, 1.0]), 3.0);
        assert_eq!(median(&[2.0, 1.0]), 2.0);
        assert!(median(&[]).is_nan());
    }
}
