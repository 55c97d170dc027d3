//! Prediction and evaluation. Texts are tokenized off the async runtime (a small request, on it: see
//! [`INLINE_TOKENIZE_BYTES`]); a request holding more real tokens
//! than `max_request_tokens` is refused with 413 before it reaches the engine; a task whose forward pass
//! yields non-finite numbers answers 422 for that request, never 200 with nulls.

use super::{blocking, calibration_reason, labels_of, task, temperature_of, St};
use crate::data::Example;
use crate::engine::ServedTask;
use crate::metrics::{evaluate_logits, softmax_rows, ClassificationReport};
use crate::model::TextInput;
use crate::server::error::{ApiError, ApiResult, ErrorBody};
use crate::server::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// One input: a text, or a text pair.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictInput {
    /// A single text.
    Text(String),
    /// A text (and optional second text).
    Pair {
        /// First text.
        text: String,
        /// Second text.
        #[serde(default)]
        text_b: Option<String>,
    },
}

/// A prediction request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PredictRequest {
    /// Texts (or pairs) to classify: at least one, at most `max_batch_inputs` (GET /v1/info).
    #[schema(min_items = 1)]
    pub inputs: Vec<PredictInput>,
    /// Apply the task's temperature (fitted on dev) to the probabilities (default true).
    #[serde(default = "yes")]
    pub calibrate: bool,
    /// Also return raw logits.
    #[serde(default)]
    pub return_logits: bool,
}

fn yes() -> bool {
    true
}

/// Limits a request is checked against before any work.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Texts per request at most.
    pub max_inputs: usize,
    /// Real tokens per request at most.
    pub max_tokens: usize,
}

impl RequestLimits {
    /// The server's limits.
    pub fn of(s: &AppState) -> Self {
        Self {
            max_inputs: s.config.max_batch_inputs,
            max_tokens: s.config.max_request_tokens,
        }
    }
}

/// Checks the number of texts in the request's field `field` (`inputs`, `examples`): 400 when empty, 413
/// beyond the limit; the message names the field.
pub fn check_inputs(field: &str, n: usize, limits: RequestLimits) -> ApiResult<()> {
    if n == 0 {
        return Err(ApiError::bad_request(format!("`{field}` is empty")));
    }
    if n > limits.max_inputs {
        return Err(ApiError::too_large(format!(
            "{n} {field}; at most {} per request",
            limits.max_inputs
        )));
    }
    Ok(())
}

/// One prediction.
#[derive(Serialize, ToSchema)]
pub struct Prediction {
    /// Predicted class name.
    pub label: String,
    /// Its index.
    pub label_id: usize,
    /// Probability of every class, by name.
    pub probabilities: BTreeMap<String, f64>,
    /// Raw logits, when asked.
    pub logits: Option<Vec<f32>>,
}

/// A prediction response.
#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    /// Task.
    pub task: String,
    /// `none` or `temperature`.
    pub calibration: String,
    /// Temperature applied (1.0 for none).
    pub temperature: f64,
    /// Why this calibration (the decision recorded with the graft, or `calibrate: false`).
    pub calibration_reason: String,
    /// One per input, in order.
    pub predictions: Vec<Prediction>,
}

/// Model inputs of a task's examples (the prompt head fills its template).
fn to_texts(s: &AppState, t: &ServedTask, inputs: Vec<PredictInput>) -> ApiResult<Vec<TextInput>> {
    check_inputs("inputs", inputs.len(), RequestLimits::of(s))?;
    let examples: Vec<Example> = inputs
        .into_iter()
        .map(|i| match i {
            PredictInput::Text(text) => Example {
                text,
                text_b: None,
                label: 0,
            },
            PredictInput::Pair { text, text_b } => Example {
                text,
                text_b,
                label: 0,
            },
        })
        .collect();
    t.head()
        .inputs(&examples, s.base.tokenizer.mask_token())
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))
}

/// Requests whose texts hold at most this many bytes in all are tokenized on the async worker itself: that
/// takes tens of microseconds, less than handing them to a blocking thread and back.
const INLINE_TOKENIZE_BYTES: usize = 2048;

/// Logits of texts under a task: tokenized off the runtime (small requests inline, see
/// [`INLINE_TOKENIZE_BYTES`]), refused beyond the token budget, checked finite.
pub(super) async fn logits_for(
    s: &Arc<AppState>,
    t: &Arc<ServedTask>,
    texts: Vec<TextInput>,
) -> ApiResult<Vec<Vec<f32>>> {
    let st = s.clone();
    let prompt = t.head().uses_prompt();
    let bytes: usize = texts
        .iter()
        .map(|t| t.text.len() + t.text_b.as_ref().map_or(0, String::len))
        .sum();
    let encode = move || {
        st.base
            .tokenizer
            .encode(&texts, prompt)
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))
    };
    let batch = if bytes <= INLINE_TOKENIZE_BYTES {
        encode()?
    } else {
        blocking(encode).await?
    };
    let tokens = batch.real_tokens();
    if tokens > s.config.max_request_tokens {
        return Err(ApiError::too_large(format!(
            "the request holds {tokens} tokens; at most {} per request (send fewer or shorter texts)",
            s.config.max_request_tokens
        )));
    }
    let logits = s.engine.logits(t.clone(), batch).await?;
    if let Some(i) = logits
        .iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        tracing::error!("task `{}` produced non-finite logits for input {i}", t.name);
        return Err(ApiError::invalid(format!(
            "task `{}` produced non-finite scores for input {i}; its graft cannot be served (import a valid one)",
            t.name
        )));
    }
    Ok(logits)
}

/// Why a response's calibration is what it is.
fn reason(t: &ServedTask, calibrate: bool) -> String {
    if calibrate {
        calibration_reason(t)
    } else {
        "calibrate: false in the request".into()
    }
}

/// The calibration a response reports: `temperature` when one was applied, else `none`.
fn calibration_name(temperature: Option<f64>) -> &'static str {
    if temperature.is_some() {
        "temperature"
    } else {
        "none"
    }
}

/// Classify texts with a task: label, probabilities for every label, and the calibration applied.
#[utoipa::path(post, path = "/v1/tasks/{name}/predict", security(("api_key" = ["read"])), params(("name" = String, Path)),
    request_body = PredictRequest,
    responses((status = 200, body = PredictResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn predict(
    State(s): St,
    Path(name): Path<String>,
    Json(req): Json<PredictRequest>,
) -> ApiResult<Json<PredictResponse>> {
    let start = std::time::Instant::now();
    let t = task(&s, &name)?;
    let texts = to_texts(&s, &t, req.inputs)?;
    let logits = logits_for(&s, &t, texts).await?;
    let temperature = if req.calibrate {
        temperature_of(&t)
    } else {
        None
    };
    let temp = temperature.unwrap_or(1.0);
    let labels = labels_of(&t);
    let probs = softmax_rows(&logits, temp);
    if probs.iter().flatten().any(|p| !p.is_finite()) {
        return Err(ApiError::invalid(format!(
            "task `{name}` produced non-finite probabilities (temperature {temp}); its graft cannot be served"
        )));
    }
    let predictions = probs
        .into_iter()
        .zip(logits)
        .map(|(p, l)| {
            let id = crate::metrics::argmax(&p);
            Prediction {
                label: labels.get(id).cloned().unwrap_or_default(),
                label_id: id,
                probabilities: labels.iter().cloned().zip(p).collect(),
                logits: req.return_logits.then_some(l),
            }
        })
        .collect();
    s.metrics.record_task(
        s.config.metrics_per_task,
        &name,
        start.elapsed().as_secs_f64(),
    );
    Ok(Json(PredictResponse {
        calibration_reason: reason(&t, req.calibrate),
        task: name,
        calibration: calibration_name(temperature).into(),
        temperature: temp,
        predictions,
    }))
}

/// A class, by name or by index.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Label {
    /// Index into the task's labels.
    Index(u64),
    /// One of the task's label names.
    Name(String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Index(i) => write!(f, "{i}"),
            Label::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A labelled example for evaluation; the label is a class name or index.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LabelledInput {
    /// Text.
    pub text: String,
    /// Optional second text.
    #[serde(default)]
    pub text_b: Option<String>,
    /// Class name or index.
    pub label: Label,
}

/// An evaluation request: labelled examples, or an uploaded data set's split (any size: run through the
/// engine in batches, one report).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluateRequest {
    /// Labelled examples: at most `max_batch_inputs` (give `dataset` instead for more).
    #[serde(default)]
    pub examples: Vec<LabelledInput>,
    /// Id of an uploaded data set (POST /v1/datasets) to evaluate on, instead of `examples`; its labels
    /// are matched to the task's by name.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Which rows of the data set: `test` (default: its test split, or the held-out sample a job draws when
    /// it has none), `dev`, `train` or `all`.
    #[serde(default)]
    pub split: Option<String>,
    /// ECE bins (default 10).
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 1000)]
    pub bins: usize,
    /// Apply the task's temperature (default true).
    #[serde(default = "yes")]
    pub calibrate: bool,
}

impl EvaluateRequest {
    /// Checks sizes and the bin count.
    pub fn check(&self, limits: RequestLimits) -> ApiResult<()> {
        if self.bins == 0 || self.bins > 1000 {
            return Err(ApiError::bad_request("bins must be between 1 and 1000"));
        }
        match (&self.dataset, self.examples.is_empty()) {
            (Some(_), false) => Err(ApiError::bad_request(
                "give `examples` or `dataset`, not both",
            )),
            (Some(_), true) => Ok(()),
            (None, _) => check_inputs("examples", self.examples.len(), limits),
        }
    }
}

fn ten() -> usize {
    10
}

/// Metrics of a task on labelled examples.
#[derive(Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// Task.
    pub task: String,
    /// `none` or `temperature`.
    pub calibration: String,
    /// Why this calibration.
    pub calibration_reason: String,
    /// Examples evaluated.
    pub examples: usize,
    /// Metrics (accuracy, macro-F1, ECE with its bin count, NLL, Brier, reliability bins).
    #[schema(value_type = Object)]
    pub report: ClassificationReport,
}

/// Label ids and model inputs of labelled examples (400 naming the first label that is not the task's).
pub fn labelled(
    labels: &[String],
    examples: &[LabelledInput],
    what: &str,
) -> ApiResult<(Vec<usize>, Vec<PredictInput>)> {
    let mut ids = Vec::with_capacity(examples.len());
    let mut inputs = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        let id = match &e.label {
            Label::Index(n) => usize::try_from(*n).ok().filter(|&v| v < labels.len()),
            Label::Name(l) => labels.iter().position(|x| x == l),
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} {i}: label {} is not one of {labels:?}",
                e.label
            ))
        })?;
        ids.push(id);
        inputs.push(PredictInput::Pair {
            text: e.text.clone(),
            text_b: e.text_b.clone(),
        });
    }
    Ok((ids, inputs))
}

/// Label ids (matched by name to the task's labels) and inputs of an uploaded data set's rows.
async fn dataset_examples(
    s: &Arc<AppState>,
    t: &ServedTask,
    id: &str,
    split: Option<&str>,
) -> ApiResult<(Vec<usize>, Vec<PredictInput>)> {
    let task_labels = labels_of(t);
    let (st, id2, split) = (
        s.clone(),
        id.to_string(),
        split.unwrap_or("test").to_string(),
    );
    blocking(move || {
        let (info, data) = crate::server::jobs::load_dataset(&st, &id2)?;
        let rows: Vec<crate::data::Example> = match split.as_str() {
            "train" => data.train,
            "dev" => data.dev,
            "all" => [data.train, data.dev, data.test].concat(),
            "test" if !data.test.is_empty() => data.test,
            "test" => crate::data::fewshot::held_out_test(&data.train, 2000),
            other => {
                return Err(ApiError::bad_request(format!(
                    "`split`: unknown split `{other}` (test, dev, train or all)"
                )))
            }
        };
        if rows.is_empty() {
            return Err(ApiError::invalid(format!(
                "`split`: data set `{id2}` has no {split} rows"
            )));
        }
        let map: Vec<usize> = info
            .labels
            .iter()
            .map(|l| {
                task_labels.iter().position(|x| x == l).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "`dataset`: label {l:?} of data set `{id2}` is not a class of the task ({}): evaluate on data with the task's labels",
                        task_labels.join(", ")
                    ))
                })
            })
            .collect::<ApiResult<_>>()?;
        Ok(rows
            .into_iter()
            .map(|e| {
                (
                    map[e.label],
                    PredictInput::Pair {
                        text: e.text,
                        text_b: e.text_b,
                    },
                )
            })
            .unzip())
    })
    .await
}

/// Accuracy of a task on labelled examples (for compositions).
pub(super) async fn accuracy_of(
    s: &Arc<AppState>,
    t: &Arc<ServedTask>,
    ids: &[usize],
    inputs: Vec<PredictInput>,
) -> ApiResult<f64> {
    let texts = to_texts(s, t, inputs)?;
    let logits = logits_for(s, t, texts).await?;
    Ok(crate::model::predict::accuracy(&logits, ids))
}

/// Evaluate a task on labelled examples: accuracy, macro-F1, ECE (bins named), NLL, Brier, reliability bins.
#[utoipa::path(post, path = "/v1/tasks/{name}/evaluate", security(("api_key" = ["read"])), params(("name" = String, Path)),
    request_body = EvaluateRequest,
    responses((status = 200, body = EvaluateResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn evaluate(
    State(s): St,
    Path(name): Path<String>,
    Json(req): Json<EvaluateRequest>,
) -> ApiResult<Json<EvaluateResponse>> {
    let t = task(&s, &name)?;
    req.check(RequestLimits::of(&s))?;
    let (ids, logits) = match &req.dataset {
        None => {
            let (ids, inputs) = labelled(&labels_of(&t), &req.examples, "example")?;
            let texts = to_texts(&s, &t, inputs)?;
            (ids, logits_for(&s, &t, texts).await?)
        }
        Some(id) => {
            let (ids, inputs) = dataset_examples(&s, &t, id, req.split.as_deref()).await?;
            // Through the engine in request-sized batches; one report over all of them.
            let mut logits = Vec::with_capacity(ids.len());
            for chunk in inputs.chunks(s.config.max_batch_inputs.max(1)) {
                let texts = to_texts(&s, &t, chunk.to_vec())?;
                logits.extend(logits_for(&s, &t, texts).await?);
            }
            (ids, logits)
        }
    };
    let temperature = if req.calibrate {
        temperature_of(&t)
    } else {
        None
    };
    let report = evaluate_logits(&logits, &ids, temperature.unwrap_or(1.0), req.bins)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(Json(EvaluateResponse {
        calibration_reason: reason(&t, req.calibrate),
        task: name,
        calibration: calibration_name(temperature).into(),
        examples: ids.len(),
        report,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluate_request(examples: serde_json::Value) -> EvaluateRequest {
        serde_json::from_value(serde_json::json!({ "examples": examples }))
            .expect("a valid request")
    }

    #[test]
    fn an_empty_or_oversized_evaluation_names_examples() {
        let limits = RequestLimits {
            max_inputs: 1,
            max_tokens: 100,
        };
        let empty = evaluate_request(serde_json::json!([])).check(limits);
        let e = empty.expect_err("no examples is refused");
        assert_eq!(e.message, "`examples` is empty");
        let two = serde_json::json!([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]);
        let e = evaluate_request(two)
            .check(limits)
            .expect_err("over the limit");
        assert!(e.message.starts_with("2 examples;"), "{}", e.message);
    }
}
