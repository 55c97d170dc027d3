//! Reading data files: the `LABEL SENTENCE` format of the classic sets, and tables (CSV, TSV with a header
//! row, JSON lines).
//!
//! `LABEL SENTENCE` files ([`read_label_sentence_file`]):
//!
//! - the file is split on the byte `\n` only (never on `\r`, NEL `0x85` or other Unicode breaks);
//! - each line is decoded as UTF-8 when it is valid UTF-8, otherwise as Latin-1 (each byte becomes
//!   the char `U+00XX`), because `rt-polarity.all` and `subj.all` are Latin-1;
//! - ASCII whitespace (including `\r`) is trimmed from both ends of the line, and empty lines
//!   are skipped;
//! - a line that is only a label (the sentence is empty, as in a few lines of `custrev.all` and
//!   `mpqa.all`) gives an example with empty text, so line counts match the published counts;
//! - a line without an integer label is an error naming the file and the line number.
//!
//! Tables ([`read_table`], [`parse_rows`]): fields that are not valid UTF-8 are decoded as Latin-1 too;
//! quoted fields are understood in CSV and TSV; a label is a class name or a class id.

use super::Example;
use anyhow::{anyhow, bail, Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Environment variable that overrides the default data directory (repeated here for messages).
const DATA_DIR_ENV: &str = super::DATA_DIR_ENV;

/// Formats of data files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

/// A data file's format, tables and the `LABEL SENTENCE` lines alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// `LABEL SENTENCE` lines (an integer class id, a space, the sentence).
    LabelSentence,
}

impl FileFormat {
    /// The table format, when this is a table.
    pub fn table(self) -> Option<TableFormat> {
        match self {
            FileFormat::Csv => Some(TableFormat::Csv),
            FileFormat::Tsv => Some(TableFormat::Tsv),
            FileFormat::Jsonl => Some(TableFormat::Jsonl),
            FileFormat::LabelSentence => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Tsv => "tsv",
            FileFormat::Jsonl => "jsonl",
            FileFormat::LabelSentence => "label_sentence",
        }
    }

    /// Parses a name (case-insensitive).
    pub fn parse(name: &str) -> Result<FileFormat> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "csv" => FileFormat::Csv,
            "tsv" | "tab" => FileFormat::Tsv,
            "jsonl" | "ndjson" => FileFormat::Jsonl,
            "label_sentence" | "label-sentence" => FileFormat::LabelSentence,
            other => {
                bail!("unknown data format {other:?}: expected csv, tsv, jsonl or label_sentence")
            }
        })
    }
}

impl TableFormat {
    /// The format a file name's extension says (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`/`.json`).
    pub fn from_path(path: &Path) -> Option<TableFormat> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TableFormat::Csv),
            "tsv" | "tab" => Some(TableFormat::Tsv),
            "jsonl" | "ndjson" | "json" => Some(TableFormat::Jsonl),
            _ => None,
        }
    }

    /// As a [`FileFormat`].
    pub fn file_format(self) -> FileFormat {
        match self {
            TableFormat::Csv => FileFormat::Csv,
            TableFormat::Tsv => FileFormat::Tsv,
            TableFormat::Jsonl => FileFormat::Jsonl,
        }
    }
}

/// A label as written in a file: a name, or a class id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelValue {
    /// A class id (a JSON number, or the integer of a `LABEL SENTENCE` line).
    Id(u64),
    /// Text (a class name, or digits that may be an id).
    Name(String),
}

impl std::fmt::Display for LabelValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelValue::Id(i) => write!(f, "{i}"),
            LabelValue::Name(s) => write!(f, "{s:?}"),
        }
    }
}

impl LabelValue {
    /// The value as text (ids as digits).
    pub fn text(&self) -> String {
        match self {
            LabelValue::Id(i) => i.to_string(),
            LabelValue::Name(s) => s.trim().to_string(),
        }
    }

    /// The class id: a name from `labels` first, then an integer id below `labels.len()`.
    pub fn resolve(&self, labels: &[String]) -> std::result::Result<usize, String> {
        match self {
            LabelValue::Id(id) => match usize::try_from(*id) {
                Ok(id) if id < labels.len() => Ok(id),
                _ => Err(format!(
                    "label {id} is not a class id below {} (classes: {labels:?})",
                    labels.len()
                )),
            },
            LabelValue::Name(value) => {
                let value = value.trim();
                if let Some(id) = labels.iter().position(|l| l == value) {
                    return Ok(id);
                }
                match value.parse::<usize>() {
                    Ok(id) if id < labels.len() => Ok(id),
                    _ => Err(format!(
                        "label value {value:?} is neither a class name {labels:?} nor a class id below {}",
                        labels.len()
                    )),
                }
            }
        }
    }
}

/// One row of a data file, before labels are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line (record) number.
    pub line: usize,
    /// The sentence.
    pub text: String,
    /// The second sentence, when a column names it.
    pub text_b: Option<String>,
    /// The label as written.
    pub label: LabelValue,
    /// The split column's value, when a column names it.
    pub split: Option<String>,
    /// Whether a field was not UTF-8 and was decoded as Latin-1.
    pub latin1: bool,
}

/// Column names of a table.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// Sentence column.
    pub text: &'a str,
    /// Second-sentence column.
    pub text_b: Option<&'a str>,
    /// Label column.
    pub label: &'a str,
    /// Split column.
    pub split: Option<&'a str>,
}

/// Reads a whole data file; a missing file says how to set the data directory.
pub(crate) fn read_data_file(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow!(
            "data file {} not found (paths in a task spec file are relative to the spec file's folder; built-in tasks read the data directory: set it with --data-dir or the {DATA_DIR_ENV} environment variable)",
            path.display()
        )),
        Err(e) => Err(anyhow::Error::new(e))
            .with_context(|| format!("cannot read data file {}", path.display())),
    }
}

/// Decodes bytes as UTF-8 when valid, otherwise as Latin-1; says which.
pub(crate) fn decode_text(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (bytes.iter().map(|&b| char::from(b)).collect(), true),
    }
}

/// Removes a UTF-8 byte-order mark.
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Splits on `\n` only, trims ASCII whitespace, skips empty lines; yields (1-based line, text, Latin-1?).
pub(crate) fn text_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, String, bool)> + '_ {
    strip_bom(bytes)
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim_ascii();
            (!line.is_empty()).then(|| {
                let (text, latin1) = decode_text(line);
                (i + 1, text, latin1)
            })
        })
}

/// Parses a trimmed, non-empty `LABEL SENTENCE` line.
fn parse_label_sentence(line: &str) -> std::result::Result<(u64, &str), String> {
    let (label, sentence) = match line.find([' ', '\t']) {
        Some(pos) => (&line[..pos], &line[pos + 1..]),
        None => (line, ""),
    };
    let label = label.parse::<u64>().map_err(|_| {
        format!(
            "expected `LABEL SENTENCE` with a non-negative integer label, found label {label:?}"
        )
    })?;
    Ok((label, sentence.trim_start_matches([' ', '\t'])))
}

/// Rows of `LABEL SENTENCE` bytes; `origin` names the file in messages.
pub fn parse_label_sentence_rows(bytes: &[u8], origin: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (line_no, line, latin1) in text_lines(bytes) {
        let (label, sentence) = parse_label_sentence(&line)
            .map_err(|msg| anyhow!("{origin}:{line_no}: malformed line: {msg}"))?;
        rows.push(Row {
            line: line_no,
            text: sentence.to_string(),
            text_b: None,
            label: LabelValue::Id(label),
            split: None,
            latin1,
        });
    }
    Ok(rows)
}

/// Rows of a file in any [`FileFormat`] (the columns are ignored for `LABEL SENTENCE`).
pub fn parse_rows(
    bytes: &[u8],
    origin: &str,
    format: FileFormat,
    columns: &Columns,
) -> Result<Vec<Row>> {
    match format {
        FileFormat::Csv => parse_delimited(bytes, origin, b',', columns),
        FileFormat::Tsv => parse_delimited(bytes, origin, b'\t', columns),
        FileFormat::Jsonl => parse_jsonl(bytes, origin, columns),
        FileFormat::LabelSentence => parse_label_sentence_rows(bytes, origin),
    }
}

/// The header row of a delimited table (decoded, trimmed).
pub(crate) fn delimited_header(bytes: &[u8], delimiter: u8) -> Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(strip_bom(bytes));
    Ok(reader
        .byte_headers()?
        .iter()
        .map(|h| decode_text(h).0.trim().to_string())
        .collect())
}

/// Reads a delimited table with a header row.
fn parse_delimited(
    bytes: &[u8],
    origin: &str,
    delimiter: u8,
    columns: &Columns,
) -> Result<Vec<Row>> {
    let header = delimited_header(bytes, delimiter)
        .with_context(|| format!("cannot read the header row of {origin}"))?;
    let find = |what: &str, name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!("{origin}: {what} {name:?} not found (columns: {header:?}): fix `{what}` in the task spec (or the upload's options)")
        })
    };
    let text_idx = find("text_column", columns.text)?;
    let text_b_idx = columns
        .text_b
        .map(|c| find("text_b_column", c))
        .transpose()?;
    let label_idx = find("label_column", columns.label)?;
    let split_idx = columns.split.map(|c| find("split_column", c)).transpose()?;

    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(strip_bom(bytes));
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| anyhow!("{origin}: {e}"))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let mut latin1 = false;
        let mut field = |idx: usize| {
            record
                .get(idx)
                .map(|b| {
                    let (s, l) = decode_text(b);
                    latin1 |= l;
                    s
                })
                .ok_or_else(|| {
                    anyhow!(
                        "{origin}:{line}: missing column {} ({} fields)",
                        idx + 1,
                        record.len()
                    )
                })
        };
        let text = field(text_idx)?;
        let text_b = text_b_idx.map(&mut field).transpose()?;
        let label = LabelValue::Name(field(label_idx)?);
        let split = split_idx.map(&mut field).transpose()?;
        rows.push(Row {
            line,
            text,
            text_b,
            label,
            split,
            latin1,
        });
    }
    Ok(rows)
}

/// Reads a JSON-lines table.
fn parse_jsonl(bytes: &[u8], origin: &str, columns: &Columns) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (line_no, line, latin1) in text_lines(bytes) {
        let at = || format!("{origin}:{line_no}");
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: invalid JSON", at()))?;
        let object = value
            .as_object()
            .ok_or_else(|| anyhow!("{}: expected a JSON object", at()))?;
        let text_field = |what: &str, key: &str| match object.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(anyhow!("{}: field {key:?} is not a string: {other}", at())),
            None => Err(anyhow!(
                "{}: missing field {key:?} (keys: {:?}): fix `{what}`",
                at(),
                object.keys().collect::<Vec<_>>()
            )),
        };
        let text = text_field("text_column", columns.text)?;
        let text_b = columns
            .text_b
            .map(|k| text_field("text_b_column", k))
            .transpose()?;
        let split = columns
            .split
            .map(|k| text_field("split_column", k))
            .transpose()?;
        let label = match object.get(columns.label) {
            Some(serde_json::Value::String(s)) => LabelValue::Name(s.clone()),
            Some(serde_json::Value::Number(num)) => match num.as_u64() {
                Some(id) => LabelValue::Id(id),
                None => bail!(
                    "{}: label value {num} is not a class id (a non-negative integer)",
                    at()
                ),
            },
            Some(other) => bail!(
                "{}: label value {other} is neither a class name nor a class id",
                at()
            ),
            None => bail!(
                "{}: missing field {:?} (keys: {:?}): fix `label_column`",
                at(),
                columns.label,
                object.keys().collect::<Vec<_>>()
            ),
        };
        rows.push(Row {
            line: line_no,
            text,
            text_b,
            label,
            split,
            latin1,
        });
    }
    Ok(rows)
}

/// Resolves rows' labels against the class names; an unknown label names the line.
pub fn rows_to_examples(rows: Vec<Row>, labels: &[String], origin: &str) -> Result<Vec<Example>> {
    rows.into_iter()
        .map(|r| {
            let label = r
                .label
                .resolve(labels)
                .map_err(|msg| anyhow!("{origin}:{}: {msg}", r.line))?;
            Ok(Example {
                text: r.text,
                text_b: r.text_b,
                label,
            })
        })
        .collect()
}

/// Reads a label-sentence file, checking labels against `num_labels` when given.
pub(crate) fn read_label_sentence_checked(
    path: &Path,
    num_labels: Option<usize>,
) -> Result<Vec<Example>> {
    let bytes = read_data_file(path)?;
    let origin = path.display().to_string();
    let rows = parse_label_sentence_rows(&bytes, &origin)?;
    rows.into_iter()
        .map(|r| {
            let LabelValue::Id(label) = r.label else {
                unreachable!("label-sentence rows have ids")
            };
            let label = usize::try_from(label).unwrap_or(usize::MAX);
            if let Some(n) = num_labels {
                if label >= n {
                    bail!(
                        "{origin}:{}: label {label} out of range (the task has {n} classes)",
                        r.line
                    );
                }
            }
            Ok(Example {
                text: r.text,
                text_b: None,
                label,
            })
        })
        .collect()
}

/// Reads a `LABEL SENTENCE` file (UTF-8, or Latin-1 line by line).
pub fn read_label_sentence_file(path: &Path) -> Result<Vec<Example>> {
    read_label_sentence_checked(path, None)
}

/// Reads a table (`tsv`/`csv` with a header row, or `jsonl`) into examples.
///
/// A label value is first matched against the class names in `labels`; otherwise it must be an
/// integer class id below `labels.len()`. In `jsonl`, a JSON number is always a class id.
pub fn read_table(
    path: &Path,
    format: TableFormat,
    text_column: &str,
    text_b_column: Option<&str>,
    label_column: &str,
    labels: &[String],
) -> Result<Vec<Example>> {
    let bytes = read_data_file(path)?;
    let origin = path.display().to_string();
    let columns = Columns {
        text: text_column,
        text_b: text_b_column,
        label: label_column,
        split: None,
    };
    let rows = parse_rows(&bytes, &origin, format.file_format(), &columns)?;
    rows_to_examples(rows, labels, &origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{ex, labels, TempFile};

    #[test]
    fn latin1_lines_are_decoded_and_split_only_on_newline() {
        let file = TempFile::new("latin1.txt", b"1 caf\xe9 \x85 ok  \n0 plain\n");
        let examples = read_label_sentence_file(&file.path).unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].text, "café \u{85} ok");
        assert_eq!(examples[0].label, 1);
        assert_eq!(examples[1].text, "plain");
        assert_eq!(examples[1].label, 0);
    }

    #[test]
    fn utf8_lines_stay_utf8_and_crlf_blank_and_label_only_lines_are_handled() {
        let file = TempFile::new(
            "utf8.txt",
            "\u{feff}1 café\r\n\n   \n0  two spaces\t\r\n1 \n0\tx\n".as_bytes(),
        );
        let examples = read_label_sentence_file(&file.path).unwrap();
        assert_eq!(
            examples,
            vec![ex("café", 1), ex("two spaces", 0), ex("", 1), ex("x", 0)]
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let file = TempFile::new("bad.txt", b"0 good\n\nx bad line\n");
        let err = read_label_sentence_file(&file.path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{}:3", file.path.display())), "{err}");
        assert!(err.contains("\"x\""), "{err}");

        let file = TempFile::new("neg.txt", b"-1 negative label\n");
        let err = read_label_sentence_file(&file.path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn missing_file_says_how_to_set_data_dir() {
        let path = std::env::temp_dir().join("skillgraft-no-such-dir/stsa.binary.train");
        let err = read_label_sentence_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
        assert!(err.contains("SKILLGRAFT_DATA_DIR"), "{err}");
        assert!(err.contains("spec file's folder"), "{err}");
    }

    #[test]
    fn csv_with_quoted_commas_and_latin1_fields() {
        let file = TempFile::new(
            "t.csv",
            b"id,sentence,label\n1,\"good, really good\",positive\n2,\"bad \"\"film\"\"\",0\n3,caf\xe9,1\n",
        );
        let got = read_table(
            &file.path,
            TableFormat::Csv,
            "sentence",
            None,
            "label",
            &labels(&["negative", "positive"]),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ex("good, really good", 1),
                ex("bad \"film\"", 0),
                ex("café", 1)
            ]
        );
    }

    #[test]
    fn tsv_with_pairs() {
        let file = TempFile::new(
            "t.tsv",
            b"premise\thypothesis\tlabel\nA man sleeps.\tA man rests.\t0\nIt rains.\tIt is dry.\tcontradiction\n",
        );
        let got = read_table(
            &file.path,
            TableFormat::Tsv,
            "premise",
            Some("hypothesis"),
            "label",
            &labels(&["entailment", "contradiction"]),
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text, "A man sleeps.");
        assert_eq!(got[0].text_b.as_deref(), Some("A man rests."));
        assert_eq!(got[1].label, 1);
    }

    #[test]
    fn jsonl_with_string_and_numeric_labels() {
        let file = TempFile::new(
            "t.jsonl",
            b"{\"text\": \"great fun\", \"y\": \"positive\"}\n\n{\"text\": \"dull\", \"y\": 0}\n{\"text\": \"ok\", \"y\": \"1\"}\n",
        );
        let names = labels(&["negative", "positive"]);
        let got = read_table(&file.path, TableFormat::Jsonl, "text", None, "y", &names).unwrap();
        assert_eq!(got, vec![ex("great fun", 1), ex("dull", 0), ex("ok", 1)]);
    }

    #[test]
    fn class_names_win_over_ids() {
        let file = TempFile::new("stars.csv", b"text,stars\na,1\nb,5\n");
        let names = labels(&["1", "2", "3", "4", "5"]);
        let got = read_table(&file.path, TableFormat::Csv, "text", None, "stars", &names).unwrap();
        assert_eq!(got, vec![ex("a", 0), ex("b", 4)]);
    }

    #[test]
    fn bad_label_values_and_columns_name_the_line_and_the_field() {
        let names = labels(&["negative", "positive"]);
        let file = TempFile::new(
            "bad.jsonl",
            b"{\"text\": \"a\", \"y\": 1}\n{\"text\": \"b\", \"y\": \"meh\"}\n",
        );
        let err = read_table(&file.path, TableFormat::Jsonl, "text", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2"), "{err}");
        assert!(err.contains("meh"), "{err}");

        let file = TempFile::new("bad.csv", b"text,y\na,0\nb,1\nc,2\n");
        let err = read_table(&file.path, TableFormat::Csv, "text", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4"), "{err}");
        assert!(err.contains("\"2\""), "{err}");

        let err = read_table(&file.path, TableFormat::Csv, "sentence", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"sentence\"") && err.contains("`text_column`"),
            "{err}"
        );
        assert!(FileFormat::parse("xml").is_err());
        assert_eq!(
            TableFormat::from_path(Path::new("a/b.TSV")),
            Some(TableFormat::Tsv)
        );
    }
}
