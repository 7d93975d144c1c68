"""bench/attention.py and bench/model.py on the CPU (--smoke): the anchors' rows and tables.

A backend the CPU lacks (SDPA's cuDNN) is a row saying so, not a stop; FlexAttention runs forward
only there (it has no CPU backward) and its rows say so.  The reports also render runs from
before the anchors (the committed v15 results).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


def run_bench(script, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    completed = subprocess.run([sys.executable, str(REPO / "bench" / script), *map(str, args)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    return completed


def rows_of(path, section):
    with open(path, encoding="utf-8") as file:
        return [row for row in map(json.loads, filter(str.strip, file)) if row.get("section") == section]


def test_attention_anchors_on_the_cpu(tmp_path):
    run_bench("attention.py", "--smoke", "--sweep", "--anchors-only", "--report", "--out", tmp_path)
    sweep = rows_of(tmp_path / "attention.jsonl", "sweep")
    cases = {(row["impl"], row["n_hashes"], row["mode"], row["length"]): row for row in sweep}
    expected = {(impl, None, None, length) for impl in ("sdpa_flash", "sdpa_cudnn", "local_triton", "flex_local")
                for length in (128, 256)}
    expected |= {("lsh_triton", 4, mode, length) for mode in ("bucket_window", "chunk") for length in (128, 256)}
    expected |= {("flex_lsh", 4, mode, 256) for mode in ("bucket_window", "chunk")}
    assert set(cases) == expected
    for key, row in cases.items():
        if key[0] == "sdpa_cudnn":
            assert row["status"].startswith("unavailable: "), row
        else:
            assert row["status"] == "ok" and row["median_ms"] > 0, row
        assert row.get("backward", True) is (not key[0].startswith("flex"))
    report = (tmp_path / "attention.md").read_text(encoding="utf-8")
    for heading in ("| length | SDPA flash ms | SDPA cuDNN ms | best dense ms |",
                    "## Local attention: ours against FlexAttention with the same visible keys",
                    "## LSH attention: ours against FlexAttention over the bucket-sorted sequence",
                    "FlexAttention rows are forward only here", "- sdpa_cudnn n=None None at 128: unavailable: "):
        assert heading in report
    assert "## Whole layer" not in report  # --anchors-only times no layers


def test_model_llama_anchor_on_the_cpu(tmp_path):
    run_bench("model.py", "--smoke", "--sweep", "--anchors-only", "--report", "--out", tmp_path)
    rows = {(row["kind"], row["sdpa_backend"], row["compiled"]): row for row in rows_of(tmp_path / "model.jsonl", "model")}
    assert set(rows) == {("ours", "default", False), ("llama", "flash", False), ("llama", "cudnn", False),
                         ("llama", "flash", True)}
    assert rows["llama", "cudnn", False]["status"].startswith("unavailable: ")
    for key in (("ours", "default", False), ("llama", "flash", False), ("llama", "flash", True)):
        assert rows[key]["status"] == "ok" and rows[key]["useful_flops"] > 0 and "mfu" in rows[key], rows[key]
    assert all(rows["llama", backend, compiled]["checkpointing"] for backend, compiled in
               (("flash", False), ("cudnn", False), ("flash", True)))
    assert rows["llama", "flash", True]["compile_backend"] == "aot_eager"
    report = (tmp_path / "model.md").read_text(encoding="utf-8")
    assert "## Anchor: Llama + SDPA + activation checkpointing (12 layers)" in report
    assert "| 256 |" in report.split("## Anchor")[1]


def test_reports_render_runs_from_before_the_anchors(tmp_path):
    for script, stem in (("attention.py", "attention_h100_v15"), ("model.py", "model_h100_v15")):
        shutil.copy(RESULTS / f"{stem}.jsonl", tmp_path)
        run_bench(script, "--report", "--out", tmp_path, "--stem", stem)
    attention = (tmp_path / "attention_h100_v15.md").read_text(encoding="utf-8")
    assert "| 64K | 52.4 | – | 52.4 |" in attention  # flash alone is the best dense there
    assert "FlexAttention" not in attention
    model = (tmp_path / "model_h100_v15.md").read_text(encoding="utf-8")
    assert "| 64K | 176 | 372,919 | 5.3 |" in model and "## Anchor" not in model
