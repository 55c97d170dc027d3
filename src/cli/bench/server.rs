//! The server under test of the serving benches: a `skillgraft serve` started as a second process (same
//! device, dtype and threads as the bench) on a free port, synthetic tasks imported into it, and values
//! read from its `/metrics`.

use crate::cli::args::ModelArgs;
use crate::cli::http;
use crate::graft::synthetic::SyntheticTasks;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// How the bench starts the server besides its model: the flags of `serve` it passes on.
pub(super) struct ServerFlags<'a> {
    /// Device, dtype and threads.
    pub(super) model: &'a ModelArgs,
    /// The server's `--task-cache-bytes` (None: its default).
    pub(super) task_cache_bytes: Option<usize>,
    /// The server's `--store` (None: the state directory).
    pub(super) store: Option<&'a str>,
}

/// Kills the process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server process started by the bench (stopped when dropped).
pub(super) struct Server {
    _child: Guard,
    /// `127.0.0.1:port`.
    pub(super) addr: String,
    /// The process id.
    pub(super) pid: u32,
}

/// Starts `skillgraft serve` with the bench's device, dtype, threads and store on a free port.
pub(super) fn start_server(flags: &ServerFlags, model_dir: &Path, state: &Path) -> Result<Server> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(model_dir)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--queue",
            "4096",
            "--device",
            &flags.model.device,
            "--dtype",
            &flags.model.dtype,
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    if let Some(t) = flags.model.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(b) = flags.task_cache_bytes {
        cmd.args(["--task-cache-bytes", &b.to_string()]);
    }
    if let Some(st) = flags.store {
        cmd.args(["--store", st]);
    }
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().context("server stderr")?;
    let child = Guard(child);
    let pid = child.0.id();
    let mut reader = BufReader::new(stderr);
    let mut addr = None;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(x) = line.trim().strip_prefix("skillgraft listening on http://") {
            addr = Some(x.to_string());
            break;
        }
        seen.push(line);
    }
    let Some(addr) = addr else {
        bail!("the server did not start: {}", seen.concat())
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });
    Ok(Server {
        _child: child,
        addr,
        pid,
    })
}

/// The name of synthetic task `i` on the server.
pub(super) fn task_name(i: usize) -> String {
    format!("task{i:05}")
}

/// Imports synthetic tasks `from..to` over `clients` connections.
pub(super) fn import(
    addr: &str,
    gen: &SyntheticTasks,
    from: usize,
    to: usize,
    clients: usize,
) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(from);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..clients.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= to {
                            return Ok(());
                        }
                        let bytes = gen.graft(i)?.to_bytes()?;
                        let path = format!("/v1/tasks/{}/graft", task_name(i));
                        let (status, body) = http::once(addr, "PUT", &path, &bytes)?;
                        if status != 200 {
                            bail!(
                                "import failed ({status}): {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("import thread panicked"))??;
        }
        Ok(())
    })
}

/// One value of the server's Prometheus text, by metric name.
pub(super) fn metric(addr: &str, name: &str) -> Option<f64> {
    let (status, body) = http::once(addr, "GET", "/metrics", b"").ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}
