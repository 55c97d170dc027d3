//! The tests' one HTTP/1.1 client (the service tests; the S3 server's set-up) and a server process handle
//! (loopback only).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A response.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
        rest = &rest[pos + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
    out
}

/// Sends one request (Connection: close) and reads the whole response; panics when there is none.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`request`] that says why there is no response (no connection, no response head) instead of panicking,
/// waiting up to `timeout` for the answer.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Resp> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout)).ok();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let body = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    Ok(Resp {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
        headers,
    })
}

/// A running `skillgraft serve` process.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Authorization header value used by [`Server::call`].
    pub auth: Option<String>,
}

impl Server {
    /// Starts the server on a free loopback port and waits until it listens.
    pub fn start(model: &Path, state: &Path, extra: &[&str]) -> Server {
        Self::start_env(model, state, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_env(
        model: &Path,
        state: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(model)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .env("SKILLGRAFT_DATA_DIR", super::data_dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start server");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut addr = None;
        let mut log = String::new();
        while Instant::now() < deadline {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            log.push_str(&line);
            if let Some(a) = line.trim().strip_prefix("skillgraft listening on http://") {
                addr = Some(a.to_string());
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("server did not start:\n{log}");
        };
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = reader.read_to_string(&mut sink);
        });
        Server {
            child,
            addr,
            auth: None,
        }
    }

    /// A request with this server's credentials.
    pub fn call(&self, method: &str, path: &str, body: &[u8], content_type: &str) -> Resp {
        let mut h: Vec<(&str, &str)> = vec![("Content-Type", content_type)];
        let auth;
        if let Some(a) = &self.auth {
            auth = format!("Bearer {a}");
            h.push(("Authorization", &auth));
        }
        request(&self.addr, method, path, &h, body)
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, b"", "application/json")
    }

    /// JSON request.
    pub fn json(&self, method: &str, path: &str, v: &serde_json::Value) -> Resp {
        self.call(method, path, v.to_string().as_bytes(), "application/json")
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL (a crash), then wait.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
