//! `skillgraft bench-serve`: starts `skillgraft serve` as a second process (same device, dtype and threads)
//! and drives it over HTTP from this one, in phases of growing task counts (1, 100, 10,000 … tasks; each
//! request for a task drawn uniformly or by a Zipf law). Before each phase the tasks are imported, then the
//! server is restarted, so it starts with every task in its store and none in memory: tasks load on demand.
//! Per phase: a cold task's first-request latency (tasks never asked for since the restart, one at a time),
//! then requests/s and p50/p99 latency under load, the server's resident memory, the graft cache and the
//! engine's per-task device state (read from `/metrics`). Every request opens a connection of its own
//! (`Connection: close`). With `--vs-raw`, instead: the server's sentences/s against the raw model's at the
//! same batch sizes ([`super::vs_raw`], which takes its options from here).

use super::harness::median;
use super::server::{import, metric, start_server, task_name, ServerFlags};
use crate::cli::args::ModelArgs;
use crate::cli::http;
use crate::cli::output::print_json;
use crate::cli::table::Table;
use crate::graft::synthetic::SyntheticTasks;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `skillgraft bench-serve`.
#[derive(Args, Debug)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub(in crate::cli) model: ModelArgs,
    /// Task counts, one load phase each (comma-separated; tasks are added between phases).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    tasks: Vec<usize>,
    /// Seconds of load per phase (per measurement with --vs-raw).
    #[arg(long, default_value_t = 15.0)]
    pub(super) seconds: f64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    texts: usize,
    /// Graft sparsity of the synthetic tasks.
    #[arg(long, default_value_t = 1e-4)]
    pub(super) sparsity: f64,
    /// Which task each request goes to: uniform, or zipf (task i with weight 1/(i+1)^1.1: a few hot tasks
    /// and a long tail).
    #[arg(long, value_parser = ["uniform", "zipf"], default_value = "uniform")]
    popularity: String,
    /// Cold tasks timed per phase (first request to a task not in memory).
    #[arg(long, default_value_t = 20)]
    cold: usize,
    /// The server's graft cache, bytes (its --task-cache-bytes; default: the server's default).
    #[arg(long)]
    task_cache_bytes: Option<usize>,
    /// The server's store (its --store: a directory or s3://bucket/prefix; default: a fresh temporary
    /// directory).
    #[arg(long)]
    store: Option<String>,
    /// Concurrent connections importing tasks.
    #[arg(long, default_value_t = 4)]
    import_clients: usize,
    /// Instead of the task-count phases: the server's sentences/s against the raw model's at each of
    /// --batch-sizes, same texts and threads (--seconds per measurement; see `bench::vs_raw`).
    #[arg(long)]
    pub(super) vs_raw: bool,
    /// Texts per model batch for --vs-raw (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub(super) batch_sizes: Vec<usize>,
    /// Interleaved rounds of every --vs-raw measurement (the median round is reported).
    #[arg(long, default_value_t = 3)]
    pub(super) rounds: usize,
    /// Directory of the data sets (--vs-raw uses SST-2's test sentences when present).
    #[arg(long, env = "SKILLGRAFT_DATA_DIR")]
    pub(super) data_dir: Option<std::path::PathBuf>,
}

impl BenchServeArgs {
    /// The flags the bench passes on to the server it starts.
    pub(super) fn server_flags(&self) -> ServerFlags<'_> {
        ServerFlags {
            model: &self.model,
            task_cache_bytes: self.task_cache_bytes,
            store: self.store.as_deref(),
        }
    }
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Cumulative probabilities of picking each of `n` tasks.
fn popularity(n: usize, law: &str) -> Vec<f64> {
    let w: Vec<f64> = (0..n)
        .map(|i| match law {
            "zipf" => 1.0 / ((i + 1) as f64).powf(1.1),
            _ => 1.0,
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter()
        .scan(0.0, |acc, x| {
            *acc += x / total;
            Some(*acc)
        })
        .collect()
}

fn pick(rng: &mut impl Rng, cumulative: &[f64]) -> usize {
    let u: f64 = rng.random();
    cumulative
        .partition_point(|&c| c < u)
        .min(cumulative.len().saturating_sub(1))
}

/// GPU memory the process `pid` holds, MiB (from nvidia-smi; None without one).
fn gpu_mib(pid: u32) -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (p, m) = l.split_once(',')?;
        (p.trim().parse::<u32>().ok()? == pid).then(|| m.trim().parse().ok())?
    })
}

struct Phase {
    tasks: usize,
    cold_ms: Vec<f64>,
    rss_start_kib: u64,
    cache_bytes: Option<f64>,
    cache_entries: Option<f64>,
    requests: usize,
    errors: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_kib: u64,
    resident_bytes: Option<f64>,
    resident_tasks: Option<f64>,
    gpu_mib: Option<f64>,
}

fn load(
    addr: &str,
    names: &[String],
    a: &BenchServeArgs,
    pid: u32,
    cold_ms: Vec<f64>,
    rss_start_kib: u64,
) -> Result<Phase> {
    let sentences = [
        "a gorgeous , witty , seductive movie .",
        "the plot is dull and the acting is worse .",
        "an endearing , if uneven , comedy about growing up .",
        "it never quite finds its footing .",
    ];
    let cumulative = popularity(names.len(), &a.popularity);
    let stop = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let addr = addr.to_string();
            let names = names.to_vec();
            let texts = a.texts;
            let cumulative = cumulative.clone();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64);
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < stop {
                    let task = &names[pick(&mut rng, &cumulative)];
                    let inputs: Vec<&str> = (0..texts)
                        .map(|_| sentences[rng.random_range(0..sentences.len())])
                        .collect();
                    let body = serde_json::json!({ "inputs": inputs }).to_string();
                    let t = Instant::now();
                    match http::once(
                        &addr,
                        "POST",
                        &format!("/v1/tasks/{task}/predict"),
                        body.as_bytes(),
                    ) {
                        Ok((200, _)) => lat.push(t.elapsed().as_secs_f64()),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        lat.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
            * 1e3
    };
    Ok(Phase {
        tasks: names.len(),
        cold_ms,
        rss_start_kib,
        cache_bytes: metric(addr, "skillgraft_task_cache_bytes"),
        cache_entries: metric(addr, "skillgraft_task_cache_entries"),
        resident_bytes: metric(addr, "skillgraft_resident_task_bytes"),
        resident_tasks: metric(addr, "skillgraft_resident_tasks"),
        gpu_mib: gpu_mib(pid),
        requests: lat.len(),
        errors,
        seconds,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        rss_kib: rss_kib(pid)?,
    })
}

/// First-request latencies (ms) of up to `count` tasks spread over the popularity ranks, one at a time,
/// right after a restart: each is loaded from the store on that request.
fn cold_latencies(addr: &str, names: &[String], count: usize) -> Result<Vec<f64>> {
    let count = count.min(names.len());
    let body =
        serde_json::json!({ "inputs": ["a gorgeous , witty , seductive movie ."] }).to_string();
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let task = &names[k * names.len() / count];
        let t = Instant::now();
        let (status, resp) = http::once(
            addr,
            "POST",
            &format!("/v1/tasks/{task}/predict"),
            body.as_bytes(),
        )?;
        if status != 200 {
            bail!(
                "cold predict on {task} failed ({status}): {}",
                String::from_utf8_lossy(&resp)
            );
        }
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Runs the serving benchmark.
pub(super) fn run(a: &BenchServeArgs) -> Result<()> {
    let base = a.model.load()?;
    let mut phases_wanted = a.tasks.clone();
    phases_wanted.sort_unstable();
    phases_wanted.dedup();
    if phases_wanted.first().is_none_or(|&n| n == 0) {
        bail!("--tasks: give task counts of at least 1, e.g. 1,100,1000");
    }
    let state = std::env::temp_dir().join(format!("skillgraft-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let model_dir = base.model.files.dir.clone();
    let gen = SyntheticTasks::new(&base, a.sparsity)?;
    let mut server = start_server(&a.server_flags(), &model_dir, &state)?;
    let rss0 = rss_kib(server.pid)?;
    let mut imported = 0;
    let mut phases = Vec::new();
    for &n in &phases_wanted {
        let t = Instant::now();
        import(&server.addr, &gen, imported, n, a.import_clients)?;
        if n > imported {
            eprintln!(
                "imported tasks {imported}..{n} in {:.1}s; restarting the server",
                t.elapsed().as_secs_f64()
            );
        }
        imported = imported.max(n);
        drop(server);
        server = start_server(&a.server_flags(), &model_dir, &state)?;
        let rss_start = rss_kib(server.pid)?;
        let names: Vec<String> = (0..n).map(task_name).collect();
        let cold = cold_latencies(&server.addr, &names, a.cold)?;
        eprintln!(
            "phase: {n} task(s), {} clients, {} popularity, {:.0}s",
            a.clients, a.popularity, a.seconds
        );
        phases.push(load(&server.addr, &names, a, server.pid, cold, rss_start)?);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&state);
    let base_bytes = (base.model.body_parameter_count() * base.dtype.size_in_bytes()) as f64;
    report(a, base_bytes, gen.size, rss0, &phases)
}

/// Prints the phases: one JSON document with `--json`, else a table under a line of what was run.
fn report(
    a: &BenchServeArgs,
    base_bytes: f64,
    graft_size: usize,
    rss0: u64,
    phases: &[Phase],
) -> Result<()> {
    let rps = |p: &Phase| p.requests as f64 / p.seconds;
    let Some(first) = phases.first() else {
        bail!("no phases");
    };
    let per_task_device = |p: &Phase| match (p.resident_bytes, p.resident_tasks) {
        (Some(b), Some(t)) if t > 0.0 => Some(b / t),
        _ => None,
    };
    let per_task_rss = |p: &Phase| {
        (p.tasks > first.tasks).then(|| {
            (p.rss_kib as f64 - first.rss_kib as f64) * 1024.0 / (p.tasks - first.tasks) as f64
        })
    };
    let list: Vec<serde_json::Value> = phases
        .iter()
        .map(|p| {
            serde_json::json!({
                "tasks": p.tasks, "requests_per_s": rps(p), "p50_ms": p.p50_ms, "p99_ms": p.p99_ms,
                "errors": p.errors, "rss_kib": p.rss_kib, "throughput_vs_first": rps(p) / rps(first),
                "resident_task_bytes": p.resident_bytes, "resident_tasks": p.resident_tasks,
                "device_bytes_per_task": per_task_device(p),
                "device_bytes_per_task_fraction_of_base": per_task_device(p).map(|b| b / base_bytes),
                "rss_bytes_per_added_task": per_task_rss(p), "gpu_mib": p.gpu_mib,
                "cold_first_request_ms": p.cold_ms, "cold_p50_ms": median(&p.cold_ms),
                "cold_max_ms": p.cold_ms.iter().copied().fold(f64::NAN, f64::max),
                "rss_after_restart_kib": p.rss_start_kib, "task_cache_bytes": p.cache_bytes,
                "task_cache_entries": p.cache_entries,
            })
        })
        .collect();
    let v = serde_json::json!({
        "clients": a.clients, "texts_per_request": a.texts, "graft_size": graft_size,
        "popularity": a.popularity, "device": a.model.device, "dtype": a.model.dtype,
        "base_weight_bytes": base_bytes, "rss_before_tasks_kib": rss0, "phases": list,
    });
    if a.model.json {
        return print_json(&v);
    }
    println!(
        "skillgraft bench-serve — {} clients, {} text(s) per request, {} popularity, graft {} parameters, \
         base {:.1} MB of weights, device {} ({})",
        a.clients,
        a.texts,
        a.popularity,
        graft_size,
        base_bytes / 1e6,
        a.model.device,
        a.model.dtype
    );
    let mut t = Table::new(&[
        "tasks",
        "requests/s",
        "vs first",
        "p50 ms",
        "p99 ms",
        "cold p50 / max ms",
        "errors",
        "RSS MiB (restart → end)",
        "grafts in memory",
        "device bytes/task",
    ]);
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".into(), f);
    for p in phases {
        let dev = per_task_device(p);
        t.row(vec![
            p.tasks.to_string(),
            format!("{:.1}", rps(p)),
            format!("{:.3}x", rps(p) / rps(first)),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p99_ms),
            format!(
                "{:.1} / {:.1}",
                median(&p.cold_ms),
                p.cold_ms.iter().copied().fold(f64::NAN, f64::max)
            ),
            p.errors.to_string(),
            format!(
                "{:.1} → {:.1}",
                p.rss_start_kib as f64 / 1024.0,
                p.rss_kib as f64 / 1024.0
            ),
            format!(
                "{} ({})",
                opt(p.cache_entries, &|e| format!("{e:.0}")),
                opt(p.cache_bytes, &|b| format!(
                    "{:.1} MiB",
                    b / (1 << 20) as f64
                ))
            ),
            dev.map_or("–".into(), |b| format!("{b:.0}")),
        ]);
    }
    println!("{t}");
    Ok(())
}
