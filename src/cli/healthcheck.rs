//! `skillgraft healthcheck`: asks a running server on this machine whether it is alive (`/health`, or `/ready`
//! with `--ready`), at the address `serve` listens on (`--addr` / `SKILLGRAFT_ADDR`; an unspecified address
//! such as `0.0.0.0` is reached over loopback). Exits 0 when it answers 200, 1 otherwise — what a container's
//! HEALTHCHECK needs, without curl in the image (over the command line's own client, `cli/http.rs`).

use super::http::Conn;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Options of `skillgraft healthcheck`.
#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// The server's listen address (the same variable `serve` reads).
    #[arg(long, env = "SKILLGRAFT_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Ask `/ready` (model loaded, store usable) instead of `/health`.
    #[arg(long)]
    ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

/// Where to connect for a server listening on `addr`.
pub fn target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Runs the check; an error (exit 1) unless the server answers 200.
pub fn run(a: HealthcheckArgs) -> Result<()> {
    let to = target(a.addr);
    let path = if a.ready { "/ready" } else { "/health" };
    let timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    let (status, _) = Conn::closing(to, timeout)?
        .request("GET", path, b"")
        .with_context(|| format!("no answer from {to}"))?;
    if status != 200 {
        bail!("{to}{path} answered {status}");
    }
    println!("{to}{path}: 200");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_over_loopback() {
        assert_eq!(
            target("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            target("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            target("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }
}
