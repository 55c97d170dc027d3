//! Uploaded data sets: a file in any [`FileFormat`] checked and normalized into JSON lines of
//! `{"text", "text_b"?, "label": class name, "split"?}`, with a description ([`DatasetInfo`]) of its
//! labels, counts and splits. The service stores both and builds tasks' train/dev/test from them.
//!
//! Checks (each refusal names the row and the fix): the file is text (UTF-8, or Latin-1 decoded byte for
//! byte, reported as `encoding`); it has at least two label values; no text is empty; split values are
//! train / dev (validation) / test; given class names (`labels`) cover exactly the values found.

use super::files::{parse_rows, Columns, FileFormat};
use super::inspect::{inspect_bytes, InspectOptions};
use super::{split_name, Example, TaskData};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How to read an uploaded file (everything optional: inspection fills in the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetOptions {
    /// A display name.
    pub name: Option<String>,
    /// Format: csv, tsv, jsonl, label_sentence (default: from the file name and its first line).
    pub format: Option<FileFormat>,
    /// Text column.
    pub text_column: Option<String>,
    /// Second text column (sentence pairs).
    pub text_b_column: Option<String>,
    /// Label column.
    pub label_column: Option<String>,
    /// Split column (values train, dev/validation, test).
    pub split_column: Option<String>,
    /// Class names in class-id order (default: the label values, numeric order for integers, else
    /// alphabetical); must hold every value the file uses.
    pub labels: Option<Vec<String>>,
}

/// One normalized example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The text.
    pub text: String,
    /// The second text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_b: Option<String>,
    /// The class name.
    pub label: String,
    /// `train`, `dev` or `test`, when the file said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

/// What a stored data set holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Id (content hash prefix).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The uploaded file's format.
    pub format: FileFormat,
    /// Rows.
    pub rows: usize,
    /// Class names in class-id order.
    pub labels: Vec<String>,
    /// Rows per class, in class order.
    pub label_counts: Vec<usize>,
    /// Rows per split (`train`, `dev`, `test`) when the file had a split column.
    pub split_counts: BTreeMap<String, usize>,
    /// `utf-8`, or `latin-1` when some fields were decoded from Latin-1.
    pub encoding: String,
    /// The columns used (absent for `LABEL SENTENCE` files).
    pub text_column: Option<String>,
    /// Second text column.
    pub text_b_column: Option<String>,
    /// Label column.
    pub label_column: Option<String>,
    /// Split column.
    pub split_column: Option<String>,
    /// Size of the upload, bytes.
    pub bytes: usize,
    /// Upload time (seconds since the Unix epoch), stamped by whoever stores the data set (0 until then).
    pub created_unix: u64,
}

/// Checks and normalizes an uploaded file; returns its description and its JSON lines.
pub fn normalize(
    bytes: &[u8],
    file_name: &str,
    opts: &DatasetOptions,
) -> Result<(DatasetInfo, Vec<u8>)> {
    if bytes.contains(&0) {
        bail!("the upload holds NUL bytes: it is not a text file (send CSV, TSV, JSON lines or `LABEL SENTENCE` text, UTF-8 or Latin-1)");
    }
    let inspect = InspectOptions {
        format: opts.format,
        text_column: opts.text_column.clone(),
        text_b_column: opts.text_b_column.clone(),
        label_column: opts.label_column.clone(),
        split_column: opts.split_column.clone(),
    };
    let seen = inspect_bytes(bytes, file_name, &inspect)?;
    let columns = Columns {
        text: seen.text_column.as_deref().unwrap_or(""),
        text_b: opts.text_b_column.as_deref(),
        label: seen.label_column.as_deref().unwrap_or(""),
        split: seen.split_column.as_deref(),
    };
    let rows = parse_rows(bytes, file_name, seen.format, &columns)?;
    let empty: Vec<usize> = rows
        .iter()
        .filter(|r| r.text.trim().is_empty())
        .map(|r| r.line)
        .collect();
    if !empty.is_empty() {
        bail!(
            "{} row(s) have an empty text (line {}{}): remove them or fill in `{}`",
            empty.len(),
            empty
                .iter()
                .take(5)
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if empty.len() > 5 { ", …" } else { "" },
            columns.text
        );
    }
    let found = seen.labels();
    let labels = match &opts.labels {
        Some(given) => {
            let missing: Vec<&String> = found.iter().filter(|v| !given.contains(v)).collect();
            if !missing.is_empty() {
                bail!("`labels` {given:?} lacks the label value(s) {missing:?} the file uses: list every class");
            }
            given.clone()
        }
        None => found,
    };
    if labels.len() < 2 {
        bail!(
            "the label column `{}` has {} distinct value(s) ({labels:?}): a classification task needs at least 2 (is `label_column` the right column?)",
            columns.label,
            labels.len()
        );
    }
    let mut counts = vec![0usize; labels.len()];
    let mut out = Vec::with_capacity(bytes.len());
    for r in &rows {
        let label = r.label.text();
        let Some(c) = labels.iter().position(|l| *l == label) else {
            bail!(
                "line {}: label {label:?} is not in `labels` {labels:?}",
                r.line
            );
        };
        counts[c] += 1;
        let split = match &r.split {
            Some(v) => Some(
                split_name(v)
                    .with_context(|| {
                        format!(
                            "line {}: split value {v:?} in `{}` is not train, dev (validation) or test",
                            r.line,
                            columns.split.unwrap_or("")
                        )
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let record = Record {
            text: r.text.clone(),
            text_b: r.text_b.clone(),
            label,
            split,
        };
        serde_json::to_writer(&mut out, &record)?;
        out.push(b'\n');
    }
    // The class order is part of a data set (class ids follow it), so it is hashed with the records.
    let mut hashed = serde_json::to_vec(&labels)?;
    hashed.push(b'\n');
    hashed.extend_from_slice(&out);
    let digest = hex_sha256(&hashed);
    let info = DatasetInfo {
        id: format!("ds-{}", &digest[..16]),
        name: opts.name.clone().unwrap_or_else(|| {
            std::path::Path::new(file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "data".into())
        }),
        format: seen.format,
        rows: rows.len(),
        labels,
        label_counts: counts,
        split_counts: seen.split_counts.clone(),
        encoding: seen.encoding.clone(),
        text_column: seen.text_column.clone(),
        text_b_column: opts.text_b_column.clone(),
        label_column: seen.label_column.clone(),
        split_column: seen.split_column.clone(),
        bytes: bytes.len(),
        created_unix: 0,
    };
    Ok((info, out))
}

/// A stored data set's examples by split (rows without a split are training rows), labels as class ids.
pub fn load(jsonl: &[u8], info: &DatasetInfo) -> Result<TaskData> {
    let mut data = TaskData::default();
    for (i, line) in jsonl.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line)
            .with_context(|| format!("data set {}: line {} is damaged", info.id, i + 1))?;
        let Some(label) = info.labels.iter().position(|l| *l == r.label) else {
            bail!(
                "data set {}: line {}: unknown label {:?}",
                info.id,
                i + 1,
                r.label
            );
        };
        let e = Example {
            text: r.text,
            text_b: r.text_b,
            label,
        };
        match r.split.as_deref() {
            Some("dev") => data.dev.push(e),
            Some("test") => data.test.push(e),
            _ => data.train.push(e),
        }
    }
    Ok(data)
}

/// Hex SHA-256 (a data set's id is its prefix).
fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_checks_and_loads() {
        let csv = b"sentence,tone,split\nfine work,praise,train\nawful,complaint,train\nit rains,fact,test\nok then,praise,validation\nbad,complaint,train\nrain,fact,train\n";
        let (info, jsonl) = normalize(csv, "tone.csv", &DatasetOptions::default()).unwrap();
        assert_eq!(info.labels, ["complaint", "fact", "praise"]);
        assert_eq!(info.label_counts, [2, 2, 2]);
        assert_eq!(info.name, "tone");
        assert!(info.id.starts_with("ds-") && info.id.len() == 19);
        let data = load(&jsonl, &info).unwrap();
        assert_eq!(
            (data.train.len(), data.dev.len(), data.test.len()),
            (4, 1, 1)
        );
        assert_eq!(data.test[0].label, 1);

        let opts = DatasetOptions {
            labels: Some(vec!["praise".into(), "complaint".into()]),
            ..Default::default()
        };
        let err = normalize(csv, "tone.csv", &opts).unwrap_err().to_string();
        assert!(err.contains("`labels`") && err.contains("fact"), "{err}");
        // Another class order is another data set (class ids differ).
        let opts = DatasetOptions {
            labels: Some(vec!["praise".into(), "fact".into(), "complaint".into()]),
            ..Default::default()
        };
        let (reordered, _) = normalize(csv, "tone.csv", &opts).unwrap();
        assert_eq!(reordered.labels, ["praise", "fact", "complaint"]);
        assert_ne!(reordered.id, info.id);
        let err = normalize(
            b"text,label\n,a\nb,b\nc,a\nd,b\n",
            "x.csv",
            &DatasetOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("empty text") && err.contains("line 2"),
            "{err}"
        );
        let err = normalize(b"a\0b", "x.csv", &DatasetOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a text file"), "{err}");
        let (latin, _) = normalize(
            b"0 caf\xe9 noir\n1 the tea\n0 x y\n1 y z\n",
            "f.txt",
            &DatasetOptions::default(),
        )
        .unwrap();
        assert_eq!(latin.encoding, "latin-1");
        assert_eq!(latin.labels, ["0", "1"]);
    }
}
