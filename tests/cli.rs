//! End to end through the binary on the real default model and data: short fine-tunes of two tasks →
//! localize → evaluate (with out-of-distribution) → overlap → compose → export, plus CLI error messages.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skillgraft"));
    c.env("SKILLGRAFT_DATA_DIR", common::data_dir());
    c
}

fn run_json(args: &[&str], model: &Path) -> Value {
    let out = bin()
        .args(args)
        .args(["--json", "--model"])
        .arg(model)
        .output()
        .expect("run skillgraft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "skillgraft {args:?} failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}); stderr:\n{stderr}"))
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn acc(v: &Value, name: &str) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}"))["test"]["accuracy"]
        .as_f64()
        .unwrap()
}

#[test]
fn finetune_localize_evaluate_overlap_compose_export() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let dir = tmp();
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    let common_ft = [
        "--steps",
        "40",
        "--eval-every",
        "20",
        "--max-test",
        "100",
        "--k",
        "16",
        "--seed",
        "13",
    ];

    let mut args = vec!["finetune", "--task", "sst2", "--out"];
    let ft1 = p("ft-sst2");
    args.push(&ft1);
    args.extend(common_ft);
    let r = run_json(&args, &model);
    assert!(
        r["report"]["best_dev_accuracy"].as_f64().unwrap() > 0.5,
        "{r}"
    );
    assert!(Path::new(&ft1).join("model.safetensors").is_file());

    let g1 = p("sst2.graft");
    let r = run_json(
        &[
            "localize",
            "--sparsity",
            "1e-4",
            "--retain",
            "0",
            "--task",
            "sst2",
            "--finetuned",
            &ft1,
            "--out",
            &g1,
            "--epochs",
            "3",
            "--max-test",
            "100",
            "--k",
            "16",
            "--seed",
            "13",
        ],
        &model,
    );
    let size = r["size"].as_u64().unwrap();
    let region = r["region_size"].as_u64().unwrap();
    assert!(
        (size as f64 - 1e-4 * region as f64).abs() < 50.0,
        "graft size {size} for region {region}"
    );
    assert_eq!(r["history"].as_array().unwrap().len(), 4);
    let v = &r["variants"];
    for name in ["base+head", "base patch", "graft", "fine-tuned"] {
        let a = acc(v, name);
        assert!((0.0..=1.0).contains(&a), "{name}: {a}");
    }
    assert!(
        acc(v, "fine-tuned") > 0.6,
        "fine-tuning should learn SST-2: {v}"
    );

    // The serving engine (`predict`) scores the test set as the evaluation did, and bf16 agrees with f32.
    let predict = |dtype: &str| {
        let out = p(&format!("pred-{dtype}.json"));
        run_json(
            &[
                "predict",
                "--graft",
                &g1,
                "--max-test",
                "100",
                "--k",
                "16",
                "--seed",
                "13",
                "--dtype",
                dtype,
                "--out",
                &out,
            ],
            &model,
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        v
    };
    let (p32, p16) = (predict("f32"), predict("bf16"));
    assert!(
        (p32["accuracy"].as_f64().unwrap() - acc(v, "graft")).abs() < 1e-9,
        "engine accuracy {} vs evaluated graft {}",
        p32["accuracy"],
        acc(v, "graft")
    );
    let (a, b) = (
        p32["predictions"].as_array().unwrap(),
        p16["predictions"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 100);
    let agree = a.iter().zip(b).filter(|(x, y)| x == y).count();
    assert!(agree >= 98, "bf16 agrees with f32 on {agree} of 100");

    let r = run_json(
        &[
            "evaluate",
            "--graft",
            &g1,
            "--finetuned",
            &ft1,
            "--eval-task",
            "mr",
            "--max-test",
            "100",
            "--k",
            "16",
            "--seed",
            "13",
            "--bins",
            "15",
        ],
        &model,
    );
    assert_eq!(r["bins"], 15);
    assert_eq!(r["results"]["sst2"].as_array().unwrap().len(), 4);
    assert_eq!(r["results"]["mr"].as_array().unwrap().len(), 4);
    assert_eq!(r["results"]["sst2"][0]["test"]["ece_bins"], 15);
    // The graft row is the graft itself (what the engine serves), and the base patch is sized by the budget.
    let row = |name: &str| {
        r["results"]["sst2"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
            .clone()
    };
    assert!(
        (row("graft")["test"]["accuracy"].as_f64().unwrap() - p32["accuracy"].as_f64().unwrap())
            .abs()
            < 1e-9,
        "evaluate's graft row {} vs the engine {}",
        row("graft")["test"]["accuracy"],
        p32["accuracy"]
    );
    assert_eq!(row("graft")["size"].as_u64(), Some(size));
    assert_eq!(row("base patch")["size"], r["budget"]);

    // A second task for overlap and composition.
    let ft2 = p("ft-subj");
    let mut args = vec!["finetune", "--task", "subj", "--out", &ft2];
    args.extend(common_ft);
    run_json(&args, &model);
    let g2 = p("subj.graft");
    run_json(
        &[
            "localize",
            "--sparsity",
            "1e-4",
            "--retain",
            "0",
            "--task",
            "subj",
            "--finetuned",
            &ft2,
            "--out",
            &g2,
            "--method",
            "magnitude",
            "--max-test",
            "100",
            "--k",
            "16",
            "--seed",
            "13",
        ],
        &model,
    );
    let r = run_json(&["overlap", &g1, &g2], &model);
    let inter = &r["intersection"];
    assert_eq!(inter[0][0].as_u64().unwrap(), size);
    assert!(inter[0][1].as_u64().unwrap() <= size);
    assert!(r["jaccard"][0][1].as_f64().unwrap() < 1.0);
    let layers: u64 = r["breakdown"][0]["by_layer"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(layers, size);

    let comp = p("both.graft");
    let r = run_json(
        &[
            "compose",
            &g1,
            &g2,
            "--out",
            &comp,
            "--max-test",
            "100",
            "--seed",
            "13",
        ],
        &model,
    );
    assert_eq!(r["tasks"].as_array().unwrap().len(), 2);
    assert!(r["size"].as_u64().unwrap() >= size);
    assert!(Path::new(&comp).is_file());

    let exported = p("exported");
    run_json(&["export", "--graft", &g1, "--out", &exported], &model);
    assert!(Path::new(&exported).join("config.json").is_file());
    // The exported model is a full checkpoint of the base's shape: it localizes against the base again.
    let info = run_json(&["info", "--graft", &g1], &model);
    assert_eq!(info["size"].as_u64().unwrap(), size);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_errors_are_clear() {
    let out = bin()
        .args([
            "localize",
            "--sparsity",
            "1e-4",
            "--retain",
            "0",
            "--model",
            "/nonexistent/model",
            "--task",
            "sst2",
            "--finetuned",
            "/x",
            "--out",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("does not exist") && e.contains("fetch-model"),
        "{e}"
    );
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let out = bin()
        .args(["finetune", "--task", "nope", "--out", "/tmp/x", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("unknown task `nope`") && e.contains("sst2"),
        "{e}"
    );
    let out = bin()
        .args([
            "finetune",
            "--task",
            "sst2",
            "--out",
            "/tmp/x",
            "--data-dir",
            "/nonexistent",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--data-dir"), "{e}");
    let bad = std::env::temp_dir().join(format!("sg-bad-{}.graft", std::process::id()));
    std::fs::write(&bad, b"garbage").unwrap();
    let out = bin().args(["info", "--graft"]).arg(&bad).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("not a valid graft file"),
        "{e}"
    );
    let _ = std::fs::remove_file(bad);
}

#[test]
fn study_runs_a_tiny_grid_and_resumes_from_its_cache() {
    let Some(model) = common::minilm_dir() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("sg-study-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = dir.join("RESULTS.md");
    let run = || {
        let out = bin()
            .args([
                "study",
                "--tasks",
                "sst2",
                "--seeds",
                "13",
                "--steps",
                "8",
                "--eval-every",
                "4",
                "--epochs",
                "2",
            ])
            .args([
                "--max-test",
                "30",
                "--methods",
                "magnitude,paper",
                "--sparsities",
                "1e-4",
                "--ood",
                "sst2:mr",
                "--pairs",
                "sst2:subj",
                "--model",
            ])
            .arg(&model)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--report")
            .arg(&report)
            .arg("--results-json")
            .arg(dir.join("results.json"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    let first = run();
    for line in [
        "[study] fine-tune sst2",
        "[study] fine-tune subj",
        "[study] fine-tune seq-sst2",
        "2/2 cells",
        "out-of-distribution sst2 → mr",
        "composition sst2 + subj",
    ] {
        assert!(first.contains(line), "missing `{line}` in {first}");
    }
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("skillgraft study --tasks sst2"),
        "the report names its command"
    );
    for row in [
        "| sst2 | magnitude | 1e-4 | 1 |",
        "| sst2 | paper | 1e-4 | 1 |",
        "## Which of the paper's claims hold",
        "| sst2 → mr | 1 |",
        "| sst2:subj | sst2 | 1 |",
        "| sst2:subj | subj | 1 |",
        "](plots/reliability.svg)",
        "](plots/placement.svg)",
    ] {
        assert!(text.contains(row), "missing `{row}` in {text}");
    }
    for plot in ["reliability.svg", "placement.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["cells"].as_array().unwrap().len(), 2);
    assert_eq!(results["analyses"]["ood"].as_array().unwrap().len(), 1);
    assert_eq!(
        results["analyses"]["composition"].as_array().unwrap().len(),
        2
    );
    // A second run finds everything cached: no fine-tune, no localization, no analysis.
    let second = run();
    for line in [
        "[study] fine-tune",
        "cells; ETA",
        "out-of-distribution",
        "composition sst2",
    ] {
        assert!(!second.contains(line), "`{line}` recomputed: {second}");
    }
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        text,
        "same cells, same report"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
