//! Text-classification data: examples, task specs, data files, and deterministic few-shot splits.
//!
//! - [`spec`]: task specs (labels, head fields, data source), their JSON Schema and validation;
//! - [`files`]: the `LABEL SENTENCE` format and tables (CSV, TSV, JSON lines), Latin-1 fallback;
//! - [`fewshot`]: the few-shot sampler (K per class, seeded, documented algorithm) and split rules;
//! - [`builtin`]: the built-in tasks of the data directory;
//! - [`inspect`]: looking at a data file (format, columns, labels) and writing a starting spec;
//! - [`dataset`]: uploaded data sets, checked and normalized.
//!
//! The data directory (see [`data_dir_default`]) holds the classic sentence-classification sets
//! (SST-2, SST-5, MR, CR, MPQA, Subj), one `LABEL SENTENCE` example per line.

pub mod builtin;
pub mod dataset;
pub mod fewshot;
pub mod files;
pub mod inspect;
pub mod spec;

pub use builtin::{builtin_task, builtin_task_names};
pub use fewshot::{
    few_shot, split_data, split_task, task_split, FewShotOptions, FewShotSplit, SplitRule,
};
pub use files::{read_label_sentence_file, read_table, FileFormat, TableFormat};
pub use spec::{DataSource, HeadNeeds, TaskSpec};

use anyhow::{anyhow, bail, Result};
use files::{read_data_file, read_label_sentence_checked, rows_to_examples, Columns};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "SKILLGRAFT_DATA_DIR";

/// Default data directory, relative to the working directory (the project root).
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// One labelled example; `text_b` for sentence-pair tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The (first) sentence.
    pub text: String,
    /// The second sentence of a sentence-pair task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_b: Option<String>,
    /// Class id, an index into [`TaskSpec::labels`].
    pub label: usize,
}

/// All labelled examples of a task, by official split (dev and test may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskData {
    /// Training split (all examples for single-file sets and tables without splits).
    pub train: Vec<Example>,
    /// Official development split (empty when absent).
    pub dev: Vec<Example>,
    /// Official test split (empty when absent).
    pub test: Vec<Example>,
}

/// The data directory: `SKILLGRAFT_DATA_DIR` if set, else `../shared/data`.
pub fn data_dir_default() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// Which split a split column's value names: `train`, `dev` (`validation`, `valid`, `val`) or `test`.
pub fn split_name(value: &str) -> Option<&'static str> {
    match value.trim().to_ascii_lowercase().as_str() {
        "train" | "training" => Some("train"),
        "dev" | "validation" | "valid" | "val" | "development" => Some("dev"),
        "test" | "testing" => Some("test"),
        _ => None,
    }
}

/// Reads a table file of a spec's `table` source.
fn read_source_table(
    path: &Path,
    format: Option<TableFormat>,
    columns: &Columns,
    labels: &[String],
) -> Result<Vec<(Example, Option<String>)>> {
    let format = match format.or_else(|| TableFormat::from_path(path)) {
        Some(f) => f,
        None => bail!(
            "cannot tell the format of {} from its name: set `format` (csv, tsv or jsonl) in the task spec's `source`",
            path.display()
        ),
    };
    let bytes = read_data_file(path)?;
    let origin = path.display().to_string();
    let rows = files::parse_rows(&bytes, &origin, format.file_format(), columns)?;
    let splits: Vec<Option<String>> = rows.iter().map(|r| r.split.clone()).collect();
    let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
    let examples = rows_to_examples(rows, labels, &origin)?;
    let mut out = Vec::with_capacity(examples.len());
    for ((e, s), line) in examples.into_iter().zip(splits).zip(lines) {
        let split = match s {
            Some(v) => Some(
                split_name(&v)
                    .ok_or_else(|| {
                        anyhow!("{origin}:{line}: split column value {v:?} is not train, dev (validation) or test")
                    })?
                    .to_string(),
            ),
            None => None,
        };
        out.push((e, split));
    }
    Ok(out)
}

/// Loads all labelled examples of a task; relative paths are resolved against `data_dir` (spec files'
/// paths are already absolute, see [`TaskSpec::from_json_file`]).
pub fn load_examples(spec: &TaskSpec, data_dir: &Path) -> Result<TaskData> {
    spec.validate()?;
    let source = spec.source.as_ref().ok_or_else(|| {
        anyhow!(
            "task {:?} has no data source: add `source` to the task spec (e.g. {{\"kind\": \"table\", \"file\": \"data.csv\", \"text_column\": \"text\", \"label_column\": \"label\"}}; `skillgraft task init --data FILE` writes one)",
            spec.name
        )
    })?;
    let n = spec.labels.len();
    let data = match source {
        DataSource::Split { train, dev, test } => TaskData {
            train: read_label_sentence_checked(&data_dir.join(train), Some(n))?,
            dev: match dev {
                Some(dev) => read_label_sentence_checked(&data_dir.join(dev), Some(n))?,
                None => Vec::new(),
            },
            test: read_label_sentence_checked(&data_dir.join(test), Some(n))?,
        },
        DataSource::Single { file } => TaskData {
            train: read_label_sentence_checked(&data_dir.join(file), Some(n))?,
            dev: Vec::new(),
            test: Vec::new(),
        },
        DataSource::Table {
            file,
            format,
            text_column,
            text_b_column,
            label_column,
            split_column,
            dev_file,
            test_file,
        } => {
            let columns = Columns {
                text: text_column,
                text_b: text_b_column.as_deref(),
                label: label_column,
                split: split_column.as_deref(),
            };
            let read = |f: &str, cols: &Columns| {
                read_source_table(&data_dir.join(f), *format, cols, &spec.labels)
            };
            let plain = |f: &Option<String>| -> Result<Vec<Example>> {
                let cols = Columns {
                    split: None,
                    ..columns
                };
                Ok(match f {
                    Some(f) => read(f, &cols)?.into_iter().map(|(e, _)| e).collect(),
                    None => Vec::new(),
                })
            };
            let mut data = TaskData {
                dev: plain(dev_file)?,
                test: plain(test_file)?,
                ..TaskData::default()
            };
            for (e, split) in read(file, &columns)? {
                match split.as_deref() {
                    Some("dev") => data.dev.push(e),
                    Some("test") => data.test.push(e),
                    _ => data.train.push(e),
                }
            }
            data
        }
    };
    for (split, examples) in [
        ("train", &data.train),
        ("dev", &data.dev),
        ("test", &data.test),
    ] {
        if let Some((i, ex)) = examples.iter().enumerate().find(|(_, ex)| ex.label >= n) {
            bail!(
                "task {:?}: {split} example {i} has label {} but the task has {n} classes",
                spec.name,
                ex.label
            );
        }
    }
    if data.train.is_empty() {
        bail!("task {:?}: no training examples in its data", spec.name);
    }
    Ok(data)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file in the temp directory, removed on drop.
    pub struct TempFile {
        pub path: PathBuf,
    }

    impl TempFile {
        pub fn new(name: &str, contents: &[u8]) -> TempFile {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = COUNTER.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir().join(format!(
                "skillgraft-data-test-{}-{unique}-{name}",
                std::process::id()
            ));
            std::fs::write(&path, contents).expect("write temp file");
            TempFile { path }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The real data directory, or None (with a loud message) when it is missing.
    pub fn test_data_dir() -> Option<PathBuf> {
        let dir = match std::env::var_os(DATA_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")),
        };
        if dir.join("stsa.binary.train").is_file() {
            Some(dir)
        } else {
            eprintln!(
                "\n*** SKIPPED: data dir missing ({}); set {DATA_DIR_ENV} to run this test ***\n",
                dir.display()
            );
            None
        }
    }

    pub fn ex(text: &str, label: usize) -> Example {
        Example {
            text: text.to_string(),
            text_b: None,
            label,
        }
    }

    pub fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Synthetic data: `per_class` examples for each of `classes` classes, interleaved, unique texts.
    pub fn synthetic(classes: usize, per_class: usize) -> Vec<Example> {
        (0..classes * per_class)
            .map(|i| ex(&format!("sentence {i}"), i % classes))
            .collect()
    }

    pub fn texts(examples: &[Example]) -> HashSet<String> {
        examples.iter().map(|e| e.text.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::ex;
    use super::*;

    #[test]
    fn out_of_range_labels_are_rejected_by_load_examples() {
        let dir =
            std::env::temp_dir().join(format!("skillgraft-data-range-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("three.all"), b"0 a\n1 b\n2 c\n").unwrap();
        let mut spec = builtin_task("mr").unwrap();
        spec.source = Some(DataSource::Single {
            file: "three.all".to_string(),
        });
        let err = load_examples(&spec, &dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("three.all:3"), "{err}");
        assert!(err.contains("label 2"), "{err}");
    }

    #[test]
    fn table_source_loads_into_train() {
        let dir =
            std::env::temp_dir().join(format!("skillgraft-data-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.tsv"), b"s\tl\nx\tpositive\ny\tnegative\n").unwrap();
        let mut spec = builtin_task("sst2").unwrap();
        spec.source = Some(DataSource::Table {
            file: "t.tsv".to_string(),
            format: None,
            text_column: "s".to_string(),
            text_b_column: None,
            label_column: "l".to_string(),
            split_column: None,
            dev_file: None,
            test_file: None,
        });
        let data = load_examples(&spec, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let data = data.unwrap();
        assert_eq!(data.train, vec![ex("x", 1), ex("y", 0)]);
        assert!(data.dev.is_empty() && data.test.is_empty());
    }

    #[test]
    fn split_column_and_extra_files_fill_dev_and_test() {
        let dir =
            std::env::temp_dir().join(format!("skillgraft-data-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("all.csv"),
            b"text,y,part\na,neg,train\nb,pos,validation\nc,pos,test\nd,neg,train\n",
        )
        .unwrap();
        std::fs::write(dir.join("t.jsonl"), b"{\"s\":\"e\",\"y\":\"pos\"}\n").unwrap();
        let mut spec = TaskSpec::with_labels("t", vec!["neg".into(), "pos".into()]);
        spec.source = Some(DataSource::Table {
            file: "all.csv".into(),
            format: None,
            text_column: "text".into(),
            text_b_column: None,
            label_column: "y".into(),
            split_column: Some("part".into()),
            dev_file: None,
            test_file: None,
        });
        let data = load_examples(&spec, &dir).unwrap();
        assert_eq!(data.train, vec![ex("a", 0), ex("d", 0)]);
        assert_eq!(data.dev, vec![ex("b", 1)]);
        assert_eq!(data.test, vec![ex("c", 1)]);
        std::fs::write(dir.join("bad.csv"), b"text,y,part\na,neg,holdout\n").unwrap();
        if let Some(DataSource::Table { file, .. }) = &mut spec.source {
            *file = "bad.csv".into();
        }
        let err = load_examples(&spec, &dir).unwrap_err().to_string();
        assert!(
            err.contains("bad.csv:2") && err.contains("holdout"),
            "{err}"
        );
        spec.source = Some(DataSource::Table {
            file: "all.txt".into(),
            format: None,
            text_column: "text".into(),
            text_b_column: None,
            label_column: "y".into(),
            split_column: None,
            dev_file: None,
            test_file: None,
        });
        let err = load_examples(&spec, &dir).unwrap_err().to_string();
        assert!(err.contains("`format`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
