//! The "Bring your own task" flow of docs/tasks.md, end to end, on a task the code has no built-in knowledge of:
//! "tone" (fact / praise / complaint, string labels, a CSV file with a split column, made from the shared
//! data). A spec is written by `skillgraft task init`; checkpoints come in transformers' own layouts with no
//! skillgraft files (a `BertForSequenceClassification` with 3 labels and `id2label`, and a body fine-tuned
//! behind a prototype head); the data set and the checkpoints (tar.gz, zip) are uploaded, jobs run, the full
//! test split is evaluated through the API and the task predicts. Every refusal met on the way is checked
//! to name the field.

mod common;

use common::http::Server;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skillgraft"));
    c.env("SKILLGRAFT_DATA_DIR", common::data_dir());
    c
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().expect("run skillgraft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = run(args);
    assert!(success, "skillgraft {args:?} failed:\n{stderr}");
    stdout
}

/// Lines of `file` in the shared data with label `label` (UTF-8, else Latin-1).
fn sentences(file: &str, label: &str) -> Vec<String> {
    let bytes = std::fs::read(common::data_dir().join(file)).expect("shared data");
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|raw| {
            let raw = raw.trim_ascii();
            let text = match std::str::from_utf8(raw) {
                Ok(s) => s.to_string(),
                Err(_) => raw.iter().map(|&b| char::from(b)).collect(),
            };
            let (l, s) = text.split_once(' ')?;
            (l == label && !s.trim().is_empty()).then(|| s.trim().to_string())
        })
        .collect()
}

/// The "tone" task (scripts/make-tone-task.py): every 8th sentence of each source, every 5th row test.
fn write_tone_csv(path: &Path) -> usize {
    let mut rows = Vec::new();
    for (tone, file, label) in [
        ("fact", "subj.all", "1"),
        ("praise", "rt-polarity.all", "1"),
        ("complaint", "rt-polarity.all", "0"),
    ] {
        rows.extend(
            sentences(file, label)
                .into_iter()
                .step_by(8)
                .map(|s| (s, tone)),
        );
    }
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["sentence", "tone", "split"]).unwrap();
    let mut test = 0;
    for (j, (s, tone)) in rows.iter().enumerate() {
        let split = if j % 5 == 0 { "test" } else { "train" };
        test += usize::from(j % 5 == 0);
        w.write_record([s.as_str(), tone, split]).unwrap();
    }
    w.flush().unwrap();
    test
}

/// A checkpoint directory as transformers' `save_pretrained` leaves it: no skillgraft files.
fn strip_skillgraft_files(dir: &Path) {
    for f in ["skillgraft_head.json", "skillgraft_head.safetensors"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

fn archive_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn tar_gz(dir: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in archive_files(dir) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("ckpt/{name}"), data.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn zip_of(dir: &Path) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in archive_files(dir) {
        z.start_file(format!("body/{name}"), opts).unwrap();
        z.write_all(&data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_job(s: &Server, id: &str) -> Value {
    for _ in 0..1200 {
        let st = s.get(&format!("/v1/localizations/{id}")).json();
        if !matches!(st["state"].as_str(), Some("queued") | Some("running")) {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("job {id} did not end");
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-newcomer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bring_your_own_task_end_to_end() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let dir = tmp();
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    let m = model.to_string_lossy().to_string();
    let test_rows = write_tone_csv(&dir.join("tone.csv"));

    // 1. A spec from the data file, checked; unknown keys are refused by name.
    ok(&[
        "task",
        "init",
        "--data",
        &p("tone.csv"),
        "--out",
        &p("tone.json"),
    ]);
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("tone.json")).unwrap()).unwrap();
    assert_eq!(spec["labels"], json!(["complaint", "fact", "praise"]));
    assert_eq!(spec["source"]["file"], "tone.csv", "relative to the spec");
    assert_eq!(spec["source"]["split_column"], "split");
    assert_eq!(spec["source"]["text_column"], "sentence");
    spec["label_descriptions"] = json!(["It is a complaint.", "It is a fact.", "It is praise."]);
    std::fs::write(
        dir.join("tone.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let check = ok(&["task", "check", &p("tone.json"), "--k", "8"]);
    assert!(check.contains("24 train / 24 dev"), "{check}");
    let mut bad = spec.clone();
    bad["train_file"] = json!("x.csv");
    std::fs::write(dir.join("bad.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
    let (success, _, err) = run(&["task", "check", &p("bad.json")]);
    assert!(
        !success && err.contains("unknown field `train_file`"),
        "{err}"
    );
    let (success, _, err) = run(&["task", "check", &p("tone.json"), "--k", "5000"]);
    assert!(
        !success && err.contains("--cap-k") && err.contains("at most"),
        "{err}"
    );

    // 2. Checkpoints in transformers' layouts, fine-tuned briefly on the new task (K = 8).
    let short = [
        "--k",
        "8",
        "--steps",
        "24",
        "--eval-every",
        "12",
        "--max-test",
        "20",
        "--model",
        &m,
    ];
    let (cls, proto) = (p("ckpt-cls"), p("ckpt-proto"));
    let spec_path = p("tone.json");
    for (out, head) in [(&cls, "bert-classifier"), (&proto, "prototype")] {
        let mut args = vec![
            "finetune",
            "--task-spec",
            &spec_path,
            "--head",
            head,
            "--out",
            out,
        ];
        args.extend(short);
        ok(&args);
        strip_skillgraft_files(Path::new(out));
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ckpt-cls/config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"]["2"], "praise");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");

    // The CLI reads both (the prototype head given), and refuses a task with other labels.
    let loc = ok(&[
        "localize",
        "--sparsity",
        "1e-4",
        "--retain",
        "0",
        "--task-spec",
        &p("tone.json"),
        "--finetuned",
        &cls,
        "--out",
        &p("cls.graft"),
        "--k",
        "8",
        "--epochs",
        "2",
        "--max-test",
        "30",
        "--json",
        "--model",
        &m,
    ]);
    let loc: Value = serde_json::from_str(&loc).unwrap();
    assert!(loc["size"].as_u64().unwrap() <= loc["region_size"].as_u64().unwrap() / 10_000 + 1);
    let (success, _, err) = run(&[
        "localize",
        "--task",
        "sst2",
        "--finetuned",
        &cls,
        "--out",
        &p("x.graft"),
        "--model",
        &m,
    ]);
    assert!(
        !success && err.contains("3 classes (complaint, fact, praise)") && err.contains("has 2"),
        "{err}"
    );
    let (success, _, err) = run(&[
        "localize",
        "--task-spec",
        &p("tone.json"),
        "--finetuned",
        &proto,
        "--out",
        &p("x.graft"),
        "--model",
        &m,
    ]);
    assert!(!success && err.contains("--head prototype"), "{err}");

    // 3. The service: data sets.
    let state = dir.join("state");
    let s = Server::start(&model, &state, &["--max-batch-inputs", "64"]);
    let csv = std::fs::read(dir.join("tone.csv")).unwrap();
    let r = s.call(
        "POST",
        "/v1/datasets?filename=tone.csv&name=tone",
        &csv,
        "text/csv",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ds = r.json();
    assert_eq!(ds["labels"], json!(["complaint", "fact", "praise"]));
    assert_eq!(ds["split_counts"]["test"], test_rows);
    let ds_id = ds["id"].as_str().unwrap().to_string();
    let r = s.call(
        "POST",
        "/v1/datasets?filename=latin.tsv",
        b"text\tlabel\ncaf\xe9 noir\tgood\nthe tea\tbad\nmore\tgood\nless\tbad\n",
        "text/tab-separated-values",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["encoding"], "latin-1");
    let r = s.call(
        "POST",
        "/v1/datasets?filename=reviews.jsonl",
        b"{\"text\": \"good film\", \"label\": \"pos\"}\n{\"text\": \"bad film\", \"label\": \"neg\"}\n{\"text\": \"fine\", \"label\": \"pos\"}\n{\"text\": \"awful\", \"label\": \"neg\"}\n",
        "application/x-ndjson",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        (r.json()["format"].clone(), r.json()["labels"].clone()),
        (json!("jsonl"), json!(["neg", "pos"]))
    );
    let r = s.call(
        "POST",
        "/v1/datasets?filename=polarity.txt",
        b"1 good\n0 bad\n1 fine\n0 awful\n",
        "text/plain",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        (r.json()["format"].clone(), r.json()["rows"].clone()),
        (json!("label_sentence"), json!(4))
    );
    let r = s.call(
        "POST",
        "/v1/datasets?filename=e.csv",
        b"text,label\n,a\nb,b\nc,a\nd,b\n",
        "text/csv",
    );
    assert_eq!(r.status, 422);
    assert!(message(&r.json()).contains("empty text"), "{}", r.text());
    let r = s.call(
        "POST",
        "/v1/datasets?filename=t.csv&label_column=nope",
        &csv,
        "text/csv",
    );
    assert_eq!(r.status, 422);
    assert!(message(&r.json()).contains("\"nope\""), "{}", r.text());
    let listed = s.get("/v1/datasets").json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == ds_id.as_str()));
    let schema = s.get("/v1/schemas/task-spec").json();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/task-spec.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(schema, committed);

    // Checkpoints: tar.gz (head from tensor names, labels from id2label), zip with the head named.
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        &tar_gz(Path::new(&cls)),
        "application/gzip",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["head"], "bert_classifier");
    assert_eq!(r.json()["labels"], json!(["complaint", "fact", "praise"]));
    let ck_cls = r.json()["id"].as_str().unwrap().to_string();
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        &zip_of(Path::new(&proto)),
        "application/zip",
    );
    assert_eq!(r.status, 422, "a body without a head needs ?head=");
    assert!(message(&r.json()).contains("head"), "{}", r.text());
    let r = s.call(
        "POST",
        "/v1/checkpoints?head=prototype",
        &zip_of(Path::new(&proto)),
        "application/zip",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ck_proto = r.json()["id"].as_str().unwrap().to_string();
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        b"\x1f\x8bnot really gzip",
        "application/gzip",
    );
    assert!(r.status == 422 || r.status == 400, "{}", r.text());
    let r = s.call(
        "POST",
        "/v1/checkpoints",
        b"hello world",
        "application/octet-stream",
    );
    assert_eq!(r.status, 422);
    assert!(
        message(&r.json()).contains("not a tar, tar.gz (.tgz) or zip"),
        "{}",
        r.text()
    );
    assert_eq!(s.get("/v1/checkpoints").json().as_array().unwrap().len(), 2);

    // 4. Jobs are checked before 202, and every refusal names the field.
    let job = |extra: Value| {
        let mut body = json!({"checkpoint": ck_cls, "task_name": "tone", "dataset": ds_id,
            "split": {"rule": "few_shot", "k": 8, "seed": 1}, "epochs": 2, "max_test": 1000,
            "sparsity": 1e-4, "budget": {"retain": 0}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        s.json("POST", "/v1/localizations", &body)
    };
    let r = job(json!({"dataset": "ds-nope"}));
    assert_eq!(r.status, 404);
    assert!(message(&r.json()).starts_with("`dataset`"), "{}", r.text());
    let r = job(json!({"checkpoint": ck_proto}));
    assert_eq!(r.status, 422);
    assert!(
        message(&r.json()).contains("--head prototype") || message(&r.json()).contains("`head`"),
        "{}",
        r.text()
    );
    let r = job(json!({"split": {"rule": "few_shot", "k": 5000, "seed": 1}}));
    assert_eq!(r.status, 422);
    assert!(
        message(&r.json()).contains("`split`") && message(&r.json()).contains("cap_k"),
        "{}",
        r.text()
    );
    let r = s.call(
        "POST",
        "/v1/datasets?filename=tone.csv&labels=praise,fact,complaint",
        &csv,
        "text/csv",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let reordered = r.json()["id"].as_str().unwrap().to_string();
    assert_ne!(reordered, ds_id, "the class order is part of a data set");
    let r = job(json!({"dataset": reordered}));
    assert_eq!(
        r.status,
        422,
        "id2label in another order is refused: {}",
        r.text()
    );
    assert!(
        message(&r.json()).contains("id2label orders the classes [complaint, fact, praise]"),
        "{}",
        r.text()
    );
    let r = job(json!({"dataset": null, "task": "sst2"}));
    assert_eq!(r.status, 422);
    assert!(message(&r.json()).contains("3 classes"), "{}", r.text());
    let r = job(
        json!({"dataset": null, "task_spec": {"name": "t", "labels": ["complaint", "fact", "praise"]},
        "train": [{"text": "a", "label": "praise"}, {"text": "b", "label": "nope"}], "dev": [{"text": "c", "label": 0}]}),
    );
    assert_eq!(r.status, 422);
    assert!(
        message(&r.json()).contains("`train[1].label`"),
        "{}",
        r.text()
    );
    let inline = json!([{"text": "a", "label": "praise"}, {"text": "b", "label": 1}]);
    let r = job(json!({"dataset": null, "train": inline, "dev": inline}));
    assert_eq!(
        r.status,
        422,
        "inline data without a task spec is refused before 202: {}",
        r.text()
    );
    assert!(
        message(&r.json()).starts_with("`task_spec`"),
        "{}",
        r.text()
    );
    let r = job(
        json!({"dataset": null, "task": "sst2", "train": [{"text": "a", "label": 7}], "dev": [{"text": "b", "label": 0}]}),
    );
    assert_eq!(
        r.status,
        422,
        "a label out of range is refused before 202: {}",
        r.text()
    );
    assert!(
        message(&r.json()).contains("`train[0].label`") && message(&r.json()).contains("below 2"),
        "{}",
        r.text()
    );

    // Two jobs: the classifier checkpoint, and the prototype body with its head given.
    let r = job(json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    let done = wait_job(&s, r.json()["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    let r = job(json!({"checkpoint": ck_proto, "task_name": "tone-proto",
        "head": {"kind": "prototype", "descriptions": ["It is a complaint.", "It is a fact.", "It is praise."]}}));
    assert_eq!(r.status, 202, "{}", r.text());
    let done = wait_job(&s, r.json()["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");

    // 5. The full test split evaluated through the API (more rows than one request may hold), and predict.
    for task in ["tone", "tone-proto"] {
        let r = s.json(
            "POST",
            &format!("/v1/tasks/{task}/evaluate"),
            &json!({"dataset": ds_id}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let ev = r.json();
        assert_eq!(ev["examples"], test_rows);
        assert_eq!(ev["report"]["n"], test_rows);
        assert!(
            test_rows > 256,
            "more than one request (256 inputs) may hold: {test_rows}"
        );
        let acc = ev["report"]["accuracy"].as_f64().unwrap();
        assert!(acc > 0.4, "{task}: accuracy {acc} on 3 classes");
        assert!(!ev["calibration_reason"].as_str().unwrap().is_empty());
        let summary = s.get(&format!("/v1/tasks/{task}")).json();
        assert_eq!(summary["labels"], json!(["complaint", "fact", "praise"]));
    }
    let r = s.json(
        "POST",
        "/v1/tasks/tone/predict",
        &json!({"inputs": ["a wonderful, moving film", "the film runs 90 minutes ."]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let preds = r.json()["predictions"].as_array().unwrap().clone();
    assert_eq!(preds.len(), 2);
    for p in &preds {
        assert!(["complaint", "fact", "praise"].contains(&p["label"].as_str().unwrap()));
    }
    let r = s.json(
        "POST",
        "/v1/tasks/tone/evaluate",
        &json!({"examples": [{"text": "great", "label": "praise"}, {"text": "dull", "label": 0}]}),
    );
    assert_eq!(r.status, 200, "labels by name or index: {}", r.text());

    // Data sets are deleted.
    let r = s.call(
        "DELETE",
        &format!("/v1/datasets/{ds_id}"),
        b"",
        "application/json",
    );
    assert_eq!(r.status, 204);
    assert_eq!(s.get(&format!("/v1/datasets/{ds_id}")).status, 404);
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
