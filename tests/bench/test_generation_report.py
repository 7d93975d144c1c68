"""bench/generation_report.py renders the committed H100 run (bench/results/generation_h100.jsonl):
its decoding, cache-per-layer and exactness rows as measured."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))
from generation_report import ratio, write_report  # noqa: E402


def test_report_of_the_committed_run(tmp_path):
    write_report(str(tmp_path), "generation", [str(REPO / "bench" / "results" / "generation_h100.jsonl")])
    report = (tmp_path / "generation.md").read_text(encoding="utf-8")
    for line in (
        "| reformer_hf | ReformerCache | 4K | 1 | 5.07 | 19 | 53 | 0.82 | 0.0579 | 3.8x | 0.11x | 0.31x |",
        "| 4K | 1 | 32 | 16.8 | 0.63 | 1.01 | 16.1 | 16.1 | 1.039 | 0.0579 | 0.189 |",
        "| greedy, batch 1 | float32 | True | 100.0% | 1.31e-06 / 1.31e-06 / 0.00e+00 | tokens equal; logits within "
        "0.0001 of the cache-free pass | PASS |",
    ):
        assert line in report
    for heading in ("## Decoding", "## Throughput at the largest batch that fits", "## Cases that did not run",
                    "## Exactness: cached against cache-free decoding"):
        assert heading in report


def test_ratio_keeps_two_decimals_below_one():
    assert ratio(1.0, 8.0) == "0.12x"
    assert ratio(None, 8.0) == ratio(1.0, 0) == "–"
