#!/usr/bin/env python3
"""PyTorch reference benchmark for the skillgraft encoder (all-MiniLM-L6-v2, BERT).

Times, on the CPU in float32, with the model in eval mode (dropout off):

  * forward only (inference_mode) for batch x seq = 1x16 and 32x64;
  * forward + backward for 8x64, with the encoder layers trainable, the embeddings frozen
    and a fixed nn.Linear(384, 2) head on last_hidden_state[:, 0] (cross-entropy loss);
  * one optimizer step (SGD and AdamW, lr=1e-3) over the encoder-layer parameters, with
    their gradients filled with random values.

Every figure is the median over the timed iterations, after a warm-up: each case runs at
least --min-iters iterations and at least --min-time seconds, whichever takes longer.

Inputs: random token ids in [1000, 20000) from a fixed seed, attention mask all ones,
token_type_ids all zeros.

Only torch, transformers and safetensors are needed; see benches/README.md for how they
were installed. Usage:

    python benches/torch_bench.py --threads 1
    python benches/torch_bench.py --threads 2 --json
"""

import argparse
import json
import os
import statistics
import sys
import time

# The model is read from a local directory only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

DEFAULT_MODEL = os.environ.get("SKILLGRAFT_MODEL_DIR") or os.path.expanduser(
    "~/.cache/skillgraft/models/all-MiniLM-L6-v2"
)
TOKEN_LOW, TOKEN_HIGH = 1000, 20000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="HF model directory (default: $SKILLGRAFT_MODEL_DIR or "
                        "~/.cache/skillgraft/models/all-MiniLM-L6-v2)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads(N) (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--seed", type=int, default=0, help="torch seed for inputs, head and labels (default 0)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations per case (default 3)")
    p.add_argument("--min-iters", type=int, default=20, help="timed iterations per case, at least (default 20)")
    p.add_argument("--min-time", type=float, default=2.0, help="timed seconds per case, at least (default 2.0)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention implementation (default sdpa)")
    p.add_argument("--with-pooler", action="store_true",
                   help="keep BertModel's pooler (off by default: the encoder alone is timed, "
                        "the pooler is part of a task head)")
    return p.parse_args(argv)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_model(path, attn, with_pooler):
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    # Dropout off everywhere (eval mode does this too; belt and braces for the backward case).
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    model = AutoModel.from_pretrained(
        path,
        config=config,
        local_files_only=True,
        add_pooling_layer=with_pooler,
        attn_implementation=attn,
    )
    model = model.to(torch.float32).eval()
    return model


def make_inputs(batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(TOKEN_LOW, TOKEN_HIGH, (batch, seq), generator=g, dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


def time_it(fn, warmup, min_iters, min_time, setup=None):
    """Run `fn` warmup times, then at least min_iters times and min_time seconds.

    `setup` (untimed) runs before each call. Returns the list of per-call seconds.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times):
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "iters": len(times),
    }


def bench_forward(model, batch, seq, args):
    inputs = make_inputs(batch, seq, args.seed)

    def fn():
        with torch.inference_mode():
            model(**inputs)

    s = summarize(time_it(fn, args.warmup, args.min_iters, args.min_time))
    s["tokens_per_s"] = batch * seq / (s["median_ms"] / 1e3)
    return s


def encoder_params(model):
    return [p for n, p in model.named_parameters() if n.startswith("encoder.")]


def bench_forward_backward(model, batch, seq, args):
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("embeddings."))
    g = torch.Generator().manual_seed(args.seed + 1)
    hidden = model.config.hidden_size
    head = torch.nn.Linear(hidden, 2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(2, hidden, generator=g) * 0.02)
        head.bias.zero_()
    labels = torch.randint(0, 2, (batch,), generator=g)
    inputs = make_inputs(batch, seq, args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()

    def zero():
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)

    def fn():
        out = model(**inputs).last_hidden_state
        loss = loss_fn(head(out[:, 0]), labels)
        loss.backward()

    s = summarize(time_it(fn, args.warmup, args.min_iters, args.min_time, setup=zero))
    s["tokens_per_s"] = batch * seq / (s["median_ms"] / 1e3)
    zero()
    return s


def bench_optimizer(model, opt_cls, args):
    params = encoder_params(model)
    g = torch.Generator().manual_seed(args.seed + 2)
    with torch.no_grad():
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    opt = opt_cls(params, lr=1e-3)
    s = summarize(time_it(opt.step, args.warmup, args.min_iters, args.min_time))
    s["n_params"] = sum(p.numel() for p in params)
    for p in params:
        p.grad = None
    return s


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]  # a hint of how busy the (shared) machine was

    if not os.path.isdir(args.model):
        sys.exit(f"model directory not found: {args.model}")
    model = load_model(args.model, args.attn, args.with_pooler)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}, attn {model.config._attn_implementation}, model {args.model}")

    res = {}
    log("forward 1x16 ...")
    res["forward_1x16"] = bench_forward(model, 1, 16, args)
    log("forward 32x64 ...")
    res["forward_32x64"] = bench_forward(model, 32, 64, args)
    log("forward+backward 8x64 ...")
    res["forward_backward_8x64"] = bench_forward_backward(model, 8, 64, args)
    log("SGD step ...")
    res["sgd_step"] = bench_optimizer(model, torch.optim.SGD, args)
    log("AdamW step ...")
    res["adamw_step"] = bench_optimizer(model, torch.optim.AdamW, args)
    total_s = time.perf_counter() - t_start

    if args.json:
        out = {
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "forward_1x16_ms": round(res["forward_1x16"]["median_ms"], 4),
            "forward_32x64_ms": round(res["forward_32x64"]["median_ms"], 4),
            "forward_backward_8x64_ms": round(res["forward_backward_8x64"]["median_ms"], 4),
            "sgd_step_ms": round(res["sgd_step"]["median_ms"], 4),
            "adamw_step_ms": round(res["adamw_step"]["median_ms"], 4),
            # Extra context, beyond the fields above.
            "transformers": transformers.__version__,
            "attn_implementation": model.config._attn_implementation,
            "forward_1x16_tokens_per_s": round(res["forward_1x16"]["tokens_per_s"], 1),
            "forward_32x64_tokens_per_s": round(res["forward_32x64"]["tokens_per_s"], 1),
            "forward_backward_8x64_tokens_per_s": round(res["forward_backward_8x64"]["tokens_per_s"], 1),
            "optimizer_params": res["sgd_step"]["n_params"],
            "total_s": round(total_s, 2),
            "loadavg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        }
        print(json.dumps(out))
        return

    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"threads {torch.get_num_threads()}  attn {model.config._attn_implementation}")
    print(f"{'case':<26}{'median ms':>12}{'min ms':>12}{'iters':>7}{'tokens/s':>12}")
    rows = [
        ("forward 1x16", res["forward_1x16"]),
        ("forward 32x64", res["forward_32x64"]),
        ("forward+backward 8x64", res["forward_backward_8x64"]),
        ("SGD step (encoder)", res["sgd_step"]),
        ("AdamW step (encoder)", res["adamw_step"]),
    ]
    for name, s in rows:
        tps = f"{s['tokens_per_s']:>12.0f}" if "tokens_per_s" in s else f"{'':>12}"
        print(f"{name:<26}{s['median_ms']:>12.3f}{s['min_ms']:>12.3f}{s['iters']:>7}{tps}")
    print(f"optimizer params: {res['sgd_step']['n_params']:,}; total {total_s:.1f} s; "
          f"1-min load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
