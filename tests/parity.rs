//! Parity of our encoder, heads and gradients with HF transformers (fixtures in ../shared/fixtures),
//! and with candle-transformers' BERT as a second, independent reference for the inference forward.

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use skillgraft::model::{
    heads::Classifier, to_hash_map, EncodedBatch, HeadSpec, LoadedModel, ParamSet, TextEncoder,
    TextInput,
};
use std::collections::BTreeMap;

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture"))
        .expect("parse fixture")
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        _ => panic!("not a number array"),
    }
}

fn ints(v: &Value) -> Vec<u32> {
    floats(v).into_iter().map(|x| x as u32).collect()
}

/// ‖a − b‖ ≤ rel·‖b‖ + abs_floor·sqrt(n); returns the relative error for the message.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64, abs_floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let bound = rel * norm + abs_floor * (want.len() as f64).sqrt();
    assert!(
        diff <= bound,
        "{what}: ‖got − want‖ = {diff:e}, ‖want‖ = {norm:e}, bound {bound:e} (relative error {:e})",
        diff / norm.max(1e-30)
    );
}

fn batch_from_fixture(r: &Value) -> EncodedBatch {
    let ids = ints(&r["input_ids"]);
    let mask = ints(&r["attention_mask"]);
    let batch = r["input_ids"].as_array().expect("rows").len();
    let seq = ids.len() / batch;
    EncodedBatch {
        type_ids: vec![0; ids.len()],
        ids,
        mask,
        batch,
        seq,
        mask_positions: r.get("mask_positions").map(ints),
    }
}

fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Tensor {
    let l = Tensor::from_vec(labels.to_vec(), labels.len(), logits.device()).expect("labels");
    candle_nn::loss::cross_entropy(logits, &l).expect("loss")
}

/// Builds the classifier with the encoder (and head) tensors trainable, runs forward and backward.
fn forward_backward(
    model: &LoadedModel,
    spec: &HeadSpec,
    extra: BTreeMap<String, Tensor>,
    batch: &EncodedBatch,
    labels: &[u32],
) -> (Tensor, f32, BTreeMap<String, Vec<f32>>) {
    let mut tensors = model.weights.tensors.clone();
    tensors.extend(extra);
    let params =
        ParamSet::make_trainable(&mut tensors, |n| n.starts_with("encoder.")).expect("vars");
    let clf = Classifier::load(
        &to_hash_map(&tensors),
        &model.config,
        spec,
        DType::F32,
        &Device::Cpu,
    )
    .expect("classifier");
    let input = batch
        .to_input(&model.config, &Device::Cpu, DType::F32)
        .expect("input");
    let logits = clf.logits(&input).expect("forward");
    let loss = cross_entropy(&logits, labels);
    let grads = loss.backward().expect("backward");
    let g = params
        .gradients(&grads)
        .expect("every encoder tensor gets a gradient");
    let by_name = params
        .names
        .iter()
        .zip(g)
        .map(|(n, t)| {
            (
                n.clone(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    (logits, loss.to_scalar::<f32>().expect("scalar"), by_name)
}

fn tiny(name: &str) {
    let dir = common::fixtures_dir().join(name);
    let r = json(&dir.join("reference.json"));
    let model = LoadedModel::load(&dir, &Device::Cpu).expect("load tiny model");
    let arch = model.config.architecture().expect("arch");
    let batch = batch_from_fixture(&r);
    let labels = ints(&r["labels"]);
    let mlm = r["head"] == "mlm";
    let spec = if mlm {
        HeadSpec::Prompt {
            template: r["template"]
                .as_str()
                .expect("template")
                .replace("{}", "{sentence}"),
            label_words: vec![],
            label_word_ids: ints(&r["label_word_ids"]),
        }
    } else if arch == skillgraft::model::Architecture::Bert {
        HeadSpec::BertClassifier { num_labels: 3 }
    } else {
        HeadSpec::RobertaClassifier { num_labels: 3 }
    };
    let (logits, loss, grads) = forward_backward(&model, &spec, BTreeMap::new(), &batch, &labels);
    let want_key = if mlm { "label_word_logits" } else { "logits" };
    let got = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(
        &format!("{name} logits"),
        &got,
        &floats(&r[want_key]),
        1e-4,
        0.0,
    );
    let want_loss = r["loss"].as_f64().unwrap();
    assert!(
        ((loss as f64) - want_loss).abs() <= 1e-4 * want_loss.abs(),
        "{name} loss {loss} vs {want_loss}"
    );
    for (full, want) in r["grads"].as_object().expect("grads") {
        let canon = full.split_once('.').map(|(_, rest)| rest).unwrap_or(full);
        let got = grads
            .get(canon)
            .unwrap_or_else(|| panic!("no gradient for {canon}"));
        // Key biases cannot change attention (softmax is shift-invariant): their exact gradient is 0, and
        // the reference holds float32 round-off (~1e-11); compare those with an absolute floor.
        let floor = if canon.contains("key.bias") {
            1e-7
        } else {
            0.0
        };
        assert_close(
            &format!("{name} grad {canon}"),
            got,
            &floats(want),
            1e-4,
            floor,
        );
    }
    if mlm {
        // The first ten vocabulary logits at the mask: the same head with "label words" 0..10.
        let spec10 = HeadSpec::Prompt {
            template: String::new(),
            label_words: vec![],
            label_word_ids: (0..10).collect(),
        };
        let clf = Classifier::load(
            &to_hash_map(&model.weights.tensors),
            &model.config,
            &spec10,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let input = batch
            .to_input(&model.config, &Device::Cpu, DType::F32)
            .unwrap();
        let got = clf
            .logits(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_close(
            &format!("{name} first-10 logits"),
            &got,
            &floats(&r["mask_position_logits_first10"]),
            1e-4,
            0.0,
        );
        // Our tokenizer + prompt reproduces the fixture's ids and mask positions.
        let enc = TextEncoder::from_file(&dir.join("tokenizer.json"), &model.config, 64).unwrap();
        let texts: Vec<TextInput> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| TextInput::single(t.as_str().unwrap()))
            .collect();
        let ours = enc.encode(&texts, true).unwrap();
        assert_eq!(
            ours.mask_positions, batch.mask_positions,
            "{name}: mask positions"
        );
        for row in 0..batch.batch {
            let n = batch.mask[row * batch.seq..(row + 1) * batch.seq]
                .iter()
                .filter(|&&m| m == 1)
                .count();
            assert_eq!(
                &ours.ids[row * ours.seq..row * ours.seq + n],
                &batch.ids[row * batch.seq..row * batch.seq + n],
                "{name}: token ids of row {row}"
            );
        }
    }
}

#[test]
fn tiny_bert_mlm_matches_transformers() {
    tiny("tiny-bert-mlm");
}

#[test]
fn tiny_roberta_mlm_matches_transformers() {
    tiny("tiny-roberta-mlm");
}

#[test]
fn tiny_roberta_classifier_matches_transformers() {
    tiny("tiny-roberta-cls");
}

#[test]
fn tiny_bert_classifier_matches_transformers() {
    tiny("tiny-bert-cls");
}

#[test]
fn minilm_matches_transformers() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let r = json(&common::fixtures_dir().join("minilm_reference.json"));
    let model = LoadedModel::load(&dir, &Device::Cpu).expect("load MiniLM");
    let batch = batch_from_fixture(&r);
    let labels = ints(&r["labels"]);
    let mut head = BTreeMap::new();
    head.insert(
        "classifier.weight".to_string(),
        Tensor::from_vec(floats(&r["head_weight"]), (2, 384), &Device::Cpu).unwrap(),
    );
    head.insert(
        "classifier.bias".to_string(),
        Tensor::from_vec(floats(&r["head_bias"]), 2, &Device::Cpu).unwrap(),
    );
    let spec = HeadSpec::BertClassifier { num_labels: 2 };
    let (logits, loss, grads) = forward_backward(&model, &spec, head, &batch, &labels);
    let got = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close("MiniLM logits", &got, &floats(&r["logits"]), 1e-4, 0.0);
    let want_loss = r["loss"].as_f64().unwrap();
    assert!(
        ((loss as f64) - want_loss).abs() <= 1e-4 * want_loss,
        "loss {loss} vs {want_loss}"
    );
    for (name, want) in r["grads"].as_object().unwrap() {
        assert_close(
            &format!("MiniLM grad {name}"),
            &grads[name.as_str()],
            &floats(want),
            1e-4,
            0.0,
        );
    }
    let row0 = &grads["encoder.layer.1.attention.output.dense.weight"][..384];
    assert_close(
        "MiniLM grad row 0 of layer 1 attention output",
        row0,
        &floats(&r["grad_row0_layer1_attention_output_dense_weight"]),
        1e-4,
        0.0,
    );
    let norm: f64 = grads
        .values()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let want_norm = r["grad_norm_total_encoder"].as_f64().unwrap();
    assert!(
        (norm - want_norm).abs() <= 1e-4 * want_norm,
        "encoder grad norm {norm} vs {want_norm}"
    );

    // Hidden states: our encoder against the fixture, and against candle-transformers' BERT.
    let clf = Classifier::load(
        &to_hash_map(&model.weights.tensors),
        &model.config,
        &spec,
        DType::F32,
        &Device::Cpu,
    );
    assert!(
        clf.is_err(),
        "the base alone has no classifier tensors; loading must fail clearly"
    );
    let tensors = to_hash_map(&model.weights.tensors);
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let encoder = skillgraft::model::Encoder::load(vb, &model.config).unwrap();
    let input = batch
        .to_input(&model.config, &Device::Cpu, DType::F32)
        .unwrap();
    let hidden = encoder.forward(&input).unwrap();
    let cls = hidden
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tok3 = hidden
        .narrow(1, 3, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_close(
        "MiniLM [CLS] hidden",
        &cls,
        &floats(&r["last_hidden_state_cls"]),
        1e-4,
        0.0,
    );
    assert_close(
        "MiniLM token-3 hidden",
        &tok3,
        &floats(&r["last_hidden_state_token3"]),
        1e-4,
        0.0,
    );

    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let ct_cfg: candle_transformers::models::bert::Config =
        serde_json::from_str(&cfg_text).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let reference = candle_transformers::models::bert::BertModel::load(vb, &ct_cfg).unwrap();
    let ids = Tensor::from_vec(batch.ids.clone(), (batch.batch, batch.seq), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let mask =
        Tensor::from_vec(batch.mask.clone(), (batch.batch, batch.seq), &Device::Cpu).unwrap();
    let theirs = reference.forward(&ids, &types, Some(&mask)).unwrap();
    let ours_all = hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // Compare real (non-padding) positions only: padded rows are unspecified.
    let theirs_all = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = 384;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, &m) in batch.mask.iter().enumerate() {
        if m == 1 {
            a.extend_from_slice(&ours_all[i * h..(i + 1) * h]);
            b.extend_from_slice(&theirs_all[i * h..(i + 1) * h]);
        }
    }
    assert_close("MiniLM hidden vs candle-transformers", &a, &b, 1e-4, 0.0);

    // Our tokenizer reproduces the fixture's token ids.
    let enc = TextEncoder::from_file(&dir.join("tokenizer.json"), &model.config, 32).unwrap();
    let texts: Vec<TextInput> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TextInput::single(t.as_str().unwrap()))
        .collect();
    let ours = enc.encode(&texts, false).unwrap();
    for row in 0..batch.batch {
        let n = batch.mask[row * batch.seq..(row + 1) * batch.seq]
            .iter()
            .filter(|&&m| m == 1)
            .count();
        assert_eq!(
            &ours.ids[row * ours.seq..row * ours.seq + n],
            &batch.ids[row * batch.seq..row * batch.seq + n],
            "token ids of row {row}"
        );
    }
}

/// The first-token path (last layer on [CLS] rows only, what classifier heads use) equals row 0 of the full
/// forward, with padding in the batch, on both tiny architectures.
#[test]
fn first_token_forward_equals_row_zero_of_the_full_forward() {
    for name in ["tiny-bert-cls", "tiny-roberta-cls"] {
        let dir = common::fixtures_dir().join(name);
        let r = json(&dir.join("reference.json"));
        let model = LoadedModel::load(&dir, &Device::Cpu).expect("load tiny model");
        let batch = batch_from_fixture(&r);
        assert!(
            batch.mask.contains(&0),
            "{name}: the fixture batch should have padding"
        );
        let vb = candle_nn::VarBuilder::from_tensors(
            to_hash_map(&model.weights.tensors),
            DType::F32,
            &Device::Cpu,
        );
        let encoder = skillgraft::model::Encoder::load(vb, &model.config).expect("encoder");
        let input = batch
            .to_input(&model.config, &Device::Cpu, DType::F32)
            .unwrap();
        let full = encoder.forward(&input).unwrap();
        let (b, _, h) = full.dims3().unwrap();
        let want = full.narrow(1, 0, 1).unwrap().flatten_all().unwrap();
        let got = encoder.forward_first_token(&input).unwrap();
        assert_eq!(got.dims(), &[b, 1, h], "{name}: shape");
        assert_close(
            &format!("{name} first-token hidden states"),
            &got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &want.to_vec1::<f32>().unwrap(),
            1e-6,
            0.0,
        );
    }
}
