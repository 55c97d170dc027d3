//! `skillgraft bench-serve --vs-raw`: the server's sentences/s against the raw model's, at the same batch
//! sizes, on the same texts and threads, in one sitting.
//!
//! Texts: SST-2 test sentences of 18–20 tokens (so padding is small and the engine, which cuts batches by
//! length, does the same work as the raw loop), or fixed synthetic sentences when the data set is absent.
//! For each batch size B, `--rounds` times in turn (the median round of each column is reported, so a
//! disturbance on a shared machine hits every column alike):
//! - **raw**: in this process, B texts tokenized, then one forward pass of the base encoder padded to the
//!   longest and mean pooling copied to the host (what the engine computes for a task minus the graft's
//!   sparse corrections and the head's dot products), one batch after another on `--threads` threads;
//! - **engine**: the same texts tokenized here and sent to an in-process engine serving one synthetic task
//!   (graft corrections, scheduling and its batch wait included; no HTTP);
//! - **server**: a `skillgraft serve` process with the same threads and that task, driven over HTTP with
//!   keep-alive connections, as one client sending B texts per request and (B > 1) as B clients sending one
//!   text each, so the engine forms batches of about B rows (the mean is read from `/metrics`).
//!
//! The clients run in this process and take CPU from the same cores: the CPU time of each side is measured
//! (getrusage here, /proc for the server) and printed, and an HTTP floor (GET /health) shows what a request
//! costs with no model work at all.

use super::harness::{cpu_seconds_of, own_cpu_seconds};
use super::serve::BenchServeArgs;
use super::server::{import, metric, start_server, task_name, Server};
use crate::cli::http::Conn;
use crate::cli::output::print_json;
use crate::engine::{Engine, EngineConfig, ServedTask};
use crate::graft::synthetic::SyntheticTasks;
use crate::model::pooled_head::{pooled_vectors, PooledInput};
use crate::model::{to_hash_map, BaseModel, Encoder, TextInput};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token lengths (special tokens included) of the texts used.
const MIN_TOKENS: usize = 18;
const MAX_TOKENS: usize = 20;

/// Fallback texts when SST-2 is not in the data directory.
const SYNTHETIC: [&str; 8] = [
    "the film is a gorgeous , witty and seductive portrait of a family that never quite stops arguing .",
    "the plot is dull , the dialogue is flat and the acting is worse than anything on television this year .",
    "an endearing , if uneven , comedy about growing up in a small town where nothing ever happens .",
    "it never quite finds its footing , but the two leads are charming enough to carry it through .",
    "a smart , funny and surprisingly moving look at friendship , ambition and the price of success .",
    "the director has made a beautiful film that is also , sadly , almost completely without a pulse .",
    "by the end i cared about every one of these people , which is more than most films manage .",
    "a tedious , overlong and self-important drama that mistakes silence for depth at every turn .",
];

/// The texts: SST-2 test sentences of MIN_TOKENS..=MAX_TOKENS tokens, or the synthetic ones.
fn texts(base: &BaseModel, data_dir: &std::path::Path) -> Result<(Vec<String>, String)> {
    let len = |t: &str| -> Result<usize> {
        Ok(base
            .tokenizer
            .encode(&[TextInput::single(t)], false)?
            .real_tokens())
    };
    let from_sst2 = crate::data::builtin_task("sst2")
        .and_then(|task| crate::data::load_examples(&task, data_dir).ok())
        .map(|d| d.test);
    if let Some(test) = from_sst2 {
        let mut picked = Vec::new();
        for e in test {
            if (MIN_TOKENS..=MAX_TOKENS).contains(&len(&e.text)?) {
                picked.push(e.text);
            }
        }
        if picked.len() >= 64 {
            return Ok((
                picked,
                format!("SST-2 test sentences of {MIN_TOKENS}–{MAX_TOKENS} tokens"),
            ));
        }
    }
    let synthetic: Vec<String> = SYNTHETIC.iter().map(|s| s.to_string()).collect();
    let lens = synthetic
        .iter()
        .map(|t| len(t))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        synthetic,
        format!(
            "{} fixed synthetic sentences of {}–{} tokens (SST-2 not found)",
            SYNTHETIC.len(),
            lens.iter().min().unwrap_or(&0),
            lens.iter().max().unwrap_or(&0)
        ),
    ))
}

/// Batch `k` of `b` texts, rotating through the pool.
fn batch_texts(pool: &[String], b: usize, k: usize) -> Vec<String> {
    (0..b)
        .map(|i| pool[(k * b + i) % pool.len()].clone())
        .collect()
}

/// Sentences/s and CPU of one measurement.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Rate {
    sentences_per_s: f64,
    /// This process's CPU, % of one core (the clients, for server rows).
    own_cpu_pct: f64,
    /// The server's CPU, % of one core (server rows only).
    server_cpu_pct: Option<f64>,
    /// Median request latency, ms (server rows only).
    p50_ms: Option<f64>,
    /// Mean rows per engine batch (server rows only, from /metrics).
    rows_per_batch: Option<f64>,
}

/// The measurement with the median sentences/s (the upper one of an even count).
fn median_rate(mut rates: Vec<Rate>) -> Rate {
    rates.sort_by(|a, b| a.sentences_per_s.total_cmp(&b.sentences_per_s));
    rates.get(rates.len() / 2).cloned().unwrap_or_default()
}

/// Runs `step` (which handles `batch` texts) for `seconds` after two warm-ups.
fn timed(b: usize, seconds: f64, mut step: impl FnMut(usize) -> Result<()>) -> Result<Rate> {
    step(0)?;
    step(1)?;
    let cpu0 = own_cpu_seconds();
    let start = Instant::now();
    let mut k = 2;
    while k < 5 || start.elapsed().as_secs_f64() < seconds {
        step(k)?;
        k += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Rate {
        sentences_per_s: ((k - 2) * b) as f64 / wall,
        own_cpu_pct: (own_cpu_seconds() - cpu0) / wall * 100.0,
        ..Default::default()
    })
}

/// Drives the server: `clients` keep-alive connections, each sending requests of `per_request` texts.
fn drive(
    addr: &str,
    pid: u32,
    path: &str,
    pool: &[String],
    clients: usize,
    per_request: usize,
    seconds: f64,
) -> Result<Rate> {
    let mut conns = (0..clients)
        .map(|_| Conn::open(addr))
        .collect::<Result<Vec<_>>>()?;
    let body = |k: usize, c: usize| {
        let texts = batch_texts(pool, per_request, k * clients + c);
        serde_json::json!({ "inputs": texts }).to_string()
    };
    // Warm-up: two requests per connection.
    for (c, conn) in conns.iter_mut().enumerate() {
        for k in 0..2 {
            let (status, resp) = conn.request("POST", path, body(k, c).as_bytes())?;
            if status != 200 {
                bail!(
                    "predict failed ({status}): {}",
                    String::from_utf8_lossy(&resp)
                );
            }
        }
    }
    let batches0 = metric(addr, "skillgraft_batches_total");
    let rows0 = metric(addr, "skillgraft_rows_total");
    let server0 = cpu_seconds_of(pid)?;
    let cpu0 = own_cpu_seconds();
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let results: Vec<Result<(usize, Vec<f64>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(c, conn)| {
                let body = &body;
                s.spawn(move || -> Result<(usize, Vec<f64>)> {
                    let mut lat = Vec::new();
                    let mut k = 2;
                    while Instant::now() < stop {
                        let b = body(k, c);
                        let t = Instant::now();
                        let (status, resp) = conn.request("POST", path, b.as_bytes())?;
                        if status != 200 {
                            bail!(
                                "predict failed ({status}): {}",
                                String::from_utf8_lossy(&resp)
                            );
                        }
                        lat.push(t.elapsed().as_secs_f64());
                        k += 1;
                    }
                    Ok((lat.len() * per_request, lat))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let own = own_cpu_seconds() - cpu0;
    let server = cpu_seconds_of(pid)? - server0;
    let mut sentences = 0;
    let mut lat = Vec::new();
    for r in results {
        let (n, l) = r?;
        sentences += n;
        lat.extend(l);
    }
    lat.sort_by(f64::total_cmp);
    let rows_per_batch = match (
        batches0,
        rows0,
        metric(addr, "skillgraft_batches_total"),
        metric(addr, "skillgraft_rows_total"),
    ) {
        (Some(b0), Some(r0), Some(b1), Some(r1)) if b1 > b0 => Some((r1 - r0) / (b1 - b0)),
        _ => None,
    };
    Ok(Rate {
        sentences_per_s: sentences as f64 / wall,
        own_cpu_pct: own / wall * 100.0,
        server_cpu_pct: Some(server / wall * 100.0),
        p50_ms: lat.get(lat.len() / 2).map(|s| s * 1e3),
        rows_per_batch,
    })
}

/// One line of the result: a batch size, how the server was driven, and the rates.
#[derive(Debug, Clone, serde::Serialize)]
struct Line {
    batch: usize,
    raw: Rate,
    engine: Rate,
    /// "1 client × B texts" or "B clients × 1 text".
    mode: String,
    server: Rate,
}

/// `a / b` as "0.93×" (or "–" when b is not positive).
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// The Markdown table of the lines.
fn markdown(lines: &[Line]) -> String {
    let mut s = String::from(
        "| texts per batch | raw: tokenize + forward, sentences/s (CPU) | in-process engine, sentences/s (vs raw) \
         | HTTP clients | server, sentences/s | server / raw | rows per engine batch | p50 ms | CPU: clients / server |\n\
         |---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    let pct = |x: f64| format!("{x:.0}%");
    for l in lines {
        s.push_str(&format!(
            "| {} | {:.1} ({}) | {:.1} ({}) | {} | {:.1} | {} | {} | {} | {} / {} |\n",
            l.batch,
            l.raw.sentences_per_s,
            pct(l.raw.own_cpu_pct),
            l.engine.sentences_per_s,
            ratio(l.engine.sentences_per_s, l.raw.sentences_per_s),
            l.mode,
            l.server.sentences_per_s,
            ratio(l.server.sentences_per_s, l.raw.sentences_per_s),
            l.server
                .rows_per_batch
                .map_or("–".into(), |r| format!("{r:.1}")),
            l.server.p50_ms.map_or("–".into(), |m| format!("{m:.1}")),
            pct(l.server.own_cpu_pct),
            l.server.server_cpu_pct.map_or("–".into(), pct),
        ));
    }
    s
}

/// The base encoder alone, in the serving dtype (what the raw rows run).
fn raw_encoder(base: &BaseModel) -> Result<Encoder> {
    let dtype = base.dtype;
    let tensors: BTreeMap<String, candle_core::Tensor> = base
        .model
        .weights
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let vb = candle_nn::VarBuilder::from_tensors(to_hash_map(&tensors), dtype, &base.device);
    Ok(Encoder::load(vb, &base.model.config)?)
}

/// Runs the comparison.
pub(super) fn run(a: &BenchServeArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let mut sizes = a.batch_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.first().is_none_or(|&b| b == 0) {
        bail!("--batch-sizes: give sizes of at least 1, e.g. 1,8,32");
    }
    let base = a.model.load()?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::data::data_dir_default);
    let (pool, what) = texts(&base, &data_dir)?;

    // Raw: the base encoder in this process, in the serving dtype.
    let dtype = base.dtype;
    let encoder = raw_encoder(&base)?;
    let raw_step = |b: usize, k: usize| -> Result<()> {
        let inputs: Vec<TextInput> = batch_texts(&pool, b, k)
            .into_iter()
            .map(TextInput::single)
            .collect();
        let enc = base.tokenizer.encode(&inputs, false)?;
        let input = enc.to_input(&base.model.config, &base.device, dtype)?;
        let hidden = encoder.forward(&input)?;
        pooled_vectors(&hidden, &input.attention_mask, PooledInput::Mean)?;
        Ok(())
    };

    // The in-process engine and the server serve the same synthetic task.
    let gen = SyntheticTasks::new(&base, a.sparsity)?;
    let task = Arc::new(ServedTask {
        name: task_name(0),
        graft: gen.graft(0)?,
        version: 1,
    });
    let engine = Engine::start(
        &base,
        EngineConfig {
            threads,
            ..Default::default()
        },
    )?;
    let engine_step = |b: usize, k: usize| -> Result<()> {
        let inputs: Vec<TextInput> = batch_texts(&pool, b, k)
            .into_iter()
            .map(TextInput::single)
            .collect();
        let enc = base.tokenizer.encode(&inputs, false)?;
        futures::executor::block_on(engine.logits(task.clone(), enc))?;
        Ok(())
    };

    let state = std::env::temp_dir().join(format!("skillgraft-vs-raw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let server = start_server(&a.server_flags(), &base.model.files.dir, &state)?;
    import(&server.addr, &gen, 0, 1, 1)?;
    let path = format!("/v1/tasks/{}/predict", task_name(0));

    // The HTTP floor: keep-alive GET /health, no model work.
    let floor_s = a.seconds.min(3.0);
    let floor = |clients: usize| http_floor(&server, clients, floor_s);
    let mut floors = vec![floor(1)?];
    let most = *sizes.last().unwrap_or(&1);
    if most > 1 {
        floors.push(floor(most)?);
    }

    let rounds = a.rounds.max(1);
    let serve = |clients: usize, texts: usize| {
        drive(
            &server.addr,
            server.pid,
            &path,
            &pool,
            clients,
            texts,
            a.seconds,
        )
    };
    let lines = measure(&sizes, rounds, a.seconds, &raw_step, &engine_step, &serve)?;
    drop(server);
    let _ = std::fs::remove_dir_all(&state);

    if a.model.json {
        return print_json(&serde_json::json!({
            "threads": threads, "device": a.model.device, "dtype": a.model.dtype, "texts": what,
            "seconds_per_measurement": a.seconds, "rounds": rounds, "graft_size": gen.size, "http_floor": floors,
            "lines": lines,
        }));
    }
    println!(
        "skillgraft bench-serve --vs-raw — {threads} compute thread(s) on each side, device {} ({}), \
         {what}, median of {rounds} interleaved round(s) of {:.0} s per measurement, one synthetic task \
         (graft of {} parameters)\n",
        a.model.device, a.model.dtype, a.seconds, gen.size
    );
    print!("{}", markdown(&lines));
    println!();
    for f in &floors {
        print_floor(f);
    }
    Ok(())
}

/// Requests/s of `clients` keep-alive connections sending GET /health for `seconds`, and the CPU each side
/// spends per request: what a request costs with no model work at all.
fn http_floor(server: &Server, clients: usize, seconds: f64) -> Result<serde_json::Value> {
    let mut conns = (0..clients)
        .map(|_| Conn::open(&server.addr))
        .collect::<Result<Vec<_>>>()?;
    let server0 = cpu_seconds_of(server.pid)?;
    let cpu0 = own_cpu_seconds();
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let counts: Vec<Result<usize>> = std::thread::scope(|s| {
        let hs: Vec<_> = conns
            .iter_mut()
            .map(|c| {
                s.spawn(move || -> Result<usize> {
                    let mut n = 0;
                    while Instant::now() < stop {
                        c.request("GET", "/health", b"")?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("client panicked"))?)
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let n: usize = counts.into_iter().sum::<Result<usize>>()?;
    let own = own_cpu_seconds() - cpu0;
    let srv = cpu_seconds_of(server.pid)? - server0;
    Ok(serde_json::json!({
        "clients": clients, "requests_per_s": n as f64 / wall,
        "client_cpu_us_per_request": own / n.max(1) as f64 * 1e6,
        "server_cpu_us_per_request": srv / n.max(1) as f64 * 1e6,
        "client_cpu_pct": own / wall * 100.0, "server_cpu_pct": srv / wall * 100.0,
    }))
}

/// The lines of the result: for each batch size B, `rounds` interleaved rounds of raw (`raw_step(B, k)`),
/// engine (`engine_step(B, k)`) and server (`serve(clients, texts per request)`: 1 × B, and B × 1 when
/// B > 1), the median round of each column kept.
fn measure(
    sizes: &[usize],
    rounds: usize,
    seconds: f64,
    raw_step: &dyn Fn(usize, usize) -> Result<()>,
    engine_step: &dyn Fn(usize, usize) -> Result<()>,
    serve: &dyn Fn(usize, usize) -> Result<Rate>,
) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for &b in sizes {
        eprintln!("batch size {b}: {rounds} round(s) of raw, in-process engine, server");
        let (mut raw, mut eng, mut one, mut many) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            raw.push(timed(b, seconds, |k| raw_step(b, k))?);
            eng.push(timed(b, seconds, |k| engine_step(b, k))?);
            one.push(serve(1, b)?);
            if b > 1 {
                many.push(serve(b, 1)?);
            }
        }
        let (raw, eng) = (median_rate(raw), median_rate(eng));
        lines.push(Line {
            batch: b,
            raw: raw.clone(),
            engine: eng.clone(),
            mode: format!("1 × {b} text{}", if b == 1 { "" } else { "s" }),
            server: median_rate(one),
        });
        if b > 1 {
            lines.push(Line {
                batch: b,
                raw,
                engine: eng,
                mode: format!("{b} × 1 text"),
                server: median_rate(many),
            });
        }
    }
    Ok(lines)
}

/// One line of text for an HTTP floor measurement.
fn print_floor(f: &serde_json::Value) {
    println!(
        "HTTP floor (GET /health, {} keep-alive client(s)): {:.0} requests/s; per request {:.0} µs of client \
         CPU and {:.0} µs of server CPU (clients {:.0}%, server {:.0}% of a core)",
        f["clients"],
        f["requests_per_s"].as_f64().unwrap_or(f64::NAN),
        f["client_cpu_us_per_request"].as_f64().unwrap_or(f64::NAN),
        f["server_cpu_us_per_request"].as_f64().unwrap_or(f64::NAN),
        f["client_cpu_pct"].as_f64().unwrap_or(f64::NAN),
        f["server_cpu_pct"].as_f64().unwrap_or(f64::NAN),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_reported() {
        let r = |s: f64| Rate {
            sentences_per_s: s,
            ..Default::default()
        };
        assert_eq!(
            median_rate(vec![r(3.0), r(100.0), r(1.0)]).sentences_per_s,
            3.0
        );
        assert_eq!(median_rate(vec![r(2.0), r(1.0)]).sentences_per_s, 2.0);
        assert_eq!(median_rate(Vec::new()).sentences_per_s, 0.0);
    }

    #[test]
    fn batches_rotate_through_the_pool() {
        let pool: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        assert_eq!(batch_texts(&pool, 3, 0), ["0", "1", "2"]);
        assert_eq!(batch_texts(&pool, 3, 1), ["3", "4", "0"]);
    }

    #[test]
    fn the_table_puts_the_server_against_raw() {
        let rate = |s: f64| Rate {
            sentences_per_s: s,
            own_cpu_pct: 50.0,
            server_cpu_pct: Some(180.0),
            p50_ms: Some(12.34),
            rows_per_batch: Some(7.96),
        };
        let t = markdown(&[Line {
            batch: 8,
            raw: rate(400.0),
            engine: rate(380.0),
            mode: "8 × 1 text".into(),
            server: rate(340.0),
        }]);
        let row = t.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| 8 | 400.0 (50%) | 380.0 (0.95×) | 8 × 1 text | 340.0 | 0.85× | 8.0 | 12.3 | 50% / 180% |"
        );
        assert_eq!(ratio(1.0, 0.0), "–");
    }
}
