//! The serving engine timed on one batch whose rows belong to many synthetic tasks: the `engine` rows of
//! `skillgraft bench` (grafts of 1e-4 of the encoder layers) and its graft-size table (grafts of a given share
//! of the whole model, placed in the encoder layers so that they share passes, against the base model served
//! by the same engine with an empty graft).

use super::harness::{median, own_cpu_seconds, random_batch};
use crate::cli::table::Table;
use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::synthetic::SyntheticTasks;
use crate::model::ops::{SiteDelta, SiteKind, SparseBatch, SparsePack};
use crate::model::{BaseModel, EncodedBatch};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Median seconds for the serving engine to answer one batch of `rows` × `seq` tokens whose rows belong to
/// `tasks` synthetic tasks (row r to task r mod tasks, one request per task; successive batches rotate
/// through all tasks). Every task's state is built before timing.
pub fn engine_batch_seconds(
    base: &BaseModel,
    tasks: usize,
    rows: usize,
    seq: usize,
    min_seconds: f64,
) -> Result<f64> {
    let served = synthetic_tasks(&SyntheticTasks::new(base, 1e-4)?, tasks.max(1))?;
    time_engine(base, &served, rows, seq, min_seconds, 1 << 30)
}

/// `n` distinct synthetic tasks.
fn synthetic_tasks(gen: &SyntheticTasks, n: usize) -> Result<Vec<Arc<ServedTask>>> {
    (0..n)
        .map(|i| {
            Ok(Arc::new(ServedTask {
                name: format!("synthetic{i}"),
                graft: gen.graft(i)?,
                version: i as u64 + 1,
            }))
        })
        .collect()
}

/// An engine serving some tasks, and the batch it is timed on.
struct Bench<'t> {
    engine: Engine,
    served: Vec<Arc<ServedTask>>,
    tokens: &'t EncodedBatch,
    rows: usize,
    next: usize,
}

impl<'t> Bench<'t> {
    /// An engine for `served` on batches of `tokens`' rows, every task's state built (a warm-up round).
    fn new(
        base: &BaseModel,
        served: Vec<Arc<ServedTask>>,
        tokens: &'t EncodedBatch,
        max_resident_bytes: usize,
    ) -> Result<Self> {
        if served.is_empty() {
            bail!("engine bench: no tasks");
        }
        let rows = tokens.batch;
        let engine = Engine::start(
            base,
            EngineConfig {
                threads: rayon::current_num_threads(),
                max_batch_tokens: rows * tokens.seq,
                max_wait: Duration::from_millis(20),
                queue_capacity: rows.max(64),
                max_resident_bytes,
                ..Default::default()
            },
        )?;
        let mut b = Self {
            engine,
            served,
            tokens,
            rows,
            next: 0,
        };
        for _ in 0..b.served.len().div_ceil(rows).max(2) {
            b.batch()?;
        }
        Ok(b)
    }

    /// Runs the next batch (row r of batch b to task (b·rows + r) mod tasks, one request per task) and
    /// returns its wall seconds and the CPU seconds the process spent meanwhile.
    fn batch(&mut self) -> Result<(f64, f64)> {
        let tasks = self.served.len();
        let offset = self.next * self.rows;
        self.next += 1;
        let mut requests: Vec<(Arc<ServedTask>, Vec<usize>)> = Vec::new();
        for r in 0..self.rows {
            let t = &self.served[(offset + r) % tasks];
            match requests.iter_mut().find(|(s, _)| Arc::ptr_eq(s, t)) {
                Some((_, v)) => v.push(r),
                None => requests.push((t.clone(), vec![r])),
            }
        }
        let (t0, c0) = (Instant::now(), own_cpu_seconds());
        let futures = requests.into_iter().map(|(t, rs)| {
            let picked: Vec<(&EncodedBatch, usize)> =
                rs.iter().map(|&r| (self.tokens, r)).collect();
            self.engine.logits(t, EncodedBatch::from_rows(&picked, 0))
        });
        for r in futures::executor::block_on(futures::future::join_all(futures)) {
            r?;
        }
        Ok((t0.elapsed().as_secs_f64(), own_cpu_seconds() - c0))
    }

    /// Resident bytes (packs and heads) and tasks held by the engine's cache.
    fn resident(&self) -> (usize, usize) {
        let stats = self.engine.stats();
        (
            stats.resident_bytes.load(Ordering::Relaxed),
            stats.resident_tasks.load(Ordering::Relaxed),
        )
    }
}

/// Median wall and CPU seconds per batch of each bench, their batches interleaved (one of each in turn, at
/// least 5 each and `min_seconds` in all), so that a machine slowing down or speeding up moves all of them
/// alike. CPU seconds are the whole process's (every compute thread): on a machine shared with other work
/// they move far less than wall time.
fn interleaved(benches: &mut [&mut Bench<'_>], min_seconds: f64) -> Result<Vec<(f64, f64)>> {
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); benches.len()];
    let start = Instant::now();
    while times[0].0.len() < 5 || start.elapsed().as_secs_f64() < min_seconds {
        for (b, t) in benches.iter_mut().zip(times.iter_mut()) {
            let (wall, cpu) = b.batch()?;
            t.0.push(wall);
            t.1.push(cpu);
        }
        if times[0].0.len() >= 200 {
            break;
        }
    }
    Ok(times
        .into_iter()
        .map(|(w, c)| (median(&w), median(&c)))
        .collect())
}

/// Times the engine on batches of `rows` × `seq` tokens spread over `served`.
fn time_engine(
    base: &BaseModel,
    served: &[Arc<ServedTask>],
    rows: usize,
    seq: usize,
    min_seconds: f64,
    max_resident_bytes: usize,
) -> Result<f64> {
    let tokens = random_batch(rows, seq, 7);
    let mut b = Bench::new(base, served.to_vec(), &tokens, max_resident_bytes)?;
    Ok(interleaved(&mut [&mut b], min_seconds)?[0].0)
}

/// The graft-size table: for each share of the whole model (`fractions`, e.g. 1e-2 = 1%) and each number of
/// tasks, the engine's throughput on `rows` × `seq`-token batches against the base model's (the same engine
/// serving one task with an empty graft: the same heads and scheduling, no correction; its batches
/// interleaved with each row's own and its median shown beside it; wall time and the process's CPU time),
/// and the memory each task holds. Grafts are synthetic, spread uniformly over the encoder layers (so every task shares
/// passes with the others); a share of the model above the encoder layers' own share is refused.
pub fn graft_size_table(
    base: &BaseModel,
    fractions: &[f64],
    task_counts: &[usize],
    rows: usize,
    seq: usize,
    min_seconds: f64,
) -> Result<Table> {
    let model_params = base.model.body_parameter_count();
    let empty = SyntheticTasks::new(base, 0.0)?;
    let region = empty.region_len();
    let tokens = random_batch(rows, seq, 7);
    let mut base_bench = Bench::new(base, synthetic_tasks(&empty, 1)?, &tokens, 1 << 30)?;
    let mut t = Table::new(&[
        "graft (of model)",
        "entries",
        "of encoder layers",
        "tasks",
        "ms/batch",
        "sentences/s",
        "base ms/batch",
        "vs base",
        "CPU ms/batch",
        "base CPU ms/batch",
        "vs base (CPU)",
        "graft file/task",
        "resident/task",
        "resident/graft",
    ]);
    for &f in fractions {
        let entries = (f * model_params as f64).round() as usize;
        if entries > region {
            bail!(
                "a graft of {f} of the model ({entries} entries) does not fit the encoder layers ({region})"
            );
        }
        let gen = SyntheticTasks::new(base, entries as f64 / region as f64)?;
        for &n in task_counts {
            let served = synthetic_tasks(&gen, n.max(1))?;
            let file_bytes = served[0].graft.to_bytes()?.len();
            let mut bench = Bench::new(base, served, &tokens, usize::MAX)?;
            let m = interleaved(&mut [&mut base_bench, &mut bench], min_seconds)?;
            let ((base_s, base_c), (s, c)) = (m[0], m[1]);
            let (bytes, held) = bench.resident();
            let per_task = bytes / held.max(1);
            t.row(vec![
                format!("{}%", f * 100.0),
                gen.size.to_string(),
                format!("{:.2e}", gen.size as f64 / region as f64),
                n.to_string(),
                format!("{:.1}", s * 1e3),
                format!("{:.1}", rows as f64 / s),
                format!("{:.1}", base_s * 1e3),
                format!("{:.3}", base_s / s),
                format!("{:.1}", c * 1e3),
                format!("{:.1}", base_c * 1e3),
                format!("{:.3}", base_c / c),
                mib(file_bytes),
                mib(per_task),
                format!("{:.3}", per_task as f64 / file_bytes as f64),
            ]);
        }
    }
    Ok(t)
}

/// One layer's correction timed on the CPU by both paths: for each dense shape of the encoder (in → out),
/// density of the weight delta and number of rows (of one task), the median seconds of the sparse path and of
/// the dense-delta path (interleaved, the fastest of `repeats` each), and per shape and rows the density where they cost
/// the same (interpolated between the measured densities; "–" when one path wins everywhere).
pub fn correction_crossover(
    shapes: &[(usize, usize)],
    densities: &[f64],
    row_counts: &[usize],
    repeats: usize,
) -> Result<(Table, Table)> {
    let mut t = Table::new(&[
        "in → out",
        "rows",
        "density",
        "sparse µs",
        "dense delta µs",
        "dense / sparse",
    ]);
    let mut cross = Table::new(&["in → out", "rows", "equal-cost density"]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for &(in_dim, out_dim) in shapes {
        let sites = [SiteKind::Dense { in_dim, out_dim }];
        for &rows in row_counts {
            let xv: Vec<f32> = (0..rows * in_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let x = Tensor::from_vec(xv, (rows, in_dim), &Device::Cpu)?;
            let y = Tensor::zeros((rows, out_dim), candle_core::DType::F32, &Device::Cpu)?;
            let mut ratios: Vec<(f64, f64)> = Vec::new();
            for &d in densities {
                let mut weight: Vec<(u32, f32)> = Vec::new();
                for f in 0..in_dim * out_dim {
                    if rng.random::<f64>() < d {
                        weight.push((f as u32, rng.random_range(-0.01..0.01)));
                    }
                }
                let delta = [(
                    0,
                    SiteDelta {
                        weight,
                        bias: vec![],
                    },
                )];
                let sparse = SparsePack::with_dense_threshold(&sites, &delta, &Device::Cpu, 2.0)?;
                let dense = SparsePack::with_dense_threshold(&sites, &delta, &Device::Cpu, 0.0)?;
                let (mut ts, mut td): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
                for i in 0..repeats + 1 {
                    for (pack, times) in [(&sparse, &mut ts), (&dense, &mut td)] {
                        let batch = SparseBatch::new(vec![(0, rows, pack)], &Device::Cpu)?;
                        let t0 = Instant::now();
                        batch.dense(0, &x, &y)?;
                        if i > 0 {
                            times.push(t0.elapsed().as_secs_f64());
                        }
                    }
                }
                // The fastest run: on a shared machine the least disturbed one.
                let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
                let (s, dd) = (min(&ts), min(&td));
                ratios.push((d, dd / s));
                t.row(vec![
                    format!("{in_dim} → {out_dim}"),
                    rows.to_string(),
                    format!("{:.0}%", d * 100.0),
                    format!("{:.1}", s * 1e6),
                    format!("{:.1}", dd * 1e6),
                    format!("{:.2}", dd / s),
                ]);
            }
            let at = ratios.windows(2).find_map(|w| {
                let ((d0, r0), (d1, r1)) = (w[0], w[1]);
                (r0 >= 1.0 && r1 < 1.0).then(|| d0 + (d1 - d0) * (r0 - 1.0) / (r0 - r1))
            });
            cross.row(vec![
                format!("{in_dim} → {out_dim}"),
                rows.to_string(),
                at.map_or("–".into(), |d| format!("{:.0}%", d * 100.0)),
            ]);
        }
    }
    Ok((t, cross))
}

fn mib(bytes: usize) -> String {
    format!("{:.3} MiB", bytes as f64 / (1 << 20) as f64)
}
