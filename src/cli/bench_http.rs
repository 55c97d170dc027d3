//! What the serving benches need besides the server: a keep-alive HTTP/1.1 client (as a client library
//! would use, so connection set-up is not what gets measured) and CPU clocks of this process and of another.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A persistent HTTP/1.1 connection (keep-alive), as a client library would use.
pub(super) struct Conn {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    pub(super) fn open(addr: &str) -> Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            reader: BufReader::new(s),
            addr: addr.to_string(),
        })
    }

    /// Sends one request and reads its response (status, body).
    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
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
        let mut out = vec![0u8; len];
        self.reader.read_exact(&mut out)?;
        Ok((status, out))
    }
}

/// Status and Content-Length of a response head (status line first).
fn parse_head(lines: &[String]) -> Result<(u16, usize)> {
    let status = lines
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("a response without Content-Length (chunked responses are not read here)")?;
    Ok((status, len))
}

/// CPU seconds (user + system) this process has used.
pub(super) fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used.
pub(super) fn cpu_seconds_of(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = s.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
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
        assert_eq!((status, len), (429, 57));
        assert!(parse_head(&head(&["HTTP/1.1 200 OK", "transfer-encoding: chunked"])).is_err());
        assert!(parse_head(&[]).is_err());
    }
}
