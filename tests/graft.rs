//! Graft invariants on a real (tiny) transformers checkpoint: an empty graft is the base, a full graft is the
//! fine-tuned model, apply+revert restores the base bit for bit, localization is deterministic, graft files
//! round-trip and bad files or checkpoints give clear errors.

mod common;

use candle_core::{DType, Device, Tensor};
use skillgraft::data::{Example, FewShotSplit};
use skillgraft::graft::graftable::{top_k, GraftableModel};
use skillgraft::graft::localize::{localize, LocalizeOptions, Method};
use skillgraft::graft::overlap::{compose, overlap, ConflictRule};
use skillgraft::graft::{entries_from_mask, FlatRegion, Graft, RegionSpec};
use skillgraft::model::export::{load_finetuned, write_hf_dir};
use skillgraft::model::heads::{Classifier, HeadSpec};
use skillgraft::model::predict::InputBuilder;
use skillgraft::model::{to_hash_map, BaseModel, LoadedModel};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn tiny_dir() -> PathBuf {
    common::fixtures_dir().join("tiny-bert-cls")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The transformers checkpoint as the "fine-tuned" model, and a base made from it by perturbing the encoder
/// deterministically (so Δ = θ_ft − θ_pre is known and nonzero everywhere).
struct Setup {
    base: BaseModel,
    ft_body: BTreeMap<String, Tensor>,
    head: BTreeMap<String, Tensor>,
    spec: HeadSpec,
    split: FewShotSplit,
}

fn setup() -> Setup {
    let ft = LoadedModel::load(&tiny_dir(), &Device::Cpu).unwrap();
    let mut base = BaseModel::load(&tiny_dir(), &Device::Cpu, 64).unwrap();
    let mut seed = 7u64;
    for (name, t) in base.model.weights.tensors.iter_mut() {
        if name.starts_with("encoder.") {
            let n = t.elem_count();
            let noise: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * 0.02
                })
                .collect();
            *t = (t.clone() + Tensor::from_vec(noise, t.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    base.model.weights.content_hash = "perturbed-base".into();
    let spec = HeadSpec::BertClassifier { num_labels: 3 };
    let head: BTreeMap<String, Tensor> = spec
        .tensor_names(skillgraft::model::Architecture::Bert)
        .into_iter()
        .map(|n| {
            let t = ft.weights.tensors[&n].clone();
            (n, t)
        })
        .collect();
    let texts = [
        "it 's a charming and often affecting journey .",
        "unflinchingly bleak and desperate",
        "a gorgeous , witty , seductive movie .",
        "the acting is dreadful",
        "a masterpiece of tension and grace",
        "boring and far too long",
    ];
    let ex = |i: usize| Example {
        text: texts[i].to_string(),
        text_b: None,
        label: i % 3,
    };
    let split = FewShotSplit {
        train: (0..6).map(ex).collect(),
        dev: (0..3).map(ex).collect(),
        test: (0..6).map(ex).collect(),
        k: 2,
        seed: 0,
    };
    Setup {
        ft_body: ft.weights.tensors,
        base,
        head,
        spec,
        split,
    }
}

fn graftable(s: &Setup) -> GraftableModel {
    GraftableModel::new(
        &s.base.model,
        &s.ft_body,
        s.head.clone(),
        s.base.inputs(s.spec.clone()),
        &RegionSpec::default(),
    )
    .unwrap()
}

fn reference_logits(s: &Setup, body: &BTreeMap<String, Tensor>) -> Vec<Vec<f32>> {
    let mut t = body.clone();
    t.extend(s.head.clone());
    let clf = Classifier::load(
        &to_hash_map(&t),
        &s.base.model.config,
        &s.spec,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ib: InputBuilder = s.base.inputs(s.spec.clone());
    ib.logits(&clf, &s.split.test, 4).unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn empty_graft_is_base_and_full_graft_is_finetuned() {
    let s = setup();
    let m = graftable(&s);
    m.set_mask(&[]).unwrap();
    let empty = m.logits(&s.split.test).unwrap();
    let base = reference_logits(&s, &s.base.model.weights.tensors);
    assert!(
        max_abs_diff(&empty, &base) <= 1e-6,
        "empty graft vs base: {}",
        max_abs_diff(&empty, &base)
    );
    let all: Vec<u32> = (0..m.region.len() as u32).collect();
    m.set_mask(&all).unwrap();
    let full = m.logits(&s.split.test).unwrap();
    let ft = reference_logits(&s, &s.ft_body);
    assert!(
        max_abs_diff(&full, &ft) <= 1e-6,
        "full graft vs fine-tuned: {}",
        max_abs_diff(&full, &ft)
    );
    assert!(
        max_abs_diff(&base, &ft) > 1e-3,
        "the test needs base and fine-tuned to differ"
    );
}

#[test]
fn apply_then_revert_restores_the_base_bit_for_bit_and_full_graft_file_is_finetuned() {
    let s = setup();
    let m = graftable(&s);
    let all: Vec<u32> = (0..m.region.len() as u32).collect();
    let mut graft = Graft {
        manifest: serde_json::from_value(serde_json::json!({
            "format": 1, "base": {"name": "tiny", "content_hash": "perturbed-base", "architecture": "bert", "parameters": 1},
            "region": {}, "region_size": m.region.len(), "size": all.len(), "method": "test",
            "hyper_parameters": null, "head": s.spec, "task": null, "metrics": null, "created_unix": 0
        }))
        .unwrap(),
        entries: entries_from_mask(&m.region, &all, &m.ft),
        head: Graft::head_from_tensors(&s.spec.tensor_names(skillgraft::model::Architecture::Bert), &s.head).unwrap(),
    };
    let served = s.base.model.weights.deep_clone().unwrap().tensors;
    let before: Vec<Vec<f32>> = served
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let applied = graft.apply(&served).unwrap();
    let grafted = reference_logits(&s, &served);
    let ft = reference_logits(&s, &s.ft_body);
    assert!(
        max_abs_diff(&grafted, &ft) <= 1e-6,
        "applied full graft vs fine-tuned"
    );
    applied.revert().unwrap();
    let after: Vec<Vec<f32>> = served
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    for (a, b) in before.iter().zip(&after) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "revert is not bit-exact"
        );
    }
    // A file round trip keeps everything; a graft for another base is refused.
    let bytes = graft.to_bytes().unwrap();
    assert_eq!(Graft::from_bytes(&bytes).unwrap(), graft);
    assert!(graft.check_base(&served, "another-hash").is_err());
    graft.manifest.base.content_hash = "x".into();
    let e = graft
        .check_base(&served, "perturbed-base")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not this base"), "{e}");
}

#[test]
fn corrupt_graft_files_give_errors_not_panics() {
    let s = setup();
    let m = graftable(&s);
    let mask = top_k(&m.delta.iter().map(|d| d.abs()).collect::<Vec<_>>(), 50);
    let graft = Graft {
        manifest: serde_json::from_value(serde_json::json!({
            "format": 1, "base": {"name": "tiny", "content_hash": "h", "architecture": "bert", "parameters": 1},
            "region": {}, "region_size": m.region.len(), "size": 50, "method": "test",
            "hyper_parameters": null, "head": s.spec, "task": null, "metrics": null, "created_unix": 0
        }))
        .unwrap(),
        entries: entries_from_mask(&m.region, &mask, &m.ft),
        head: BTreeMap::new(),
    };
    let bytes = graft.to_bytes().unwrap();
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Graft::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut} must fail"
        );
    }
    // Flipping any byte must give an error or a valid graft, never a panic (this loop would abort on one).
    let mut rejected = 0;
    for pos in (0..bytes.len()).step_by(7) {
        let mut flipped = bytes.clone();
        flipped[pos] ^= 0x55;
        if Graft::from_bytes(&flipped).is_err() {
            rejected += 1;
        }
    }
    assert!(rejected > 0, "no corruption was detected at all");
    assert!(Graft::from_bytes(b"not a graft at all").is_err());
    // A graft whose index points outside its tensor is rejected on load.
    let mut bad = graft.clone();
    bad.entries[0].indices[0] = u32::MAX;
    bad.entries[0].indices.sort_unstable();
    let e = Graft::from_bytes(&bad.to_bytes().unwrap()).unwrap_err();
    assert!(
        format!("{e:#}").contains("out of range") || format!("{e:#}").contains("increasing"),
        "{e:#}"
    );
}

#[test]
fn refit_keeps_the_base_patch_and_lowers_the_training_loss() {
    let s = setup();
    let m = graftable(&s);
    let opts = LocalizeOptions {
        method: Method::Refit,
        sparsity: 1e-2,
        epochs: 4,
        refit_lr: 1e-2,
        ..Default::default()
    };
    let r = localize(&m, &s.split, &opts, &mut |_| {}).unwrap();
    assert_eq!(
        r.mask, r.base_patch,
        "refit keeps the base patch's coordinates"
    );
    assert_eq!(r.history.len(), 5, "epoch 0 plus four epochs");
    assert_eq!(
        r.history[0].loss, None,
        "the starting mask has no training loss"
    );
    let first = r.history[1].loss.expect("epoch 1 has a training loss");
    let last = r.history[4].loss.expect("epoch 4 has a training loss");
    assert!(
        last < first,
        "training only the graft lowers the training loss: {first} → {last}"
    );
    match &r.values {
        Some(v) => {
            assert_eq!(v.len(), r.mask.len());
            assert!(r.best_epoch > 0);
            let changed = v
                .iter()
                .zip(&r.mask)
                .filter(|(x, &i)| **x != m.ft[i as usize])
                .count();
            assert!(
                changed > 0,
                "re-fitted values differ from the fine-tuned ones"
            );
        }
        None => assert_eq!(r.best_epoch, 0),
    }
    // Setting the fine-tuned values explicitly is the plain mask, bit for bit.
    let ft_values: Vec<f32> = r.mask.iter().map(|&i| m.ft[i as usize]).collect();
    m.set_values(&r.mask, &ft_values).unwrap();
    let a = m.logits(&s.split.test).unwrap();
    m.set_mask(&r.mask).unwrap();
    let b = m.logits(&s.split.test).unwrap();
    assert_eq!(a, b);
    assert!(m.set_values(&r.mask, &ft_values[1..]).is_err());
}

#[test]
fn localization_is_deterministic_and_methods_respect_the_budget() {
    let s = setup();
    let m = graftable(&s);
    let opts = |method| LocalizeOptions {
        method,
        sparsity: 1e-2,
        epochs: 3,
        lr: 1e7,
        seed: 3,
        ..Default::default()
    };
    let budget = skillgraft::graft::localize::budget(1e-2, m.region.len());
    let a = localize(&m, &s.split, &opts(Method::Paper), &mut |_| {}).unwrap();
    let b = localize(&m, &s.split, &opts(Method::Paper), &mut |_| {}).unwrap();
    assert_eq!(a.mask, b.mask, "same seed, same graft");
    assert_eq!(a.history.len(), 4, "epoch 0 plus three epochs");
    assert_eq!(a.base_patch.len(), budget);
    assert!(
        a.mask.len() <= budget,
        "the paper's method stays within the budget ({} > {budget})",
        a.mask.len()
    );
    // A mask learning rate at which the paper's rounded mask grows past the budget (1e10 here): it is
    // projected back onto the budget, the history says how large it grew, and --allow-growth keeps it.
    let fast = LocalizeOptions {
        lr: 1e10,
        ..opts(Method::Paper)
    };
    let p = localize(&m, &s.split, &fast, &mut |_| {}).unwrap();
    let grew = p.history.iter().filter_map(|e| e.unprojected_size).max();
    assert!(
        grew.is_some_and(|g| g > budget),
        "the rounded mask grows: {:?}",
        p.history
    );
    assert!(
        p.mask.len() <= budget,
        "projected onto the budget: {}",
        p.mask.len()
    );
    let grown = LocalizeOptions {
        allow_growth: true,
        ..fast
    };
    let g = localize(&m, &s.split, &grown, &mut |_| {}).unwrap();
    assert!(g.history.iter().all(|e| e.unprojected_size.is_none()));
    assert!(
        g.history.iter().any(|e| e.mask_size > budget),
        "--allow-growth lets the mask grow: {:?}",
        g.history
    );
    for method in [
        Method::Magnitude,
        Method::Saliency,
        Method::L1,
        Method::Refit,
    ] {
        let r = localize(&m, &s.split, &opts(method), &mut |_| {}).unwrap();
        assert_eq!(r.mask.len(), budget, "{method:?} keeps the budget");
        assert!(
            r.mask.windows(2).all(|w| w[0] < w[1]),
            "{method:?} mask sorted"
        );
    }
    let mag = localize(&m, &s.split, &opts(Method::Magnitude), &mut |_| {}).unwrap();
    assert_eq!(mag.mask, mag.base_patch);
    // Overlap and composition of two different grafts.
    let region = FlatRegion::new(&RegionSpec::default(), &s.base.model.weights.tensors).unwrap();
    let mk = |mask: &[u32]| {
        Graft {
        manifest: serde_json::from_value(serde_json::json!({
            "format": 1, "base": {"name": "tiny", "content_hash": "h", "architecture": "bert", "parameters": 1},
            "region": {}, "region_size": region.len(), "size": mask.len(), "method": "test",
            "hyper_parameters": null, "head": s.spec, "task": null, "metrics": null, "created_unix": 0
        }))
        .unwrap(),
        entries: entries_from_mask(&region, mask, &m.ft),
        head: BTreeMap::new(),
    }
    };
    let sal = localize(&m, &s.split, &opts(Method::Saliency), &mut |_| {}).unwrap();
    let g1 = mk(&mag.mask);
    let g2 = mk(&sal.mask);
    let rep = overlap(
        &["a".into(), "b".into()],
        &[g1.clone(), g2.clone()],
        &region,
    )
    .unwrap();
    let common = mag.mask.iter().filter(|i| sal.mask.contains(i)).count();
    assert_eq!(rep.intersection[0][1], common);
    assert_eq!(rep.intersection[0][0], budget);
    assert!((rep.jaccard[0][1] - common as f64 / (2 * budget - common) as f64).abs() < 1e-12);
    assert_eq!(rep.breakdown[0].by_layer.values().sum::<usize>(), budget);
    let composed = compose(&[g1, g2], &region, ConflictRule::Mean).unwrap();
    assert_eq!(
        composed.iter().map(|e| e.indices.len()).sum::<usize>(),
        2 * budget - common
    );
}

#[test]
fn transformers_checkpoint_loads_and_mismatches_are_named() {
    let s = setup();
    // The fixture is a BertForSequenceClassification written by transformers (`bert.` prefix).
    let ft = load_finetuned(
        &tiny_dir(),
        &s.base.model,
        None,
        &s.base.tokenizer,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ft.head, HeadSpec::BertClassifier { num_labels: 3 });
    assert_eq!(ft.model.weights.prefix.as_deref(), Some("bert"));

    // Export round trip: what we write, we (and transformers' layout rules) read back identically.
    let out = tmp("export").join("model");
    let mut all = s.ft_body.clone();
    all.extend(s.head.clone());
    write_hf_dir(&out, &s.base.model, &all, &s.spec, None, false).unwrap();
    let back = load_finetuned(&out, &s.base.model, None, &s.base.tokenizer, &Device::Cpu).unwrap();
    assert_eq!(back.head, s.spec);
    for (n, t) in &all {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back.model.weights.tensors[n]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{n} changed in the export round trip");
    }
    assert!(
        write_hf_dir(&out, &s.base.model, &all, &s.spec, None, false).is_err(),
        "no silent overwrite"
    );

    // A checkpoint with a tensor of another shape is refused, naming it.
    let bad = tmp("bad").join("model");
    let mut wrong = all.clone();
    wrong.insert(
        "encoder.layer.1.output.dense.bias".into(),
        Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
    );
    write_hf_dir(&bad, &s.base.model, &wrong, &s.spec, None, false).unwrap();
    let e = load_finetuned(&bad, &s.base.model, None, &s.base.tokenizer, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        format!("{e:#}").contains("encoder.layer.1.output.dense.bias"),
        "{e:#}"
    );

    // A truncated safetensors file and a pickle-only directory give clear errors.
    let trunc = tmp("trunc");
    std::fs::copy(tiny_dir().join("config.json"), trunc.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let e = LoadedModel::load(&trunc, &Device::Cpu).err().unwrap();
    assert!(
        format!("{e:#}").contains("not a valid safetensors"),
        "{e:#}"
    );
    let pickle = tmp("pickle");
    std::fs::copy(tiny_dir().join("config.json"), pickle.join("config.json")).unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"\x80\x02pickle").unwrap();
    let e = LoadedModel::load(&pickle, &Device::Cpu).err().unwrap();
    assert!(format!("{e:#}").contains("pickle"), "{e:#}");

    // A RoBERTa checkpoint does not fit a BERT base.
    let rob = common::fixtures_dir().join("tiny-roberta-cls");
    let e = load_finetuned(&rob, &s.base.model, None, &s.base.tokenizer, &Device::Cpu)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("architecture mismatch"), "{e:#}");
}

#[test]
fn engine_mixed_task_batches_match_grafts_applied_in_place() {
    use skillgraft::engine::{Engine, EngineConfig, ServedTask};
    use std::sync::Arc;
    let s = setup();
    let m = graftable(&s);
    let abs: Vec<f32> = m.delta.iter().map(|d| d.abs()).collect();
    let mk = |mask: &[u32], version: u64| {
        Arc::new(ServedTask {
            name: format!("t{version}"),
            graft: Graft {
                manifest: serde_json::from_value(serde_json::json!({
                    "format": 1, "base": {"name": "tiny", "content_hash": "perturbed-base", "architecture": "bert", "parameters": 1},
                    "region": {}, "region_size": m.region.len(), "size": mask.len(), "method": "test",
                    "hyper_parameters": null, "head": s.spec, "task": null, "metrics": null, "created_unix": 0
                }))
                .unwrap(),
                entries: entries_from_mask(&m.region, mask, &m.ft),
                head: Graft::head_from_tensors(&s.spec.tensor_names(skillgraft::model::Architecture::Bert), &s.head).unwrap(),
            },
            version,
        })
    };
    let t1 = mk(&top_k(&abs, 400), 1);
    let all: Vec<u32> = (0..m.region.len() as u32).collect();
    let t2 = mk(&all, 2);
    // Reference: each task alone (graft applied in place).
    let reference = |t: &ServedTask| {
        let body = s.base.model.weights.deep_clone().unwrap().tensors;
        let applied = t.graft.apply(&body).unwrap();
        let l = reference_logits(&s, &body);
        applied.revert().unwrap();
        l
    };
    let (want1, want2) = (reference(&t1), reference(&t2));
    let texts: Vec<skillgraft::model::TextInput> = s
        .split
        .test
        .iter()
        .map(|e| skillgraft::model::TextInput::single(e.text.clone()))
        .collect();
    let batch = s.base.tokenizer.encode(&texts, false).unwrap();
    let cfg = EngineConfig {
        max_wait: std::time::Duration::from_millis(300),
        threads: 1,
        ..Default::default()
    };
    let engine = Engine::start(&s.base, cfg).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async {
        tokio::join!(
            engine.logits(t1.clone(), batch.clone()),
            engine.logits(t2.clone(), batch.clone())
        )
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        max_abs_diff(&a, &want1) <= 1e-5,
        "task 1 in a mixed batch: {}",
        max_abs_diff(&a, &want1)
    );
    assert!(
        max_abs_diff(&b, &want2) <= 1e-5,
        "task 2 in a mixed batch: {}",
        max_abs_diff(&b, &want2)
    );
    assert!(
        max_abs_diff(&want1, &want2) > 1e-3,
        "the two tasks must differ for this test to mean anything"
    );
    assert_eq!(
        engine
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "both requests ran in one batch"
    );
}

/// Σ over batches of ∇(batch mean loss) ⊙ Δ, computed by localization in merged passes (one forward and
/// backward over several batches, each example weighted 1/|its batch|), equals the sum of one pass per
/// batch, with batches of unequal size.
#[test]
fn merged_gradient_passes_equal_one_pass_per_batch() {
    let s = setup();
    let m = graftable(&s);
    m.set_point(&|i| if i % 3 == 0 { 0.7 } else { 0.2 })
        .unwrap();
    let texts = m.inst.inputs.texts(&s.split.train).unwrap();
    let labels: Vec<usize> = s.split.train.iter().map(|e| e.label).collect();
    let batches: Vec<(Vec<skillgraft::model::TextInput>, Vec<usize>)> = [0..4, 4..5, 5..6]
        .into_iter()
        .map(|r| (texts[r.clone()].to_vec(), labels[r].to_vec()))
        .collect();
    let (merged, merged_loss) = m.gradient_times_delta(&batches).unwrap();
    let mut want = vec![0f64; m.region.len()];
    let mut want_loss = 0.0;
    for (t, l) in &batches {
        let loss = m.inst.batch_loss(t, l).unwrap();
        want_loss += loss.to_scalar::<f32>().unwrap() as f64;
        let grads = m.inst.params.gradients(&loss.backward().unwrap()).unwrap();
        let mut at = 0;
        for g in grads {
            for v in g.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
                want[at] += v as f64 * m.delta[at] as f64;
                at += 1;
            }
        }
    }
    want_loss /= batches.len() as f64;
    assert!(
        (merged_loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
        "{merged_loss} vs {want_loss}"
    );
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = merged
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 0.0, "the gradient should not vanish");
    assert!(
        diff <= 1e-5 * norm,
        "‖merged − per batch‖ {diff} vs ‖·‖ {norm}"
    );
}
