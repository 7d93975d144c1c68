"""bench/decode_graph_check.py on the CPU (--smoke): the compiled decoding step's exactness rows, the
speed rows of each variant (compiled where it should be, one graph per case), and the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_decode_graph_check_smoke(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, str(REPO / "bench" / "decode_graph_check.py"), "--smoke", "--out", str(tmp_path),
               "--prompts", "64", "--variants", "reformer,reformer-graph,llama-static-compile"]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    assert "estimated" in completed.stdout
    with open(tmp_path / "decode_graph_h100.jsonl", encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]

    exact = [row for row in rows if row.get("section") == "exactness"]
    cases = ("greedy, batch 1, CUDA graphs", "greedy, left-padded batch of 4, inductor + CUDA graphs")
    assert {(row["case"], row["dtype"]) for row in exact} == {
        (case, dtype) for case in cases for dtype in ("float32", "bfloat16")}
    assert all(row["status"] == "ok" and row["passed"] for row in exact), exact
    assert all(row["tokens_equal"] for row in exact if row["dtype"] == "float32")
    steps = [row for row in rows if row.get("section") == "sync_free_compiled_steps"]
    assert [row["dtype"] for row in steps] == ["float32", "bfloat16"]
    assert all(row["error"] is None and row["passed"] is None for row in steps)  # no CUDA: not checked
    assert steps[0]["token_agreement_vs_cache_free"] == 1.0 and steps[0]["batch"] == 4

    decode = {(row["variant"], row["batch"]): row for row in rows if row.get("section") == "decode"}
    assert set(decode) == {(variant, batch) for variant in ("reformer", "reformer-graph", "llama-static-compile")
                           for batch in (1, 2)}
    for (variant, batch), row in decode.items():
        assert row["status"] == "ok" and row["ms_per_token"] > 0, row
        assert row["compiled"] is (variant != "reformer"), row
        assert row["dynamo"]["graph_breaks"] == 0
    assert decode[("reformer-graph", 1)]["dynamo"]["graphs"] == 1  # its first case compiles

    report = (tmp_path / "decode_graph_h100.md").read_text(encoding="utf-8")
    for text in ("## ms per new token", "| 64 | 1 |", "## Exactness of the compiled step against cache-free decoding",
                 "not checked (CPU)"):
        assert text in report
