#!/usr/bin/env python3
"""Writes `tone.csv`, a 3-class task skillgraft has no built-in knowledge of, from the shared data:
objective sentences of Subj ("fact"), positive and negative movie-review snippets of MR ("praise",
"complaint"); every 8th line of each source, string labels, a `split` column (every 5th row is test).
The end-to-end test builds the same file in Rust (tests/newcomer.rs); this copy is for trying the
newcomer flow by hand and for making PyTorch checkpoints with scripts/torch-finetune.py.

    python3 scripts/make-tone-task.py ../shared/data /tmp/tone/tone.csv
"""
import csv
import sys
from pathlib import Path


def lines(path, label):
    out = []
    for i, raw in enumerate(Path(path).read_bytes().split(b"\n")):
        raw = raw.strip()
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        lab, _, sentence = text.partition(" ")
        if lab == label:
            out.append(sentence.strip())
    return out


def main():
    data, dest = Path(sys.argv[1]), Path(sys.argv[2])
    rows = []
    for tone, (file, label) in [
        ("fact", ("subj.all", "1")),
        ("praise", ("rt-polarity.all", "1")),
        ("complaint", ("rt-polarity.all", "0")),
    ]:
        rows += [(s, tone) for s in lines(data / file, label)[::8] if s]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "tone", "split"])
        for j, (s, tone) in enumerate(rows):
            w.writerow([s, tone, "test" if j % 5 == 0 else "train"])
    print(f"{dest}: {len(rows)} rows")


if __name__ == "__main__":
    main()
