#!/usr/bin/env python3
"""Fine-tune with transformers so that the checkpoint localizes: AdamW plus an L1 penalty on θ − θ_pre.

A plain AdamW fine-tune moves almost every weight a little, and no small graft keeps its skill (see
docs/checkpoints.md). Adding λ·Σ|θ − θ_pre| over the body to the loss (the paper's `--l1_reg`) lets AdamW's
per-coordinate normalization pull back every weight the task does not need, so the change concentrates in
few parameters. `L1Trainer` is a drop-in `transformers.Trainer` subclass; run this file as a script for a
complete SST-2-style example on a CSV/TSV with `sentence,label` columns.

    pip install torch "transformers[torch]"
    python scripts/l1-trainer.py --model PATH_TO_all-MiniLM-L6-v2 --train train.tsv --out ckpt --l1 1e-5
    skillgraft localize --finetuned ckpt --task sst2      # the budget search reports what a graft keeps

The head (classifier, pooler) is not penalized: it is the task's own and always comes with the graft.
"""

import argparse
import csv
import inspect

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)


class L1Trainer(Trainer):
    """A Trainer whose loss adds l1 * Σ|θ − θ_pre| over the parameters present at construction (the body)."""

    def __init__(self, *args, l1=1e-5, penalize=lambda name: not {"classifier", "pooler"} & set(name.split(".")),
                 **kw):
        super().__init__(*args, **kw)
        self.l1 = l1
        self.anchors = {n: p.detach().clone() for n, p in self.model.named_parameters()
                        if p.requires_grad and penalize(n)}

    def compute_loss(self, model, inputs, return_outputs=False, **kw):
        outputs = model(**inputs)
        loss = outputs.loss
        if self.l1 > 0:
            penalty = sum((p - self.anchors[n]).abs().sum() for n, p in model.named_parameters() if n in self.anchors)
            loss = loss + self.l1 * penalty
        return (loss, outputs) if return_outputs else loss


def read_rows(path):
    delim = "\t" if path.endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter=delim)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the base model directory (the one skillgraft serves)")
    ap.add_argument("--train", required=True, help="CSV/TSV with sentence,label columns")
    ap.add_argument("--out", required=True)
    ap.add_argument("--l1", type=float, default=1e-5,
                    help="λ of the L1 penalty (0 = plain AdamW); 1e-4 stopped SST-2 from learning, see docs/checkpoints.md")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-labels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dropout", type=float, default=None, help="dropout of the body (default: the model's own)")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    drop = {} if a.dropout is None else {"hidden_dropout_prob": a.dropout, "attention_probs_dropout_prob": a.dropout}
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=a.num_labels, **drop)
    rows = read_rows(a.train)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            enc = tok(rows[i][0], truncation=True, max_length=128)
            enc["labels"] = rows[i][1]
            return enc

    # transformers < 5 takes the warm-up as `warmup_ratio`; 5 and later as a fraction in `warmup_steps`.
    takes_ratio = "warmup_ratio" in inspect.signature(TrainingArguments.__init__).parameters
    warmup = {"warmup_ratio": 0.1} if takes_ratio else {"warmup_steps": 0.1}
    args = TrainingArguments(output_dir=a.out, learning_rate=a.lr, num_train_epochs=a.epochs,
                             per_device_train_batch_size=a.batch_size, weight_decay=0.01,
                             lr_scheduler_type="linear", save_strategy="no", report_to=[], seed=a.seed,
                             **warmup)
    trainer = L1Trainer(model=model, args=args, train_dataset=Data(),
                        data_collator=DataCollatorWithPadding(tok), l1=a.l1)
    trainer.train()
    trainer.save_model(a.out)
    tok.save_pretrained(a.out)


if __name__ == "__main__":
    main()
