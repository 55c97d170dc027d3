//! Prometheus text metrics: requests by route and status, latency histograms per route (and per task, only
//! when `metrics_per_task` is set: those series name every task), engine queue depth, batches, tokens, graft
//! apply time, and jobs. Who may read them is `metrics_access`.

use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.total);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.total);
    }
}

/// HTTP-level counters.
#[derive(Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    task_latency: Mutex<BTreeMap<String, Histogram>>,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl HttpMetrics {
    /// Records one request.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            m.entry(route.to_string()).or_default().observe(seconds);
        }
    }

    /// Records one prediction request of a task (its latency); kept only with per-task series enabled.
    pub fn record_task(&self, enabled: bool, task: &str, seconds: f64) {
        if !enabled {
            return;
        }
        if let Ok(mut m) = self.task_latency.lock() {
            m.entry(task.to_string()).or_default().observe(seconds);
        }
    }

    /// Renders everything in Prometheus text format.
    pub fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP skillgraft_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE skillgraft_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "skillgraft_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP skillgraft_http_request_seconds Request latency by route.\n");
        out.push_str("# TYPE skillgraft_http_request_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                h.render(
                    &mut out,
                    "skillgraft_http_request_seconds",
                    &format!("route=\"{}\"", escape(route)),
                );
            }
        }
        if let (true, Ok(m)) = (state.config.metrics_per_task, self.task_latency.lock()) {
            out.push_str("# HELP skillgraft_task_predict_seconds Prediction latency by task.\n");
            out.push_str("# TYPE skillgraft_task_predict_seconds histogram\n");
            for (task, h) in m.iter() {
                h.render(
                    &mut out,
                    "skillgraft_task_predict_seconds",
                    &format!("task=\"{}\"", escape(task)),
                );
            }
        }
        let s = state.engine.stats();
        let cache = state.registry.stats();
        let gauges = [
            (
                "skillgraft_queue_depth",
                "gauge",
                "Requests waiting for the engine.",
                s.queue_depth.load(Ordering::Relaxed) as u64,
            ),
            (
                "skillgraft_batches_total",
                "counter",
                "Batches the engine ran.",
                s.batches.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_engine_requests_total",
                "counter",
                "Requests the engine served.",
                s.requests.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_rows_total",
                "counter",
                "Texts the engine scored.",
                s.rows.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_tokens_total",
                "counter",
                "Real tokens the engine processed.",
                s.tokens.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_padded_tokens_total",
                "counter",
                "Tokens the engine computed, padding included.",
                s.padded_tokens.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_passes_total",
                "counter",
                "Forward passes the engine ran (a batch is cut by length into one or more).",
                s.passes.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_cancelled_requests_total",
                "counter",
                "Requests dropped because their client went away.",
                s.cancelled.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_resident_task_bytes",
                "gauge",
                "Bytes of per-task engine state (sparse deltas on the model's device, heads).",
                s.resident_bytes.load(Ordering::Relaxed) as u64,
            ),
            (
                "skillgraft_resident_tasks",
                "gauge",
                "Tasks with engine state built.",
                s.resident_tasks.load(Ordering::Relaxed) as u64,
            ),
            (
                "skillgraft_graft_applies_total",
                "counter",
                "In-place graft apply+revert pairs (grafts that touch the embeddings).",
                s.graft_applies.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_tasks",
                "gauge",
                "Tasks in memory (loaded from the store on first use).",
                cache.entries as u64,
            ),
            (
                "skillgraft_task_cache_entries",
                "gauge",
                "Grafts held in memory.",
                cache.entries as u64,
            ),
            (
                "skillgraft_task_cache_bytes",
                "gauge",
                "Bytes of grafts held in memory (bounded by SKILLGRAFT_TASK_CACHE_BYTES).",
                cache.bytes as u64,
            ),
            (
                "skillgraft_task_cache_hits_total",
                "counter",
                "Task lookups answered from memory.",
                cache.hits,
            ),
            (
                "skillgraft_task_cache_misses_total",
                "counter",
                "Task lookups that read the store.",
                cache.misses,
            ),
            (
                "skillgraft_task_cache_evictions_total",
                "counter",
                "Grafts dropped from memory to stay within the budget.",
                cache.evictions,
            ),
            (
                "skillgraft_task_cache_invalidations_total",
                "counter",
                "Grafts dropped from memory because the task changed.",
                cache.invalidations,
            ),
            (
                "skillgraft_journal_seq",
                "gauge",
                "The last change record this replica applied.",
                state.sync.seq.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_sync_errors_total",
                "counter",
                "Journal polls or heartbeats that failed (store unreachable).",
                state.sync.errors.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_replicas_alive",
                "gauge",
                "Replicas with a live heartbeat, this one included.",
                state.store.replicas().alive().len() as u64,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let secs = [
            (
                "skillgraft_graft_apply_seconds_total",
                "Time spent applying and reverting grafts.",
                s.graft_nanos.load(Ordering::Relaxed),
            ),
            (
                "skillgraft_compute_seconds_total",
                "Time spent in model compute.",
                s.compute_nanos.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, nanos) in secs {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                nanos as f64 / 1e9
            );
        }
        out.push_str(
            "# HELP skillgraft_jobs Localization jobs by state.\n# TYPE skillgraft_jobs gauge\n",
        );
        for (st, n) in state.jobs.counts() {
            let _ = writeln!(out, "skillgraft_jobs{{state=\"{st}\"}} {n}");
        }
        out
    }
}

/// Middleware: counts every request by method, matched route and status, with its latency.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    state
        .metrics
        .record(method.as_str(), &route, resp.status().as_u16(), secs);
    tracing::debug!(%method, route = %route, status = resp.status().as_u16(), seconds = secs, "request");
    resp
}
