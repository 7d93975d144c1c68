"""bench/attention_report.py renders the committed H100 anchors run (bench/results/
attention_h100_v16_anchors.jsonl): the op table against dense SDPA, both FlexAttention anchor
tables and the memory table, with the numbers measured there."""

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))
from attention_report import pick, write_report  # noqa: E402

STEM = "attention_h100_v16_anchors"


def test_report_of_the_committed_anchors_run(tmp_path):
    shutil.copy(REPO / "bench" / "results" / f"{STEM}.jsonl", tmp_path)
    write_report(str(tmp_path), STEM)
    report = (tmp_path / f"{STEM}.md").read_text(encoding="utf-8")
    for line in ("| 64K | 52.2 | 34.3 | 34.3 | 3.65 | 3.23 | – | 9.4x | 10.6x |",
                 "| 64K | 0.866 | 1.48 | 1.7x | 39.6x | 0.54 | 0.54 |",
                 "| 64K | bucket_window | 3.65 | 21 | 5.8x | 9.4x | 0.51 | 3.36 |",
                 "| 64K | chunk | 3.23 | 18.1 | 5.6x | 10.6x | 0.50 | 3.34 |",
                 "| 64K | 0.66 | 0.51 | 0.8x | 0.25 | 2.0x |"):
        assert line in report


def test_pick_takes_the_first_measured_row_that_matches():
    rows = [{"impl": "a", "length": 8, "status": "OOM"}, {"impl": "a", "length": 8, "status": "ok", "median_ms": 2.0},
            {"impl": "a", "length": 8, "status": "ok", "median_ms": 1.0}]
    assert pick(rows, impl="a", length=8)["median_ms"] == 2.0
    assert pick(rows, impl="b") is None
