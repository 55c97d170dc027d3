//! The documentation against the code: the configuration tables of `docs/configuration.md` against
//! `skillgraft serve --help` (every flag, environment variable and default), every relative link and anchor in
//! the README and `docs/`, every repository path they name in backticks, and the README as a landing page with
//! the newcomer's two commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The README and every Markdown page of `docs/`, as paths relative to the root.
fn pages() -> Vec<String> {
    let mut out = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// An option as documented: its environment variable and default (`None` for none).
type Documented = (Option<String>, Option<String>);

/// The text inside the first `[tag: …]` of `help`, if any.
fn bracket(help: &str, tag: &str) -> Option<String> {
    let start = help.find(&format!("[{tag}: "))? + tag.len() + 3;
    let end = start + help[start..].find(']')?;
    Some(help[start..end].to_string())
}

/// `skillgraft serve --help`, run with no `SKILLGRAFT_*` variable set: flag → (variable, default).
fn serve_help() -> BTreeMap<String, Documented> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skillgraft"));
    cmd.args(["serve", "--help"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SKILLGRAFT_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run skillgraft serve --help");
    assert!(out.status.success(), "serve --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let flag = t.strip_prefix("-h, ").unwrap_or(t);
        if line.starts_with("  ") && flag.starts_with("--") {
            let name = flag.split_whitespace().next().unwrap().to_string();
            entries.push((name, String::new()));
        } else if let Some((_, help)) = entries.last_mut() {
            help.push(' ');
            help.push_str(t);
        }
    }
    entries
        .into_iter()
        .filter(|(name, _)| name != "--help")
        .map(|(name, help)| {
            let env = bracket(&help, "env").map(|e| e.trim_end_matches('=').to_string());
            (name, (env, bracket(&help, "default")))
        })
        .collect()
}

/// The first `code span` of a table cell, or `None` for a dash.
fn code(cell: &str) -> Option<String> {
    let cell = cell.trim();
    if cell == "–" {
        return None;
    }
    let start = cell
        .find('`')
        .unwrap_or_else(|| panic!("no code span in `{cell}`"))
        + 1;
    let end = start + cell[start..].find('`').unwrap();
    Some(cell[start..end].to_string())
}

/// The rows of `docs/configuration.md` whose first cell is a flag: flag → (variable, default).
fn documented_options() -> BTreeMap<String, Documented> {
    let mut out = BTreeMap::new();
    for line in read("docs/configuration.md").lines() {
        let cells: Vec<&str> = line.split('|').collect();
        if cells.len() < 5 || !cells[1].trim().starts_with("`--") {
            continue;
        }
        let flag = code(cells[1]).unwrap();
        let row = (code(cells[2]), code(cells[3]));
        assert!(
            out.insert(flag.clone(), row).is_none(),
            "{flag} is documented twice"
        );
    }
    out
}

#[test]
fn the_configuration_tables_are_serve_help() {
    let help = serve_help();
    let docs = documented_options();
    assert!(
        help.len() > 30,
        "parsed only {} options of serve --help",
        help.len()
    );
    for (flag, row) in &help {
        assert_eq!(
            docs.get(flag),
            Some(row),
            "docs/configuration.md on {flag} (variable, default) against serve --help"
        );
    }
    for flag in docs.keys() {
        assert!(
            help.contains_key(flag),
            "docs/configuration.md documents {flag}, which serve does not have"
        );
    }
}

/// GitHub's anchor of a heading: lower case, letters, digits, spaces, `-` and `_` kept, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#').trim()))
        .collect()
}

/// `path` relative to the folder of `page`, with `..` resolved.
fn beside(page: &str, path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in Path::new(page).parent().unwrap().join(path).components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            p => out.push(p),
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    for page in pages() {
        let text = read(&page);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let link = &rest[..rest.find(')').unwrap()];
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                PathBuf::from(&page)
            } else {
                beside(&page, path)
            };
            assert!(
                root().join(&target).exists(),
                "{page}: link to {link}: no {}",
                target.display()
            );
            if !anchor.is_empty() {
                let heads = anchors(&std::fs::read_to_string(root().join(&target)).unwrap());
                assert!(
                    heads.iter().any(|h| h == anchor),
                    "{page}: link to {link}: no such heading"
                );
            }
        }
    }
}

#[test]
fn every_repository_path_the_pages_name_exists() {
    const TOPS: [&str; 10] = [
        "scripts/", "tests/", "docs/", "src/", "deploy/", "docker/", "benches/", "schemas/",
        "openapi/", "fuzz/",
    ];
    for page in pages() {
        let text = read(&page);
        for span in text.split('`').skip(1).step_by(2) {
            let path = span.split_whitespace().next().unwrap_or("");
            if !TOPS.iter().any(|t| path.starts_with(t)) || path.contains(['{', '*', '…', '<']) {
                continue;
            }
            assert!(
                root().join(path).exists(),
                "{page} names `{path}`, which does not exist"
            );
        }
    }
}

#[test]
fn the_readme_is_a_landing_page_with_the_two_commands() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines: the manual belongs in docs/"
    );
    for command in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(
            readme.lines().any(|l| l.starts_with(command)),
            "README.md gives `{command}` as a command"
        );
        assert!(root().join(command).exists(), "{command} exists");
    }
}
