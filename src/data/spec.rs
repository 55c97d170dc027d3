//! Task specs: what a classification task is (labels, what each head needs) and where its examples come
//! from. Written by hand, or started by `skillgraft task init` from a data file (see [`super::inspect`]).
//!
//! A spec is JSON; its JSON Schema is [`schema`] (committed at `schemas/task-spec.schema.json`, served by
//! the service). Rules a newcomer meets:
//!
//! - unknown keys are refused by name (`$schema` and `$comment` are allowed at the top level);
//! - fields are required only where they are used: `template` and `label_words` by prompt heads,
//!   `label_descriptions` by prototype heads ([`TaskSpec::require_for_head`]);
//! - relative paths in a spec file are resolved against the folder holding the spec file
//!   ([`TaskSpec::from_json_file`]); built-in tasks' paths are relative to the data directory.

use super::files::TableFormat;
use anyhow::{anyhow, bail, Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a task's examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// Official splits in the `LABEL SENTENCE` format (an integer class id, a space, the sentence; one per
    /// line): a train file, an optional dev file, a test file.
    Split {
        /// Training file.
        train: String,
        /// Development file (optional; used by `--split given`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dev: Option<String>,
        /// Test file.
        test: String,
    },
    /// One `LABEL SENTENCE` file; the test set is a fixed held-out sample of it.
    Single {
        /// The file.
        file: String,
    },
    /// A table: CSV or TSV with a header row, or JSON lines. Labels are class names or class ids.
    Table {
        /// The file (all examples, or the training examples when `dev_file`/`test_file` are given).
        file: String,
        /// `csv`, `tsv` or `jsonl`; inferred from the file's extension when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<TableFormat>,
        /// Column (JSON key) of the sentence.
        text_column: String,
        /// Column of the second sentence of a sentence-pair task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text_b_column: Option<String>,
        /// Column of the label: a class name from `labels`, or a class id (0-based index into `labels`).
        label_column: String,
        /// Column whose value (`train`, `dev`/`validation`, `test`) says which split a row is in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        split_column: Option<String>,
        /// Development examples, in a second file with the same columns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dev_file: Option<String>,
        /// Test examples, in a third file with the same columns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_file: Option<String>,
    },
}

/// Free-form comments: one string or a list of lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Comment {
    /// One string.
    Text(String),
    /// Lines.
    Lines(Vec<String>),
}

/// Everything needed to train and evaluate one classification task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "skillgraft task spec")]
pub struct TaskSpec {
    /// The schema this file follows (ignored; for editors).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Comments (ignored).
    #[serde(rename = "$comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
    /// Task name.
    pub name: String,
    /// Class names, in class-id order (class id = index). At least two, all different.
    pub labels: Vec<String>,
    /// Prompt heads only: a template with `{sentence}` (and optionally `{sentence_b}`) and exactly one
    /// `{mask}`, e.g. `"{sentence} It was {mask} ."`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Prompt heads only: one label word per class (a single token of the base's vocabulary, no leading
    /// space), e.g. `["terrible", "great"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_words: Vec<String>,
    /// Prototype heads only: one short description per class, e.g. `["It was terrible.", "It was great."]`;
    /// a class's prototype is the base model's embedding of its description.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_descriptions: Vec<String>,
    /// Where the examples come from (absent for a spec used only for inference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSource>,
}

/// Heads as far as a task spec is concerned: which fields they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadNeeds {
    /// `template` and `label_words`.
    Prompt,
    /// `label_descriptions`.
    Prototype,
    /// Nothing beyond `labels`.
    Labels,
}

/// The JSON Schema of task specs (draft 2020-12), as committed at `schemas/task-spec.schema.json`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(TaskSpec)).unwrap_or_default()
}

/// The schema as the committed file holds it (pretty JSON and a final newline).
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    s.push('\n');
    s
}

/// Hint appended to spec errors.
const SPEC_HELP: &str =
    "see \"Task specs\" in the README, or `skillgraft task schema` for the JSON Schema";

impl TaskSpec {
    /// A spec with labels only (no head fields, no source).
    pub fn with_labels(name: &str, labels: Vec<String>) -> TaskSpec {
        TaskSpec {
            schema: None,
            comment: None,
            name: name.to_string(),
            labels,
            template: None,
            label_words: Vec::new(),
            label_descriptions: Vec::new(),
            source: None,
        }
    }

    /// Checks what every use needs: labels, and the head fields and source that are present.
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        let n = self.labels.len();
        if n < 2 {
            bail!("task {name:?}: `labels` needs at least 2 labels, found {n}");
        }
        for (i, l) in self.labels.iter().enumerate() {
            if l.trim().is_empty() {
                bail!("task {name:?}: `labels[{i}]` is empty: give every class a name");
            }
            if let Some(j) = self.labels[..i].iter().position(|m| m == l) {
                bail!("task {name:?}: `labels[{i}]` repeats `labels[{j}]` ({l:?}): class names must differ");
            }
        }
        if !self.label_words.is_empty() && self.label_words.len() != n {
            bail!(
                "task {name:?}: `label_words` has {} words for {n} labels: give one per label, in the order of `labels`, or none",
                self.label_words.len()
            );
        }
        if !self.label_descriptions.is_empty() && self.label_descriptions.len() != n {
            bail!(
                "task {name:?}: `label_descriptions` has {} descriptions for {n} labels: give one per label, in the order of `labels`, or none",
                self.label_descriptions.len()
            );
        }
        if let Some(template) = &self.template {
            check_template(name, template)?;
        }
        if let Some(DataSource::Table {
            split_column,
            dev_file,
            test_file,
            ..
        }) = &self.source
        {
            if split_column.is_some() && (dev_file.is_some() || test_file.is_some()) {
                bail!("task {name:?}: `source` has `split_column` and `dev_file`/`test_file`: give one way of splitting (a column, or separate files)");
            }
        }
        Ok(())
    }

    /// Checks that the fields a head reads are there (`template` + `label_words` for prompt heads,
    /// `label_descriptions` for prototype heads), with a message that names them.
    pub fn require_for_head(&self, needs: HeadNeeds) -> Result<()> {
        let n = self.labels.len();
        match needs {
            HeadNeeds::Prompt => {
                let Some(template) = &self.template else {
                    bail!("task {:?}: the prompt head needs `template` in the task spec, e.g. \"{{sentence}} It was {{mask}} .\" (or choose another head with --head)", self.name);
                };
                check_template(&self.name, template)?;
                if self.label_words.len() != n {
                    bail!("task {:?}: the prompt head needs `label_words` in the task spec: one word per label ({n}), in the order of `labels` (or choose another head with --head)", self.name);
                }
            }
            HeadNeeds::Prototype => {
                if self.label_descriptions.len() != n {
                    bail!("task {:?}: the prototype head needs `label_descriptions` in the task spec: one short sentence per label ({n}), in the order of `labels`, e.g. \"It was great.\" (or give the descriptions with the head, or choose another head with --head)", self.name);
                }
            }
            HeadNeeds::Labels => {}
        }
        Ok(())
    }

    /// Parses a spec from JSON text: unknown keys and wrong types are refused with the field's path.
    pub fn from_json_str(text: &str) -> Result<TaskSpec> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let spec: TaskSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = explain_serde_error(&inner.to_string());
            if path == "." || path.is_empty() {
                anyhow!("{msg}; {SPEC_HELP}")
            } else {
                anyhow!("at `{path}`: {msg}; {SPEC_HELP}")
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a task spec from a JSON file, validates it, and resolves its relative data paths against the
    /// folder holding the file. `$schema` and `$comment` are dropped.
    pub fn from_json_file(path: &Path) -> Result<TaskSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read task spec {}", path.display()))?;
        let mut spec = TaskSpec::from_json_str(&text)
            .with_context(|| format!("invalid task spec {}", path.display()))?;
        spec.resolve_paths(&spec_folder(path));
        spec.schema = None;
        spec.comment = None;
        Ok(spec)
    }

    /// Makes every relative data path absolute against `folder`.
    pub fn resolve_paths(&mut self, folder: &Path) {
        let fix = |p: &mut String| {
            if Path::new(p.as_str()).is_relative() {
                *p = folder.join(&*p).to_string_lossy().to_string();
            }
        };
        match &mut self.source {
            Some(DataSource::Split { train, dev, test }) => {
                fix(train);
                dev.iter_mut().for_each(fix);
                fix(test);
            }
            Some(DataSource::Single { file }) => fix(file),
            Some(DataSource::Table {
                file,
                dev_file,
                test_file,
                ..
            }) => {
                fix(file);
                dev_file.iter_mut().for_each(fix);
                test_file.iter_mut().for_each(fix);
            }
            None => {}
        }
    }

    /// The data files the source names (relative to whatever they are relative to).
    pub fn files(&self) -> Vec<PathBuf> {
        let v: Vec<&String> = match &self.source {
            Some(DataSource::Split { train, dev, test }) => {
                std::iter::once(train).chain(dev).chain([test]).collect()
            }
            Some(DataSource::Single { file }) => vec![file],
            Some(DataSource::Table {
                file,
                dev_file,
                test_file,
                ..
            }) => std::iter::once(file)
                .chain(dev_file)
                .chain(test_file)
                .collect(),
            None => Vec::new(),
        };
        v.into_iter().map(PathBuf::from).collect()
    }

    /// Fills the template: `{sentence}`, `{sentence_b}` (empty when absent) and `{mask}`; without a
    /// template, the sentence.
    pub fn render_prompt(&self, ex: &super::Example, mask_token: &str) -> String {
        match &self.template {
            Some(t) => render_template(t, ex, mask_token),
            None => ex.text.clone(),
        }
    }
}

/// The folder a spec file's relative paths are read against, made absolute: the file's own folder, or the
/// current directory for a bare file name (whose parent is the empty path).
fn spec_folder(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
        }
        _ => std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf()),
    }
}

/// Checks a prompt template: exactly one `{mask}` and a `{sentence}`.
fn check_template(name: &str, template: &str) -> Result<()> {
    let masks = template.matches("{mask}").count();
    if masks != 1 {
        bail!("task {name:?}: `template` {template:?} must contain exactly one {{mask}}, found {masks}");
    }
    if !template.contains("{sentence}") {
        bail!("task {name:?}: `template` {template:?} must contain {{sentence}}");
    }
    Ok(())
}

/// Fills a template in one pass, so braces inside the sentences are kept as is.
pub fn render_template(template: &str, ex: &super::Example, mask_token: &str) -> String {
    let mut out = String::with_capacity(template.len() + ex.text.len() + 16);
    let mut rest = template;
    while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{sentence}") {
            out.push_str(&ex.text);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{sentence_b}") {
            out.push_str(ex.text_b.as_deref().unwrap_or(""));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{mask}") {
            out.push_str(mask_token);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Adds what to do to serde's messages about specs.
fn explain_serde_error(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg).to_string();
    if msg.contains("missing field `kind`") {
        return format!("{msg}: `source` needs `kind`: `table` (csv/tsv/jsonl with named columns), `single` (one `LABEL SENTENCE` file) or `split` (`LABEL SENTENCE` train/dev/test files)");
    }
    if msg.starts_with("unknown field") && msg.contains("`train`") && msg.contains("`file`") {
        return format!("{msg} (a table's files are `file`, `dev_file` and `test_file`)");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin_task;

    #[test]
    fn unknown_keys_are_refused_by_name_and_path() {
        let err = TaskSpec::from_json_str(r#"{"name":"t","labels":["a","b"],"train":"x.tsv"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `train`"), "{err}");
        assert!(err.contains("README"), "{err}");
        let err = TaskSpec::from_json_str(
            r#"{"name":"t","labels":["a","b"],"source":{"kind":"table","files":"x.csv","text_column":"t","label_column":"l"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`source`") && err.contains("unknown field `files`"),
            "{err}"
        );
        let err =
            TaskSpec::from_json_str(r#"{"name":"t","labels":["a","b"],"source":{"file":"x.csv"}}"#)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("missing field `kind`") && err.contains("`table`"),
            "{err}"
        );
        let err = TaskSpec::from_json_str(
            r#"{"name":"t","labels":["a","b"],"source":{"kind":"table","file":"x.xlsx","format":"xlsx","text_column":"t","label_column":"l"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("xlsx") && err.contains("`csv`"), "{err}");
        let err = TaskSpec::from_json_str(r#"{"name":"t","labels":"a,b"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`labels`"), "{err}");
    }

    #[test]
    fn head_fields_are_required_only_where_used() {
        let spec = TaskSpec::from_json_str(
            r#"{"$schema":"x","$comment":["a","b"],"name":"t","labels":["a","b"]}"#,
        )
        .unwrap();
        spec.require_for_head(HeadNeeds::Labels).unwrap();
        let err = spec
            .require_for_head(HeadNeeds::Prototype)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`label_descriptions`"), "{err}");
        let err = spec
            .require_for_head(HeadNeeds::Prompt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`template`"), "{err}");
        let mut with = spec.clone();
        with.template = Some("{sentence} {mask}".into());
        let err = with
            .require_for_head(HeadNeeds::Prompt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`label_words`"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let good = builtin_task("sst5").unwrap();
        good.validate().unwrap();
        let check = |edit: &dyn Fn(&mut TaskSpec), needle: &str| {
            let mut spec = good.clone();
            edit(&mut spec);
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        };
        check(&|s| s.labels.truncate(1), "at least 2 labels");
        check(
            &|s| s.labels[1] = s.labels[0].clone(),
            "`labels[1]` repeats",
        );
        check(
            &|s| s.label_words.truncate(s.labels.len() - 1),
            "`label_words`",
        );
        check(
            &|s| s.label_descriptions.push("x".into()),
            "`label_descriptions`",
        );
        check(
            &|s| s.template = Some("{sentence} {mask} {mask}".into()),
            "exactly one {mask}",
        );
        check(
            &|s| s.template = Some("{sentence_b} {mask}".into()),
            "{sentence}",
        );
        check(
            &|s| {
                s.source = Some(DataSource::Table {
                    file: "f".into(),
                    format: None,
                    text_column: "t".into(),
                    text_b_column: None,
                    label_column: "l".into(),
                    split_column: Some("s".into()),
                    dev_file: Some("d".into()),
                    test_file: None,
                })
            },
            "one way of splitting",
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_spec_folder() {
        let dir = std::env::temp_dir().join(format!("sg-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub").join("t.json");
        std::fs::write(
            &file,
            r#"{"name":"t","labels":["a","b"],"source":{"kind":"table","file":"d.csv","test_file":"/abs/t.csv","text_column":"x","label_column":"y"}}"#,
        )
        .unwrap();
        let spec = TaskSpec::from_json_file(&file).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            spec.files(),
            vec![dir.join("sub").join("d.csv"), PathBuf::from("/abs/t.csv")]
        );
    }

    #[test]
    fn old_manifests_still_parse() {
        // The layout every graft file written before specs had optional fields holds.
        let old = r#"{"name":"sst2","labels":["negative","positive"],"template":"{sentence} It was {mask} .","label_words":["terrible","great"],"label_descriptions":["It was terrible.","It was great."],"source":{"kind":"split","train":"stsa.binary.train","dev":"stsa.binary.dev","test":"stsa.binary.test"}}"#;
        assert_eq!(
            TaskSpec::from_json_str(old).unwrap(),
            builtin_task("sst2").unwrap()
        );
        let old_table = r#"{"name":"t","labels":["a","b"],"template":"{sentence} {mask}","label_words":[],"label_descriptions":[],"source":{"kind":"table","file":"f.tsv","format":"tsv","text_column":"s","text_b_column":null,"label_column":"l"}}"#;
        TaskSpec::from_json_str(old_table).unwrap();
    }

    #[test]
    fn committed_schema_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/task-spec.schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == schema_text(),
            "schemas/task-spec.schema.json differs from the Rust types: regenerate it with `skillgraft task schema > schemas/task-spec.schema.json`"
        );
        let s = schema();
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["required"], serde_json::json!(["name", "labels"]));
    }

    #[test]
    fn a_bare_spec_file_name_reads_paths_against_the_current_directory() {
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(spec_folder(Path::new("tone.json")), cwd);
        assert_eq!(spec_folder(Path::new("specs/tone.json")), cwd.join("specs"));
        assert_eq!(
            spec_folder(Path::new("/data/tone.json")),
            Path::new("/data")
        );
        let mut spec = TaskSpec::from_json_str(
            r#"{"name": "tone", "labels": ["a", "b"],
                "source": {"kind": "table", "file": "tone.csv", "text_column": "t", "label_column": "l"}}"#,
        )
        .expect("spec");
        spec.resolve_paths(&spec_folder(Path::new("tone.json")));
        let json = serde_json::to_string(&spec).expect("json");
        let resolved = cwd.join("tone.csv");
        assert!(json.contains(&*resolved.to_string_lossy()), "{json}");
    }
}
