//! The serving engine on the default model: faults stay with their task, length buckets change no result,
//! large requests are split across batches so small ones are not starved, abandoned requests are dropped,
//! and bf16 serving agrees with f32.

mod common;

use skillgraft::engine::{Engine, EngineConfig, EngineError, ServedTask};
use skillgraft::graft::synthetic::SyntheticTasks;
use skillgraft::graft::Graft;
use skillgraft::model::{BaseModel, EncodedBatch, TextInput};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn base() -> Option<BaseModel> {
    let dir = common::minilm_dir()?;
    Some(BaseModel::load(&dir, &candle_core::Device::Cpu, 128).unwrap())
}

fn task(name: &str, graft: Graft, version: u64) -> Arc<ServedTask> {
    Arc::new(ServedTask {
        name: name.into(),
        graft,
        version,
    })
}

fn engine(base: &BaseModel, wait_ms: u64, max_batch_tokens: usize) -> Engine {
    Engine::start(
        base,
        EngineConfig {
            max_wait: Duration::from_millis(wait_ms),
            max_batch_tokens,
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

fn texts(n: usize) -> Vec<TextInput> {
    let words = [
        "a",
        "gorgeous",
        "witty",
        "movie",
        "dull",
        "plot",
        "and",
        "the",
        "acting",
        "is",
        "worse",
        "endearing",
        "comedy",
        "never",
        "finds",
        "its",
        "footing",
    ];
    (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 40;
            TextInput::single(
                (0..len)
                    .map(|j| words[(i + j * 3) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_broken_task_fails_alone_and_its_batch_mates_get_their_own_results() {
    let Some(base) = base() else { return };
    let gen = SyntheticTasks::new(&base, 1e-4).unwrap();
    let good = task("good", gen.graft(1).unwrap(), 1);
    // Broken past validation, three ways: a head tensor of the right size but the wrong shape, a head value
    // that overflows the logits, and a non-finite temperature.
    let mut wrong_shape = gen.graft(2).unwrap();
    if let Some(h) = wrong_shape.head.get_mut("prototype.weight") {
        h.shape = vec![4, h.values.len() / 4];
    }
    let mut overflow = gen.graft(3).unwrap();
    if let Some(h) = overflow.head.get_mut("prototype.weight") {
        h.values[0] = 3.4e38;
    }
    let mut cold = gen.graft(4).unwrap();
    if let skillgraft::model::HeadSpec::Prototype { temperature, .. } = &mut cold.manifest.head {
        *temperature = f64::NAN;
    }
    let broken = [
        task("wrong-shape", wrong_shape, 2),
        task("overflow", overflow, 3),
        task("nan-temperature", cold, 4),
    ];
    let batch = base.tokenizer.encode(&texts(12), false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let alone = {
        let e = engine(&base, 2, 4096);
        rt.block_on(e.logits(good.clone(), batch.clone())).unwrap()
    };
    let e = engine(&base, 300, 1 << 20);
    let (mine, others) = rt.block_on(async {
        let others =
            futures::future::join_all(broken.iter().map(|t| e.logits(t.clone(), batch.clone())));
        tokio::join!(e.logits(good.clone(), batch.clone()), others)
    });
    assert_eq!(
        e.stats().batches.load(Ordering::Relaxed),
        1,
        "all four shared one batch"
    );
    let mine = mine.expect("the good task is served");
    assert!(
        max_abs(&mine, &alone) <= 1e-6,
        "the good task's logits changed beside broken tasks: {}",
        max_abs(&mine, &alone)
    );
    for (t, r) in broken.iter().zip(others) {
        match r {
            Err(EngineError::Task(m)) => assert!(m.contains(&format!("`{}`", t.name)), "{m}"),
            other => panic!("task {} should fail alone, got {other:?}", t.name),
        }
    }
}

#[test]
fn length_buckets_give_the_logits_of_one_padded_pass() {
    let Some(base) = base() else { return };
    let gen = SyntheticTasks::new(&base, 1e-4).unwrap();
    let tasks = [
        task("a", gen.graft(1).unwrap(), 1),
        task("b", gen.graft(2).unwrap(), 2),
    ];
    let batch = base.tokenizer.encode(&texts(24), false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |overhead: usize| {
        let e = Engine::start(
            &base,
            EngineConfig {
                max_wait: Duration::from_millis(300),
                threads: 2,
                pass_overhead_tokens: overhead,
                ..Default::default()
            },
        )
        .unwrap();
        let out = rt.block_on(futures::future::join_all(
            tasks.iter().map(|t| e.logits(t.clone(), batch.clone())),
        ));
        let s = e.stats();
        let stats = (
            s.passes.load(Ordering::Relaxed),
            s.padded_tokens.load(Ordering::Relaxed),
            s.tokens.load(Ordering::Relaxed),
        );
        (
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            stats,
        )
    };
    let (bucketed, (passes, padded, real)) = run(1);
    let (single, (passes1, padded1, real1)) = run(1 << 30);
    assert_eq!(passes1, 1);
    assert!(passes > 1, "short and long texts in separate passes");
    assert_eq!(real, real1);
    assert!(
        padded < padded1,
        "bucketing computes fewer padded tokens: {padded} vs {padded1}"
    );
    for (a, b) in bucketed.iter().zip(&single) {
        assert!(max_abs(a, b) <= 1e-5, "{}", max_abs(a, b));
    }
}

#[test]
fn a_small_request_is_not_starved_by_a_large_one_and_abandoned_work_is_dropped() {
    let Some(base) = base() else { return };
    let gen = SyntheticTasks::new(&base, 1e-4).unwrap();
    let big_task = task("big", gen.graft(1).unwrap(), 1);
    let small_task = task("small", gen.graft(2).unwrap(), 2);
    let big = base.tokenizer.encode(&texts(96), false).unwrap();
    let small = base.tokenizer.encode(&texts(1), false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Budget of 256 tokens per batch: the large request needs many batches.
    let e = engine(&base, 1, 256);
    let order = rt.block_on(async {
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d1, d2) = (done.clone(), done.clone());
        let (e1, e2) = (e.clone(), e.clone());
        let (bt, st) = (big_task.clone(), small_task.clone());
        let (bb, sb) = (big.clone(), small.clone());
        let h1 = tokio::spawn(async move {
            e1.logits(bt, bb).await.unwrap();
            d1.lock().unwrap().push("big");
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let h2 = tokio::spawn(async move {
            e2.logits(st, sb).await.unwrap();
            d2.lock().unwrap().push("small");
        });
        let _ = tokio::join!(h1, h2);
        let v = done.lock().unwrap().clone();
        v
    });
    assert_eq!(
        order,
        vec!["small", "big"],
        "the small request finished first"
    );
    let batches = e.stats().batches.load(Ordering::Relaxed);
    assert!(
        batches >= 5,
        "the large request was split: {batches} batches"
    );

    // A caller that goes away: its remaining rows are never computed.
    let e = engine(&base, 1, 256);
    let rows_before = e.stats().rows.load(Ordering::Relaxed);
    rt.block_on(async {
        let (e1, bt, bb) = (e.clone(), big_task.clone(), big.clone());
        let h = tokio::spawn(async move { e1.logits(bt, bb).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.abort();
        let _ = h.await;
        // The engine notices before its next batch; a later request is served normally.
        e.logits(small_task.clone(), small.clone()).await.unwrap();
    });
    let s = e.stats();
    assert_eq!(s.cancelled.load(Ordering::Relaxed), 1);
    let rows = s.rows.load(Ordering::Relaxed) - rows_before;
    assert!(
        rows < 96,
        "only part of the abandoned request ran: {rows} rows"
    );
}

#[test]
fn bf16_serving_agrees_with_f32() {
    let Some(base) = base() else { return };
    let gen = SyntheticTasks::new(&base, 1e-3).unwrap();
    let t = task("t", gen.graft(5).unwrap(), 1);
    let batch: EncodedBatch = base.tokenizer.encode(&texts(40), false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f32_logits = rt
        .block_on(engine(&base, 1, 4096).logits(t.clone(), batch.clone()))
        .unwrap();
    let mut half = base.clone();
    half.dtype = candle_core::DType::BF16;
    let e16 = engine(&half, 1, 4096);
    assert_eq!(e16.dtype(), candle_core::DType::BF16);
    let bf16_logits = rt.block_on(e16.logits(t, batch)).unwrap();
    // Prototype logits are cosines divided by τ = 0.05: bf16's ~3 significant digits move them by ≲ 0.5.
    let d = max_abs(&f32_logits, &bf16_logits);
    assert!(d > 0.0, "bf16 ran in bf16");
    assert!(d < 0.5, "bf16 logits differ by {d}");
}
