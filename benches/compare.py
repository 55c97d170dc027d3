#!/usr/bin/env python3
"""skillgraft vs PyTorch eager vs ONNX Runtime on the CPU, interleaved, in one sitting (float32).

Each system runs in its own worker process (skillgraft: `skillgraft bench-worker`; PyTorch and ONNX
Runtime: this script with --worker), started per thread count, so no two thread pools share the cores.
For every case the driver asks the systems in turn (A, B, C, then B, C, A, ...) for a block of repetitions
of about --block seconds, for --rounds rounds, and reports the minimum and the median over all
repetitions. Cases: forward on each --shapes (inference), forward + backward on --train (encoder
layers trainable, embeddings frozen, a linear head on the first token, cross-entropy; PyTorch only, ONNX
Runtime does not train; skillgraft computes the last layer for the first token only), and the same on
--train-all with the head on the mean of every token (the whole last layer runs in both systems).

The ONNX model is exported by this script from the same weights (transformers' BertModel without pooler,
opset 17, dynamic batch and sequence) into --cache, and run with graph optimization ALL. Before timing,
the three systems' last hidden states for the same token ids are compared.

Usage (benches/compare.sh creates the venv and builds skillgraft):

    python benches/compare.py --skillgraft target/release/skillgraft --threads 1,2
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = os.environ.get("SKILLGRAFT_MODEL_DIR") or os.path.expanduser(
    "~/.cache/skillgraft/models/all-MiniLM-L6-v2"
)
SYSTEMS = ["skillgraft", "onnxruntime", "torch"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_shapes(s):
    out = []
    for part in s.split(","):
        part = part.strip()
        if part:
            b, t = part.split("x")
            out.append((int(b), int(t)))
    return out


# ----------------------------------------------------------------------------------------------- workers


def load_torch_model(path, threads):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    model = AutoModel.from_pretrained(
        path, config=config, local_files_only=True, add_pooling_layer=False, attn_implementation="sdpa"
    )
    return model.to(torch.float32).eval()


def random_ids(batch, seq, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(1000, 20000, size=(batch, seq), dtype=np.int64)


class TorchWorker:
    def __init__(self, model_dir, threads):
        import torch

        self.torch = torch
        self.model = load_torch_model(model_dir, threads)
        self.inputs = {}
        self.train_state = None

    def feeds(self, batch, seq):
        key = (batch, seq)
        if key not in self.inputs:
            ids = self.torch.from_numpy(random_ids(batch, seq))
            self.inputs[key] = {
                "input_ids": ids,
                "attention_mask": self.torch.ones_like(ids),
                "token_type_ids": self.torch.zeros_like(ids),
            }
        return self.inputs[key]

    def forward(self, batch, seq, reps):
        f = self.feeds(batch, seq)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with self.torch.inference_mode():
                self.model(**f)
            times.append(time.perf_counter() - t0)
        return times

    def train(self, batch, seq, reps, pool_all=False):
        torch = self.torch
        if self.train_state is None:
            for name, p in self.model.named_parameters():
                p.requires_grad_(not name.startswith("embeddings."))
            g = torch.Generator().manual_seed(1)
            head = torch.nn.Linear(self.model.config.hidden_size, 2)
            with torch.no_grad():
                head.weight.copy_(torch.empty_like(head.weight).uniform_(-0.05, 0.05, generator=g))
                head.bias.zero_()
            self.train_state = head
        head = self.train_state
        f = self.feeds(batch, seq)
        labels = torch.tensor([i % 2 for i in range(batch)])
        times = []
        for _ in range(reps):
            self.model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            h = self.model(**f).last_hidden_state
            loss = torch.nn.functional.cross_entropy(head(h.mean(1) if pool_all else h[:, 0]), labels)
            loss.backward()
            times.append(time.perf_counter() - t0)
        return times

    def hidden(self, ids):
        torch = self.torch
        t = torch.tensor(ids, dtype=torch.long)
        with torch.inference_mode():
            h = self.model(input_ids=t, attention_mask=torch.ones_like(t), token_type_ids=torch.zeros_like(t))
        return list(h.last_hidden_state.shape), h.last_hidden_state.flatten().tolist()


class OrtWorker:
    def __init__(self, onnx_path, threads):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        self.inputs = {}

    def feeds(self, ids):
        import numpy as np

        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }

    def forward(self, batch, seq, reps):
        key = (batch, seq)
        if key not in self.inputs:
            self.inputs[key] = self.feeds(random_ids(batch, seq))
        f = self.inputs[key]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.sess.run(None, f)
            times.append(time.perf_counter() - t0)
        return times

    def hidden(self, ids):
        import numpy as np

        h = self.sess.run(None, self.feeds(np.array(ids, dtype=np.int64)))[0]
        return list(h.shape), h.flatten().tolist()


def serve_worker(args):
    """Answers the same JSON-lines protocol as `skillgraft bench-worker`."""
    if args.worker == "torch":
        w = TorchWorker(args.model, args.threads_one)
    else:
        w = OrtWorker(args.onnx, args.threads_one)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req["op"]
        if op == "info":
            reply = {"threads": args.threads_one}
        elif op == "forward":
            reply = {"times": w.forward(req["batch"], req["seq"], max(1, req["reps"]))}
        elif op in ("train", "train_all"):
            reply = {"times": w.train(req["batch"], req["seq"], max(1, req["reps"]), op == "train_all")}
        elif op == "hidden":
            shape, hidden = w.hidden(req["ids"])
            reply = {"shape": shape, "hidden": hidden}
        else:
            raise SystemExit(f"unknown op {op}")
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ driver


def export_onnx(model_dir, cache):
    """Exports the model once per weights file (cached by its hash); returns the .onnx path."""
    import torch

    weights = os.path.join(model_dir, "model.safetensors")
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{os.path.basename(model_dir.rstrip('/'))}-{h.hexdigest()[:16]}.onnx")
    if os.path.exists(path):
        return path
    log(f"exporting ONNX to {path}")
    model = load_torch_model(model_dir, 1)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.randint(1000, 20000, (2, 8))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    tmp = path + ".partial"
    torch.onnx.export(
        Wrapper(model),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        tmp,
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]},
        opset_version=17,
        dynamo=False,
    )
    os.replace(tmp, path)
    return path


class Worker:
    def __init__(self, name, cmd, env):
        self.name = name
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def start_workers(args, threads, onnx_path):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    me = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--threads", str(threads)]
    workers = {
        "skillgraft": Worker(
            "skillgraft",
            [args.skillgraft, "bench-worker", "--threads", str(threads), "--model", args.model],
            env,
        ),
        **({"before": Worker(
            "before",
            [args.baseline, "bench-worker", "--threads", str(threads), "--model", args.model],
            env,
        )} if args.baseline else {}),
        "onnxruntime": Worker("onnxruntime", me + ["--worker", "ort", "--onnx", onnx_path], env),
        "torch": Worker("torch", me + ["--worker", "torch"], env),
    }
    return workers


def check_same_weights(workers):
    ids = random_ids(2, 16, seed=7).tolist()
    outs = {n: w.ask(op="hidden", ids=ids) for n, w in workers.items()}
    ref = outs["torch"]["hidden"]
    return {
        n: max(abs(a - b) for a, b in zip(o["hidden"], ref)) for n, o in outs.items() if n != "torch"
    }


def run_case(workers, systems, op, batch, seq, args):
    """Interleaved blocks of repetitions; returns {system: [seconds, ...]}."""
    reps = {}
    for n in systems:
        workers[n].ask(op=op, batch=batch, seq=seq, reps=2)  # warm-up
        t = min(workers[n].ask(op=op, batch=batch, seq=seq, reps=1)["times"])
        reps[n] = max(1, int(args.block / max(t, 1e-6)))
    times = {n: [] for n in systems}
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for n in order:
            times[n] += workers[n].ask(op=op, batch=batch, seq=seq, reps=reps[n])["times"]
    return times


def fmt(v):
    return f"{v:,.1f}" if v >= 100 else f"{v:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skillgraft", default="target/release/skillgraft", help="the skillgraft binary")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF model directory")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--shapes", default="1x16,8x14,32x64,128x128", help="forward shapes BxT")
    p.add_argument("--train", default="8x64", help="forward+backward shapes BxT (empty for none)")
    p.add_argument("--train-all", default="8x64",
                   help="forward+backward shapes BxT with the head on the mean of every token, so that the "
                        "whole last layer runs (empty for none)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    p.add_argument("--block", type=float, default=0.4, help="seconds per block of repetitions")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/skillgraft/bench"), help="ONNX cache")
    p.add_argument("--json", help="also write every repetition's time to this JSON file")
    p.add_argument("--baseline", help="another skillgraft binary (e.g. an older commit), timed as `before`")
    p.add_argument("--worker", choices=["torch", "ort"], help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.threads_one = int(args.threads)
        return serve_worker(args)

    onnx_path = export_onnx(args.model, args.cache)
    cases = [("forward", b, s) for b, s in parse_shapes(args.shapes)]
    cases += [("train", b, s) for b, s in parse_shapes(args.train)]
    cases += [("train_all", b, s) for b, s in parse_shapes(args.train_all)]
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        workers = start_workers(args, threads, onnx_path)
        try:
            info = workers["skillgraft"].ask(op="info")
            diffs = check_same_weights(workers)
            log(f"threads {threads}: skillgraft gemm {info['gemm']}; max |hidden - torch|: "
                + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()))
            for op, b, s in cases:
                systems = SYSTEMS if op == "forward" else ["skillgraft", "torch"]
                if args.baseline and op != "train_all":
                    systems = systems + ["before"]
                log(f"threads {threads}: {op} {b}x{s} ...")
                times = run_case(workers, systems, op, b, s, args)
                results.append({"op": op, "batch": b, "seq": s, "threads": threads, "times": times,
                                "hidden_diff": diffs, "gemm": info["gemm"]})
        finally:
            for w in workers.values():
                w.close()

    import onnxruntime
    import torch

    print(f"skillgraft vs ONNX Runtime {onnxruntime.__version__} (graph optimization ALL) vs PyTorch "
          f"{torch.__version__} eager, float32, ms per call, min / median over {args.rounds} interleaved "
          f"rounds; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print()
    before = " skillgraft before |" if args.baseline else ""
    print(f"| case | threads |{before} skillgraft | ONNX Runtime | PyTorch | skillgraft / ORT | skillgraft / torch |")
    print("|---|---:|" + ("---:|" if args.baseline else "") + "---:|---:|---:|---:|---:|")
    for r in results:
        t = r["times"]
        stat = {n: (min(v) * 1e3, statistics.median(v) * 1e3) for n, v in t.items()}
        kind = {"forward": "forward ", "train": "forward+backward ", "train_all": "forward+backward, every token, "}
        name = kind[r["op"]] + f"{r['batch']}×{r['seq']}"
        cell = lambda n: f"{fmt(stat[n][0])} / {fmt(stat[n][1])}" if n in stat else "–"
        ratio = lambda n: (f"{stat['skillgraft'][0] / stat[n][0]:.2f} / {stat['skillgraft'][1] / stat[n][1]:.2f}"
                           if n in stat else "–")
        b = f" {cell('before')} |" if args.baseline else ""
        print(f"| {name} | {r['threads']} |{b} {cell('skillgraft')} | {cell('onnxruntime')} | {cell('torch')} "
              f"| {ratio('onnxruntime')} | {ratio('torch')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
