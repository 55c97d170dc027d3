//! Checks of the container and deployment files that need no Docker engine: every file the Dockerfiles copy
//! from the build context exists and is not excluded by `.dockerignore`, every `SKILLGRAFT_*` variable they
//! or the deployment files set is one the binary reads, and the probes name real routes.

use std::path::Path;

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
    assert!(read("docker/Dockerfile.cuda").contains("--features cuda"));
}

#[test]
fn deployment_files_use_variables_and_routes_the_binary_knows() {
    let src = sources();
    for file in [
        "docker/Dockerfile",
        "docker/Dockerfile.cuda",
        "deploy/kubernetes.yaml",
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
