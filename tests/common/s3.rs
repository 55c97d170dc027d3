//! A real S3 server for the tests: moto's server mode (PyPI `moto[server]`, installed once into a cached venv by
//! tests/fleet/tools.sh), started on a free loopback port and stopped when dropped. Not a mock of our own:
//! the same HTTP API, signatures, ETags and conditional writes (`If-None-Match`, `If-Match`) as S3.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The venv with the fleet tools (moto, kubernetes-validate); installing it is part of the test.
pub fn fleet_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("tests/fleet/tools.sh"))
        .output()
        .expect("run tests/fleet/tools.sh");
    assert!(
        out.status.success(),
        "installing the fleet tools failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("venv="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("tests/fleet/tools.sh printed no venv: {text}"))
}

/// A running moto S3 server with one bucket.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl S3Server {
    /// Starts moto on a free loopback port and creates `bucket`.
    pub fn start(bucket: &str) -> Self {
        let venv = fleet_venv();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("sg-moto-{}-{port}.log", std::process::id()));
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log"))
            .spawn()
            .expect("start moto_server");
        let addr = format!("127.0.0.1:{port}");
        let server = Self {
            child,
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_string(),
        };
        let start = Instant::now();
        loop {
            // A bare request: moto accepts unsigned bucket creation.
            let created = super::http::try_request(
                &addr,
                "PUT",
                &format!("/{bucket}"),
                &[],
                b"",
                Duration::from_secs(10),
            );
            match created.map(|r| r.status) {
                Ok(200) => break,
                Ok(code) => panic!("moto refused to create bucket {bucket}: {code}"),
                Err(_) if start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!(
                    "moto did not start on {addr}: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        server
    }

    /// The AWS variables that point a client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
