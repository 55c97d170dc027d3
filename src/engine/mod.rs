//! The engine: one thread owns the base model and serves every task from it.
//!
//! Requests (already tokenized by the caller, off this thread) arrive over a bounded queue; a full queue is
//! refused at once (the server answers 429). The engine collects requests up to a token budget or a short
//! deadline, groups them by task, and for each group writes the task's graft into the base weights in place,
//! runs the batch through the encoder and the task's head, and reverts the graft. Applying and reverting a
//! graft of ~1k values costs microseconds, so serving many tasks costs almost nothing over serving one.

use crate::graft::Graft;
use crate::model::encoder::{EncoderInput, RowAdjust};
use crate::model::heads::{HeadSpec, TaskHead};
use crate::model::ops::{with_cpu_slice, write_cpu_f32};
use crate::model::{to_hash_map, BaseModel, EncodedBatch, Encoder};
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task as the engine serves it: its graft (body values + head) and a version that changes on replacement.
#[derive(Debug)]
pub struct ServedTask {
    /// Task name.
    pub name: String,
    /// The graft.
    pub graft: Graft,
    /// Unique per registration (cache key of the built head).
    pub version: u64,
}

impl ServedTask {
    /// The head spec.
    pub fn head(&self) -> &HeadSpec {
        &self.graft.manifest.head
    }
}

/// Engine tuning.
#[derive(Debug, Clone, Serialize)]
pub struct EngineConfig {
    /// Requests waiting at most (more are refused).
    pub queue_capacity: usize,
    /// Real tokens per batch at most.
    pub max_batch_tokens: usize,
    /// How long the engine waits for more requests to join a batch.
    pub max_wait: Duration,
    /// Compute threads.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_batch_tokens: 4096,
            max_wait: Duration::from_millis(2),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Counters the engine keeps (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting in the queue.
    pub queue_depth: AtomicUsize,
    /// Batches run.
    pub batches: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Rows (texts) served.
    pub rows: AtomicU64,
    /// Real tokens processed.
    pub tokens: AtomicU64,
    /// Total nanoseconds spent applying and reverting grafts.
    pub graft_nanos: AtomicU64,
    /// Graft applications.
    pub graft_applies: AtomicU64,
    /// Total nanoseconds of model compute.
    pub compute_nanos: AtomicU64,
}

/// Why the engine could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The queue is full; retry later.
    #[error("the model queue is full ({0} requests waiting); retry shortly")]
    Overloaded(usize),
    /// The engine thread has stopped.
    #[error("the model engine is not running")]
    Stopped,
    /// The computation failed.
    #[error("{0}")]
    Failed(String),
}

/// Class logits, one row per input.
type Logits = Vec<Vec<f32>>;

struct Work {
    task: Arc<ServedTask>,
    batch: EncodedBatch,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Work>,
    stats: Arc<EngineStats>,
    capacity: usize,
}

impl Engine {
    /// Starts the engine thread, which owns `base`'s weights from now on.
    pub fn start(base: &BaseModel, config: EngineConfig) -> Result<Self> {
        let (tx, rx) = sync_channel::<Work>(config.queue_capacity);
        let stats = Arc::new(EngineStats::default());
        // The engine's own copy: grafts are written into it in place, so nobody else may share its storage.
        let tensors = base.model.weights.deep_clone()?.tensors;
        let cfg = base.model.config.clone();
        let device = base.device.clone();
        let vb = candle_nn::VarBuilder::from_tensors(to_hash_map(&tensors), DType::F32, &device);
        let encoder = Encoder::load(vb, &cfg)?;
        let pool = crate::compute_pool(Some(config.threads))?;
        let st = stats.clone();
        let capacity = config.queue_capacity;
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let mut worker = Worker {
                    tensors,
                    encoder,
                    config: cfg,
                    device,
                    heads: HashMap::new(),
                    deltas: HashMap::new(),
                    stats: st,
                    settings: config,
                };
                pool.install(|| worker.run(rx));
            })?;
        Ok(Self {
            tx,
            stats,
            capacity,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Logits of a tokenized batch under a task (rows in input order).
    pub async fn logits(
        &self,
        task: Arc<ServedTask>,
        batch: EncodedBatch,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Work { task, batch, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                return Err(EngineError::Overloaded(self.capacity));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                return Err(EngineError::Stopped);
            }
        }
        match rx.await {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(EngineError::Failed(e)),
            Err(_) => Err(EngineError::Stopped),
        }
    }
}

struct Worker {
    tensors: BTreeMap<String, Tensor>,
    encoder: Encoder,
    config: crate::model::ModelConfig,
    device: candle_core::Device,
    heads: HashMap<(String, u64), TaskHead>,
    deltas: HashMap<(String, u64), Arc<TaskDeltas>>,
    stats: Arc<EngineStats>,
    settings: EngineConfig,
}

/// A task's sparse deltas (graft value − base value) per tensor, for mixed-task batches.
struct TaskDeltas {
    by_tensor: HashMap<String, (Vec<u32>, Vec<f32>)>,
}

/// Rows of several tasks in one batch: each task's deltas corrected row by row after every layer.
struct MixedRows<'a> {
    /// (first token row, token rows, deltas) per task group.
    groups: Vec<(usize, usize, &'a TaskDeltas)>,
}

impl MixedRows<'_> {
    /// The `weight`/`bias` names under `name`, and the groups whose tasks change either.
    fn touching(&self, name: &str) -> (String, String, Vec<&(usize, usize, &TaskDeltas)>) {
        let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
        let touched = self
            .groups
            .iter()
            .filter(|(_, _, d)| d.by_tensor.contains_key(&w) || d.by_tensor.contains_key(&b))
            .collect();
        (w, b, touched)
    }
}

impl RowAdjust for MixedRows<'_> {
    fn after_dense(&self, name: &str, x: &Tensor, y: &Tensor) -> candle_core::Result<()> {
        let (wname, bname, touched) = self.touching(name);
        if touched.is_empty() {
            return Ok(());
        }
        let (in_dim, out_dim) = (x.dim(1)?, y.dim(1)?);
        with_cpu_slice::<f32, _>(x, |xs| {
            write_cpu_f32(y, |ys| {
                for (start, len, d) in &touched {
                    let w = d.by_tensor.get(&wname);
                    let b = d.by_tensor.get(&bname);
                    for t in *start..start + len {
                        let (xr, yr) = (&xs[t * in_dim..(t + 1) * in_dim], t * out_dim);
                        if let Some((idx, dv)) = w {
                            for (&f, &v) in idx.iter().zip(dv) {
                                let (i, j) = (f as usize / in_dim, f as usize % in_dim);
                                ys[yr + i] += xr[j] * v;
                            }
                        }
                        if let Some((idx, dv)) = b {
                            for (&i, &v) in idx.iter().zip(dv) {
                                ys[yr + i as usize] += v;
                            }
                        }
                    }
                }
            })
        })?
    }

    fn after_norm(&self, name: &str, x: &Tensor, y: &Tensor, eps: f64) -> candle_core::Result<()> {
        let (wname, bname, touched) = self.touching(name);
        if touched.is_empty() {
            return Ok(());
        }
        let dim = x.dim(1)?;
        with_cpu_slice::<f32, _>(x, |xs| {
            write_cpu_f32(y, |ys| {
                for (start, len, d) in &touched {
                    let w = d.by_tensor.get(&wname);
                    let b = d.by_tensor.get(&bname);
                    for t in *start..start + len {
                        let xr = &xs[t * dim..(t + 1) * dim];
                        let mean = xr.iter().sum::<f32>() / dim as f32;
                        let var =
                            xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                        let rstd = 1.0 / (var + eps as f32).sqrt();
                        if let Some((idx, dv)) = w {
                            for (&j, &v) in idx.iter().zip(dv) {
                                ys[t * dim + j as usize] += (xr[j as usize] - mean) * rstd * v;
                            }
                        }
                        if let Some((idx, dv)) = b {
                            for (&j, &v) in idx.iter().zip(dv) {
                                ys[t * dim + j as usize] += v;
                            }
                        }
                    }
                }
            })
        })?
    }
}

/// Concatenates batches row-wise, padding to the longest row.
fn merge(batches: &[&EncodedBatch], pad: u32) -> EncodedBatch {
    let seq = batches.iter().map(|b| b.seq).max().unwrap_or(1);
    let rows: usize = batches.iter().map(|b| b.batch).sum();
    let mut out = EncodedBatch {
        ids: vec![pad; rows * seq],
        type_ids: vec![0; rows * seq],
        mask: vec![0; rows * seq],
        batch: rows,
        seq,
        mask_positions: batches
            .iter()
            .all(|b| b.mask_positions.is_some())
            .then(Vec::new),
    };
    let mut r0 = 0;
    for b in batches {
        for r in 0..b.batch {
            let (src, dst) = (r * b.seq, (r0 + r) * seq);
            out.ids[dst..dst + b.seq].copy_from_slice(&b.ids[src..src + b.seq]);
            out.type_ids[dst..dst + b.seq].copy_from_slice(&b.type_ids[src..src + b.seq]);
            out.mask[dst..dst + b.seq].copy_from_slice(&b.mask[src..src + b.seq]);
        }
        if let (Some(all), Some(p)) = (out.mask_positions.as_mut(), b.mask_positions.as_ref()) {
            all.extend_from_slice(p);
        }
        r0 += b.batch;
    }
    out
}

impl Worker {
    fn run(&mut self, rx: Receiver<Work>) {
        while let Ok(first) = rx.recv() {
            let mut items = vec![first];
            let mut tokens = items[0].batch.real_tokens();
            let deadline = Instant::now() + self.settings.max_wait;
            while tokens < self.settings.max_batch_tokens {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(w) => {
                        tokens += w.batch.real_tokens();
                        items.push(w);
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.stats
                .queue_depth
                .fetch_sub(items.len(), Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            // Group by task (first-come order of tasks).
            let mut groups: Vec<(Arc<ServedTask>, Vec<Work>)> = Vec::new();
            for w in items {
                match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &w.task)) {
                    Some((_, g)) => g.push(w),
                    None => groups.push((w.task.clone(), vec![w])),
                }
            }
            // Tasks whose grafts touch only encoder layers share one forward pass; others are applied in place.
            let (mixable, separate): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(t, _)| {
                !t.head().uses_prompt()
                    && t.graft
                        .entries
                        .iter()
                        .all(|e| e.name.starts_with("encoder.layer."))
            });
            let mut done: Vec<(Vec<Work>, Result<Logits>)> = Vec::new();
            if mixable.len() > 1 {
                let results = self.run_mixed(&mixable);
                for ((_, works), r) in mixable.into_iter().zip(results) {
                    done.push((works, r));
                }
            } else {
                for (task, works) in mixable {
                    let r = self.run_group(&task, &works);
                    done.push((works, r));
                }
            }
            for (task, works) in separate {
                let r = self.run_group(&task, &works);
                done.push((works, r));
            }
            for (works, result) in done {
                let mut row = 0;
                for w in works {
                    let n = w.batch.batch;
                    let r = match &result {
                        Ok(all) => Ok(all[row..row + n].to_vec()),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    row += n;
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    let _ = w.reply.send(r);
                }
            }
        }
    }

    fn head(&mut self, task: &ServedTask) -> Result<TaskHead> {
        let key = (task.name.clone(), task.version);
        if let Some(h) = self.heads.get(&key) {
            return Ok(h.clone());
        }
        if self.heads.len() >= 4096 {
            self.heads.clear();
        }
        let head_tensors = task.graft.head_tensors(&self.device)?;
        let vb = candle_nn::VarBuilder::from_tensors(
            to_hash_map(&head_tensors),
            DType::F32,
            &self.device,
        );
        let h = TaskHead::load(task.head(), vb, &self.config, &self.encoder.embeddings.word)?;
        self.heads.insert(key, h.clone());
        Ok(h)
    }

    fn task_deltas(&mut self, task: &ServedTask) -> Result<Arc<TaskDeltas>> {
        let key = (task.name.clone(), task.version);
        if let Some(d) = self.deltas.get(&key) {
            return Ok(d.clone());
        }
        if self.deltas.len() >= 4096 {
            self.deltas.clear();
        }
        let mut by_tensor = HashMap::new();
        for e in &task.graft.entries {
            let t = self.tensors.get(&e.name).ok_or_else(|| {
                anyhow!("graft touches `{}`, which the base does not have", e.name)
            })?;
            let base: Vec<f32> = with_cpu_slice::<f32, _>(t, |w| {
                e.indices.iter().map(|&i| w[i as usize]).collect()
            })?;
            let delta: Vec<f32> = e.values.iter().zip(&base).map(|(v, b)| v - b).collect();
            by_tensor.insert(e.name.clone(), (e.indices.clone(), delta));
        }
        let d = Arc::new(TaskDeltas { by_tensor });
        self.deltas.insert(key, d.clone());
        Ok(d)
    }

    /// One forward pass for rows of several tasks (sparse per-row corrections), then each task's head.
    fn run_mixed(&mut self, groups: &[(Arc<ServedTask>, Vec<Work>)]) -> Vec<Result<Vec<Vec<f32>>>> {
        let prepared: Result<Vec<(Arc<TaskDeltas>, TaskHead)>> = groups
            .iter()
            .map(|(t, _)| Ok((self.task_deltas(t)?, self.head(t)?)))
            .collect();
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return groups.iter().map(|_| Err(anyhow!("{e:#}"))).collect(),
        };
        let batches: Vec<&EncodedBatch> = groups
            .iter()
            .flat_map(|(_, ws)| ws.iter().map(|w| &w.batch))
            .collect();
        let merged = merge(&batches, self.config.pad_id());
        let seq = merged.seq;
        let mut spans = Vec::new();
        let mut r0 = 0;
        for (_, ws) in groups {
            let rows: usize = ws.iter().map(|w| w.batch.batch).sum();
            spans.push((r0, rows));
            r0 += rows;
        }
        let t0 = Instant::now();
        let hidden = (|| -> Result<(Tensor, EncoderInput)> {
            let input = merged.to_input(&self.config, &self.device, DType::F32)?;
            let mixed = MixedRows {
                groups: spans
                    .iter()
                    .zip(&prepared)
                    .map(|(&(r, n), (d, _))| (r * seq, n * seq, d.as_ref()))
                    .collect(),
            };
            Ok((self.encoder.forward_with(&input, Some(&mixed))?, input))
        })();
        let out = match hidden {
            Ok((hidden, input)) => spans
                .iter()
                .zip(&prepared)
                .map(|(&(r, n), (_, head))| -> Result<Vec<Vec<f32>>> {
                    let sub = EncoderInput {
                        input_ids: input.input_ids.narrow(0, r, n)?,
                        token_type_ids: input.token_type_ids.narrow(0, r, n)?,
                        position_ids: input.position_ids.narrow(0, r, n)?,
                        attention_mask: input.attention_mask.narrow(0, r, n)?,
                        attention_bias: input.attention_bias.narrow(0, r, n)?,
                        mask_positions: match &merged.mask_positions {
                            Some(p) => Some(Tensor::from_vec(
                                p[r..r + n]
                                    .iter()
                                    .enumerate()
                                    .map(|(i, &pos)| (i * seq) as u32 + pos)
                                    .collect::<Vec<u32>>(),
                                n,
                                &self.device,
                            )?),
                            None => None,
                        },
                    };
                    let h = hidden.narrow(0, r, n)?;
                    Ok(head
                        .forward(&h, &sub)?
                        .to_dtype(DType::F32)?
                        .to_vec2::<f32>()?)
                })
                .collect(),
            Err(e) => groups.iter().map(|_| Err(anyhow!("{e:#}"))).collect(),
        };
        let s = &self.stats;
        s.compute_nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        s.rows.fetch_add(merged.batch as u64, Ordering::Relaxed);
        s.tokens
            .fetch_add(merged.real_tokens() as u64, Ordering::Relaxed);
        out
    }

    fn run_group(&mut self, task: &ServedTask, works: &[Work]) -> Result<Vec<Vec<f32>>> {
        let head = self.head(task)?;
        let batches: Vec<&EncodedBatch> = works.iter().map(|w| &w.batch).collect();
        let merged = merge(&batches, self.config.pad_id());
        if task.head().uses_prompt() && merged.mask_positions.is_none() {
            return Err(anyhow!(
                "prompt task `{}` got inputs without mask positions",
                task.name
            ));
        }
        let input = merged.to_input(&self.config, &self.device, DType::F32)?;
        let t0 = Instant::now();
        let applied = task.graft.apply(&self.tensors)?;
        let t1 = Instant::now();
        let out = self
            .encoder
            .forward(&input)
            .and_then(|h| head.forward(&h, &input))
            .and_then(|l| l.to_dtype(DType::F32)?.to_vec2::<f32>());
        let t2 = Instant::now();
        applied.revert()?;
        let t3 = Instant::now();
        let s = &self.stats;
        s.graft_nanos
            .fetch_add(((t1 - t0) + (t3 - t2)).as_nanos() as u64, Ordering::Relaxed);
        s.graft_applies.fetch_add(1, Ordering::Relaxed);
        s.compute_nanos
            .fetch_add((t2 - t1).as_nanos() as u64, Ordering::Relaxed);
        s.rows.fetch_add(merged.batch as u64, Ordering::Relaxed);
        s.tokens
            .fetch_add(merged.real_tokens() as u64, Ordering::Relaxed);
        Ok(out?)
    }
}
