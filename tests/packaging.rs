//! Checks of the container and deployment files that need no Docker engine: every file the Dockerfiles copy
//! from the build context exists and is not excluded by `.dockerignore`, every `SKILLGRAFT_*` variable they
//! or the deployment files set is one the binary reads, and the probes name real routes; the container health
//! check follows the configured address; the Kubernetes manifests validate strictly against the API schemas
//! (kubernetes-validate) and say what a fleet needs; the systemd unit rates ≤ 3 in `systemd-analyze security`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `SKILLGRAFT_*` names in a text.
fn variables(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("SKILLGRAFT_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn sources() -> String {
    let mut all = String::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                all.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    all
}

#[test]
fn dockerfiles_copy_only_what_the_context_has() {
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for file in ["docker/Dockerfile", "docker/Dockerfile.cuda"] {
        let text = read(file);
        let mut copies = 0;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() != Some(&"COPY") || words.iter().any(|w| w.starts_with("--from")) {
                continue;
            }
            for src in &words[1..words.len() - 1] {
                copies += 1;
                assert!(
                    root().join(src).exists(),
                    "{file}: COPY {src}: no such path"
                );
                let top = src.split('/').next().unwrap_or(src);
                assert!(
                    !ignored.contains(&top),
                    "{file}: COPY {src} but .dockerignore excludes {top}"
                );
            }
        }
        assert!(
            copies >= 4,
            "{file}: expected the sources, lock file and scripts"
        );
        assert!(
            text.contains("--bin skillgraft"),
            "{file} builds the binary"
        );
    }
    // The CUDA image builds through scripts/build-cuda.sh, which turns the feature on.
    assert!(read("docker/Dockerfile.cuda").contains("scripts/build-cuda.sh build"));
    assert!(read("scripts/build-cuda.sh").contains("--features cuda"));
}

#[test]
fn deployment_files_use_variables_and_routes_the_binary_knows() {
    let src = sources();
    for file in [
        "docker/Dockerfile",
        "docker/Dockerfile.cuda",
        "deploy/kubernetes/skillgraft.yaml",
        "deploy/skillgraft.service",
    ] {
        let text = read(file);
        for v in variables(&text) {
            assert!(
                src.contains(&format!("\"{v}\"")),
                "{file} sets {v}, which the binary does not read"
            );
        }
        for route in ["/health", "/ready"] {
            if text.contains(route) {
                assert!(
                    src.contains(&format!(".route(\"{route}\"")),
                    "{file} probes {route}, which the server does not serve"
                );
            }
        }
    }
}

#[test]
fn both_images_check_health_at_the_configured_address_as_a_numeric_non_root_user() {
    for file in ["docker/Dockerfile", "docker/Dockerfile.cuda"] {
        let text = read(file);
        let hc = text
            .lines()
            .find(|l| l.starts_with("HEALTHCHECK"))
            .unwrap_or_else(|| panic!("{file} has no HEALTHCHECK"));
        assert!(
            hc.contains("[\"skillgraft\", \"healthcheck\"]"),
            "{file}: the health check must ask the binary (which reads SKILLGRAFT_ADDR): {hc}"
        );
        assert!(!hc.contains(":8080"), "{file}: port hard-wired in {hc}");
        let user = text
            .lines()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{file} sets no USER"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("{file}: USER {user} is not numeric (Kubernetes cannot verify runAsNonRoot)")
            });
        assert_ne!(uid, 0, "{file} runs as root");
        assert!(
            text.contains("SKILLGRAFT_DATA_DIR=/data"),
            "{file}: data directory not set"
        );
    }
}

/// A one-request HTTP server answering `status`; returns its port.
fn answer_once(status: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            // The whole request, then the answer.
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn the_healthcheck_command_follows_skillgraft_addr() {
    let bin = env!("CARGO_BIN_EXE_skillgraft");
    let run = |addr: String| {
        Command::new(bin)
            .arg("healthcheck")
            .env("SKILLGRAFT_ADDR", addr)
            .output()
            .unwrap()
            .status
            .success()
    };
    let ok = answer_once("200 OK");
    assert!(
        run(format!("0.0.0.0:{ok}")),
        "a 200 on the configured port is healthy"
    );
    let bad = answer_once("503 Service Unavailable");
    assert!(!run(format!("0.0.0.0:{bad}")), "a 503 is unhealthy");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(
        !run(format!("127.0.0.1:{closed}")),
        "nothing listening is unhealthy"
    );
}

/// The documents of a YAML file, as JSON (PyYAML from the fleet-tools venv).
fn yaml_documents(venv: &Path, rel: &str) -> Vec<serde_json::Value> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(root().join(rel))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_validate_strictly_and_describe_a_hardened_fleet() {
    let venv = common::s3::fleet_venv();
    for version in ["1.29", "1.37"] {
        let out = Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(root().join("deploy/kubernetes/skillgraft.yaml"))
            .arg(root().join("deploy/kubernetes/secrets.example.yaml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let docs = yaml_documents(&venv, "deploy/kubernetes/skillgraft.yaml");
    let kind =
        |k: &str| -> Vec<&serde_json::Value> { docs.iter().filter(|d| d["kind"] == k).collect() };
    assert!(
        kind("Secret").is_empty(),
        "the manifests must not define (and so reset) the Secrets"
    );
    let deployment = kind("Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
        "a fleet has replicas"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    let image = c["image"].as_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        image.contains('/')
            && (image.ends_with(&format!(":{version}")) || image.contains("@sha256:")),
        "image `{image}` is not pinned (registry + version tag or digest)"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for r in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                c["resources"][r][what].is_string(),
                "resources.{r}.{what} missing"
            );
        }
    }
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
    }
    let env = c["env"].as_array().unwrap();
    let var = |n: &str| env.iter().find(|e| e["name"] == n);
    let store = var("SKILLGRAFT_STORE").expect("SKILLGRAFT_STORE set");
    assert!(
        store["value"].as_str().unwrap().starts_with("s3://"),
        "replicas share object storage"
    );
    let examples = yaml_documents(&venv, "deploy/kubernetes/secrets.example.yaml");
    for e in env
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
    {
        let r = &e["valueFrom"]["secretKeyRef"];
        assert!(
            examples.iter().any(|s| s["metadata"]["name"] == r["name"]
                && s["stringData"][r["key"].as_str().unwrap()].is_string()),
            "{} refers to a Secret key the example does not show: {r}",
            e["name"]
        );
    }
    // The read-only root needs writable mounts where the server writes: its state directory and /tmp.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let state = var("SKILLGRAFT_STATE_DIR").unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(
        mounts.iter().any(|m| state.starts_with(m)),
        "{state} is not on a writable volume"
    );
    assert!(mounts.contains(&"/tmp"));
    let selects_pods = |sel: &serde_json::Value| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects_pods(&kind("Service")[0]["spec"]["selector"]));
    assert!(selects_pods(
        &kind("PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"]
    ));
    let hpa = kind("HorizontalPodAutoscaler")[0];
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
}

#[test]
fn the_systemd_unit_rates_at_most_3_in_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
        .arg(root().join("deploy/skillgraft.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed for this test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for skillgraft.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(score <= 3.0, "exposure {score} > 3:\n{text}");
    assert!(
        out.status.success(),
        "systemd-analyze --threshold=30 failed:\n{text}"
    );
}
