//! Where one graft lives: its parameters counted per encoder layer × module type, beside how many
//! parameters the region holds in each cell (so a cell's density can be read against its size).

use super::region::{layer_of, module_of};
use super::{FlatRegion, GraftEntry};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Module types in display order (attention, feed-forward, then the small tensors).
pub const MODULE_ORDER: [&str; 10] = [
    "query",
    "key",
    "value",
    "attention_output",
    "ffn_in",
    "ffn_out",
    "bias",
    "layernorm",
    "embeddings",
    "other",
];

/// Row key of a tensor: `layer N`, or `embeddings` outside the encoder layers.
pub fn layer_key(name: &str) -> String {
    layer_of(name).map_or_else(|| "embeddings".to_string(), |l| format!("layer {l}"))
}

/// Sorts row keys: `layer 0`, `layer 1`, …, then `embeddings`.
pub fn sort_layer_keys(keys: &mut Vec<String>) {
    keys.sort_by_key(|l| {
        (
            l == "embeddings",
            l.strip_prefix("layer ")
                .and_then(|x| x.parse::<usize>().ok()),
        )
    });
    keys.dedup();
}

/// A graft's parameters per layer × module type, over every cell of its region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementGrid {
    /// Row labels: `layer 0`, …, then `embeddings` when the region holds them.
    pub layers: Vec<String>,
    /// Column labels: the region's module types, in [`MODULE_ORDER`].
    pub modules: Vec<String>,
    /// Grafted parameters per cell (layers × modules).
    pub counts: Vec<Vec<usize>>,
    /// Region parameters per cell (layers × modules); 0 where the region has no such tensor.
    pub region_counts: Vec<Vec<usize>>,
}

/// Counts a graft's parameters (its body entries) per layer × module type over its region.
pub fn placement(entries: &[GraftEntry], region: &FlatRegion) -> Result<PlacementGrid> {
    let mut region_cells: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for (t, name) in region.names.iter().enumerate() {
        *region_cells
            .entry((layer_key(name), module_of(name)))
            .or_default() += region.offsets[t + 1] - region.offsets[t];
    }
    let mut graft_cells: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for e in entries {
        if !region.names.contains(&e.name) {
            bail!("graft tensor `{}` is outside the region", e.name);
        }
        *graft_cells
            .entry((layer_key(&e.name), module_of(&e.name)))
            .or_default() += e.indices.len();
    }
    let mut layers: Vec<String> = region_cells.keys().map(|k| k.0.clone()).collect();
    sort_layer_keys(&mut layers);
    let modules: Vec<String> = MODULE_ORDER
        .iter()
        .filter(|m| region_cells.keys().any(|k| k.1 == **m))
        .map(|m| m.to_string())
        .collect();
    let grid = |cells: &BTreeMap<(String, &'static str), usize>| -> Vec<Vec<usize>> {
        layers
            .iter()
            .map(|l| {
                modules
                    .iter()
                    .map(|m| {
                        cells
                            .iter()
                            .find(|(k, _)| &k.0 == l && k.1 == m)
                            .map_or(0, |(_, &c)| c)
                    })
                    .collect()
            })
            .collect()
    };
    Ok(PlacementGrid {
        counts: grid(&graft_cells),
        region_counts: grid(&region_cells),
        layers,
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_sort_numerically_with_embeddings_last() {
        let mut keys: Vec<String> = ["layer 10", "embeddings", "layer 2", "layer 0", "layer 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_layer_keys(&mut keys);
        assert_eq!(keys, ["layer 0", "layer 2", "layer 10", "embeddings"]);
        assert_eq!(
            layer_key("encoder.layer.3.attention.self.query.weight"),
            "layer 3"
        );
        assert_eq!(layer_key("embeddings.LayerNorm.weight"), "embeddings");
    }

    #[test]
    fn counts_graft_and_region_per_cell() {
        let names = [
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.output.dense.bias",
            "encoder.layer.1.attention.self.query.weight",
        ];
        let region = FlatRegion {
            names: names.iter().map(|s| s.to_string()).collect(),
            shapes: vec![vec![2, 3], vec![4], vec![2, 3]],
            offsets: vec![0, 6, 10, 16],
        };
        let entry = |t: usize, indices: Vec<u32>| GraftEntry {
            name: names[t].to_string(),
            shape: region.shapes[t].clone(),
            values: vec![0.5; indices.len()],
            indices,
        };
        let grid = placement(&[entry(0, vec![1, 4]), entry(2, vec![0])], &region).unwrap();
        assert_eq!(grid.layers, ["layer 0", "layer 1"]);
        assert_eq!(grid.modules, ["query", "bias"]);
        assert_eq!(grid.counts, vec![vec![2, 0], vec![1, 0]]);
        assert_eq!(grid.region_counts, vec![vec![6, 4], vec![6, 0]]);
        let outside = GraftEntry {
            name: "embeddings.word_embeddings.weight".into(),
            ..entry(0, vec![0])
        };
        assert!(placement(&[outside], &region).is_err());
    }
}
