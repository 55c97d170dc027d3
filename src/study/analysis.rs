//! The analyses behind the paper's claims, run on the primary fine-tunes' grafts: out-of-distribution
//! transfer, overlap and placement of grafts, composition against sequential fine-tuning.

use super::{parse_pair, Cell, FinetuneId, NotCached, Study};
use crate::graft::evaluate::{evaluate_variants, Variant, VariantReport};
use crate::graft::graftable::{top_k, GraftableModel};
use crate::graft::overlap::{compose, overlap, ConflictRule};
use crate::graft::placement::{layer_key, sort_layer_keys, MODULE_ORDER};
use crate::graft::region::{module_of, FlatRegion, RegionSpec};
use crate::graft::Graft;
use crate::model::export::FinetunedModel;
use crate::store::atomic_write;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Out-of-distribution evaluation of one source task's models on a target task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OodRow {
    /// Task the models were fitted on.
    pub source: String,
    /// Task they are evaluated on.
    pub target: String,
    /// Seed.
    pub seed: u64,
    /// base+head, base patch, graft, fine-tuned on the target's test split (temperature from source dev).
    pub variants: Vec<VariantReport>,
}

/// Mean pairwise overlap of the tasks' grafts over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlapSummary {
    /// Tasks.
    pub tasks: Vec<String>,
    /// Seeds averaged.
    pub seeds: Vec<u64>,
    /// Mean graft size per task.
    pub sizes: Vec<f64>,
    /// Mean Jaccard.
    pub jaccard: Vec<Vec<f64>>,
    /// Mean containment |A∩B| / min(|A|, |B|).
    pub containment: Vec<Vec<f64>>,
    /// Mean expected Jaccard of random masks of the same sizes.
    pub random_jaccard: Vec<Vec<f64>>,
}

/// Where one task's grafts live: share of grafted parameters per encoder layer and module type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// Task.
    pub task: String,
    /// Row labels (`layer 0`, …, `embeddings`).
    pub layers: Vec<String>,
    /// Column labels (module types).
    pub modules: Vec<String>,
    /// Share of the graft (summed over seeds) per layer and module, in [0, 1].
    pub share: Vec<Vec<f64>>,
}

/// One task's test accuracy in a composition experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompositionRow {
    /// The pair `a:b` (a first).
    pub pair: String,
    /// The evaluated task (a or b).
    pub task: String,
    /// Seed.
    pub seed: u64,
    /// Own graft alone.
    pub graft: f64,
    /// Both grafts composed (mean on shared coordinates).
    pub composed: f64,
    /// Own fine-tuned model.
    pub finetuned: f64,
    /// a fine-tuned, then fine-tuned again on b.
    pub sequential: f64,
    /// Shared coordinates of the two grafts.
    pub shared: usize,
}

/// All analyses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Analyses {
    /// Out-of-distribution rows.
    pub ood: Vec<OodRow>,
    /// Overlap of the grid's first tasks (None with fewer than two tasks).
    pub overlap: Option<OverlapSummary>,
    /// Placement per task.
    pub placement: Vec<Placement>,
    /// Composition rows.
    pub composition: Vec<CompositionRow>,
}

fn cached<T: Serialize + DeserializeOwned>(
    path: &Path,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Ok(v);
        }
    }
    let v = compute()?;
    atomic_write(path, &serde_json::to_vec_pretty(&v)?)?;
    Ok(v)
}

/// The sorted flat indices of entries and their values.
fn graftable(
    study: &Study,
    ft: &FinetunedModel,
    body: &BTreeMap<String, Tensor>,
    graft: &Graft,
) -> Result<GraftableModel> {
    GraftableModel::new(
        &study.base.model,
        body,
        ft.head_tensors.clone(),
        study.base.inputs(ft.head.clone()),
        &graft.manifest.region,
    )
}

impl Study<'_> {
    fn analysed_graft(&self, id: &FinetuneId) -> Result<Graft> {
        let a = &self.cfg.analysis;
        self.cell(id, a.method, a.sparsity, true)?;
        Graft::load(&self.graft_path(id, a.method, a.sparsity))
    }

    fn suffix(&self, id: &FinetuneId) -> String {
        let a = &self.cfg.analysis;
        format!(
            "{}-{}-{:e}-e{}",
            self.ft_key(id),
            a.method.name(),
            a.sparsity,
            self.cfg.epochs
        )
    }

    fn ood_row(&self, source: &str, target: &str, seed: u64) -> Result<OodRow> {
        let id = self.primary(source, seed);
        let path = self
            .cfg
            .cache_dir
            .join("ood")
            .join(format!("{}-on-{target}.json", self.suffix(&id)));
        cached(&path, || {
            let (s_spec, _) = self.task(source)?;
            let (t_spec, _) = self.task(target)?;
            if s_spec.labels != t_spec.labels {
                bail!("out-of-distribution pair {source}:{target}: the label sets differ ({:?} vs {:?})", s_spec.labels, t_spec.labels);
            }
            let graft = self.analysed_graft(&id)?;
            eprintln!("[study] out-of-distribution {source} → {target}, seed {seed}");
            let ft = self.load_finetuned(&id)?;
            let model = graftable(self, &ft, &ft.model.weights.tensors, &graft)?;
            let (mask, values) = graft.flat_point(&model.region)?;
            let abs: Vec<f32> = model.delta.iter().map(|d| d.abs()).collect();
            let patch = top_k(&abs, mask.len());
            let src = self.split(source, id.k, seed)?;
            let tgt = self.split(target, id.k, seed)?;
            let variants = evaluate_variants(
                &model,
                &src,
                &tgt.test,
                &[
                    ("base+head".to_string(), Variant::Mask(&[])),
                    ("base patch".to_string(), Variant::Mask(&patch)),
                    ("graft".to_string(), Variant::Values(&mask, &values)),
                    ("fine-tuned".to_string(), Variant::Finetuned),
                ],
                10,
                crate::calibration::CalibrationPolicy::Temperature,
            )?;
            Ok(OodRow {
                source: source.to_string(),
                target: target.to_string(),
                seed,
                variants,
            })
        })
    }

    fn overlap_summary(
        &self,
        tasks: &[String],
        seeds: &[u64],
    ) -> Result<(OverlapSummary, Vec<Placement>)> {
        let n = tasks.len();
        let mut region: Option<(RegionSpec, FlatRegion)> = None;
        let mut sum = OverlapSummary {
            tasks: tasks.to_vec(),
            seeds: seeds.to_vec(),
            sizes: vec![0.0; n],
            jaccard: vec![vec![0.0; n]; n],
            containment: vec![vec![0.0; n]; n],
            random_jaccard: vec![vec![0.0; n]; n],
        };
        let mut counts: Vec<BTreeMap<(String, String), usize>> = vec![BTreeMap::new(); n];
        for &seed in seeds {
            let grafts = tasks
                .iter()
                .map(|t| self.analysed_graft(&self.primary(t, seed)))
                .collect::<Result<Vec<_>>>()?;
            let first = grafts.first().context("overlap needs at least one task")?;
            let (spec, flat) = match &region {
                Some(r) => r,
                None => region.insert((
                    first.manifest.region.clone(),
                    FlatRegion::new(&first.manifest.region, &self.base.model.weights.tensors)?,
                )),
            };
            if grafts.iter().any(|g| &g.manifest.region != spec) {
                bail!("the analysed grafts use different regions");
            }
            let r = overlap(tasks, &grafts, flat)?;
            for i in 0..n {
                sum.sizes[i] += r.sizes[i] as f64 / seeds.len() as f64;
                for j in 0..n {
                    let m = seeds.len() as f64;
                    sum.jaccard[i][j] += r.jaccard[i][j] / m;
                    sum.containment[i][j] += r.containment[i][j] / m;
                    sum.random_jaccard[i][j] += r.random_jaccard[i][j] / m;
                }
            }
            for (i, g) in grafts.iter().enumerate() {
                for e in &g.entries {
                    let layer = layer_key(&e.name);
                    *counts[i]
                        .entry((layer, module_of(&e.name).to_string()))
                        .or_default() += e.indices.len();
                }
            }
        }
        let mut layers: Vec<String> = counts
            .iter()
            .flat_map(|c| c.keys().map(|k| k.0.clone()))
            .collect();
        sort_layer_keys(&mut layers);
        let modules: Vec<String> = MODULE_ORDER
            .iter()
            .filter(|m| counts.iter().any(|c| c.keys().any(|k| k.1 == **m)))
            .map(|m| m.to_string())
            .collect();
        let placement = tasks
            .iter()
            .zip(&counts)
            .map(|(t, c)| {
                let total = c.values().sum::<usize>().max(1) as f64;
                Placement {
                    task: t.clone(),
                    layers: layers.clone(),
                    modules: modules.clone(),
                    share: layers
                        .iter()
                        .map(|l| {
                            modules
                                .iter()
                                .map(|m| {
                                    *c.get(&(l.clone(), m.clone())).unwrap_or(&0) as f64 / total
                                })
                                .collect()
                        })
                        .collect(),
                }
            })
            .collect();
        Ok((sum, placement))
    }

    fn composition(&self, a: &str, b: &str, seed: u64) -> Result<Vec<CompositionRow>> {
        let (ida, idb) = (self.primary(a, seed), self.primary(b, seed));
        let path = self
            .cfg
            .cache_dir
            .join("composition")
            .join(format!("{}-with-{b}.json", self.suffix(&ida)));
        cached(&path, || {
            let ga = self.analysed_graft(&ida)?;
            let gb = self.analysed_graft(&idb)?;
            if ga.manifest.region != gb.manifest.region {
                bail!("grafts of {a} and {b} use different regions");
            }
            let seq_dir = self.sequential_dir(&ida, &idb)?;
            eprintln!("[study] composition {a} + {b}, seed {seed}");
            let region = FlatRegion::new(&ga.manifest.region, &self.base.model.weights.tensors)?;
            let composed = compose(&[ga.clone(), gb.clone()], &region, ConflictRule::Mean)?;
            let (cmask, cvalues) = crate::graft::entries_point(&composed, &region)?;
            let shared = ga.size() + gb.size() - cmask.len();
            let seq = self.load_dir(&seq_dir, b)?;
            let mut rows = Vec::new();
            for (task, id, g, own_head) in [(a, &ida, &ga, true), (b, &idb, &gb, false)] {
                let ft = self.load_finetuned(id)?;
                let test = self.split(task, id.k, seed)?.test;
                let model = graftable(self, &ft, &ft.model.weights.tensors, g)?;
                let (mask, values) = g.flat_point(&model.region)?;
                model.set_values(&mask, &values)?;
                let graft = model.inst.accuracy(&test, 64)?;
                model.set_values(&cmask, &cvalues)?;
                let comp = model.inst.accuracy(&test, 64)?;
                model.set_finetuned()?;
                let finetuned = model.inst.accuracy(&test, 64)?;
                drop(model);
                // Task a keeps its own head (task-specific heads); task b uses the head trained last.
                let head_of = if own_head { &ft } else { &seq };
                let seq_model = graftable(self, head_of, &seq.model.weights.tensors, g)?;
                seq_model.set_finetuned()?;
                let sequential = seq_model.inst.accuracy(&test, 64)?;
                rows.push(CompositionRow {
                    pair: format!("{a}:{b}"),
                    task: task.to_string(),
                    seed,
                    graft,
                    composed: comp,
                    finetuned,
                    sequential,
                    shared,
                });
            }
            Ok(rows)
        })
    }
}

/// Keeps a result; in `cached_only` mode a cache miss is skipped instead of failing.
fn keep<T>(study: &Study, r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if study.cached_only && e.chain().any(|c| c.is::<NotCached>()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs the analyses the configuration asks for, on the primary fine-tunes of the first grid.
pub(super) fn run(study: &Study, _cells: &[Cell]) -> Result<Analyses> {
    let g = &study.cfg.grids[0];
    let seeds = &g.seeds;
    let mut out = Analyses::default();
    for p in &study.cfg.analysis.ood {
        let (s, t) = parse_pair(p)?;
        for &seed in seeds {
            let row = study
                .ood_row(&s, &t, seed)
                .with_context(|| format!("out-of-distribution {p}"));
            out.ood.extend(keep(study, row)?);
        }
    }
    if !g.tasks.is_empty() && !seeds.is_empty() {
        if let Some((summary, placement)) = keep(study, study.overlap_summary(&g.tasks, seeds))? {
            if g.tasks.len() > 1 {
                out.overlap = Some(summary);
            }
            out.placement = placement;
        }
    }
    for p in &study.cfg.analysis.pairs {
        let (a, b) = parse_pair(p)?;
        for &seed in seeds {
            let rows = study
                .composition(&a, &b, seed)
                .with_context(|| format!("composition {p}"));
            out.composition
                .extend(keep(study, rows)?.unwrap_or_default());
        }
    }
    Ok(out)
}
