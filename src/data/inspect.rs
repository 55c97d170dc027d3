//! Looking at a data file the way a person would: its format, its columns, which column holds the labels
//! and which the text, the label values and how many of each, and its encoding. [`starting_spec`] turns
//! what was seen into a task spec to edit (`skillgraft task init`); the service uses [`inspect_bytes`]
//! to describe uploaded data sets.

use super::files::{
    decode_text, delimited_header, parse_rows, strip_bom, text_lines, Columns, FileFormat, Row,
};
use super::spec::{Comment, DataSource, TaskSpec};
use super::split_name;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Column names that usually hold labels, most likely first.
const LABEL_NAMES: &[&str] = &[
    "label",
    "labels",
    "class",
    "category",
    "target",
    "y",
    "sentiment",
    "intent",
    "topic",
    "tag",
];

/// Column names that usually hold the text, most likely first.
const TEXT_NAMES: &[&str] = &[
    "text",
    "sentence",
    "review",
    "content",
    "body",
    "question",
    "utterance",
    "document",
    "input",
];

/// Column names that usually say which split a row is in.
const SPLIT_NAMES: &[&str] = &["split", "set", "fold", "subset", "partition"];

/// Most distinct values a label column may have before it is taken for text.
const MAX_LABEL_VALUES: usize = 100;

/// What a data file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    /// Detected format.
    pub format: FileFormat,
    /// Column names (JSON keys of the first object; empty for `LABEL SENTENCE`).
    pub columns: Vec<String>,
    /// The column taken for the text.
    pub text_column: Option<String>,
    /// The column taken for the labels.
    pub label_column: Option<String>,
    /// The column taken for the split (values train / dev / test).
    pub split_column: Option<String>,
    /// Data rows.
    pub rows: usize,
    /// Label values (ids as digits) and how many rows have each, in class order (numeric when every value
    /// is an integer, else alphabetical).
    pub label_counts: Vec<(String, usize)>,
    /// Rows per split, when a split column was found.
    pub split_counts: BTreeMap<String, usize>,
    /// Rows whose text is empty.
    pub empty_texts: usize,
    /// `utf-8`, or `latin-1` when some fields were not UTF-8 (they are decoded as Latin-1).
    pub encoding: String,
    /// How the columns were chosen.
    pub notes: Vec<String>,
}

impl Inspection {
    /// The label values in class order.
    pub fn labels(&self) -> Vec<String> {
        self.label_counts.iter().map(|(l, _)| l.clone()).collect()
    }
}

/// Choices that override what inspection would guess.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InspectOptions {
    /// Format.
    pub format: Option<FileFormat>,
    /// Text column.
    pub text_column: Option<String>,
    /// Second text column.
    pub text_b_column: Option<String>,
    /// Label column.
    pub label_column: Option<String>,
    /// Split column.
    pub split_column: Option<String>,
}

/// Guesses the format from the name, then from the first line.
fn detect_format(bytes: &[u8], name: &str) -> FileFormat {
    if let Some(t) = super::TableFormat::from_path(Path::new(name)) {
        return t.file_format();
    }
    let first = text_lines(bytes)
        .next()
        .map(|(_, l, _)| l)
        .unwrap_or_default();
    if first.starts_with('{') {
        return FileFormat::Jsonl;
    }
    let label_first = first
        .split([' ', '\t'])
        .next()
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if label_first {
        return FileFormat::LabelSentence;
    }
    if first.contains('\t') {
        FileFormat::Tsv
    } else {
        FileFormat::Csv
    }
}

/// Column names of a table.
fn column_names(bytes: &[u8], format: FileFormat) -> Result<Vec<String>> {
    Ok(match format {
        FileFormat::Csv => delimited_header(bytes, b',')?,
        FileFormat::Tsv => delimited_header(bytes, b'\t')?,
        FileFormat::Jsonl => {
            let Some((_, line, _)) = text_lines(bytes).next() else {
                return Ok(Vec::new());
            };
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(serde_json::Value::Object(o)) => o.keys().cloned().collect(),
                _ => bail!("the first line is not a JSON object, so this is not JSON lines: give the format"),
            }
        }
        FileFormat::LabelSentence => Vec::new(),
    })
}

/// Every column's values as strings (tables only), first `limit` rows.
fn column_values(bytes: &[u8], format: FileFormat, names: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); names.len()];
    match format {
        FileFormat::Csv | FileFormat::Tsv => {
            let delimiter = if format == FileFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .has_headers(true)
                .flexible(true)
                .from_reader(strip_bom(bytes));
            for record in reader.byte_records().map_while(|r| r.ok()) {
                for (i, col) in out.iter_mut().enumerate() {
                    col.push(record.get(i).map(|b| decode_text(b).0).unwrap_or_default());
                }
            }
        }
        FileFormat::Jsonl => {
            for (_, line, _) in text_lines(bytes) {
                let Ok(serde_json::Value::Object(o)) = serde_json::from_str(&line) else {
                    continue;
                };
                for (i, name) in names.iter().enumerate() {
                    out[i].push(match o.get(name) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => String::new(),
                    });
                }
            }
        }
        FileFormat::LabelSentence => {}
    }
    out
}

/// Index of the first name (case-insensitive) of `preferred` among `names`, skipping `taken`.
fn by_name(names: &[String], preferred: &[&str], taken: &[usize]) -> Option<usize> {
    preferred.iter().find_map(|p| {
        names
            .iter()
            .enumerate()
            .find(|(i, n)| !taken.contains(i) && n.eq_ignore_ascii_case(p))
            .map(|(i, _)| i)
    })
}

/// Inspects a data file.
pub fn inspect_file(path: &Path, opts: &InspectOptions) -> Result<Inspection> {
    let bytes = super::files::read_data_file(path)?;
    inspect_bytes(&bytes, &path.display().to_string(), opts)
}

/// Inspects data bytes; `name` (a file name) helps tell the format.
pub fn inspect_bytes(bytes: &[u8], name: &str, opts: &InspectOptions) -> Result<Inspection> {
    let format = opts.format.unwrap_or_else(|| detect_format(bytes, name));
    let mut notes = Vec::new();
    let columns = column_names(bytes, format)?;
    let (text_column, label_column, split_column) = if format == FileFormat::LabelSentence {
        (None, None, None)
    } else {
        let values = column_values(bytes, format, &columns);
        let distinct = |i: usize| {
            let mut v: Vec<&String> = values[i].iter().collect();
            v.sort();
            v.dedup();
            v.len()
        };
        let index_of = |what: &str, given: &Option<String>| -> Result<Option<usize>> {
            match given {
                Some(n) => match columns.iter().position(|c| c == n) {
                    Some(i) => Ok(Some(i)),
                    None => bail!("{name}: no column {n:?} for the {what} (columns: {columns:?})"),
                },
                None => Ok(None),
            }
        };
        let mut taken = Vec::new();
        let split = match index_of("split", &opts.split_column)? {
            Some(i) => Some(i),
            None => {
                let all_splits = |i: &usize| {
                    !values[*i].is_empty() && values[*i].iter().all(|v| split_name(v).is_some())
                };
                by_name(&columns, SPLIT_NAMES, &taken)
                    .filter(all_splits)
                    .or_else(|| (0..columns.len()).find(|i| all_splits(i) && distinct(*i) >= 2))
            }
        };
        taken.extend(split);
        let label = match index_of("labels", &opts.label_column)? {
            Some(i) => Some(i),
            None => {
                let named = by_name(&columns, LABEL_NAMES, &taken);
                let fewest = (0..columns.len())
                    .filter(|i| !taken.contains(i))
                    .filter(|&i| (2..=MAX_LABEL_VALUES).contains(&distinct(i)))
                    .filter(|&i| distinct(i) * 2 <= values[i].len().max(2))
                    .min_by_key(|&i| (distinct(i), i));
                let pick = named.or(fewest);
                if let Some(i) = pick {
                    notes.push(format!(
                        "label column `{}`: {} ({} distinct values)",
                        columns[i],
                        if named.is_some() {
                            "by its name"
                        } else {
                            "the column with the fewest distinct values"
                        },
                        distinct(i)
                    ));
                }
                pick
            }
        };
        taken.extend(label);
        let text = match index_of("text", &opts.text_column)? {
            Some(i) => Some(i),
            None => {
                let mean_len = |i: usize| {
                    values[i].iter().map(|v| v.chars().count()).sum::<usize>()
                        / values[i].len().max(1)
                };
                let named = by_name(&columns, TEXT_NAMES, &taken);
                let longest = (0..columns.len())
                    .filter(|i| !taken.contains(i))
                    .max_by_key(|&i| (mean_len(i), std::cmp::Reverse(i)));
                let pick = named.or(longest);
                if let Some(i) = pick {
                    notes.push(format!(
                        "text column `{}`: {}",
                        columns[i],
                        if named.is_some() {
                            "by its name".to_string()
                        } else {
                            format!("the longest values ({} characters on average)", mean_len(i))
                        }
                    ));
                }
                pick
            }
        };
        let name_of = |i: Option<usize>| i.map(|i| columns[i].clone());
        (name_of(text), name_of(label), name_of(split))
    };
    if format != FileFormat::LabelSentence && (text_column.is_none() || label_column.is_none()) {
        bail!("{name}: cannot tell which column holds the {} (columns: {columns:?}): name it (--text-column / --label-column)",
            if label_column.is_none() { "labels" } else { "text" });
    }
    let cols = Columns {
        text: text_column.as_deref().unwrap_or(""),
        text_b: opts.text_b_column.as_deref(),
        label: label_column.as_deref().unwrap_or(""),
        split: split_column.as_deref(),
    };
    let rows = parse_rows(bytes, name, format, &cols)?;
    let summary = summarize(&rows);
    if rows.is_empty() {
        bail!("{name}: no data rows");
    }
    Ok(Inspection {
        format,
        columns,
        text_column,
        label_column,
        split_column,
        rows: rows.len(),
        label_counts: summary.0,
        split_counts: summary.1,
        empty_texts: rows.iter().filter(|r| r.text.trim().is_empty()).count(),
        encoding: if rows.iter().any(|r| r.latin1) {
            "latin-1".into()
        } else {
            "utf-8".into()
        },
        notes,
    })
}

/// Label counts in class order, and split counts.
#[allow(clippy::type_complexity)]
fn summarize(rows: &[Row]) -> (Vec<(String, usize)>, BTreeMap<String, usize>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut splits: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.label.text()).or_default() += 1;
        if let Some(s) = &r.split {
            *splits
                .entry(split_name(s).unwrap_or(s.as_str()).to_string())
                .or_default() += 1;
        }
    }
    let mut labels: Vec<(String, usize)> = counts.into_iter().collect();
    if labels.iter().all(|(l, _)| l.parse::<u64>().is_ok()) {
        labels.sort_by_key(|(l, _)| l.parse::<u64>().unwrap_or(u64::MAX));
    }
    (labels, splits)
}

/// Which head a starting spec is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecHead {
    /// Descriptions for the prototype head (the default head).
    Prototype,
    /// A template and label words for a prompt head.
    Prompt,
    /// Labels only (classifier heads).
    Classifier,
}

/// A starting task spec from an inspection: labels from the label values (ids as `0`, `1`, … when the
/// file holds integers), the source pointing at the file as `file_in_spec` (relative to the spec's
/// folder), head fields for `head`, and `$comment` lines saying what was inferred and what to edit.
pub fn starting_spec(
    name: &str,
    inspection: &Inspection,
    file_in_spec: &str,
    text_b_column: Option<&str>,
    head: SpecHead,
) -> TaskSpec {
    let labels = inspection.labels();
    let readable = |l: &str| {
        let s = l.replace(['_', '-'], " ");
        let mut c = s.chars();
        match c.next() {
            Some(f) => format!("{}{}.", f.to_uppercase(), c.as_str()),
            None => s,
        }
    };
    let numeric = labels.iter().all(|l| l.parse::<u64>().is_ok());
    let mut comment = vec![
        format!(
            "Written by `skillgraft task init` from {file_in_spec}: {} file, {} rows, {}.",
            inspection.format.name(),
            inspection.rows,
            inspection.encoding
        ),
        format!(
            "labels: the {} label values found, in class-id order ({}); rename or reorder them as you like, keeping every value the file uses.",
            labels.len(),
            inspection
                .label_counts
                .iter()
                .map(|(l, c)| format!("{l}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    if numeric {
        comment.push("The file's labels are integers: they are class ids (0-based indices into `labels`); give the classes names by replacing the strings in `labels` (ids keep working).".into());
    }
    comment.extend(inspection.notes.iter().cloned());
    if let Some(s) = &inspection.split_column {
        comment.push(format!(
            "split column `{s}`: rows per split {:?}; the test split is used for testing, train for drawing K per class.",
            inspection.split_counts
        ));
    }
    if inspection.empty_texts > 0 {
        comment.push(format!(
            "{} rows have an empty text; they are kept as they are.",
            inspection.empty_texts
        ));
    }
    let mut spec = TaskSpec::with_labels(name, labels.clone());
    match head {
        SpecHead::Prototype => {
            spec.label_descriptions = labels.iter().map(|l| readable(l)).collect();
            comment.push("label_descriptions: one short sentence per label for the prototype head (the default head): a class's prototype is the base model's embedding of its description, so describe each class in words (e.g. \"It was great.\"). Not needed for classifier heads.".into());
        }
        SpecHead::Prompt => {
            spec.template = Some("{sentence} It was {mask} .".into());
            spec.label_words = labels.clone();
            comment.push("template and label_words: for --head prompt only. The template needs {sentence} and one {mask}; each label word must be one token of the base's vocabulary.".into());
        }
        SpecHead::Classifier => {
            comment.push("Classifier heads (bert-classifier, roberta-classifier, linear) need only `labels`.".into());
        }
    }
    comment.push("Paths in `source` are relative to this file's folder. Unknown keys are refused. Schema: `skillgraft task schema`; check with `skillgraft task check SPEC`.".into());
    spec.comment = Some(Comment::Lines(comment));
    spec.source = Some(match inspection.format.table() {
        Some(format) => DataSource::Table {
            file: file_in_spec.to_string(),
            format: Some(format),
            text_column: inspection.text_column.clone().unwrap_or_default(),
            text_b_column: text_b_column.map(str::to_string),
            label_column: inspection.label_column.clone().unwrap_or_default(),
            split_column: inspection.split_column.clone(),
            dev_file: None,
            test_file: None,
        },
        None => DataSource::Single {
            file: file_in_spec.to_string(),
        },
    });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_format_columns_labels_and_splits() {
        let csv = b"id,review,mood,part\n1,a long text here,happy,train\n2,another long one,sad,train\n3,short,happy,test\n4,the fourth text,meh,dev\n5,fifth,sad,train\n6,sixth one,meh,train\n";
        let i = inspect_bytes(csv, "x.csv", &InspectOptions::default()).unwrap();
        assert_eq!(i.format, FileFormat::Csv);
        assert_eq!(i.text_column.as_deref(), Some("review"));
        assert_eq!(i.label_column.as_deref(), Some("mood"));
        assert_eq!(i.split_column.as_deref(), Some("part"));
        assert_eq!(i.labels(), ["happy", "meh", "sad"]);
        assert_eq!(i.split_counts["train"], 4);
        let spec = starting_spec("moods", &i, "x.csv", None, SpecHead::Prototype);
        spec.validate().unwrap();
        assert_eq!(spec.label_descriptions, ["Happy.", "Meh.", "Sad."]);
        let json = serde_json::to_string(&spec).unwrap();
        let back = TaskSpec::from_json_str(&json).unwrap();
        assert_eq!(back, spec);

        let jsonl =
            b"{\"t\": \"one two three\", \"label\": 2}\n{\"t\": \"four five\", \"label\": 10}\n";
        let i = inspect_bytes(jsonl, "data", &InspectOptions::default()).unwrap();
        assert_eq!(i.format, FileFormat::Jsonl);
        assert_eq!(i.labels(), ["2", "10"], "numeric order");
        let ls = b"0 bad film\n1 good film\n1 fine\n";
        let i = inspect_bytes(ls, "f.txt", &InspectOptions::default()).unwrap();
        assert_eq!(i.format, FileFormat::LabelSentence);
        assert_eq!(i.label_counts, [("0".to_string(), 1), ("1".to_string(), 2)]);
        let latin = b"text\tlabel\ncaf\xe9 au lait\tx\nthe tea\ty\n";
        let i = inspect_bytes(latin, "f.tsv", &InspectOptions::default()).unwrap();
        assert_eq!(i.encoding, "latin-1");
        let err = inspect_bytes(
            csv,
            "x.csv",
            &InspectOptions {
                label_column: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"nope\"") && err.contains("review"), "{err}");
    }
}
