//! Overlap of tasks' grafts (counts, Jaccard, containment; per layer and module type) and composition of
//! several grafts into one.

use super::placement::layer_key;
use super::region::module_of;
use super::{entries_from_mask, FlatRegion, Graft, GraftEntry};
use crate::model::WeightInfo;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a graft's parameters live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Count per encoder layer (`embeddings` counted under key `"embeddings"`).
    pub by_layer: BTreeMap<String, usize>,
    /// Count per module type (query, key, value, attention_output, ffn_in, ffn_out, layernorm, bias, embeddings).
    pub by_module: BTreeMap<String, usize>,
}

/// Pairwise overlap of N grafts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapReport {
    /// Task names.
    pub tasks: Vec<String>,
    /// Graft sizes.
    pub sizes: Vec<usize>,
    /// |A∩B|.
    pub intersection: Vec<Vec<usize>>,
    /// |A∩B| / |A∪B|.
    pub jaccard: Vec<Vec<f64>>,
    /// |A∩B| / min(|A|, |B|).
    pub containment: Vec<Vec<f64>>,
    /// Expected Jaccard of random masks of the same sizes over the same region (≈ |A||B| / (N(|A|+|B|))).
    pub random_jaccard: Vec<Vec<f64>>,
    /// Where each graft lives.
    pub breakdown: Vec<Breakdown>,
    /// Where each pair's shared parameters live, keyed `"i,j"`.
    pub shared_breakdown: BTreeMap<String, Breakdown>,
}

fn breakdown_of(region: &FlatRegion, flat: &[u32]) -> Breakdown {
    let mut b = Breakdown {
        by_layer: BTreeMap::new(),
        by_module: BTreeMap::new(),
    };
    for &i in flat {
        let name = &region.names[region.tensor_of(i as usize)];
        *b.by_layer.entry(layer_key(name)).or_default() += 1;
        *b.by_module.entry(module_of(name).to_string()).or_default() += 1;
    }
    b
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Computes the overlap report of grafts over one region.
pub fn overlap(names: &[String], grafts: &[Graft], region: &FlatRegion) -> Result<OverlapReport> {
    if grafts.len() != names.len() || grafts.is_empty() {
        bail!("overlap needs one name per graft and at least one graft");
    }
    let flats: Vec<Vec<u32>> = grafts
        .iter()
        .map(|g| g.flat_indices(region))
        .collect::<Result<_>>()?;
    let n = flats.len();
    let big_n = region.len() as f64;
    let mut inter = vec![vec![0usize; n]; n];
    let mut jac = vec![vec![0f64; n]; n];
    let mut con = vec![vec![0f64; n]; n];
    let mut rnd = vec![vec![0f64; n]; n];
    let mut shared_breakdown = BTreeMap::new();
    for i in 0..n {
        for j in 0..n {
            let common = intersect(&flats[i], &flats[j]);
            let (a, b, c) = (flats[i].len(), flats[j].len(), common.len());
            inter[i][j] = c;
            let union = a + b - c;
            jac[i][j] = if union == 0 {
                0.0
            } else {
                c as f64 / union as f64
            };
            con[i][j] = if a.min(b) == 0 {
                0.0
            } else {
                c as f64 / a.min(b) as f64
            };
            let expected = a as f64 * b as f64 / big_n;
            let eu = a as f64 + b as f64 - expected;
            rnd[i][j] = if i == j {
                1.0
            } else if eu > 0.0 {
                expected / eu
            } else {
                0.0
            };
            if i < j {
                shared_breakdown.insert(format!("{i},{j}"), breakdown_of(region, &common));
            }
        }
    }
    Ok(OverlapReport {
        tasks: names.to_vec(),
        sizes: flats.iter().map(Vec::len).collect(),
        intersection: inter,
        jaccard: jac,
        containment: con,
        random_jaccard: rnd,
        breakdown: flats.iter().map(|f| breakdown_of(region, f)).collect(),
        shared_breakdown,
    })
}

/// How composition resolves a coordinate several grafts set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ConflictRule {
    /// Mean of the fine-tuned values.
    Mean,
    /// The later graft's value.
    LastWins,
}

/// The union of grafts' body entries; shared coordinates resolved by `rule`. Head and manifest come from the
/// first graft (each member task keeps its own head when evaluated under the composition).
pub fn compose(
    grafts: &[Graft],
    region: &FlatRegion,
    rule: ConflictRule,
) -> Result<Vec<GraftEntry>> {
    if grafts.is_empty() {
        bail!("nothing to compose");
    }
    let mut sum: BTreeMap<u32, (f64, usize, f32)> = BTreeMap::new();
    for g in grafts {
        for e in &g.entries {
            let Some(t) = region.names.iter().position(|n| n == &e.name) else {
                bail!("graft tensor `{}` is outside the region", e.name);
            };
            for (&i, &v) in e.indices.iter().zip(&e.values) {
                let f = region.offsets[t] as u32 + i;
                let slot = sum.entry(f).or_insert((0.0, 0, v));
                slot.0 += v as f64;
                slot.1 += 1;
                slot.2 = v;
            }
        }
    }
    let flat: Vec<u32> = sum.keys().copied().collect();
    let mut values = vec![0f32; region.len()];
    for (&f, &(s, c, last)) in &sum {
        values[f as usize] = match rule {
            ConflictRule::Mean => (s / c as f64) as f32,
            ConflictRule::LastWins => last,
        };
    }
    Ok(entries_from_mask(region, &flat, &values))
}

/// The region of the first graft over a base described by its tensor shapes (every graft must use it).
fn region_over(grafts: &[Graft], weights: &WeightInfo) -> Result<FlatRegion> {
    let Some(first) = grafts.first() else {
        bail!("no grafts given");
    };
    FlatRegion::over(&first.manifest.region, weights)
}

/// [`overlap`] over a base described by its tensor shapes (no weights needed), in the first graft's region.
pub fn overlap_over(
    names: &[String],
    grafts: &[Graft],
    weights: &WeightInfo,
) -> Result<OverlapReport> {
    overlap(names, grafts, &region_over(grafts, weights)?)
}

/// A new graft composing `grafts` (named `members`) over a base described by its tensor shapes: the union of
/// their entries by `rule`, the first member's head and manifest, the method `compose(<rule>)`, the members
/// and rule as hyper-parameters, no metrics.
pub fn compose_over(
    grafts: &[Graft],
    members: &[String],
    weights: &WeightInfo,
    rule: ConflictRule,
) -> Result<Graft> {
    let region = region_over(grafts, weights)?;
    let mut composed = grafts[0].clone();
    composed.entries = compose(grafts, &region, rule)?;
    composed.manifest.size = composed.size();
    composed.manifest.method = format!("compose({rule:?})").to_lowercase();
    composed.manifest.hyper_parameters =
        serde_json::from_value(serde_json::json!({"members": members, "rule": rule}))?;
    composed.manifest.metrics = Some(super::manifest::GraftMetrics::default());
    composed.manifest.created_unix = super::unix_now();
    Ok(composed)
}
