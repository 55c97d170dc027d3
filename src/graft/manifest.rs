//! A graft's manifest: everything about it except its values (the JSON in the file's header metadata).
//!
//! What the code reads from a manifest is typed: the hyper-parameter `sparsity` ([`HyperParameters`]), and
//! in the metrics ([`GraftMetrics`]) each variant's name, size, temperature and test reports, the
//! calibration decision `predict` applies, and the retention curve. Every other key a file carries is kept
//! as it is (`extra`), every known key is optional (`#[serde(default)]`: grafts of older versions parse),
//! and a key that a file holds as `null` stays `null` when the manifest is written again, so a file
//! round-trips to the same JSON.

use super::budget::Retention;
use super::RegionSpec;
use crate::data::TaskSpec;
use crate::model::heads::HeadSpec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Which base model a graft belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Human name (directory name).
    pub name: String,
    /// SHA-256 of the base's weight files.
    pub content_hash: String,
    /// `bert` / `roberta`.
    pub architecture: String,
    /// Parameters of the base body (embeddings + encoder + pooler).
    pub parameters: usize,
}

/// Everything about a graft except its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraftManifest {
    /// File format version.
    pub format: u32,
    /// The base model.
    pub base: BaseRef,
    /// The region grafting selected from.
    pub region: RegionSpec,
    /// Parameters in the region.
    pub region_size: usize,
    /// Grafted parameters.
    pub size: usize,
    /// Localization method.
    pub method: String,
    /// Its hyper-parameters (`null` in grafts that record none).
    #[serde(serialize_with = "as_json_value")]
    pub hyper_parameters: Option<HyperParameters>,
    /// The task head.
    pub head: HeadSpec,
    /// The task.
    pub task: Option<TaskSpec>,
    /// Measured metrics, by the command that made the graft (`null` in grafts that record none).
    #[serde(serialize_with = "as_json_value")]
    pub metrics: Option<GraftMetrics>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A graft's hyper-parameters: the localization options of a job, the members and rule of a composition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HyperParameters {
    /// The graft size the job localized at, as a fraction of the region.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sparsity: Option<Option<f64>>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What the command that made a graft measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraftMetrics {
    /// The calibration decision `predict` applies.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub calibration: Option<Option<StoredCalibration>>,
    /// The retention curve (read through [`GraftManifest::retention`]: a record that does not parse is
    /// kept, and ignored).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<Option<Value>>,
    /// Base+head, base patch, graft and fine-tuned, measured side by side.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub variants: Option<Option<Vec<StoredVariant>>>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A stored calibration decision (see [`crate::calibration::CalibrationDecision`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredCalibration {
    /// `temperature` (applied) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The temperature applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The temperature fitted on dev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_temperature: Option<f64>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One stored variant report (see [`super::evaluate::VariantReport`]); every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredVariant {
    /// `base+head`, `base patch`, `graft`, `fine-tuned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Value>,
    /// Temperature its calibration applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Test metrics at temperature 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<StoredReport>,
    /// Test metrics at the temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_calibrated: Option<StoredReport>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The parts of a stored classification report the service reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    /// Accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Value>,
    /// Expected calibration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<Value>,
    /// Its bins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece_bins: Option<Value>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A key that is present: `Some(None)` when it holds `null` (absent keys are `None` by `default`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Writes `v` as a JSON value: its objects' keys sorted, known and kept ones alike, as when the whole object
/// was free-form JSON.
fn as_json_value<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(v)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

impl StoredVariant {
    /// The full report, when the stored one has every field of one.
    pub fn report(&self) -> Option<super::evaluate::VariantReport> {
        serde_json::from_value(serde_json::to_value(self).ok()?).ok()
    }
}

impl GraftManifest {
    /// Graft size as a fraction of the region.
    pub fn region_fraction(&self) -> f64 {
        self.size as f64 / self.region_size.max(1) as f64
    }

    /// Graft size as a fraction of all base body parameters.
    pub fn model_fraction(&self) -> f64 {
        self.size as f64 / self.base.parameters.max(1) as f64
    }

    /// The stored calibration decision, when there is one.
    pub fn calibration(&self) -> Option<&StoredCalibration> {
        self.metrics.as_ref()?.calibration.as_ref()?.as_ref()
    }

    /// The stored variant reports (none when not recorded).
    pub fn variants(&self) -> &[StoredVariant] {
        self.metrics
            .as_ref()
            .and_then(|m| m.variants.as_ref())
            .and_then(|v| v.as_deref())
            .unwrap_or_default()
    }

    /// The stored retention record as written (None when absent or `null`).
    pub fn retention_record(&self) -> Option<&Value> {
        self.metrics.as_ref()?.retention.as_ref()?.as_ref()
    }

    /// The retention curve the localization job recorded (None for grafts made before retention targets,
    /// without a budget, or whose record does not parse).
    pub fn retention(&self) -> Option<Retention> {
        serde_json::from_value(self.retention_record()?.clone())
            .ok()
            .filter(|r: &Retention| r.chosen < r.points.len())
    }

    /// The sparsity the graft was localized at, when its hyper-parameters say.
    pub fn sparsity(&self) -> Option<f64> {
        self.hyper_parameters.as_ref()?.sparsity.flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(metrics: Value, hyper: Value) -> Value {
        serde_json::json!({
            "format": 1,
            "base": {"name": "m", "content_hash": "h", "architecture": "bert", "parameters": 10},
            "region": {}, "region_size": 10, "size": 1, "method": "paper",
            "hyper_parameters": hyper,
            "head": {"kind": "linear", "num_labels": 2, "pooling": "cls"},
            "task": null, "metrics": metrics, "created_unix": 0
        })
    }

    #[test]
    fn manifests_round_trip_with_unknown_keys_and_nulls() {
        let cases = [
            manifest(Value::Null, Value::Null),
            manifest(
                serde_json::json!({}),
                serde_json::json!({"members": ["a"], "rule": "mean"}),
            ),
            manifest(
                serde_json::json!({"budget": 3, "calibration": null, "retention": null,
                    "variants": [{"name": "graft", "size": 1, "temperature": 1.5, "train_accuracy": 0.5,
                        "test": {"accuracy": 0.75, "ece": 0.1, "ece_bins": 10, "nll": 0.3}}],
                    "split": {"k": 16}}),
                serde_json::json!({"sparsity": 0.001, "epochs": 10, "method": "paper"}),
            ),
            manifest(
                serde_json::json!({"calibration": {"method": "temperature", "temperature": 2.0,
                    "reason": "r", "folds": 5}}),
                serde_json::json!({"sparsity": null}),
            ),
        ];
        for v in cases {
            let m: GraftManifest = serde_json::from_value(v.clone()).unwrap();
            let text = serde_json::to_string(&m).unwrap();
            // Written exactly as the free-form JSON was (keys sorted, nulls kept, unknown keys kept).
            for key in ["metrics", "hyper_parameters"] {
                let before = serde_json::to_string(&v[key]).unwrap();
                assert!(
                    text.contains(&format!("\"{key}\":{before}")),
                    "{key}: {before} not in {text}"
                );
            }
            let again: GraftManifest = serde_json::from_str(&text).unwrap();
            assert_eq!(again, m);
        }
    }

    #[test]
    fn typed_readers_see_what_the_files_say() {
        let v = manifest(
            serde_json::json!({"calibration": {"method": "temperature", "temperature": 2.0, "reason": "r"},
                "variants": [{"name": "graft", "temperature": 1.5}]}),
            serde_json::json!({"sparsity": 0.001}),
        );
        let m: GraftManifest = serde_json::from_value(v).unwrap();
        assert_eq!(m.sparsity(), Some(0.001));
        let c = m.calibration().unwrap();
        assert_eq!(
            (c.method.as_deref(), c.temperature),
            (Some("temperature"), Some(2.0))
        );
        assert_eq!(m.variants()[0].temperature, Some(1.5));
        assert!(m.retention().is_none() && m.variants()[0].report().is_none());
        let old: GraftManifest =
            serde_json::from_value(manifest(Value::Null, Value::Null)).unwrap();
        assert!(
            old.calibration().is_none() && old.variants().is_empty() && old.sparsity().is_none()
        );
    }
}
