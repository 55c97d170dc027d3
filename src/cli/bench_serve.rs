//! `skillgraft bench-serve`: starts `skillgraft serve` as a second process and drives it over HTTP from
//! this one: requests/s and p50/p99 latency with 1 task vs 100 tasks (each request for a random task), and
//! the server's resident memory with 1 vs 100 tasks.

use super::table::Table;
use super::{print_json, ModelArgs};
use crate::graft::localize::top_k;
use crate::graft::{entries_from_mask, FlatRegion, Graft};
use crate::model::{HeadKind, Pooling};
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `skillgraft bench-serve`.
#[derive(Args, Debug)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Tasks in the many-task phase.
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    texts: usize,
    /// Graft sparsity of the synthetic tasks.
    #[arg(long, default_value_t = 1e-4)]
    sparsity: f64,
}

fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    // Graft imports (PUT) are raw bytes; every other body is JSON.
    let content_type = if method == "PUT" {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let status = String::from_utf8_lossy(raw.get(9..12).unwrap_or(b"000"))
        .parse()
        .unwrap_or(0);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    Ok((status, raw[split..].to_vec()))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

struct Phase {
    requests: usize,
    errors: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_kib: u64,
}

fn load(addr: &str, names: &[String], a: &BenchServeArgs, pid: u32) -> Result<Phase> {
    let sentences = [
        "a gorgeous , witty , seductive movie .",
        "the plot is dull and the acting is worse .",
        "an endearing , if uneven , comedy about growing up .",
        "it never quite finds its footing .",
    ];
    let stop = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let addr = addr.to_string();
            let names = names.to_vec();
            let texts = a.texts;
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64);
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < stop {
                    let task = &names[rng.random_range(0..names.len())];
                    let inputs: Vec<&str> = (0..texts)
                        .map(|_| sentences[rng.random_range(0..sentences.len())])
                        .collect();
                    let body = serde_json::json!({ "inputs": inputs }).to_string();
                    let t = Instant::now();
                    match http(
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
        requests: lat.len(),
        errors,
        seconds,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        rss_kib: rss_kib(pid)?,
    })
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the serving benchmark.
pub fn run(a: BenchServeArgs) -> Result<()> {
    let base = a.model.load()?;
    let state = std::env::temp_dir().join(format!("skillgraft-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&base.model.files.dir)
        .arg("--state-dir")
        .arg(&state)
        .args(["--queue", "4096"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    if let Some(t) = a.model.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().context("server stderr")?;
    let child = Guard(child);
    let pid = child.0.id();
    let mut reader = BufReader::new(stderr);
    let mut addr = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(x) = line.trim().strip_prefix("skillgraft listening on http://") {
            addr = Some(x.to_string());
            break;
        }
    }
    let Some(addr) = addr else {
        bail!("the server did not start")
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });

    // Synthetic tasks: each a distinct random graft of the given sparsity with the SST-2 prototype head.
    let task = crate::data::builtin_task("sst2").context("sst2")?;
    let spec = base.head_spec(HeadKind::Prototype, &task, 0.05, Pooling::Mean)?;
    let head = base.init_head(&spec, 0)?;
    let region = FlatRegion::new(&Default::default(), &base.model.weights.tensors)?;
    let pre = region.gather(&base.model.weights.tensors)?;
    let k = crate::graft::localize::budget(a.sparsity, region.len());
    let make = |i: usize| -> Result<Vec<u8>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let scores: Vec<f32> = (0..region.len()).map(|_| rng.random::<f32>()).collect();
        let mask = top_k(&scores, k);
        let mut values = pre.clone();
        for &m in &mask {
            values[m as usize] += rng.random_range(-0.01..0.01);
        }
        let graft = Graft {
            manifest: serde_json::from_value(serde_json::json!({
                "format": 1, "base": {"name": base.name, "content_hash": base.model.weights.content_hash,
                    "architecture": "bert", "parameters": base.model.body_parameter_count()},
                "region": {}, "region_size": region.len(), "size": k, "method": "bench",
                "hyper_parameters": null, "head": spec, "task": task, "metrics": null, "created_unix": 0}))?,
            entries: entries_from_mask(&region, &mask, &values),
            head: Graft::head_from_tensors(&["prototype.weight".to_string()], &head)?,
        };
        graft.to_bytes()
    };
    let put = |i: usize| -> Result<String> {
        let name = format!("task{i:03}");
        let (status, body) = http(&addr, "PUT", &format!("/v1/tasks/{name}/graft"), &make(i)?)?;
        if status != 200 {
            bail!(
                "import failed ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(name)
    };
    let rss0 = rss_kib(pid)?;
    let mut names = vec![put(0)?];
    eprintln!("phase 1: 1 task, {} clients, {:.0}s", a.clients, a.seconds);
    let one = load(&addr, &names, &a, pid)?;
    for i in 1..a.tasks {
        names.push(put(i)?);
    }
    eprintln!(
        "phase 2: {} tasks, {} clients, {:.0}s",
        names.len(),
        a.clients,
        a.seconds
    );
    let many = load(&addr, &names, &a, pid)?;
    let base_bytes = (base.model.body_parameter_count() * 4) as f64;
    let rps1 = one.requests as f64 / one.seconds;
    let rps2 = many.requests as f64 / many.seconds;
    let per_task =
        (many.rss_kib as f64 - one.rss_kib as f64) * 1024.0 / (names.len() - 1).max(1) as f64;
    let v = serde_json::json!({
        "clients": a.clients, "texts_per_request": a.texts, "graft_size": k, "tasks": names.len(),
        "one_task": {"requests_per_s": rps1, "p50_ms": one.p50_ms, "p99_ms": one.p99_ms, "errors": one.errors, "rss_kib": one.rss_kib},
        "many_tasks": {"requests_per_s": rps2, "p50_ms": many.p50_ms, "p99_ms": many.p99_ms, "errors": many.errors, "rss_kib": many.rss_kib},
        "throughput_ratio": rps2 / rps1,
        "rss_before_tasks_kib": rss0,
        "memory_per_task_bytes": per_task,
        "memory_per_task_fraction_of_base": per_task / base_bytes,
    });
    let _ = std::fs::remove_dir_all(&state);
    if a.model.json {
        return print_json(&v);
    }
    println!(
        "skillgraft bench-serve — {} clients, {} text(s) per request, graft {} parameters, base {} MB of weights",
        a.clients,
        a.texts,
        k,
        base_bytes / 1e6
    );
    let mut t = Table::new(&[
        "tasks",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server RSS MiB",
    ]);
    for (n, p) in [(1, &one), (names.len(), &many)] {
        t.row(vec![
            n.to_string(),
            format!("{:.1}", p.requests as f64 / p.seconds),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p99_ms),
            p.errors.to_string(),
            format!("{:.1}", p.rss_kib as f64 / 1024.0),
        ]);
    }
    println!("{t}");
    println!(
        "throughput {} tasks / 1 task: {:.3}x; memory per added task: {:.0} bytes = {:.5}% of the base model's weights",
        names.len(),
        rps2 / rps1,
        per_task,
        100.0 * per_task / base_bytes
    );
    Ok(())
}
