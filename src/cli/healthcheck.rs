//! `skillgraft healthcheck`: asks a running server on this machine whether it is alive (`/health`, or `/ready`
//! with `--ready`), at the address `serve` listens on (`--addr` / `SKILLGRAFT_ADDR`; an unspecified address
//! such as `0.0.0.0` is reached over loopback). Exits 0 when it answers 200, 1 otherwise — what a container's
//! HEALTHCHECK needs, without curl in the image.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
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
    let mut s = TcpStream::connect_timeout(&to, timeout)
        .with_context(|| format!("cannot connect to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a request split over several segments may be answered (and the socket closed) early.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .with_context(|| format!("no answer from {to}"))?;
    let status = String::from_utf8_lossy(&head[9..12]).to_string();
    if status != "200" {
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
