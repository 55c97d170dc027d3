//! Loading HF-format model directories (config.json, safetensors, tokenizer.json) into named tensors.

use super::config::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// True for names of the shared encoder body (everything a graft region may touch).
pub fn is_body_name(name: &str) -> bool {
    name.starts_with("embeddings.") || name.starts_with("encoder.") || name.starts_with("pooler.")
}

/// All float tensors of a checkpoint under canonical names, as f32 tensors on one device.
///
/// Canonical names drop the `bert.` / `roberta.` prefix of task-head checkpoints (so a base model and its
/// fine-tuned `*ForSequenceClassification` checkpoint use the same names) and rename old-style
/// `LayerNorm.gamma/beta` to `weight/bias`. Head tensors keep their HF names (`classifier.*`, `cls.*`, `lm_head.*`).
#[derive(Debug, Clone)]
pub struct WeightMap {
    /// Canonical name → tensor (f32).
    pub tensors: BTreeMap<String, Tensor>,
    /// Canonical name → dtype as stored on disk (`F32`, `F16`, `BF16`).
    pub stored_dtypes: BTreeMap<String, String>,
    /// The body prefix the files used (`bert` / `roberta`), if any.
    pub prefix: Option<String>,
    /// SHA-256 of the weight files' bytes, in file-name order.
    pub content_hash: String,
}

/// The files of an HF model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
    /// The safetensors files (one, or the shards named by `model.safetensors.index.json`).
    pub weights: Vec<PathBuf>,
}

impl ModelFiles {
    /// Finds the files of an HF model directory, with errors that say what is missing.
    pub fn locate(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!("{} has no config.json", dir.display());
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{} has no weight_map", index.display()))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            let mut paths = Vec::new();
            for f in files {
                if f.contains('/') || f.contains("..") {
                    bail!(
                        "{}: shard name `{f}` is not a plain file name",
                        index.display()
                    );
                }
                paths.push(dir.join(f));
            }
            paths
        } else if dir.join("pytorch_model.bin").exists() {
            bail!(
                "{} holds only a pickle checkpoint (pytorch_model.bin); pickle files are refused: save it with \
                 safetensors (save_pretrained(..., safe_serialization=True))",
                dir.display()
            );
        } else {
            bail!(
                "{} has no model.safetensors (or sharded index)",
                dir.display()
            );
        };
        let tok = dir.join("tokenizer.json");
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer: tok.is_file().then_some(tok),
            weights,
        })
    }
}

fn canonical_name(name: &str) -> (String, Option<&'static str>) {
    let (rest, prefix) = if let Some(r) = name.strip_prefix("bert.") {
        (r, Some("bert"))
    } else if let Some(r) = name.strip_prefix("roberta.") {
        (r, Some("roberta"))
    } else {
        (name, None)
    };
    let rest = if let Some(r) = rest.strip_suffix("LayerNorm.gamma") {
        format!("{r}LayerNorm.weight")
    } else if let Some(r) = rest.strip_suffix("LayerNorm.beta") {
        format!("{r}LayerNorm.bias")
    } else {
        rest.to_string()
    };
    (rest, prefix)
}

fn to_tensor(
    view: &safetensors::tensor::TensorView<'_>,
    device: &Device,
) -> Result<Option<Tensor>> {
    use safetensors::Dtype as S;
    let shape = view.shape().to_vec();
    let data = view.data();
    let t = match view.dtype() {
        S::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
        S::F16 => {
            let v: Vec<f32> = data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
        S::BF16 => {
            let v: Vec<f32> = data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
        _ => return Ok(None),
    };
    Ok(Some(t))
}

impl WeightMap {
    /// Memory-maps the safetensors files and converts every float tensor to f32 on `device`.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut stored_dtypes = BTreeMap::new();
        let mut prefix: Option<String> = None;
        let mut hasher = Sha256::new();
        for path in &files.weights {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the map is read-only and dropped before this function returns; a file truncated
            // concurrently by another process is outside what any loader can guard against.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot memory-map {}", path.display()))?;
            hasher.update(&mmap[..]);
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display())
            })?;
            for (name, view) in st.tensors() {
                let Some(t) = to_tensor(&view, device)? else {
                    continue;
                };
                let (canon, p) = canonical_name(&name);
                if let Some(p) = p {
                    prefix = Some(p.to_string());
                }
                stored_dtypes.insert(canon.clone(), format!("{:?}", view.dtype()));
                if tensors.insert(canon.clone(), t).is_some() {
                    bail!("{}: tensor `{canon}` appears twice", path.display());
                }
            }
        }
        if tensors.is_empty() {
            bail!("{}: no float tensors found", files.dir.display());
        }
        Ok(Self {
            tensors,
            stored_dtypes,
            prefix,
            content_hash: hex::encode(hasher.finalize()),
        })
    }

    /// The tensor under a canonical name, with an error naming it when absent.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("checkpoint has no tensor `{name}`"))
    }

    /// Names of the body tensors (embeddings, encoder, pooler), sorted.
    pub fn body_names(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|n| is_body_name(n))
            .cloned()
            .collect()
    }

    /// Checks that `self` (a fine-tuned checkpoint) has every encoder/embedding tensor of `base` with the
    /// same shape and stored dtype; the error names the first mismatch.
    pub fn check_matches_base(&self, base: &WeightInfo) -> Result<()> {
        for (name, shape) in &base.shapes {
            if !(name.starts_with("embeddings.") || name.starts_with("encoder.")) {
                continue;
            }
            let Some(t) = self.tensors.get(name) else {
                bail!("checkpoint does not match the base model: it has no tensor `{name}`");
            };
            if t.dims() != shape.as_slice() {
                bail!(
                    "checkpoint does not match the base model: `{name}` has shape {:?}, the base has {:?}",
                    t.dims(),
                    shape
                );
            }
            let (a, b) = (self.stored_dtypes.get(name), base.stored_dtypes.get(name));
            if a != b {
                bail!(
                    "checkpoint does not match the base model: `{name}` is stored as {}, the base as {}",
                    a.map_or("?", |s| s.as_str()),
                    b.map_or("?", |s| s.as_str())
                );
            }
        }
        for name in self.tensors.keys() {
            if (name.starts_with("embeddings.") || name.starts_with("encoder."))
                && !base.shapes.contains_key(name)
            {
                bail!("checkpoint does not match the base model: the base has no tensor `{name}`");
            }
        }
        Ok(())
    }

    /// A deep copy (new storage for every tensor), for a model instance that will be modified.
    pub fn deep_clone(&self) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (n, t) in &self.tensors {
            tensors.insert(n.clone(), t.copy()?);
        }
        Ok(Self {
            tensors,
            stored_dtypes: self.stored_dtypes.clone(),
            prefix: self.prefix.clone(),
            content_hash: self.content_hash.clone(),
        })
    }

    /// Total number of values in the given tensors.
    pub fn numel<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> usize {
        names
            .into_iter()
            .filter_map(|n| self.tensors.get(n))
            .map(|t| t.elem_count())
            .sum()
    }

    /// Converts every tensor to `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (n, t) in &self.tensors {
            tensors.insert(n.clone(), t.to_dtype(dtype)?);
        }
        Ok(Self {
            tensors,
            stored_dtypes: self.stored_dtypes.clone(),
            prefix: self.prefix.clone(),
            content_hash: self.content_hash.clone(),
        })
    }
}

/// A loaded HF model directory: config, weights and (optional) tokenizer path.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// Where it came from.
    pub files: ModelFiles,
    /// Parsed config.json.
    pub config: ModelConfig,
    /// All weights.
    pub weights: WeightMap,
}

impl LoadedModel {
    /// Loads config and weights of an HF directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let files = ModelFiles::locate(dir)?;
        let config = ModelConfig::from_file(&files.config)?;
        let weights = WeightMap::load(&files, device)?;
        if config.architecture()? == super::config::Architecture::Roberta
            && weights.prefix.as_deref() == Some("bert")
        {
            bail!(
                "{}: config says RoBERTa but the weights are BERT's",
                dir.display()
            );
        }
        Ok(Self {
            files,
            config,
            weights,
        })
    }

    /// Number of encoder parameters (embeddings + layers + pooler).
    pub fn body_parameter_count(&self) -> usize {
        self.weights.numel(self.weights.body_names().iter())
    }
}

/// Every tensor's shape and stored dtype, by canonical name, and the weight files' content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightInfo {
    /// Shape of every tensor.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Stored dtype of every tensor, as safetensors names it.
    pub stored_dtypes: BTreeMap<String, String>,
    /// SHA-256 of the weight files.
    pub content_hash: String,
}

impl WeightInfo {
    /// The shapes and dtypes of loaded weights.
    pub fn of(weights: &WeightMap) -> Self {
        Self {
            shapes: weights
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec()))
                .collect(),
            stored_dtypes: weights.stored_dtypes.clone(),
            content_hash: weights.content_hash.clone(),
        }
    }

    /// Number of values in the body tensors (embeddings, encoder, pooler).
    pub fn body_parameter_count(&self) -> usize {
        self.shapes
            .iter()
            .filter(|(n, _)| is_body_name(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma"),
            (
                "encoder.layer.0.output.LayerNorm.weight".to_string(),
                Some("bert")
            )
        );
        assert_eq!(
            canonical_name("classifier.weight"),
            ("classifier.weight".to_string(), None)
        );
        assert_eq!(
            canonical_name("roberta.embeddings.word_embeddings.weight").1,
            Some("roberta")
        );
    }
}
