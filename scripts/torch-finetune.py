#!/usr/bin/env python3
"""Fine-tunes the base model with PyTorch + transformers on a CSV task, the way a user would elsewhere, and
saves the checkpoint with `save_pretrained` (no skillgraft files): the reference for "a checkpoint made
with PyTorch" in docs/tasks.md. Needs torch and transformers (not used by CI, whose tests make their checkpoints
themselves, with the CLI or in transformers' own layouts: tests/common/checkpoint.rs, tests/newcomer.rs).

    python scripts/torch-finetune.py --csv tone.csv --text sentence --label tone --head seqcls --out ckpt-seqcls
    python scripts/torch-finetune.py --csv tone.csv --text sentence --label tone --head prototype \
        --descriptions "It is a fact." "It is praise." "It is a complaint." --out ckpt-proto

--head seqcls: BertForSequenceClassification (pooler + linear), id2label from the CSV's label values (sorted).
--head prototype: the body only (BertModel); class scores are cosine similarities of the mean-pooled
sentence embedding to the base model's embeddings of one description per class, divided by --tau (0.05);
the prototypes stay frozen, so the whole task lives in the body. Embeddings are frozen in both.
"""
import argparse
import csv
import random
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=str(Path.home() / ".cache/skillgraft/models/all-MiniLM-L6-v2"))
    ap.add_argument("--csv", required=True)
    ap.add_argument("--text", default="sentence")
    ap.add_argument("--label", default="label")
    ap.add_argument("--split-column", default="split")
    ap.add_argument("--head", choices=["seqcls", "prototype"], required=True)
    ap.add_argument("--descriptions", nargs="*")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    rows = list(csv.DictReader(open(a.csv, encoding="utf-8")))
    rows = [r for r in rows if r.get(a.split_column, "train") == "train"]
    labels = sorted({r[a.label] for r in rows})
    rng = random.Random(a.seed)
    train = []
    for c, name in enumerate(labels):
        members = [r[a.text] for r in rows if r[a.label] == name]
        rng.shuffle(members)
        train += [(t, c) for t in members[: a.k]]
    tok = AutoTokenizer.from_pretrained(a.base)
    if a.head == "seqcls":
        model = BertForSequenceClassification.from_pretrained(
            a.base,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
        )
        body = model.bert
        lr = a.lr or 1e-4
    else:
        model = AutoModel.from_pretrained(a.base)
        body = model
        lr = a.lr or 3e-2
        assert a.descriptions and len(a.descriptions) == len(labels), "one --descriptions per label"

    def embed(m, texts):
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = m(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        v = (h * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(v, dim=-1)

    if a.head == "prototype":
        with torch.no_grad():
            protos = embed(model.eval(), a.descriptions)
    for p in body.embeddings.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr) if a.head == "seqcls" else torch.optim.SGD(params, lr=lr)
    model.train()
    for step in range(a.steps):
        batch = rng.sample(train, a.batch)
        texts, ys = [t for t, _ in batch], torch.tensor([y for _, y in batch])
        if a.head == "seqcls":
            enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            logits = model(**enc).logits
        else:
            logits = embed(model, texts) @ protos.T / a.tau
        loss = torch.nn.functional.cross_entropy(logits, ys)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    model.save_pretrained(a.out)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
        if (Path(a.base) / f).exists():
            shutil.copy(Path(a.base) / f, Path(a.out) / f)
    print("saved", a.out, "labels", labels)


if __name__ == "__main__":
    main()
