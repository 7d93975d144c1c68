#!/usr/bin/env bash
# En-De on one GPU: the reversible encoder-decoder for a fixed time, then the same model with
# plain residual layers for the same number of steps (same data order, same initial weights, same
# tokenizer), each scored with SacreBLEU on the held-out test split next to the copy-the-source
# baseline.  Writes RUNS/{reversible,plain}/ and a summary table RUNS/summary.md.
#
#   bash bench/results/translation_ende_run.sh DATA RUNS [WHEELS]
#
# DATA: WMT14-format pairs (here the 18,331 English-German pairs of Debian's libreoffice-l10n-de
# gettext catalogs, written as .jsonl by reformer_hf.data.load_gettext_pairs; docs/data.md).
# WHEELS: a folder of wheels for what the GPU image lacks (datasets, evaluate, dill, multiprocess;
# pyarrow is installed from it only when the image's is older than datasets needs).
# BUDGET (seconds of reversible training, default 225) and PRESET (default small) may be set in
# the environment.
set -euo pipefail
DATA=$1
RUNS=$2
WHEELS=${3:-}
BUDGET=${BUDGET:-225}
PRESET=${PRESET:-small}
EXTRA=${EXTRA:-}

if [ -n "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        "$WHEELS"/datasets-*.whl "$WHEELS"/evaluate-*.whl "$WHEELS"/dill-*.whl "$WHEELS"/multiprocess-*.whl
    if ! python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)"; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/pyarrow-*.whl
    fi
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, datasets, evaluate, sacrebleu, accelerate, pyarrow; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'datasets', datasets.__version__, 'evaluate', evaluate.__version__, 'sacrebleu', \
sacrebleu.__version__, 'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# Low-resource settings: a 4K vocabulary, small batches, dropout 0.3 (the preset) and label smoothing.
COMMON=(--dataset "$DATA" --preset "$PRESET" --vocab-size 4000 --max-tokens 2048 --lr 1e-3 --warmup-steps 400
        --label-smoothing 0.1 --eval-steps 250 --log-steps 100 --num-beams 4 --length-penalty 0.6
        --max-new-tokens 160 --eval-batch-size 256 --mixed-precision bf16 --seed 0 $EXTRA)
python3 scripts/train_translation.py "${COMMON[@]}" --time-budget "$BUDGET" --output-dir "$RUNS/reversible"
STEPS=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$RUNS/reversible/results.json")
# A generous budget: the plain model is faster per step and stops at the reversible run's step count.
python3 scripts/train_translation.py "${COMMON[@]}" --tokenizer "$RUNS/reversible/final" --no-reversible \
    --max-steps "$STEPS" --time-budget $((BUDGET + 30)) --output-dir "$RUNS/plain"

python3 - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
rows = {name: json.loads((runs / name / "results.json").read_text()) for name in ("reversible", "plain")}
lines = ["| layers | steps | train s | target tok/s | best val loss (step) | test BLEU | copy-source BLEU |",
         "|---|---|---|---|---|---|---|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {r['target_tokens'] / r['train_seconds']:.0f} | "
                 f"{r['best_validation_loss']:.3f} ({r['best_step']}) | {r['test_bleu']:.2f} | {r['copy_source_test_bleu']:.2f} |")
gap = rows["reversible"]["test_bleu"] - rows["plain"]["test_bleu"]
lines.append(f"\nreversible - plain: {gap:+.2f} BLEU on {rows['plain']['test_pairs']} test pairs ({rows['plain']['device']})")
(runs / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
