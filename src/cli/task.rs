//! `skillgraft task`: write a starting task spec by looking at a data file, check a spec against its data,
//! print the spec's JSON Schema.

use super::args::{ModelArgs, SplitArgs};
use super::output::print_json;
use super::table::Table;
use crate::data::inspect::{inspect_file, starting_spec, InspectOptions, SpecHead};
use crate::data::{self, FileFormat, HeadNeeds, SplitRule, TaskSpec};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Component, Path, PathBuf};

/// Task-spec commands.
#[derive(Subcommand, Debug)]
pub(super) enum TaskCommand {
    /// Look at a data file (format, columns, label values) and write a starting task spec for it.
    Init(InitArgs),
    /// Check a task spec: fields, data files, labels, and the split it gives.
    Check(CheckArgs),
    /// Print the JSON Schema of task specs.
    Schema,
}

/// Which head a starting spec is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum InitHead {
    /// Label descriptions for the prototype head (the default head).
    Prototype,
    /// A template and label words for a prompt head.
    Prompt,
    /// Labels only (bert-classifier, roberta-classifier, linear).
    Classifier,
}

#[derive(Args, Debug)]
pub(super) struct InitArgs {
    /// The data file: CSV or TSV with a header row, JSON lines, or `LABEL SENTENCE` lines.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the spec (default: print it); its `source` path is written relative to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Task name (default: the data file's name without extension).
    #[arg(long)]
    name: Option<String>,
    /// Which head the spec is for (which fields it gets).
    #[arg(long, value_enum, default_value = "prototype")]
    head: InitHead,
    /// The file's format, when its name does not say: csv, tsv, jsonl, label_sentence.
    #[arg(long)]
    format: Option<String>,
    /// Column of the text (default: guessed).
    #[arg(long)]
    text_column: Option<String>,
    /// Column of a second text (sentence pairs).
    #[arg(long)]
    text_b_column: Option<String>,
    /// Column of the labels (default: guessed).
    #[arg(long)]
    label_column: Option<String>,
    /// Column saying each row's split: train, dev, test (default: guessed).
    #[arg(long)]
    split_column: Option<String>,
    /// Print one JSON document (the inspection and the spec).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(super) struct CheckArgs {
    /// The task spec file.
    spec: PathBuf,
    /// Check the fields this head needs too: prototype, prompt, or any classifier.
    #[arg(long, value_enum)]
    head: Option<InitHead>,
    /// How train and dev are drawn.
    #[command(flatten)]
    sample: SplitArgs,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

impl TaskCommand {
    /// Task commands load no model.
    pub(super) fn model_args(&self) -> Option<&ModelArgs> {
        None
    }
}

/// Runs a task command.
pub(super) fn run(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Init(a) => init(a),
        TaskCommand::Check(a) => check(a),
        TaskCommand::Schema => {
            print!("{}", data::spec::schema_text());
            Ok(())
        }
    }
}

/// `to` relative to the folder `from` (both made absolute), with `..` where needed.
fn relative_to(to: &Path, from: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (to, from) = (abs(to), abs(from));
    let a: Vec<Component> = to.components().collect();
    let b: Vec<Component> = from.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return to;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &a[common..] {
        out.push(c);
    }
    out
}

fn init(a: InitArgs) -> Result<()> {
    let opts = InspectOptions {
        format: a.format.as_deref().map(FileFormat::parse).transpose()?,
        text_column: a.text_column.clone(),
        text_b_column: a.text_b_column.clone(),
        label_column: a.label_column.clone(),
        split_column: a.split_column.clone(),
    };
    let inspection = inspect_file(&a.data, &opts)?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.data
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "task".into())
    });
    let folder = a
        .out
        .as_deref()
        .and_then(Path::parent)
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let file_in_spec = relative_to(&a.data, folder).to_string_lossy().to_string();
    let head = match a.head {
        InitHead::Prototype => SpecHead::Prototype,
        InitHead::Prompt => SpecHead::Prompt,
        InitHead::Classifier => SpecHead::Classifier,
    };
    let spec = starting_spec(
        &name,
        &inspection,
        &file_in_spec,
        a.text_b_column.as_deref(),
        head,
    );
    let text = serde_json::to_string_pretty(&spec)? + "\n";
    if let Some(out) = &a.out {
        if out.exists() && !a.force {
            bail!("{} exists: pass --force to replace it", out.display());
        }
        crate::store::atomic_write(out, text.as_bytes())?;
    }
    if a.json {
        return print_json(
            &serde_json::json!({"inspection": inspection, "spec": spec, "out": a.out}),
        );
    }
    eprintln!(
        "{}: {} file, {} rows, {}; columns {:?}",
        a.data.display(),
        inspection.format.name(),
        inspection.rows,
        inspection.encoding,
        inspection.columns
    );
    for note in &inspection.notes {
        eprintln!("  {note}");
    }
    eprintln!(
        "  labels: {}",
        inspection
            .label_counts
            .iter()
            .map(|(l, c)| format!("{l} ({c})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match &a.out {
        Some(out) => eprintln!(
            "wrote {}; edit it (see its $comment), then: skillgraft task check {}",
            out.display(),
            out.display()
        ),
        None => print!("{text}"),
    }
    Ok(())
}

fn check(a: CheckArgs) -> Result<()> {
    let spec = TaskSpec::from_json_file(&a.spec)?;
    if let Some(h) = a.head {
        spec.require_for_head(match h {
            InitHead::Prototype => HeadNeeds::Prototype,
            InitHead::Prompt => HeadNeeds::Prompt,
            InitHead::Classifier => HeadNeeds::Labels,
        })?;
    }
    let data = data::load_examples(&spec, Path::new("."))
        .with_context(|| format!("task spec {}", a.spec.display()))?;
    let rule = a.sample.rule();
    let counts = |ex: &[data::Example]| {
        let mut c = vec![0usize; spec.labels.len()];
        for e in ex {
            c[e.label] += 1;
        }
        c
    };
    let split = data::split_data(&data, &spec, &rule, None)?;
    let per_class = serde_json::json!({
        "data": {"train": counts(&data.train), "dev": counts(&data.dev), "test": counts(&data.test)},
        "split": {"train": counts(&split.train), "dev": counts(&split.dev), "test": counts(&split.test)},
    });
    if a.json {
        return print_json(&serde_json::json!({
            "name": spec.name, "labels": spec.labels, "rule": rule, "per_class": per_class,
            "empty_texts": data.train.iter().chain(&data.dev).chain(&data.test).filter(|e| e.text.trim().is_empty()).count(),
        }));
    }
    println!(
        "task {:?}: {} labels, spec OK",
        spec.name,
        spec.labels.len()
    );
    let mut t = Table::new(&[
        "label",
        "train",
        "dev",
        "test",
        "→ train",
        "→ dev",
        "→ test",
    ]);
    let col = |v: &serde_json::Value, i: usize| v[i].to_string();
    for (i, l) in spec.labels.iter().enumerate() {
        t.row(vec![
            l.clone(),
            col(&per_class["data"]["train"], i),
            col(&per_class["data"]["dev"], i),
            col(&per_class["data"]["test"], i),
            col(&per_class["split"]["train"], i),
            col(&per_class["split"]["dev"], i),
            col(&per_class["split"]["test"], i),
        ]);
    }
    println!("{t}");
    println!(
        "split ({}): {} train / {} dev / {} test",
        match &rule {
            SplitRule::Given => "given".to_string(),
            SplitRule::FewShot { k, seed, cap_k } => format!(
                "few-shot K={k}, seed {seed}{}",
                if *cap_k { ", K capped" } else { "" }
            ),
        },
        split.train.len(),
        split.dev.len(),
        split.test.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_walk_up_and_down() {
        assert_eq!(
            relative_to(Path::new("/a/b/data.csv"), Path::new("/a/c")),
            PathBuf::from("../b/data.csv")
        );
        assert_eq!(
            relative_to(Path::new("/a/data.csv"), Path::new("/a")),
            PathBuf::from("data.csv")
        );
    }
}
