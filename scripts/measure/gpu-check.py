#!/usr/bin/env python3
"""Python side of scripts/measure/gpu-check.sh: random-weight models, PyTorch/ONNX Runtime references, the report.

Subcommands (all write JSON next to their other outputs):
  make-model --size minilm|bert-base --tokenizer tokenizer.json --out DIR
      transformers.BertModel(BertConfig(...)) with seed 0, saved with save_pretrained, plus the tokenizer.
  parity --model DIR --ids ids.json --ours-hidden h.npy [--ours-hidden-bf16 hb.npy] --out parity.json
      last hidden states of PyTorch (f32 and bf16) on the same token ids, compared on real tokens; also the
      logits of one random linear head on [CLS] computed from both sides' hidden states.
  torch-bench --model DIR --shapes 32x128,256x128 --device cuda --out torch.json
      PyTorch eager forward time (f32, bf16) and ONNX Runtime (CUDA provider, when it loads).
  report --dir DIR --out-md report.md --out-json report.json
      gathers every JSON of the run into one Markdown + JSON report.
"""
import argparse
import json
import os
import sys
import time


def make_model(a):
    import torch
    from transformers import BertConfig, BertModel

    sizes = {
        "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **sizes[a.size])
    model = BertModel(cfg, add_pooling_layer=True).eval()
    model.save_pretrained(a.out, safe_serialization=True)
    import shutil

    shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    print(json.dumps({"model": a.size, "parameters": sum(p.numel() for p in model.parameters())}))


def load_ids(path):
    with open(path) as f:
        v = json.load(f)
    import torch

    shape = (v["batch"], v["seq"])
    ids = torch.tensor(v["input_ids"], dtype=torch.long).reshape(shape)
    mask = torch.tensor(v["attention_mask"], dtype=torch.long).reshape(shape)
    types = torch.tensor(v["token_type_ids"], dtype=torch.long).reshape(shape)
    return ids, mask, types


def parity(a):
    import numpy as np
    import torch
    from transformers import BertModel

    dev = "cuda" if torch.cuda.is_available() and a.device == "cuda" else "cpu"
    ids, mask, types = load_ids(a.ids)
    ids, mask, types = ids.to(dev), mask.to(dev), types.to(dev)
    real = mask.bool().cpu().numpy()
    out = {"device": dev, "texts": int(ids.shape[0]), "tokens": int(ids.shape[1])}
    ref = {}
    for dtype in ["f32", "bf16"]:
        td = torch.float32 if dtype == "f32" else torch.bfloat16
        model = BertModel.from_pretrained(a.model, torch_dtype=td).to(dev).eval()
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ref[dtype] = h.float().cpu().numpy()
    rng = np.random.default_rng(0)
    hidden = ref["f32"].shape[-1]
    head_w = rng.normal(0, 0.02, size=(2, hidden)).astype(np.float32)

    def logits(h):
        return h[:, 0, :] @ head_w.T

    def compare(name, ours, theirs):
        d = np.abs(ours - theirs)[real]
        scale = np.abs(theirs[real]).max()
        lo, lt = logits(ours), logits(theirs)
        out[name] = {
            "hidden_max_abs": float(d.max()),
            "hidden_mean_abs": float(d.mean()),
            "hidden_max_abs_over_max_value": float(d.max() / scale),
            "logits_max_abs": float(np.abs(lo - lt).max()),
            "cls_argmax_agree": float((lo.argmax(1) == lt.argmax(1)).mean()),
        }

    ours32 = np.load(a.ours_hidden)
    compare("skillgraft_f32_vs_torch_f32", ours32, ref["f32"])
    if a.ours_hidden_bf16 and os.path.exists(a.ours_hidden_bf16):
        ours16 = np.load(a.ours_hidden_bf16)
        compare("skillgraft_bf16_vs_torch_bf16", ours16, ref["bf16"])
        compare("skillgraft_bf16_vs_torch_f32", ours16, ref["f32"])
    compare("torch_bf16_vs_torch_f32", ref["bf16"], ref["f32"])
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


def torch_bench(a):
    import numpy as np
    import torch
    from transformers import BertModel

    dev = "cuda" if torch.cuda.is_available() and a.device == "cuda" else "cpu"
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    res = {"device": dev, "torch": torch.__version__, "rows": []}
    if dev == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    for dtype in ["f32", "bf16"]:
        td = torch.float32 if dtype == "f32" else torch.bfloat16
        model = BertModel.from_pretrained(a.model, torch_dtype=td).to(dev).eval()
        for b, s in shapes:
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(1000, 20000, (b, s), generator=g).to(dev)
            mask = torch.ones_like(ids)

            def run():
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask)
                sync()

            for _ in range(3):
                run()
            times = []
            t0 = time.perf_counter()
            while len(times) < 5 or time.perf_counter() - t0 < a.min_seconds:
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            times.sort()
            med = times[len(times) // 2]
            res["rows"].append({"system": "torch eager", "dtype": dtype, "shape": f"{b}x{s}", "ms": med * 1e3,
                                "min_ms": times[0] * 1e3, "sentences_per_s": b / med,
                                "attn": getattr(model.config, "_attn_implementation", None)})
        del model
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        res["onnxruntime"] = {"version": ort.__version__, "providers": providers}
        if "CUDAExecutionProvider" in providers:
            res["rows"].extend(ort_bench(a, shapes, dev))
        else:
            res["onnxruntime"]["note"] = "no CUDAExecutionProvider in this onnxruntime build: not measured"
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        res["onnxruntime"] = {"error": repr(e)}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


def ort_bench(a, shapes, dev):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(a.model).eval()
    path = os.path.join(os.path.dirname(a.out), "model.onnx")
    ids = torch.randint(1000, 20000, (2, 16))
    torch.onnx.export(model, (ids, torch.ones_like(ids)), path, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "b", 1: "s"},
                      "attention_mask": {0: "b", 1: "s"}}, opset_version=17)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CUDAExecutionProvider"])
    rows = []
    for b, s in shapes:
        x = np.random.default_rng(1).integers(1000, 20000, size=(b, s)).astype(np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        for _ in range(3):
            sess.run(None, feed)
        times = []
        t0 = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - t0 < a.min_seconds:
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
        times.sort()
        med = times[len(times) // 2]
        rows.append({"system": "onnxruntime cuda", "dtype": "f32", "shape": f"{b}x{s}", "ms": med * 1e3,
                     "min_ms": times[0] * 1e3, "sentences_per_s": b / med})
    return rows


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001 - a missing step is reported as such
        return {"missing": f"{path}: {e}"}


def report(a):
    d = a.dir
    steps = load(os.path.join(d, "steps.json"))
    sc = load(os.path.join(d, "selfcheck.json"))
    par = {m: load(os.path.join(d, f"parity-{m}.json")) for m in ["minilm", "bert-base"]}
    ours = {}
    theirs = {}
    for m in ["minilm", "bert-base"]:
        ours[m] = [load(os.path.join(d, f"bench-{m}-{dt}.json")) for dt in ["f32", "bf16"]]
        theirs[m] = load(os.path.join(d, f"torch-{m}.json"))
    serve = load(os.path.join(d, "serve.json"))
    job = load(os.path.join(d, "job.json"))
    smi = open(os.path.join(d, "nvidia-smi.txt")).read() if os.path.exists(os.path.join(d, "nvidia-smi.txt")) else "–"
    md = ["# skillgraft on a GPU: device report", "",
          f"Generated by `scripts/measure/gpu-check.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
          "## Machine", "", "```", smi.strip()[:3000], "```", ""]
    md += ["## Steps", "", "| step | status | seconds |", "|---|---|---:|"]
    for s in steps.get("steps", []) if isinstance(steps, dict) else []:
        md.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} |")
    md += ["", "## Kernel and engine self-check (`skillgraft selfcheck --device cuda`)", ""]
    if "checks" in sc:
        n_ok = sum(c["passed"] for c in sc["checks"])
        md.append(f"{n_ok} of {len(sc['checks'])} checks passed.")
        md += ["", "| check | error | tolerance | |", "|---|---:|---:|---|"]
        for c in sc["checks"]:
            md.append(f"| {c['name']} | {c['error']:.3g} | {c['tolerance']:.1g} | {'ok' if c['passed'] else 'FAIL'} |")
    else:
        md.append(f"not run: {sc}")
    md += ["", "## Parity with PyTorch on the same random weights", "",
           "Last hidden states on real tokens, and a random 2-class linear head on [CLS] applied to both sides.", "",
           "| model | comparison | max abs (hidden) | mean abs | max abs / max value | logits max abs | argmax agree |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for m, p in par.items():
        for k, v in p.items():
            if isinstance(v, dict) and "hidden_max_abs" in v:
                md.append(f"| {m} | {k} | {v['hidden_max_abs']:.3g} | {v['hidden_mean_abs']:.3g} | "
                          f"{v['hidden_max_abs_over_max_value']:.3g} | {v['logits_max_abs']:.3g} | {v['cls_argmax_agree']:.3f} |")
    md += ["", "## Forward throughput (sentences/s; median of timed runs, device synchronized)", "",
           "| model | shape | dtype | skillgraft | torch eager | skillgraft / torch |", "|---|---|---|---:|---:|---:|"]
    summary = {"forward": []}
    for m in ["minilm", "bert-base"]:
        t_rows = theirs[m].get("rows", []) if isinstance(theirs[m], dict) else []
        for o in ours[m]:
            if "rows" not in o:
                continue
            for r in o["rows"]:
                if not r["name"].startswith("forward "):
                    continue
                shape = r["name"].split()[1]
                ours_sps = int(shape.split("x")[0]) / (r["ms"] / 1e3)
                t = next((x for x in t_rows if x["shape"] == shape and x["dtype"] == o["dtype"] and x["system"] == "torch eager"), None)
                ratio = ours_sps / t["sentences_per_s"] if t else None
                summary["forward"].append({"model": m, "shape": shape, "dtype": o["dtype"], "skillgraft": ours_sps,
                                           "torch": t and t["sentences_per_s"], "ratio": ratio})
                md.append(f"| {m} | {shape} | {o['dtype']} | {ours_sps:,.0f} | "
                          f"{(t['sentences_per_s'] if t else float('nan')):,.0f} | {(ratio or float('nan')):.2f}x |")
        ort_rows = [x for x in t_rows if x["system"] == "onnxruntime cuda"]
        for x in ort_rows:
            md.append(f"| {m} | {x['shape']} | f32 | (ONNX Runtime CUDA) {x['sentences_per_s']:,.0f} | | |")
        if isinstance(theirs[m], dict) and "onnxruntime" in theirs[m]:
            md.append(f"| {m} | | | ONNX Runtime: {json.dumps(theirs[m]['onnxruntime'])[:200]} | | |")
    md += ["", "## Mixed-task batches through the engine (one batch of the largest shape)", "",
           "| model | dtype | row | ms | note |", "|---|---|---|---:|---|"]
    for m in ["minilm", "bert-base"]:
        for o in ours[m]:
            for r in o.get("rows", []):
                if r["name"].startswith("engine"):
                    md.append(f"| {m} | {o['dtype']} | {r['name']} | {r['ms']:.2f} | {r['note']} |")
    md += ["", "## The service on the GPU (`skillgraft bench-serve --device cuda`)", ""]
    if "phases" in serve:
        md += [f"{serve['clients']} clients, {serve['texts_per_request']} text(s) per request, graft "
               f"{serve['graft_size']} parameters, dtype {serve['dtype']}.", "",
               "| tasks | requests/s | vs 1 task | p50 ms | p99 ms | errors | device bytes/task | % of base | GPU MiB |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in serve["phases"]:
            dev = p.get("device_bytes_per_task")
            frac = p.get("device_bytes_per_task_fraction_of_base")
            md.append(f"| {p['tasks']} | {p['requests_per_s']:.1f} | {p['throughput_vs_first']:.3f}x | {p['p50_ms']:.1f} | "
                      f"{p['p99_ms']:.1f} | {p['errors']} | {dev if dev is None else round(dev)} | "
                      f"{'–' if frac is None else f'{100*frac:.4f}%'} | {p.get('gpu_mib')} |")
    else:
        md.append(f"not run: {serve}")
    md += ["", "## Localization job on the GPU", "", "```", json.dumps(job, indent=1)[:3000], "```", ""]
    rep = {"steps": steps, "selfcheck": sc, "parity": par, "forward": summary["forward"], "torch": theirs,
           "ours": ours, "serve": serve, "job": job}
    with open(a.out_md, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(a.out_json, "w") as f:
        json.dump(rep, f, indent=1)
    print("\n".join(md))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--size", choices=["minilm", "bert-base"], required=True)
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--out", required=True)
    q = sub.add_parser("parity")
    q.add_argument("--model", required=True)
    q.add_argument("--ids", required=True)
    q.add_argument("--ours-hidden", required=True)
    q.add_argument("--ours-hidden-bf16")
    q.add_argument("--device", default="cuda")
    q.add_argument("--out", required=True)
    t = sub.add_parser("torch-bench")
    t.add_argument("--model", required=True)
    t.add_argument("--shapes", default="32x128,256x128")
    t.add_argument("--device", default="cuda")
    t.add_argument("--min-seconds", type=float, default=1.5)
    t.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--out-md", required=True)
    r.add_argument("--out-json", required=True)
    a = p.parse_args()
    {"make-model": make_model, "parity": parity, "torch-bench": torch_bench, "report": report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
