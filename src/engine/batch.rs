//! Running one batch: rows of any number of tasks, cut by length into forward passes, each row corrected by
//! its own task's graft and scored by its own task's head. Faults stay with the task that caused them.

use super::resident::{self, Body, Head, Resident, ResidentCache, Sites};
use super::{EngineError, EngineStats, ServedTask};
use crate::model::encoder::{EncoderInput, RowAdjust};
use crate::model::ops::SparseBatch;
use crate::model::pooled_head::{pooled_vectors, PooledInput};
use crate::model::{EncodedBatch, Encoder, ModelConfig};
use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The model the engine owns.
pub struct Model {
    /// Its weights (grafts are written into these in place).
    pub tensors: BTreeMap<String, Tensor>,
    /// The encoder over those weights.
    pub encoder: Encoder,
    /// Its config.
    pub config: ModelConfig,
    /// Its device.
    pub device: Device,
    /// Its compute dtype.
    pub dtype: DType,
    /// Its dense and LayerNorm layers.
    pub sites: Sites,
    /// Cost of one forward pass in padded tokens, for cutting batches by length.
    pub pass_overhead: usize,
}

/// One row of a batch: row `row` of a request's tokenized batch, under its task.
pub struct Row<'a> {
    /// The task.
    pub task: Arc<ServedTask>,
    /// The request's tokens.
    pub batch: &'a EncodedBatch,
    /// Which of its rows.
    pub row: usize,
}

type RowResult = Result<Vec<f32>, EngineError>;

/// The sparse corrections of one pass, as the encoder asks for them.
struct MixedRows<'a> {
    sites: &'a Sites,
    batch: &'a SparseBatch<'a>,
}

impl RowAdjust for MixedRows<'_> {
    fn adjusts(&self, name: &str) -> bool {
        self.sites
            .index
            .get(name)
            .is_some_and(|&s| self.batch.touches(s))
    }

    fn after_dense(&self, name: &str, x: &Tensor, y: &Tensor) -> candle_core::Result<()> {
        match self.sites.index.get(name) {
            Some(&s) => self.batch.dense(s, x, y),
            None => Ok(()),
        }
    }

    fn after_norm(&self, name: &str, x: &Tensor, y: &Tensor, eps: f64) -> candle_core::Result<()> {
        match self.sites.index.get(name) {
            Some(&s) => self.batch.norm(s, eps, x, y),
            None => Ok(()),
        }
    }
}

fn task_error(task: &ServedTask, e: impl std::fmt::Display) -> EngineError {
    EngineError::Task(format!("task `{}` cannot be served: {e}", task.name))
}

/// Every row of `group` failed with its task's error `e` (logged).
fn failed(task: &ServedTask, group: &[usize], e: anyhow::Error) -> Vec<(usize, RowResult)> {
    tracing::warn!("task `{}`: pass failed: {e:#}", task.name);
    group
        .iter()
        .map(|&i| (i, Err(task_error(task, format!("{e:#}")))))
        .collect()
}

/// Logits for every row (in order), or the error of its task.
pub fn run(
    model: &mut Model,
    cache: &mut ResidentCache,
    stats: &EngineStats,
    rows: &[Row<'_>],
) -> Vec<RowResult> {
    let mut out: Vec<Option<RowResult>> = (0..rows.len()).map(|_| None).collect();
    // Each distinct task's resident form (built on first use); a task that cannot be prepared fails alone.
    let mut residents: HashMap<*const ServedTask, Result<Arc<Resident>, String>> = HashMap::new();
    for r in rows {
        let key = Arc::as_ptr(&r.task);
        if residents.contains_key(&key) {
            continue;
        }
        let built = cache
            .get_or_build(&r.task, || {
                resident::build(
                    &r.task,
                    &model.tensors,
                    &model.sites,
                    &model.config,
                    &model.encoder.embeddings.word,
                    &model.device,
                    model.dtype,
                )
            })
            .map_err(|e| format!("{e:#}"));
        residents.insert(key, built);
    }
    let mut mixed = Vec::new();
    let mut in_place: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match &residents[&Arc::as_ptr(&r.task)] {
            Err(e) => out[i] = Some(Err(task_error(&r.task, e))),
            Ok(res) => match res.body {
                Body::Mixed(_) => mixed.push(i),
                Body::InPlace(_) => match in_place
                    .iter_mut()
                    .find(|(j, _)| Arc::ptr_eq(&rows[*j].task, &r.task))
                {
                    Some((_, v)) => v.push(i),
                    None => in_place.push((i, vec![i])),
                },
            },
        }
    }
    let resident_of = |i: usize| -> Result<Arc<Resident>> {
        match residents.get(&Arc::as_ptr(&rows[i].task)) {
            Some(Ok(r)) => Ok(r.clone()),
            _ => Err(anyhow!(
                "internal: a task without resident state was scheduled"
            )),
        }
    };
    for group in cut_by_length(model, rows, &mixed) {
        for (i, r) in run_mixed(model, stats, rows, &group, &resident_of) {
            out[i] = Some(r);
        }
    }
    for (_, members) in in_place {
        for group in cut_by_length(model, rows, &members) {
            for (i, r) in run_in_place(model, stats, rows, &group, &resident_of) {
                out[i] = Some(r);
            }
        }
    }
    out.into_iter()
        .zip(rows)
        .map(|(r, row)| match r {
            Some(Ok(l)) if l.iter().all(|v| v.is_finite()) => Ok(l),
            Some(Ok(_)) => Err(task_error(
                &row.task,
                "its graft produced non-finite logits (values too large for the model's precision)",
            )),
            Some(Err(e)) => Err(e),
            None => Err(EngineError::Failed("engine: a row was not run".into())),
        })
        .collect()
}

/// Rows cut into forward passes by length, each pass's rows grouped by task (first appearance first).
fn cut_by_length(model: &Model, rows: &[Row<'_>], members: &[usize]) -> Vec<Vec<usize>> {
    let lens: Vec<usize> = members
        .iter()
        .map(|&i| rows[i].batch.row_len(rows[i].row))
        .collect();
    super::schedule::buckets(&lens, model.pass_overhead)
        .into_iter()
        .map(|b| {
            let mut group: Vec<usize> = b.into_iter().map(|k| members[k]).collect();
            let mut first: Vec<*const ServedTask> = Vec::new();
            for &i in &group {
                let p = Arc::as_ptr(&rows[i].task);
                if !first.contains(&p) {
                    first.push(p);
                }
            }
            group.sort_by_key(|&i| {
                first
                    .iter()
                    .position(|&p| p == Arc::as_ptr(&rows[i].task))
                    .unwrap_or(usize::MAX)
            });
            group
        })
        .collect()
}

/// Contiguous runs of rows of one task in a pass: (first position, rows).
fn task_runs(rows: &[Row<'_>], group: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (k, &i) in group.iter().enumerate() {
        match runs.last_mut() {
            Some((s, n)) if Arc::ptr_eq(&rows[group[*s]].task, &rows[i].task) => *n += 1,
            _ => runs.push((k, 1)),
        }
    }
    runs
}

/// One shared pass for rows of tasks served by sparse corrections. If the pass fails with several tasks in
/// it, each task is retried alone, so one task's fault cannot fail the others.
fn run_mixed(
    model: &Model,
    stats: &EngineStats,
    rows: &[Row<'_>],
    group: &[usize],
    resident_of: &dyn Fn(usize) -> Result<Arc<Resident>>,
) -> Vec<(usize, RowResult)> {
    let runs = task_runs(rows, group);
    let attempt = (|| -> Result<Vec<Vec<f32>>> {
        let (enc, input) = inputs(model, rows, group)?;
        let seq = enc.seq;
        let residents: Vec<Arc<Resident>> = runs
            .iter()
            .map(|&(s, _)| resident_of(group[s]))
            .collect::<Result<_>>()?;
        let mut segments = Vec::with_capacity(runs.len());
        for (&(s, n), res) in runs.iter().zip(&residents) {
            let Body::Mixed(pack) = &res.body else {
                return Err(anyhow!("internal: an in-place task in a shared pass"));
            };
            segments.push((s * seq, n * seq, pack));
        }
        let t0 = Instant::now();
        let sparse = SparseBatch::new(segments, &model.device)?;
        let adjust = MixedRows {
            sites: &model.sites,
            batch: &sparse,
        };
        let hidden = model.encoder.forward_with(&input, Some(&adjust))?;
        let logits = heads(model, &hidden, &enc, &input, &runs, &residents);
        record(stats, &enc, t0);
        logits
    })();
    match attempt {
        Ok(logits) => group
            .iter()
            .copied()
            .zip(logits.into_iter().map(Ok))
            .collect(),
        Err(e) if runs.len() == 1 => failed(&rows[group[0]].task, group, e),
        Err(_) => runs
            .iter()
            .flat_map(|&(s, n)| run_mixed(model, stats, rows, &group[s..s + n], resident_of))
            .collect(),
    }
}

/// A pass for one task whose graft is written into the weights in place, then reverted.
fn run_in_place(
    model: &Model,
    stats: &EngineStats,
    rows: &[Row<'_>],
    group: &[usize],
    resident_of: &dyn Fn(usize) -> Result<Arc<Resident>>,
) -> Vec<(usize, RowResult)> {
    let task = rows[group[0]].task.clone();
    let attempt = (|| -> Result<Vec<Vec<f32>>> {
        let res = resident_of(group[0])?;
        let Body::InPlace(graft) = &res.body else {
            return Err(anyhow!("internal: a shared-pass task run in place"));
        };
        let (enc, input) = inputs(model, rows, group)?;
        let t0 = Instant::now();
        let applied = graft.apply(&model.tensors)?;
        let t1 = Instant::now();
        let logits = model
            .encoder
            .forward(&input)
            .map_err(anyhow::Error::from)
            .and_then(|hidden| {
                heads(
                    model,
                    &hidden,
                    &enc,
                    &input,
                    &[(0, group.len())],
                    std::slice::from_ref(&res),
                )
            });
        let t2 = Instant::now();
        applied.revert()?;
        stats.graft_nanos.fetch_add(
            ((t1 - t0) + t2.elapsed()).as_nanos() as u64,
            Ordering::Relaxed,
        );
        stats.graft_applies.fetch_add(1, Ordering::Relaxed);
        record(stats, &enc, t1);
        logits
    })();
    match attempt {
        Ok(logits) => group
            .iter()
            .copied()
            .zip(logits.into_iter().map(Ok))
            .collect(),
        Err(e) => failed(&task, group, e),
    }
}

/// The pass's tokens (padded to its longest row) and model inputs.
fn inputs(
    model: &Model,
    rows: &[Row<'_>],
    group: &[usize],
) -> Result<(EncodedBatch, EncoderInput)> {
    let picked: Vec<(&EncodedBatch, usize)> = group
        .iter()
        .map(|&i| (rows[i].batch, rows[i].row))
        .collect();
    let enc = EncodedBatch::from_rows(&picked, model.config.pad_id());
    let input = enc.to_input(&model.config, &model.device, model.dtype)?;
    Ok((enc, input))
}

fn record(stats: &EngineStats, enc: &EncodedBatch, since: Instant) {
    stats
        .compute_nanos
        .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    stats.passes.fetch_add(1, Ordering::Relaxed);
    stats.rows.fetch_add(enc.batch as u64, Ordering::Relaxed);
    stats
        .tokens
        .fetch_add(enc.real_tokens() as u64, Ordering::Relaxed);
    stats
        .padded_tokens
        .fetch_add((enc.batch * enc.seq) as u64, Ordering::Relaxed);
}

/// Each row's logits under its own task's head. Pooled heads read pooled vectors copied to the host once per
/// pass; device heads run per task on their rows.
fn heads(
    model: &Model,
    hidden: &Tensor,
    enc: &EncodedBatch,
    input: &EncoderInput,
    runs: &[(usize, usize)],
    residents: &[Arc<Resident>],
) -> Result<Vec<Vec<f32>>> {
    let mut needed: Vec<PooledInput> = Vec::new();
    for r in residents {
        if let Head::Pooled(h) = &r.head {
            if !needed.contains(&h.input) {
                needed.push(h.input);
            }
        }
    }
    let pooled: Vec<(PooledInput, Vec<Vec<f32>>)> = needed
        .into_iter()
        .map(|p| Ok((p, pooled_vectors(hidden, &input.attention_mask, p)?)))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(enc.batch);
    for (&(s, n), res) in runs.iter().zip(residents) {
        match &res.head {
            Head::Pooled(h) => {
                let Some((_, vecs)) = pooled.iter().find(|(p, _)| *p == h.input) else {
                    return Err(anyhow!("internal: pooled vectors missing"));
                };
                out.extend(vecs[s..s + n].iter().map(|v| h.logits(v)));
            }
            Head::Device(head) => {
                let sub = enc.rows(s..s + n);
                let sub_input = sub.to_input(&model.config, &model.device, model.dtype)?;
                let logits = head
                    .forward(&hidden.narrow(0, s, n)?, &sub_input)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                out.extend(logits);
            }
        }
    }
    Ok(out)
}
