//! The command line's one HTTP/1.1 client, for talking to a `skillgraft serve` on loopback: the serving
//! benches and `healthcheck`.
//!
//! Hand-written on a blocking `TcpStream` on purpose, not a client crate: the benches measure the server, and
//! the client runs on the same cores and is timed too (its CPU is printed beside the server's), so it must
//! cost next to nothing and add no runtime, pool or threads of its own; and it keeps `healthcheck` free of
//! any TLS or async stack. It speaks just what the server answers: a request with a body of known length,
//! and a response with `Content-Length` (or, on a connection the request closes, the bytes up to the end).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP/1.1 connection: kept alive between requests ([`Conn::open`]), as a client library would use (so
/// connection set-up is not what gets measured), or closed after one ([`once`]).
pub(super) struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
    close: bool,
}

impl Conn {
    /// A keep-alive connection to `addr` (host:port), answers awaited up to 120 s.
    pub(super) fn open(addr: &str) -> Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Self::over(s, addr.to_string(), false, Duration::from_secs(120))
    }

    /// A connection that sends `Connection: close` and gives up after `timeout` (connecting, writing,
    /// reading).
    pub(super) fn closing(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        s.set_write_timeout(Some(timeout))?;
        Self::over(s, addr.to_string(), true, timeout)
    }

    fn over(s: TcpStream, host: String, close: bool, timeout: Duration) -> Result<Self> {
        s.set_read_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::new(s),
            host,
            close,
        })
    }

    /// Sends one request and reads its response (status, body). Graft imports (PUT) are raw bytes; every
    /// other body is JSON.
    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let content_type = if method == "PUT" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let connection = if self.close {
            "Connection: close\r\n"
        } else {
            ""
        };
        // One write for the head: a request split over several segments may be answered (and the socket
        // closed) early.
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{connection}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the server closed the connection");
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            lines.push(line);
        }
        let (status, len) = parse_head(&lines)?;
        let mut out = Vec::new();
        match len {
            Some(len) if !self.close => {
                out.resize(len, 0);
                self.reader.read_exact(&mut out)?;
            }
            None if !self.close => {
                bail!("a response without Content-Length (chunked responses are not read here)")
            }
            // A closing connection is read to its end, as the server sends it.
            _ => {
                self.reader.read_to_end(&mut out)?;
            }
        }
        Ok((status, out))
    }
}

/// One request on a fresh connection that closes after it (`Connection: close`), as a client that opens a
/// connection per request would send it; answers awaited up to 120 s.
pub(super) fn once(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let s = TcpStream::connect(addr)?;
    Conn::over(s, addr.to_string(), true, Duration::from_secs(120))?.request(method, path, body)
}

/// Status and Content-Length (when given) of a response head (status line first).
fn parse_head(lines: &[String]) -> Result<(u16, Option<usize>)> {
    let status = lines
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let len = lines.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Ok((status, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_give_status_and_length() {
        let head = |s: &[&str]| s.iter().map(|l| format!("{l}\r\n")).collect::<Vec<_>>();
        let (status, len) = parse_head(&head(&[
            "HTTP/1.1 429 Too Many Requests",
            "content-type: application/json",
            "CONTENT-LENGTH:  57",
        ]))
        .unwrap();
        assert_eq!((status, len), (429, Some(57)));
        let (status, len) =
            parse_head(&head(&["HTTP/1.1 200 OK", "transfer-encoding: chunked"])).unwrap();
        assert_eq!((status, len), (200, None));
        assert!(parse_head(&[]).is_err());
    }
}
