//! The graft region (which parameters a graft may select from) as one flat index space.

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::model::ops::to_f32_vec;

/// Which parameters grafting may select from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    /// Include the embedding tables and their LayerNorm.
    #[serde(default)]
    pub include_embeddings: bool,
    /// Only these encoder layers (None = all).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
}

/// Layer index of an encoder tensor name (`encoder.layer.N.…`).
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("encoder.layer.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Module type of a tensor name, for overlap breakdowns.
pub fn module_of(name: &str) -> &'static str {
    let is_bias = name.ends_with(".bias");
    if name.contains("LayerNorm") {
        "layernorm"
    } else if name.starts_with("embeddings.") {
        "embeddings"
    } else if is_bias {
        "bias"
    } else if name.contains("attention.self.query") {
        "query"
    } else if name.contains("attention.self.key") {
        "key"
    } else if name.contains("attention.self.value") {
        "value"
    } else if name.contains("attention.output.dense") {
        "attention_output"
    } else if name.contains("intermediate.dense") {
        "ffn_in"
    } else if name.contains("output.dense") {
        "ffn_out"
    } else {
        "other"
    }
}

impl RegionSpec {
    /// Whether a canonical tensor name lies in the region.
    pub fn contains(&self, name: &str) -> bool {
        if name.starts_with("embeddings.") {
            return self.include_embeddings;
        }
        match layer_of(name) {
            Some(l) => self.layers.as_ref().is_none_or(|ls| ls.contains(&l)),
            None => false,
        }
    }
}

/// The region's tensors laid end to end: flat index = offset of the tensor + index inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatRegion {
    /// Tensor names, sorted.
    pub names: Vec<String>,
    /// Their shapes.
    pub shapes: Vec<Vec<usize>>,
    /// Start of each tensor in the flat space (plus the total at the end).
    pub offsets: Vec<usize>,
}

impl FlatRegion {
    /// The region of `spec` over a model's tensors.
    pub fn new(spec: &RegionSpec, tensors: &BTreeMap<String, Tensor>) -> Result<Self> {
        Self::of_shapes(spec, tensors.iter().map(|(n, t)| (n.as_str(), t.dims())))
    }

    /// The region of `spec` over a base described without its weights.
    pub fn over(spec: &RegionSpec, weights: &crate::model::WeightInfo) -> Result<Self> {
        Self::of_shapes(
            spec,
            weights
                .shapes
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_slice())),
        )
    }

    /// The region of `spec` over tensors given by name and shape, in name order (no values needed).
    pub fn of_shapes<'a>(
        spec: &RegionSpec,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<Self> {
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        let mut offsets = vec![0];
        for (name, dims) in tensors {
            if spec.contains(name) {
                names.push(name.to_string());
                shapes.push(dims.to_vec());
                offsets.push(offsets[offsets.len() - 1] + dims.iter().product::<usize>());
            }
        }
        if names.is_empty() {
            bail!("the graft region is empty (check the layer list)");
        }
        if offsets[offsets.len() - 1] > u32::MAX as usize {
            bail!("the region has more than 2^32 parameters");
        }
        Ok(Self {
            names,
            shapes,
            offsets,
        })
    }

    /// Number of parameters in the region.
    pub fn len(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    /// Whether the region is empty (never true for a constructed region).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor index holding flat index `i`.
    pub fn tensor_of(&self, i: usize) -> usize {
        self.offsets.partition_point(|&o| o <= i) - 1
    }

    /// Concatenated values of the region's tensors in `tensors`.
    pub fn gather(&self, tensors: &BTreeMap<String, Tensor>) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len());
        for (name, shape) in self.names.iter().zip(&self.shapes) {
            let Some(t) = tensors.get(name) else {
                bail!("model has no tensor `{name}`");
            };
            if t.dims() != shape.as_slice() {
                bail!(
                    "tensor `{name}` has shape {:?}, the region expects {shape:?}",
                    t.dims()
                );
            }
            out.extend(to_f32_vec(t)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify() {
        let spec = RegionSpec::default();
        assert!(spec.contains("encoder.layer.3.attention.self.query.weight"));
        assert!(!spec.contains("embeddings.word_embeddings.weight"));
        assert!(!spec.contains("pooler.dense.weight"));
        let only = RegionSpec {
            include_embeddings: true,
            layers: Some(vec![1]),
        };
        assert!(!only.contains("encoder.layer.3.output.dense.bias"));
        assert!(only.contains("encoder.layer.1.output.dense.bias"));
        assert!(only.contains("embeddings.LayerNorm.weight"));
        assert_eq!(
            module_of("encoder.layer.0.attention.output.dense.weight"),
            "attention_output"
        );
        assert_eq!(module_of("encoder.layer.0.output.dense.weight"), "ffn_out");
        assert_eq!(
            module_of("encoder.layer.0.output.LayerNorm.bias"),
            "layernorm"
        );
        assert_eq!(module_of("encoder.layer.0.intermediate.dense.bias"), "bias");
        assert_eq!(layer_of("encoder.layer.11.output.dense.bias"), Some(11));
    }
}
