#!/usr/bin/env bash
# Set up a fresh machine, train a small byte-level Reformer on real text (the Python standard
# library's sources), save it, load it back with AutoModelForCausalLM and generate with pipeline().
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
# A model this small does its math in matrices too small for a second thread to pay, and two
# threads on a busy 2-core machine were measured 10x slower per step: use one unless told otherwise.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
STDLIB="$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
OUT="${OUT_DIR:-runs/quickstart}"
RESUME=()
if [ -d "$OUT/checkpoints" ]; then  # a second run continues (or, when finished, just reloads) the first
    RESUME=(--resume)
fi
MODEL='hidden_size=128,num_attention_heads=4,attention_head_size=32,feed_forward_size=256,axial_pos_embds_dim=[64,64],attn_layers=["local","lsh","local","lsh"],num_buckets=8'
python scripts/train_lm.py --corpus "$STDLIB" --corpus-pattern '*.py' --preset tiny --config-overrides "$MODEL" \
    --seq-len 256 --batch-size 8 --max-steps "${STEPS:-600}" --lr 2e-3 \
    --warmup-steps 50 --eval-steps 250 --save-steps 250 --cpu --output-dir "$OUT" ${RESUME[@]+"${RESUME[@]}"}
python scripts/generate.py "$OUT/final" --prompt "def " --prompt "import " --max-new-tokens 200 --do-sample --top-k 20 --temperature 0.7
