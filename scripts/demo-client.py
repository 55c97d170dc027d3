#!/usr/bin/env python3
"""Demo client of the skillgraft service (standard library only).

Uploads fine-tuned checkpoints, runs a localization job for each (following its progress over server-sent
events), then predicts with the grafted tasks, shows calibration, the overlap of the two grafts, and a
composition of both.

    python3 scripts/demo-client.py --url http://127.0.0.1:8080 sst2=DIR subj=DIR
"""
import argparse
import io
import json
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path


def call(url, method="GET", body=None, content_type="application/json", key=None, stream=False):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", content_type)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        resp = urllib.request.urlopen(req, timeout=1800)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url} -> {e.code}: {e.read().decode(errors='replace')}")
    if stream:
        return resp
    raw = resp.read()
    return json.loads(raw) if raw else None


def tar_of(directory):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(directory).iterdir()):
            if p.is_file():
                tar.add(p, arcname=p.name)
    return buf.getvalue()


def follow(base, job_id, key):
    """Prints a job's progress from its event stream until it ends; returns the final state."""
    last = None
    with call(f"{base}/v1/localizations/{job_id}/events", key=key, stream=True) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            st = json.loads(line[5:])
            msg = st["message"]
            if st.get("mask_size") is not None:
                msg += f"  mask {st['mask_size']}  train acc {st['train_accuracy']:.3f}  dev acc {st['dev_accuracy']:.3f}"
            if msg != (last or {}).get("_msg"):
                print(f"    [{st['state']}] {msg}")
            st["_msg"] = msg
            last = st
    return last


def table(rows, cols):
    widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print("    " + "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("    " + "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--key", default=None, help="admin API key, if the server requires one")
    ap.add_argument("--max-test", type=int, default=500)
    ap.add_argument("checkpoints", nargs="+", help="TASK=DIR pairs (built-in task names)")
    a = ap.parse_args()
    base, key = a.url.rstrip("/"), a.key

    info = call(f"{base}/v1/info", key=key)
    print(f"== server: {info['model']} ({info['parameters']:,} parameters, {info['architecture']}), "
          f"{info['threads']} thread(s), version {info['version']}")

    tasks = []
    for pair in a.checkpoints:
        task, directory = pair.split("=", 1)
        print(f"== {task}: upload checkpoint {directory}")
        ck = call(f"{base}/v1/checkpoints", "POST", tar_of(directory), "application/x-tar", key)
        print(f"    checkpoint {ck['id']} ({ck['bytes']:,} bytes, head {ck['head']})")
        job = call(f"{base}/v1/localizations", "POST", {
            "checkpoint": ck["id"], "task_name": task, "task": task, "k": 16, "seed": 42,
            "max_test": a.max_test, "method": "paper", "epochs": 10,
            # The size is searched: the smallest graft keeping 95% of the fine-tuning gain on dev.
            "budget": {"retain": 0.95, "ceiling": 0.1}, "register_anyway": True}, key=key)
        print(f"== {task}: localization job {job['id']}")
        final = follow(base, job["id"], key)
        if final["state"] not in ("succeeded", "not_localized"):
            sys.exit(f"job ended {final['state']}: {final.get('error')}")
        print(f"   {final['state']}: {final['retention']['summary']}")
        tasks.append(task)

    print("== registered tasks")
    rows = []
    for t in call(f"{base}/v1/tasks", key=key):
        rows.append({"task": t["name"], "labels": "/".join(t["labels"]), "head": t["head"],
                     "graft": t["graft_size"], "% of region": f"{t['percent_of_region']:.4f}",
                     "% of model": f"{t['percent_of_model']:.4f}"})
    table(rows, ["task", "labels", "head", "graft", "% of region", "% of model"])

    print("== calibration on the test split (accuracy, ECE before / after temperature scaling)")
    for name in tasks:
        t = call(f"{base}/v1/tasks/{name}", key=key)
        variants = t["metrics"]["variants"]
        ece_col = f"ECE({variants[0]['ece_bins']} bins)" if variants else "ECE"
        rows = [{"model": v["name"], "params": v["size"], "accuracy": f"{v['accuracy']:.4f}",
                 ece_col: f"{v['ece']:.4f}", "ECE after T": f"{v['ece_after_temperature']:.4f}",
                 "T": f"{v['temperature']:.3f}"} for v in variants]
        print(f"  {name}:")
        table(rows, ["model", "params", "accuracy", ece_col, "ECE after T", "T"])

    examples = {
        "sst2": ["a gorgeous , witty , seductive movie .", "the plot is dull and the acting is worse ."],
        "subj": ["the film follows a young woman who moves to paris in 1962 .", "a thoroughly enjoyable , if slight , comedy ."],
    }
    print("== predictions")
    for name in tasks:
        texts = examples.get(name, ["an example sentence ."])
        p = call(f"{base}/v1/tasks/{name}/predict", "POST", {"inputs": texts}, key=key)
        for text, pred in zip(texts, p["predictions"]):
            probs = ", ".join(f"{k} {v:.3f}" for k, v in pred["probabilities"].items())
            print(f"  {name:5s} {pred['label']:>10s}  ({probs}; calibration {p['calibration']})  {text}")

    if len(tasks) >= 2:
        print(f"== overlap of {tasks[0]} and {tasks[1]}")
        o = call(f"{base}/v1/overlap?tasks={','.join(tasks[:2])}", key=key)
        print(f"    sizes {o['sizes']}, shared {o['intersection'][0][1]}, Jaccard {o['jaccard'][0][1]:.4f} "
              f"(random masks of these sizes: {o['random_jaccard'][0][1]:.6f}), containment {o['containment'][0][1]:.4f}")
        for i, name in enumerate(tasks[:2]):
            print(f"    {name} by layer: {o['breakdown'][i]['by_layer']}")
            print(f"    {name} by module: {o['breakdown'][i]['by_module']}")
        print(f"== composition {tasks[0]}-{tasks[1]}")
        data = {name: [{"text": t, "label": l} for t, l in zip(examples.get(name, []), [1, 0])] for name in tasks[:2]}
        c = call(f"{base}/v1/compositions", "POST", {"name": "-".join(tasks[:2]), "tasks": tasks[:2], "rule": "mean",
                                                      "data": data}, key=key)
        print(f"    task {c['task']['name']}: {c['task']['graft_size']} parameters; members: {c['members']}")
    print("== done")


if __name__ == "__main__":
    main()
