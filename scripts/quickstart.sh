#!/usr/bin/env bash
# Set up a fresh machine, train a small byte-level Reformer on real text (the Python standard
# library's sources), save it, load it back with AutoModelForCausalLM and generate with pipeline().
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
STDLIB="$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
OUT="${OUT_DIR:-runs/quickstart}"
python scripts/train_lm.py --corpus "$STDLIB" --corpus-pattern '*.py' --preset tiny --seq-len 256 \
    --batch-size 8 --max-steps "${STEPS:-600}" --lr 3e-3 --eval-steps 200 --save-steps 200 \
    --cpu --output-dir "$OUT"
python scripts/generate.py "$OUT/final" --prompt "def " --prompt "import " --max-new-tokens 120
