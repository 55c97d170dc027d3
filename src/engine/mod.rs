//! The engine: one thread owns the base model (on the CPU or a GPU, in f32, bf16 or f16) and serves every
//! task from it.
//!
//! Requests arrive already tokenized (by the caller, off this thread) over a bounded queue; a full queue is
//! refused at once (the server answers 429). Before a batch the engine waits (at most `max_wait`) only until
//! as many requests are waiting as were active around the last batch (answered by it, or waiting)
//! ([`schedule::keep_waiting`]): a lone client's requests run at once, and concurrent clients are gathered
//! into one batch instead of drifting into alternating halves. The engine keeps the requests it has taken in
//! arrival order and builds each batch round robin from them up to a token budget ([`schedule::take_rows`]):
//! a large request is split across batches, and a small one waits for at most about one batch whatever is
//! queued ahead of it.
//! Requests whose caller has gone away are dropped before any work is done for them.
//!
//! A batch's rows are cut into forward passes by length ([`schedule::buckets`]), so short texts are not padded
//! to the longest. Rows of tasks whose grafts touch only encoder layers share each pass whatever their
//! number: after every dense and LayerNorm layer each row gets its own task's sparse correction, one pass per
//! touched layer over every task ([`SparseBatch`](crate::model::ops::SparseBatch)); then each row's own head
//! ([`batch`]). Grafts that touch the embeddings are written into the weights in place for their own pass
//! and reverted after. Per-task state lives on the device in a bounded cache ([`resident`]).
//!
//! Faults stay with their task: a task whose graft cannot be prepared, whose pass fails, or whose rows come
//! out non-finite fails only its own requests; the other rows of the batch get their own results.

pub mod batch;
pub mod resident;
pub mod schedule;

use crate::graft::Graft;
use crate::model::heads::HeadSpec;
use crate::model::{to_hash_map, BaseModel, EncodedBatch, Encoder};
use anyhow::Result;
use candle_core::DType;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
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
    /// Unique per registration (cache key of its resident form).
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
    /// Requests waiting in the queue at most (more are refused).
    pub queue_capacity: usize,
    /// Real tokens per batch at most.
    pub max_batch_tokens: usize,
    /// Longest the engine waits for more requests to join a batch (it waits only for as many as were active
    /// around its last batch; see [`schedule::keep_waiting`]).
    pub max_wait: Duration,
    /// Compute threads.
    pub threads: usize,
    /// Device bytes (and host bytes of heads) that resident task state may hold.
    pub max_resident_bytes: usize,
    /// Fixed cost of one forward pass, in padded-token equivalents, when cutting a batch by length
    /// (0 = by device: 32 on the CPU, 1024 on a GPU).
    pub pass_overhead_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_batch_tokens: 4096,
            max_wait: Duration::from_millis(2),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_resident_bytes: 1 << 30,
            pass_overhead_tokens: 0,
        }
    }
}

/// Counters the engine keeps (read by the metrics endpoint and the benches).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting in the queue.
    pub queue_depth: AtomicUsize,
    /// Batches run.
    pub batches: AtomicU64,
    /// Forward passes run (a batch is one or more, by length and by in-place grafts).
    pub passes: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Requests dropped because their caller went away.
    pub cancelled: AtomicU64,
    /// Rows (texts) served.
    pub rows: AtomicU64,
    /// Real tokens processed.
    pub tokens: AtomicU64,
    /// Tokens computed including padding.
    pub padded_tokens: AtomicU64,
    /// Total nanoseconds spent applying and reverting in-place grafts.
    pub graft_nanos: AtomicU64,
    /// In-place graft applications.
    pub graft_applies: AtomicU64,
    /// Total nanoseconds of model compute.
    pub compute_nanos: AtomicU64,
    /// Bytes of resident task state.
    pub resident_bytes: AtomicUsize,
    /// Tasks with resident state.
    pub resident_tasks: AtomicUsize,
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
    /// This task cannot be served (its graft or its outputs are broken); other tasks are unaffected.
    #[error("{0}")]
    Task(String),
    /// The computation failed.
    #[error("{0}")]
    Failed(String),
}

/// What a request's reply carries: logits per row, or why its task failed.
type Reply = Result<Vec<Vec<f32>>, EngineError>;

struct Work {
    task: Arc<ServedTask>,
    batch: EncodedBatch,
    reply: tokio::sync::oneshot::Sender<Reply>,
}

/// Handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Work>,
    stats: Arc<EngineStats>,
    capacity: usize,
    dtype: DType,
}

impl Engine {
    /// Starts the engine thread, which owns a copy of `base`'s weights in `base.dtype` from now on.
    pub fn start(base: &BaseModel, config: EngineConfig) -> Result<Self> {
        // The engine's own copy: grafts are written into it in place, so nobody else may share its storage.
        let tensors = base.model.weights.deep_clone()?.tensors;
        Self::launch(tensors, base, config)
    }

    /// Starts the engine thread on `base`'s own weights, which it owns from now on (no copy is made; the
    /// caller keeps none, so they are resident once: a service keeps a [`BaseInfo`](crate::model::BaseInfo)
    /// beside the engine instead).
    pub fn start_owned(base: BaseModel, config: EngineConfig) -> Result<Self> {
        let mut base = base;
        let tensors = std::mem::take(&mut base.model.weights.tensors);
        Self::launch(tensors, &base, config)
    }

    /// Converts `tensors` (owned by nobody else) to the serving dtype and starts the thread that owns them.
    fn launch(
        tensors: BTreeMap<String, candle_core::Tensor>,
        base: &BaseModel,
        config: EngineConfig,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel::<Work>(config.queue_capacity);
        let stats = Arc::new(EngineStats::default());
        let dtype = base.dtype;
        let tensors: BTreeMap<_, _> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        let cfg = base.model.config.clone();
        let device = base.device.clone();
        let vb = candle_nn::VarBuilder::from_tensors(to_hash_map(&tensors), dtype, &device);
        let encoder = Encoder::load(vb, &cfg)?;
        let pool = crate::compute_pool(Some(config.threads))?;
        let st = stats.clone();
        let capacity = config.queue_capacity;
        let sites = resident::Sites::of(&tensors);
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let overhead = match (config.pass_overhead_tokens, device.is_cpu()) {
                    (0, true) => 32,
                    (0, false) => 1024,
                    (n, _) => n,
                };
                let mut worker = Worker {
                    model: batch::Model {
                        tensors,
                        encoder,
                        config: cfg,
                        device,
                        dtype,
                        sites,
                        pass_overhead: overhead,
                    },
                    cache: resident::ResidentCache::new(config.max_resident_bytes),
                    stats: st,
                    settings: config,
                };
                pool.install(|| worker.run(rx));
            })?;
        Ok(Self {
            tx,
            stats,
            capacity,
            dtype,
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

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Logits of a tokenized batch under a task (rows in input order). Dropping the returned future (a
    /// client that went away) withdraws the request: the engine skips whatever of it has not run yet.
    pub async fn logits(&self, task: Arc<ServedTask>, batch: EncodedBatch) -> Reply {
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
        rx.await.unwrap_or(Err(EngineError::Stopped))
    }
}

/// A request being served: its rows' lengths and the logits of the rows done so far.
struct Pending {
    work: Work,
    lens: Vec<usize>,
    done: Vec<Vec<f32>>,
}

impl Pending {
    fn new(work: Work) -> Self {
        let lens = (0..work.batch.batch)
            .map(|r| work.batch.row_len(r))
            .collect();
        Self {
            work,
            lens,
            done: Vec::new(),
        }
    }
}

struct Worker {
    model: batch::Model,
    cache: resident::ResidentCache,
    stats: Arc<EngineStats>,
    settings: EngineConfig,
}

/// Requests taken off the queue and being served at most; beyond it they wait in the queue (so a full queue
/// still means 429).
const MAX_IN_SERVICE: usize = 64;

impl Worker {
    fn run(&mut self, rx: Receiver<Work>) {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        // Requests active around the last batch (those it finished, whose clients may send again, and those
        // still waiting): how many to gather before the next one (see `schedule::keep_waiting`). Unknown at
        // the start, so the first batch waits the full batch wait.
        let mut expected = MAX_IN_SERVICE;
        loop {
            if pending.is_empty() {
                match rx.recv() {
                    Ok(w) => self.admit(&mut pending, w),
                    Err(_) => return,
                }
            }
            // Take what is queued; then give the clients active around the last batch a moment to come back.
            let deadline = Instant::now() + self.settings.max_wait;
            loop {
                self.take_queued(&rx, &mut pending);
                if !schedule::keep_waiting(
                    pending.len(),
                    expected,
                    self.waiting_tokens(&pending),
                    self.settings.max_batch_tokens,
                ) {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(w) => self.admit(&mut pending, w),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let before = pending.len();
            pending.retain(|p| !p.work.reply.is_closed());
            self.stats
                .cancelled
                .fetch_add((before - pending.len()) as u64, Ordering::Relaxed);
            if pending.is_empty() {
                continue;
            }
            let finished = self.serve_one_batch(&mut pending);
            // Requests that arrived during the batch count as waiting ones.
            self.take_queued(&rx, &mut pending);
            expected = (finished + pending.len()).min(MAX_IN_SERVICE);
        }
    }

    /// Takes the requests already in the queue (up to `MAX_IN_SERVICE` in service).
    fn take_queued(&self, rx: &Receiver<Work>, pending: &mut VecDeque<Pending>) {
        while pending.len() < MAX_IN_SERVICE {
            match rx.try_recv() {
                Ok(w) => self.admit(pending, w),
                Err(_) => break,
            }
        }
    }

    fn admit(&self, pending: &mut VecDeque<Pending>, w: Work) {
        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        pending.push_back(Pending::new(w));
    }

    fn waiting_tokens(&self, pending: &VecDeque<Pending>) -> usize {
        pending
            .iter()
            .map(|p| p.lens[p.done.len()..].iter().sum::<usize>())
            .sum()
    }

    /// Serves one batch from `pending`; returns how many requests it finished (answered).
    fn serve_one_batch(&mut self, pending: &mut VecDeque<Pending>) -> usize {
        let views: Vec<(usize, &[usize])> = pending
            .iter()
            .map(|p| (p.done.len(), p.lens.as_slice()))
            .collect();
        let picked = schedule::take_rows(&views, self.settings.max_batch_tokens);
        let rows: Vec<batch::Row> = picked
            .iter()
            .flat_map(|(p, range)| {
                let w = &pending[*p].work;
                range.clone().map(move |r| batch::Row {
                    task: w.task.clone(),
                    batch: &w.batch,
                    row: r,
                })
            })
            .collect();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let results = batch::run(&mut self.model, &mut self.cache, &self.stats, &rows);
        drop(rows);
        let (bytes, tasks) = self.cache.usage();
        self.stats.resident_bytes.store(bytes, Ordering::Relaxed);
        self.stats.resident_tasks.store(tasks, Ordering::Relaxed);
        // Hand the results back, request by request; a failed row fails its whole request.
        let mut results = results.into_iter();
        let mut failed: Vec<(usize, EngineError)> = Vec::new();
        for (p, range) in &picked {
            for _ in range.clone() {
                match results.next() {
                    Some(Ok(logits)) => pending[*p].done.push(logits),
                    Some(Err(e)) => {
                        if !failed.iter().any(|(q, _)| q == p) {
                            failed.push((*p, e));
                        }
                    }
                    None => {
                        failed.push((*p, EngineError::Failed("engine: rows lost".into())));
                    }
                }
            }
        }
        let mut finished: Vec<(usize, Reply)> =
            failed.into_iter().map(|(p, e)| (p, Err(e))).collect();
        for (p, _) in &picked {
            let pd = &pending[*p];
            if pd.done.len() == pd.lens.len() && !finished.iter().any(|(q, _)| q == p) {
                finished.push((*p, Ok(Vec::new())));
            }
        }
        finished.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        let answered = finished.len();
        for (p, reply) in finished {
            if let Some(pd) = pending.remove(p) {
                let reply = reply.map(|_| pd.done);
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let _ = pd.work.reply.send(reply);
            }
        }
        answered
    }
}
