//! The serving engine timed on one batch whose rows belong to many synthetic tasks.

use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::synthetic::SyntheticTasks;
use crate::model::{BaseModel, EncodedBatch};
use anyhow::Result;
use rand::{Rng, SeedableRng};
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
    let tasks = tasks.max(1);
    let gen = SyntheticTasks::new(base, 1e-4)?;
    let served: Vec<Arc<ServedTask>> = (0..tasks)
        .map(|i| {
            Ok(Arc::new(ServedTask {
                name: format!("synthetic{i}"),
                graft: gen.graft(i)?,
                version: i as u64 + 1,
            }))
        })
        .collect::<Result<_>>()?;
    let engine = Engine::start(
        base,
        EngineConfig {
            threads: rayon::current_num_threads(),
            max_batch_tokens: rows * seq,
            max_wait: Duration::from_millis(20),
            queue_capacity: rows.max(64),
            ..Default::default()
        },
    )?;
    let tokens = random_batch(rows, seq, 7);
    let run_batch = |offset: usize| -> Result<()> {
        let mut requests: Vec<(Arc<ServedTask>, Vec<usize>)> = Vec::new();
        for r in 0..rows {
            let t = &served[(offset + r) % tasks];
            match requests.iter_mut().find(|(s, _)| Arc::ptr_eq(s, t)) {
                Some((_, v)) => v.push(r),
                None => requests.push((t.clone(), vec![r])),
            }
        }
        let futures = requests.into_iter().map(|(t, rs)| {
            let picked: Vec<(&EncodedBatch, usize)> = rs.iter().map(|&r| (&tokens, r)).collect();
            engine.logits(t, EncodedBatch::from_rows(&picked, 0))
        });
        for r in futures::executor::block_on(futures::future::join_all(futures)) {
            r?;
        }
        Ok(())
    };
    for b in 0..tasks.div_ceil(rows).max(2) {
        run_batch(b * rows)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    let mut b = 0;
    while times.len() < 5 || start.elapsed().as_secs_f64() < min_seconds {
        let t = Instant::now();
        run_batch(b * rows)?;
        times.push(t.elapsed().as_secs_f64());
        b += 1;
        if times.len() >= 200 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A batch of random token ids, every token real.
pub(super) fn random_batch(batch: usize, seq: usize, seed: u64) -> EncodedBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(1000..20000))
        .collect();
    EncodedBatch {
        type_ids: vec![0; ids.len()],
        mask: vec![1; ids.len()],
        ids,
        batch,
        seq,
        mask_positions: None,
    }
}
