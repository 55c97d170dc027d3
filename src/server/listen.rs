//! The connection loop (hyper's HTTP/1 server through hyper-util), because `axum::serve` has no
//! header-read timeout: a client gets [`ServerConfig::header_timeout`](super::ServerConfig) to send a
//! request's headers (also between requests on a kept-alive connection), at most
//! `max_connections` connections are open at once (more wait in the kernel's backlog), and after SIGTERM or
//! SIGINT the server stops accepting, lets in-flight requests finish for `shutdown_grace`, and then returns
//! whatever is still running.

use super::AppState;
use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Serves `app` on the configured address until a shutdown signal, then drains within the deadline.
pub async fn serve(state: Arc<AppState>, app: axum::Router) -> Result<()> {
    let cfg = &state.config;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
    let local = listener.local_addr()?;
    tracing::info!("skillgraft listening on http://{local}");
    eprintln!("skillgraft listening on http://{local}");
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = &mut signal => break,
        };
        let (stream, _) = tokio::select! {
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let grace = cfg.shutdown_grace;
    eprintln!(
        "shutting down: finishing {} open connection(s), at most {:.0} s",
        graceful.count(),
        grace.as_secs_f64()
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("shutdown deadline reached; closing the remaining connections");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
