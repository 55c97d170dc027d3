//! Text-classification data sets and deterministic few-shot splits.
//!
//! # Files
//!
//! The data directory (see [`data_dir_default`]) holds the classic sentence-classification sets
//! (SST-2, SST-5, MR, CR, MPQA, Subj). Each file has one example per line, `LABEL SENTENCE`: an
//! integer label, one space, then the sentence. [`read_label_sentence_file`] reads them:
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
//! Tables (`tsv`, `csv` with a header row, or `jsonl`) are read by [`read_table`].
//!
//! # Few-shot protocol
//!
//! [`few_shot`] follows LM-BFF: K examples per class for training and another, disjoint, K per
//! class for development, drawn from the training split with a seed, plus a test set. The
//! algorithm is fixed here so that the same seed gives the same split on every machine and with
//! every dependency version.
//!
//! **Random numbers.** SplitMix64 (Steele, Lea & Flood 2014), implemented in this module: the
//! state starts at the seed; each draw adds `0x9E3779B97F4A7C15` to the state (wrapping) and
//! returns `z ^ (z >> 31)` where `z = state`, `z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9`,
//! `z = (z ^ (z >> 27)) * 0x94D049BB133111EB` (wrapping multiplications). A uniform integer in
//! `0..b` is drawn with Lemire's multiply-shift method with rejection: draw `x`, let
//! `m = x * b` as a 128-bit product; reject while the low 64 bits of `m` are below
//! `(2^64 - b) mod b`; return the high 64 bits of `m`.
//!
//! **Shuffle.** Fisher–Yates from the back: for `i` from `len - 1` down to `1`, draw `j` uniform
//! in `0..=i` and swap elements `i` and `j`.
//!
//! **Steps.**
//!
//! 1. Test set. If the data has an official test split, it is the test set. Otherwise
//!    (single-file sets) the test set is a fixed held-out sample independent of the seed: the
//!    indices `0..n` of all examples are shuffled with SplitMix64 seeded `0x5EED_7E57`, the first
//!    `min(test_size, n / 2)` form the test set (kept in file order) and the rest form the pool
//!    (in file order).
//! 2. Pool = the training split (or the remainder of step 1). One SplitMix64 generator is seeded
//!    with `seed`. For each class `c` in `0..num_labels`, in order, the pool indices of the
//!    examples with label `c` (in file order) are shuffled with that one generator (shared across
//!    classes); the first K go to train, the next K to dev. A class with fewer than 2K examples
//!    is an error. The official dev split, if any, is not used.
//! 3. Train and dev are each ordered class by class as drawn: class 0's K examples in drawn
//!    order, then class 1's, and so on.
//! 4. If `max_test` is `Some(m)` and the test set has more than `m` examples, the test indices
//!    are shuffled with SplitMix64 seeded `0x7E57`, the first `m` are kept and file order is
//!    restored.
//!
//! Train, dev and test are disjoint by index; duplicate sentences are not removed.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "SKILLGRAFT_DATA_DIR";

/// Default data directory, relative to the working directory (the project root).
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// Seed of the fixed held-out test sample of single-file data sets.
const TEST_SAMPLE_SEED: u64 = 0x5EED_7E57;

/// Seed of the `max_test` subsample.
const MAX_TEST_SEED: u64 = 0x7E57;

/// Table formats understood by [`read_table`].
const TABLE_FORMATS: &[&str] = &["tsv", "csv", "jsonl"];

/// Names of the built-in tasks.
const BUILTIN_TASK_NAMES: &[&str] = &["sst2", "sst5", "mr", "cr", "mpqa", "subj"];

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

/// Where a task's examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// Official splits: train file, optional dev file, test file (label-sentence format).
    Split {
        /// Training file, relative to the data directory.
        train: String,
        /// Optional development file, relative to the data directory.
        dev: Option<String>,
        /// Test file, relative to the data directory.
        test: String,
    },
    /// One label-sentence file; test is a fixed held-out sample.
    Single {
        /// The file, relative to the data directory.
        file: String,
    },
    /// A table: path, format ("tsv" | "csv" | "jsonl"), text column, optional second text column, label column.
    Table {
        /// The file, relative to the data directory (or absolute).
        file: String,
        /// "tsv", "csv" or "jsonl".
        format: String,
        /// Column (or JSON key) of the sentence.
        text_column: String,
        /// Column (or JSON key) of the second sentence of a pair task.
        text_b_column: Option<String>,
        /// Column (or JSON key) of the label: a class id or a class name.
        label_column: String,
    },
}

/// Everything needed to train and evaluate one classification task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task name.
    pub name: String,
    /// Class names, index = label id.
    pub labels: Vec<String>,
    /// Prompt template with `{sentence}` (and optionally `{sentence_b}`) and exactly one `{mask}`, e.g. "{sentence} It was {mask} ."
    pub template: String,
    /// One label word per class, without leading space (e.g. "terrible", "great").
    #[serde(default)]
    pub label_words: Vec<String>,
    /// One natural-language description per class for prototype heads (e.g. "It was terrible.").
    #[serde(default)]
    pub label_descriptions: Vec<String>,
    /// Where the examples come from (none for a spec used only for inference).
    #[serde(default)]
    pub source: Option<DataSource>,
}

/// All labelled examples of a task, by official split (dev may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskData {
    /// Training split (all examples for single-file sets and tables).
    pub train: Vec<Example>,
    /// Official development split (empty when absent).
    pub dev: Vec<Example>,
    /// Official test split (empty for single-file sets and tables).
    pub test: Vec<Example>,
}

/// A deterministic few-shot split: K per class for train and (disjoint) dev, plus the test set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewShotSplit {
    /// K examples per class, class by class.
    pub train: Vec<Example>,
    /// Another K examples per class, disjoint from train, class by class.
    pub dev: Vec<Example>,
    /// The test set, in file order.
    pub test: Vec<Example>,
    /// Examples per class.
    pub k: usize,
    /// Seed of the sampler.
    pub seed: u64,
}

/// Options of the sampler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotOptions {
    /// Examples per class in train (and again in dev).
    pub k: usize,
    /// Seed of the train/dev draw.
    pub seed: u64,
    /// Size of the held-out test sample of single-file sets (at most half the examples).
    pub test_size: usize,
    /// Cap on the test set size for quick runs.
    pub max_test: Option<usize>,
}

impl Default for FewShotOptions {
    fn default() -> Self {
        Self {
            k: 16,
            seed: 42,
            test_size: 2000,
            max_test: None,
        }
    }
}

/// Loads a task's examples from `data_dir` and draws its few-shot split (test size 2000, optional cap).
pub fn task_split(
    spec: &TaskSpec,
    data_dir: &Path,
    k: usize,
    seed: u64,
    max_test: Option<usize>,
) -> Result<FewShotSplit> {
    let all = load_examples(spec, data_dir)?;
    let opts = FewShotOptions {
        max_test,
        ..FewShotOptions::new(k, seed)
    };
    few_shot(&all, spec.labels.len(), &opts)
}

impl FewShotOptions {
    /// Options with the given K and seed, test size 2000 and no test cap.
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k,
            seed,
            ..Self::default()
        }
    }
}

/// The built-in task with this name (case-insensitive), if any.
pub fn builtin_task(name: &str) -> Option<TaskSpec> {
    let sentiment_words = ["terrible", "great"];
    let sentiment_descriptions = ["It was terrible.", "It was great."];
    let sentiment_labels = ["negative", "positive"];
    let single = |file: &str| {
        Some(DataSource::Single {
            file: file.to_string(),
        })
    };
    let spec = match name.to_ascii_lowercase().as_str() {
        "sst2" => task(
            "sst2",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            Some(DataSource::Split {
                train: "stsa.binary.train".to_string(),
                dev: Some("stsa.binary.dev".to_string()),
                test: "stsa.binary.test".to_string(),
            }),
        ),
        "sst5" => task(
            "sst5",
            &[
                "very negative",
                "negative",
                "neutral",
                "positive",
                "very positive",
            ],
            "{sentence} It was {mask} .",
            &["terrible", "bad", "okay", "good", "great"],
            &[
                "It was terrible.",
                "It was bad.",
                "It was okay.",
                "It was good.",
                "It was great.",
            ],
            Some(DataSource::Split {
                train: "stsa.fine.train".to_string(),
                dev: Some("stsa.fine.dev".to_string()),
                test: "stsa.fine.test".to_string(),
            }),
        ),
        "mr" => task(
            "mr",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("rt-polarity.all"),
        ),
        "cr" => task(
            "cr",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("custrev.all"),
        ),
        "mpqa" => task(
            "mpqa",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("mpqa.all"),
        ),
        "subj" => task(
            "subj",
            &["subjective", "objective"],
            "{sentence} This is {mask} .",
            &["subjective", "objective"],
            &["This is subjective.", "This is objective."],
            single("subj.all"),
        ),
        _ => return None,
    };
    Some(spec)
}

/// Names of the built-in tasks, in a fixed order.
pub fn builtin_task_names() -> &'static [&'static str] {
    BUILTIN_TASK_NAMES
}

/// Builds a task spec from string slices.
fn task(
    name: &str,
    labels: &[&str],
    template: &str,
    words: &[&str],
    descriptions: &[&str],
    source: Option<DataSource>,
) -> TaskSpec {
    let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TaskSpec {
        name: name.to_string(),
        labels: owned(labels),
        template: template.to_string(),
        label_words: owned(words),
        label_descriptions: owned(descriptions),
        source,
    }
}

impl TaskSpec {
    /// Checks labels, label words, descriptions, template and table format.
    pub fn validate(&self) -> Result<()> {
        let n = self.labels.len();
        if n < 2 {
            bail!("task {:?}: needs at least 2 labels, found {n}", self.name);
        }
        if !self.label_words.is_empty() && self.label_words.len() != n {
            bail!(
                "task {:?}: {} label words for {n} labels (give one per label or none)",
                self.name,
                self.label_words.len()
            );
        }
        if !self.label_descriptions.is_empty() && self.label_descriptions.len() != n {
            bail!(
                "task {:?}: {} label descriptions for {n} labels (give one per label or none)",
                self.name,
                self.label_descriptions.len()
            );
        }
        let masks = self.template.matches("{mask}").count();
        if masks != 1 {
            bail!(
                "task {:?}: template {:?} must contain exactly one {{mask}}, found {masks}",
                self.name,
                self.template
            );
        }
        if !self.template.contains("{sentence}") {
            bail!(
                "task {:?}: template {:?} must contain {{sentence}}",
                self.name,
                self.template
            );
        }
        if let Some(DataSource::Table { format, .. }) = &self.source {
            if !TABLE_FORMATS.contains(&format.to_ascii_lowercase().as_str()) {
                bail!(
                    "task {:?}: unknown table format {format:?} (expected one of {TABLE_FORMATS:?})",
                    self.name
                );
            }
        }
        Ok(())
    }

    /// Reads a task spec from a JSON file and validates it.
    pub fn from_json_file(path: &Path) -> Result<TaskSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read task spec {}", path.display()))?;
        let spec: TaskSpec = serde_json::from_str(&text)
            .with_context(|| format!("invalid task spec JSON in {}", path.display()))?;
        spec.validate()
            .with_context(|| format!("invalid task spec in {}", path.display()))?;
        Ok(spec)
    }

    /// Fills the template: `{sentence}`, `{sentence_b}` (empty when absent) and `{mask}`.
    ///
    /// Placeholders are substituted in one pass, so braces inside the sentences are kept as is.
    pub fn render_prompt(&self, ex: &Example, mask_token: &str) -> String {
        let mut out = String::with_capacity(self.template.len() + ex.text.len() + 16);
        let mut rest = self.template.as_str();
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
}

/// The data directory: `SKILLGRAFT_DATA_DIR` if set, else `../shared/data`.
pub fn data_dir_default() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// Reads a whole data file; a missing file says how to set the data directory.
fn read_data_file(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow!(
            "data file {} not found (set the data directory with --data-dir or the {DATA_DIR_ENV} environment variable)",
            path.display()
        )),
        Err(e) => Err(anyhow::Error::new(e))
            .with_context(|| format!("cannot read data file {}", path.display())),
    }
}

/// Decodes bytes as UTF-8 when valid, otherwise as Latin-1.
fn decode_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Removes a UTF-8 byte-order mark.
fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Splits on `\n` only, trims ASCII whitespace, skips empty lines; yields (1-based line number, text).
fn text_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, String)> + '_ {
    strip_bom(bytes)
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim_ascii();
            (!line.is_empty()).then(|| (i + 1, decode_text(line)))
        })
}

/// Parses a trimmed, non-empty `LABEL SENTENCE` line.
fn parse_label_sentence(line: &str) -> std::result::Result<(usize, &str), String> {
    let (label, sentence) = match line.find([' ', '\t']) {
        Some(pos) => (&line[..pos], &line[pos + 1..]),
        None => (line, ""),
    };
    let label = label.parse::<usize>().map_err(|_| {
        format!(
            "expected `LABEL SENTENCE` with a non-negative integer label, found label {label:?}"
        )
    })?;
    Ok((label, sentence.trim_start_matches([' ', '\t'])))
}

/// Reads a label-sentence file, checking labels against `num_labels` when given.
fn read_label_sentence_checked(path: &Path, num_labels: Option<usize>) -> Result<Vec<Example>> {
    let bytes = read_data_file(path)?;
    let mut examples = Vec::new();
    for (line_no, line) in text_lines(&bytes) {
        let (label, sentence) = parse_label_sentence(&line)
            .map_err(|msg| anyhow!("{}:{line_no}: malformed line: {msg}", path.display()))?;
        if let Some(n) = num_labels {
            if label >= n {
                bail!(
                    "{}:{line_no}: label {label} out of range (the task has {n} classes)",
                    path.display()
                );
            }
        }
        examples.push(Example {
            text: sentence.to_string(),
            text_b: None,
            label,
        });
    }
    Ok(examples)
}

/// Reads a `LABEL SENTENCE` file (UTF-8, or Latin-1 line by line).
pub fn read_label_sentence_file(path: &Path) -> Result<Vec<Example>> {
    read_label_sentence_checked(path, None)
}

/// Reads a table (`tsv`/`csv` with a header row, or `jsonl`) into examples.
///
/// A label value is first matched against the class names in `labels`; otherwise it must be an
/// integer class id below `labels.len()`. In `jsonl`, a JSON number is always a class id. Quoted
/// fields are understood in both `csv` and `tsv`. Fields that are not valid UTF-8 are decoded as
/// Latin-1.
pub fn read_table(
    path: &Path,
    format: &str,
    text_column: &str,
    text_b_column: Option<&str>,
    label_column: &str,
    labels: &[String],
) -> Result<Vec<Example>> {
    let columns = Columns {
        text: text_column,
        text_b: text_b_column,
        label: label_column,
    };
    match format.to_ascii_lowercase().as_str() {
        "tsv" => read_delimited(path, b'\t', &columns, labels),
        "csv" => read_delimited(path, b',', &columns, labels),
        "jsonl" => read_jsonl(path, &columns, labels),
        other => bail!(
            "unknown table format {other:?} for {} (expected one of {TABLE_FORMATS:?})",
            path.display()
        ),
    }
}

/// Column names of a table.
struct Columns<'a> {
    text: &'a str,
    text_b: Option<&'a str>,
    label: &'a str,
}

/// Resolves a label value given as text: class name first, then integer id.
fn label_from_str(value: &str, labels: &[String]) -> std::result::Result<usize, String> {
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

/// Reads a delimited table with a header row.
fn read_delimited(
    path: &Path,
    delimiter: u8,
    columns: &Columns,
    labels: &[String],
) -> Result<Vec<Example>> {
    let bytes = read_data_file(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(strip_bom(&bytes));
    let header: Vec<String> = reader
        .byte_headers()
        .with_context(|| format!("cannot read the header row of {}", path.display()))?
        .iter()
        .map(|h| decode_text(h).trim().to_string())
        .collect();
    let find = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{}: column {name:?} not found (columns: {header:?})",
                path.display()
            )
        })
    };
    let text_idx = find(columns.text)?;
    let text_b_idx = columns.text_b.map(find).transpose()?;
    let label_idx = find(columns.label)?;

    let mut examples = Vec::new();
    for record in reader.byte_records() {
        let record = record.with_context(|| format!("cannot parse {}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |idx: usize| {
            record.get(idx).map(decode_text).ok_or_else(|| {
                anyhow!(
                    "{}:{line}: missing column {} ({} fields)",
                    path.display(),
                    idx + 1,
                    record.len()
                )
            })
        };
        let text = field(text_idx)?;
        let text_b = text_b_idx.map(field).transpose()?;
        let label_value = field(label_idx)?;
        let label = label_from_str(&label_value, labels)
            .map_err(|msg| anyhow!("{}:{line}: {msg}", path.display()))?;
        examples.push(Example {
            text,
            text_b,
            label,
        });
    }
    Ok(examples)
}

/// Reads a JSON-lines table.
fn read_jsonl(path: &Path, columns: &Columns, labels: &[String]) -> Result<Vec<Example>> {
    let bytes = read_data_file(path)?;
    let mut examples = Vec::new();
    for (line_no, line) in text_lines(&bytes) {
        let at = || format!("{}:{line_no}", path.display());
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: invalid JSON", at()))?;
        let object = value
            .as_object()
            .ok_or_else(|| anyhow!("{}: expected a JSON object", at()))?;
        let text_field = |key: &str| match object.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(anyhow!("{}: field {key:?} is not a string: {other}", at())),
            None => Err(anyhow!("{}: missing field {key:?}", at())),
        };
        let text = text_field(columns.text)?;
        let text_b = columns.text_b.map(text_field).transpose()?;
        let label = match object.get(columns.label) {
            Some(serde_json::Value::String(s)) => {
                label_from_str(s, labels).map_err(|msg| anyhow!("{}: {msg}", at()))?
            }
            Some(serde_json::Value::Number(num)) => match num.as_u64() {
                Some(id) if (id as u128) < labels.len() as u128 => id as usize,
                _ => bail!(
                    "{}: label value {num} is not a class id below {}",
                    at(),
                    labels.len()
                ),
            },
            Some(other) => bail!(
                "{}: label value {other} is neither a class name nor a class id",
                at()
            ),
            None => bail!("{}: missing field {:?}", at(), columns.label),
        };
        examples.push(Example {
            text,
            text_b,
            label,
        });
    }
    Ok(examples)
}

/// Loads all labelled examples of a task from the data directory.
pub fn load_examples(spec: &TaskSpec, data_dir: &Path) -> Result<TaskData> {
    spec.validate()?;
    let source = spec
        .source
        .as_ref()
        .ok_or_else(|| anyhow!("task {:?} has no data source", spec.name))?;
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
        } => TaskData {
            train: read_table(
                &data_dir.join(file),
                format,
                text_column,
                text_b_column.as_deref(),
                label_column,
                &spec.labels,
            )?,
            dev: Vec::new(),
            test: Vec::new(),
        },
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
    Ok(data)
}

/// SplitMix64 pseudo-random generator (fixed here so splits never change with a dependency).
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Generator whose state starts at `seed`.
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next 64-bit output.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..bound` (Lemire's method with rejection); `bound` must be positive.
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Fisher–Yates shuffle from the back.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Indices chosen by the sampler: train/dev index `data.train`; test indexes `data.test`, or
/// `data.train` when `test_from_train`.
#[derive(Debug, Clone, PartialEq)]
struct FewShotPlan {
    train: Vec<usize>,
    dev: Vec<usize>,
    test: Vec<usize>,
    test_from_train: bool,
}

/// Runs the documented few-shot algorithm on indices.
fn plan_few_shot(data: &TaskData, num_labels: usize, opts: &FewShotOptions) -> Result<FewShotPlan> {
    let k = opts.k;
    if k == 0 {
        bail!("few-shot K must be at least 1");
    }
    if num_labels == 0 {
        bail!("few-shot sampling needs at least one class");
    }
    for (split, examples) in [("train", &data.train), ("test", &data.test)] {
        if let Some((i, ex)) = examples
            .iter()
            .enumerate()
            .find(|(_, ex)| ex.label >= num_labels)
        {
            bail!(
                "{split} example {i} has label {} but there are {num_labels} classes",
                ex.label
            );
        }
    }

    let (mut test, pool, test_from_train) = if !data.test.is_empty() {
        (
            (0..data.test.len()).collect::<Vec<_>>(),
            (0..data.train.len()).collect::<Vec<_>>(),
            false,
        )
    } else {
        let n = data.train.len();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut SplitMix64::new(TEST_SAMPLE_SEED));
        let held_out = opts.test_size.min(n / 2);
        let mut test = order[..held_out].to_vec();
        let mut pool = order[held_out..].to_vec();
        test.sort_unstable();
        pool.sort_unstable();
        (test, pool, true)
    };

    let mut rng = SplitMix64::new(opts.seed);
    let mut train = Vec::with_capacity(k * num_labels);
    let mut dev = Vec::with_capacity(k * num_labels);
    for class in 0..num_labels {
        let mut members: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| data.train[i].label == class)
            .collect();
        if members.len() < 2 * k {
            bail!(
                "class {class} has {} examples in the training pool, but K = {k} needs {} (K for train and K for dev)",
                members.len(),
                2 * k
            );
        }
        shuffle(&mut members, &mut rng);
        train.extend_from_slice(&members[..k]);
        dev.extend_from_slice(&members[k..2 * k]);
    }

    if let Some(max) = opts.max_test {
        if test.len() > max {
            shuffle(&mut test, &mut SplitMix64::new(MAX_TEST_SEED));
            test.truncate(max);
            test.sort_unstable();
        }
    }

    Ok(FewShotPlan {
        train,
        dev,
        test,
        test_from_train,
    })
}

/// Draws a deterministic few-shot split (see the module documentation for the algorithm).
pub fn few_shot(data: &TaskData, num_labels: usize, opts: &FewShotOptions) -> Result<FewShotSplit> {
    let plan = plan_few_shot(data, num_labels, opts)?;
    let pick = |examples: &[Example], indices: &[usize]| -> Vec<Example> {
        indices.iter().map(|&i| examples[i].clone()).collect()
    };
    let test_source = if plan.test_from_train {
        &data.train
    } else {
        &data.test
    };
    Ok(FewShotSplit {
        train: pick(&data.train, &plan.train),
        dev: pick(&data.train, &plan.dev),
        test: pick(test_source, &plan.test),
        k: opts.k,
        seed: opts.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file in the temp directory, removed on drop.
    struct TempFile {
        path: PathBuf,
    }

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
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
    fn test_data_dir() -> Option<PathBuf> {
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

    fn ex(text: &str, label: usize) -> Example {
        Example {
            text: text.to_string(),
            text_b: None,
            label,
        }
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Synthetic data: `per_class` examples for each of `classes` classes, interleaved, unique texts.
    fn synthetic(classes: usize, per_class: usize) -> Vec<Example> {
        (0..classes * per_class)
            .map(|i| ex(&format!("sentence {i}"), i % classes))
            .collect()
    }

    fn texts(examples: &[Example]) -> HashSet<String> {
        examples.iter().map(|e| e.text.clone()).collect()
    }

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

        let spec = builtin_task("mr").unwrap();
        let err = load_examples(&spec, Path::new("/nonexistent-skillgraft-data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rt-polarity.all"), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
    }

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
    fn real_files_match_the_readme() {
        let Some(dir) = test_data_dir() else { return };
        let expected = [
            ("stsa.binary.train", 6920),
            ("stsa.binary.dev", 872),
            ("stsa.binary.test", 1821),
            ("stsa.fine.train", 8544),
            ("stsa.fine.dev", 1101),
            ("stsa.fine.test", 2210),
            ("rt-polarity.all", 10662),
            ("subj.all", 10000),
            ("custrev.all", 3775),
            ("mpqa.all", 10606),
        ];
        for (file, count) in expected {
            let examples = read_label_sentence_file(&dir.join(file)).unwrap();
            assert_eq!(examples.len(), count, "{file}");
            for e in &examples {
                assert!(!e.text.contains(['\n', '\r']), "{file}: {:?}", e.text);
                let trimmed = e.text.trim_matches(|c: char| c.is_ascii_whitespace());
                assert_eq!(trimmed, e.text, "{file}");
            }
        }
        let label_counts = |file: &str, classes: usize| {
            let mut counts = vec![0usize; classes];
            for e in read_label_sentence_file(&dir.join(file)).unwrap() {
                counts[e.label] += 1;
            }
            counts
        };
        assert_eq!(label_counts("stsa.binary.train", 2), [3310, 3610]);
        assert_eq!(
            label_counts("stsa.fine.train", 5),
            [1092, 2218, 1624, 2322, 1288]
        );
        assert_eq!(label_counts("rt-polarity.all", 2), [5331, 5331]);
        assert_eq!(label_counts("custrev.all", 2), [1368, 2407]);
        assert_eq!(label_counts("mpqa.all", 2), [7294, 3312]);
        assert_eq!(label_counts("subj.all", 2), [5000, 5000]);

        let mr = read_label_sentence_file(&dir.join("rt-polarity.all")).unwrap();
        assert!(
            mr.iter().any(|e| !e.text.is_ascii()),
            "Latin-1 chars expected"
        );
    }

    #[test]
    fn every_builtin_task_loads_from_the_real_data() {
        let Some(dir) = test_data_dir() else { return };
        for name in builtin_task_names() {
            let spec = builtin_task(name).unwrap();
            let data = load_examples(&spec, &dir).unwrap();
            assert!(!data.train.is_empty(), "{name}");
            let is_split = matches!(spec.source, Some(DataSource::Split { .. }));
            assert_eq!(!data.test.is_empty(), is_split, "{name}");
            let split = few_shot(&data, spec.labels.len(), &FewShotOptions::new(16, 13)).unwrap();
            assert_eq!(split.train.len(), 16 * spec.labels.len(), "{name}");
        }
    }

    #[test]
    fn mr_test_sample_is_fixed_and_disjoint() {
        let Some(dir) = test_data_dir() else { return };
        let spec = builtin_task("mr").unwrap();
        let data = load_examples(&spec, &dir).unwrap();
        let a = plan_few_shot(&data, 2, &FewShotOptions::new(16, 13)).unwrap();
        let b = plan_few_shot(&data, 2, &FewShotOptions::new(16, 42)).unwrap();
        assert!(a.test_from_train);
        assert_eq!(a.test.len(), 2000);
        // Pinned values, cross-checked with an independent Python implementation.
        assert_eq!(a.test[..8], [0, 2, 7, 9, 19, 20, 22, 25]);
        assert_eq!(a.train[..6], [4528, 4195, 3209, 1664, 62, 1651]);
        assert_eq!(a.test, b.test);
        assert_ne!(a.train, b.train);
        for plan in [&a, &b] {
            let train: HashSet<_> = plan.train.iter().collect();
            let dev: HashSet<_> = plan.dev.iter().collect();
            let test: HashSet<_> = plan.test.iter().collect();
            assert_eq!(train.len(), 32);
            assert_eq!(dev.len(), 32);
            assert!(train.is_disjoint(&dev));
            assert!(train.is_disjoint(&test));
            assert!(dev.is_disjoint(&test));
        }
        let split = few_shot(&data, 2, &FewShotOptions::new(16, 13)).unwrap();
        assert_eq!(split.test.len(), 2000);
        assert_eq!(split.train.iter().filter(|e| e.label == 0).count(), 16);
    }

    #[test]
    fn sst2_uses_the_official_test_split() {
        let Some(dir) = test_data_dir() else { return };
        let data = load_examples(&builtin_task("sst2").unwrap(), &dir).unwrap();
        let split = few_shot(&data, 2, &FewShotOptions::new(16, 21)).unwrap();
        assert_eq!(split.test, data.test);
        assert_eq!(split.test.len(), 1821);
        let mut opts = FewShotOptions::new(16, 21);
        opts.max_test = Some(100);
        assert_eq!(few_shot(&data, 2, &opts).unwrap().test.len(), 100);
    }

    #[test]
    fn splitmix64_matches_reference_outputs() {
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
        let mut rng = SplitMix64::new(7);
        for bound in [1u64, 2, 3, 10, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(bound) < bound);
            }
        }
    }

    #[test]
    fn shuffle_is_a_pinned_permutation() {
        let mut items: Vec<usize> = (0..10).collect();
        shuffle(&mut items, &mut SplitMix64::new(42));
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(items, GOLDEN_SHUFFLE_SEED_42);
    }

    /// Shuffle of 0..10 with seed 42 (cross-checked with an independent Python implementation of
    /// the documented algorithm); a change here changes every published split.
    const GOLDEN_SHUFFLE_SEED_42: [usize; 10] = [8, 3, 6, 5, 4, 0, 9, 2, 1, 7];

    #[test]
    fn few_shot_is_deterministic_balanced_and_disjoint() {
        let data = TaskData {
            train: synthetic(3, 50),
            dev: Vec::new(),
            test: synthetic(3, 5)
                .into_iter()
                .map(|e| ex(&format!("test {}", e.text), e.label))
                .collect(),
        };
        let opts = FewShotOptions::new(8, 13);
        let a = few_shot(&data, 3, &opts).unwrap();
        let b = few_shot(&data, 3, &opts).unwrap();
        assert_eq!(a, b);
        let c = few_shot(&data, 3, &FewShotOptions::new(8, 87)).unwrap();
        assert_ne!(a.train, c.train);
        assert_eq!((a.k, a.seed), (8, 13));

        for split in [&a, &c] {
            assert_eq!(split.train.len(), 24);
            assert_eq!(split.dev.len(), 24);
            for class in 0..3 {
                let block = &split.train[class * 8..(class + 1) * 8];
                assert!(block.iter().all(|e| e.label == class));
                let block = &split.dev[class * 8..(class + 1) * 8];
                assert!(block.iter().all(|e| e.label == class));
            }
            let (train, dev, test) = (texts(&split.train), texts(&split.dev), texts(&split.test));
            assert_eq!(train.len(), 24);
            assert_eq!(dev.len(), 24);
            assert!(train.is_disjoint(&dev));
            assert!(train.is_disjoint(&test));
            assert!(dev.is_disjoint(&test));
            assert_eq!(split.test, data.test);
        }
    }

    #[test]
    fn single_file_test_sample_ignores_the_seed() {
        let data = TaskData {
            train: synthetic(2, 100),
            ..TaskData::default()
        };
        let mut opts = FewShotOptions::new(4, 1);
        opts.test_size = 30;
        let a = few_shot(&data, 2, &opts).unwrap();
        opts.seed = 2;
        let b = few_shot(&data, 2, &opts).unwrap();
        assert_eq!(a.test.len(), 30);
        assert_eq!(a.test, b.test);
        assert_ne!(a.train, b.train);
        let position = |e: &Example| data.train.iter().position(|d| d == e).unwrap();
        let positions: Vec<usize> = a.test.iter().map(position).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "file order");
        let test = texts(&a.test);
        assert!(test.is_disjoint(&texts(&a.train)));
        assert!(test.is_disjoint(&texts(&a.dev)));

        opts.test_size = 2000;
        let all = plan_few_shot(&data, 2, &opts).unwrap();
        assert_eq!(all.test.len(), 100, "at most half the examples");
    }

    #[test]
    fn max_test_keeps_a_fixed_subsample_in_file_order() {
        let data = TaskData {
            train: synthetic(2, 40),
            dev: Vec::new(),
            test: synthetic(2, 60),
        };
        let mut opts = FewShotOptions::new(4, 5);
        opts.max_test = Some(25);
        let a = plan_few_shot(&data, 2, &opts).unwrap();
        opts.seed = 6;
        let b = plan_few_shot(&data, 2, &opts).unwrap();
        assert_eq!(a.test.len(), 25);
        assert_eq!(a.test, b.test);
        assert!(a.test.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(a.test, (0..25).collect::<Vec<_>>());
        opts.max_test = Some(1000);
        assert_eq!(plan_few_shot(&data, 2, &opts).unwrap().test.len(), 120);
    }

    #[test]
    fn too_few_examples_name_the_class() {
        let mut train = synthetic(2, 20);
        train.retain(|e| e.label == 0 || e.text.ends_with('1'));
        let data = TaskData {
            train,
            ..TaskData::default()
        };
        let err = plan_few_shot(&data, 2, &FewShotOptions::new(4, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 1"), "{err}");
        let bad = TaskData {
            train: vec![ex("a", 0), ex("b", 5)],
            ..TaskData::default()
        };
        assert!(few_shot(&bad, 2, &FewShotOptions::new(1, 1)).is_err());
        assert!(few_shot(&data, 2, &FewShotOptions::new(0, 1)).is_err());
    }

    #[test]
    fn csv_with_quoted_commas() {
        let file = TempFile::new(
            "t.csv",
            b"id,sentence,label\n1,\"good, really good\",positive\n2,\"bad \"\"film\"\"\",0\n",
        );
        let got = read_table(
            &file.path,
            "csv",
            "sentence",
            None,
            "label",
            &labels(&["negative", "positive"]),
        )
        .unwrap();
        assert_eq!(got, vec![ex("good, really good", 1), ex("bad \"film\"", 0)]);
    }

    #[test]
    fn tsv_with_pairs() {
        let file = TempFile::new(
            "t.tsv",
            b"premise\thypothesis\tlabel\nA man sleeps.\tA man rests.\t0\nIt rains.\tIt is dry.\tcontradiction\n",
        );
        let got = read_table(
            &file.path,
            "tsv",
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
        let got = read_table(&file.path, "jsonl", "text", None, "y", &names).unwrap();
        assert_eq!(got, vec![ex("great fun", 1), ex("dull", 0), ex("ok", 1)]);
    }

    #[test]
    fn class_names_win_over_ids() {
        let file = TempFile::new("stars.csv", b"text,stars\na,1\nb,5\n");
        let names = labels(&["1", "2", "3", "4", "5"]);
        let got = read_table(&file.path, "csv", "text", None, "stars", &names).unwrap();
        assert_eq!(got, vec![ex("a", 0), ex("b", 4)]);
    }

    #[test]
    fn bad_label_values_name_the_line() {
        let names = labels(&["negative", "positive"]);
        let file = TempFile::new(
            "bad.jsonl",
            b"{\"text\": \"a\", \"y\": 1}\n{\"text\": \"b\", \"y\": \"meh\"}\n",
        );
        let err = read_table(&file.path, "jsonl", "text", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2"), "{err}");
        assert!(err.contains("meh"), "{err}");

        let file = TempFile::new("bad.csv", b"text,y\na,0\nb,1\nc,2\n");
        let err = read_table(&file.path, "csv", "text", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4"), "{err}");
        assert!(err.contains("\"2\""), "{err}");

        let err = read_table(&file.path, "csv", "sentence", None, "y", &names)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"sentence\""), "{err}");
        assert!(read_table(&file.path, "xml", "text", None, "y", &names).is_err());
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
            format: "tsv".to_string(),
            text_column: "s".to_string(),
            text_b_column: None,
            label_column: "l".to_string(),
        });
        let data = load_examples(&spec, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let data = data.unwrap();
        assert_eq!(data.train, vec![ex("x", 1), ex("y", 0)]);
        assert!(data.dev.is_empty() && data.test.is_empty());
    }

    #[test]
    fn templates_render_in_one_pass() {
        let spec = builtin_task("sst2").unwrap();
        let sentence = ex("a {mask} of {sentence} braces {", 1);
        assert_eq!(
            spec.render_prompt(&sentence, "<mask>"),
            "a {mask} of {sentence} braces { It was <mask> ."
        );
        let mut pair = spec.clone();
        pair.template = "{sentence} ? {mask} , {sentence_b} {other}".to_string();
        let example = Example {
            text: "A".to_string(),
            text_b: Some("B".to_string()),
            label: 0,
        };
        assert_eq!(
            pair.render_prompt(&example, "[MASK]"),
            "A ? [MASK] , B {other}"
        );
        assert_eq!(
            pair.render_prompt(&ex("A", 0), "[MASK]"),
            "A ? [MASK] ,  {other}"
        );
    }

    #[test]
    fn validation_rejects_bad_specs() {
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
            &|s| s.label_words.truncate(s.labels.len() - 1),
            "label words",
        );
        check(
            &|s| s.label_descriptions.push("x".into()),
            "label descriptions",
        );
        check(
            &|s| s.template = "{sentence} {mask} {mask}".into(),
            "exactly one {mask}",
        );
        check(
            &|s| s.template = "{sentence} no mask".into(),
            "exactly one {mask}",
        );
        check(&|s| s.template = "{sentence_b} {mask}".into(), "{sentence}");
        check(
            &|s| {
                s.source = Some(DataSource::Table {
                    file: "f".into(),
                    format: "xlsx".into(),
                    text_column: "t".into(),
                    text_b_column: None,
                    label_column: "l".into(),
                })
            },
            "xlsx",
        );
        let mut no_words = good.clone();
        no_words.label_words.clear();
        no_words.label_descriptions.clear();
        no_words.validate().unwrap();
    }

    #[test]
    fn builtin_tasks_are_valid() {
        assert_eq!(
            builtin_task_names(),
            ["sst2", "sst5", "mr", "cr", "mpqa", "subj"]
        );
        for name in builtin_task_names() {
            let spec = builtin_task(name).unwrap();
            spec.validate().unwrap();
            assert_eq!(&spec.name, name);
            assert_eq!(spec.label_words.len(), spec.labels.len());
        }
        assert!(builtin_task("nope").is_none());
        assert_eq!(builtin_task("SST2").unwrap().name, "sst2");
        let subj = builtin_task("subj").unwrap();
        assert_eq!(subj.labels, ["subjective", "objective"]);
        assert_eq!(subj.template, "{sentence} This is {mask} .");
        assert_eq!(
            subj.source,
            Some(DataSource::Single {
                file: "subj.all".into()
            })
        );
    }

    #[test]
    fn task_spec_json_round_trip() {
        let spec = builtin_task("sst2").unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"kind\":\"split\""), "{json}");
        let file = TempFile::new("spec.json", json.as_bytes());
        assert_eq!(TaskSpec::from_json_file(&file.path).unwrap(), spec);

        let minimal = r#"{"name":"t","labels":["a","b"],"template":"{sentence} {mask}"}"#;
        let file = TempFile::new("min.json", minimal.as_bytes());
        let parsed = TaskSpec::from_json_file(&file.path).unwrap();
        assert!(parsed.source.is_none() && parsed.label_words.is_empty());

        let invalid = r#"{"name":"t","labels":["a"],"template":"{sentence} {mask}"}"#;
        let file = TempFile::new("bad.json", invalid.as_bytes());
        let err = format!("{:#}", TaskSpec::from_json_file(&file.path).unwrap_err());
        assert!(err.contains("at least 2 labels"), "{err}");

        let example = serde_json::to_string(&ex("x", 1)).unwrap();
        assert_eq!(example, r#"{"text":"x","label":1}"#);
    }
}
