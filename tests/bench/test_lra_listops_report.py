"""bench/lra_listops_report.py renders two real toy runs of scripts/lra_listops.py (the Reformer and
--dense, the same time budget) beside the LRA paper's rows, with the figures their results.json
hold, and refuses folders that are not one run of each kind on the same data."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))
import lra_listops_report  # noqa: E402

# tests/scripts/test_lra_listops.py's toy sizes, with evaluations during training for the curve
DATA = ["--train-size", "64", "--validation-size", "16", "--test-size", "24", "--min-length", "20",
        "--max-length", "60", "--max-depth", "5", "--max-args", "4", "--listops-seed", "2"]
TINY = ["--config-overrides", ("hidden_size=32,num_attention_heads=2,attention_head_size=16,feed_forward_size=64,"
                               "lsh_attn_chunk_length=8,local_attn_chunk_length=8,max_position_embeddings=64")]
TRAINER = ["--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
           "--logging_steps", "1", "--disable_tqdm", "true", "--learning_rate", "1e-3", "--eval_strategy", "steps",
           "--eval_steps", "2", "--max_steps", "100000", "--time-budget", "0.5"]


def train(data_dir, out, *args):
    spec = importlib.util.spec_from_file_location("lra_listops_script", REPO / "scripts" / "lra_listops.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([*DATA, *TINY, *TRAINER, "--data-dir", str(data_dir), "--output_dir", str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lra_listops_runs")
    return {"reformer": train(root / "data", root / "reformer", "--attn-layers", "lsh,local"),
            "dense": train(root / "data", root / "dense", "--dense", "--attn-layers", "lsh,local")}


def results_of(folder):
    return json.loads((Path(folder) / "results.json").read_text())


def edited_copy(source, folder, **fields):
    """A copy of the run folder `source` whose results.json has `fields` replaced."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("final"))
    (folder / "results.json").write_text(json.dumps({**results_of(source), **fields}))
    return folder


def test_report_of_a_reformer_run_and_a_dense_run(runs, tmp_path):
    out = tmp_path / "results" / "lra_listops_h100.md"
    assert lra_listops_report.main(["--runs", str(runs["reformer"]), str(runs["dense"]), "--out", str(out)]) == 0
    report = out.read_text()
    ours, dense = results_of(runs["reformer"]), results_of(runs["dense"])
    assert ours["recipe"]["time_budget"] == dense["recipe"]["time_budget"] == 0.5
    assert (f"| Reformer (ours) | lsh,local | {100 * ours['test_accuracy']:.2f} | "
            f"{100 * ours['validation_accuracy']:.2f} | {ours['steps']} | {ours['examples_seen']} | "
            f"{ours['training_seconds']:.3g} | {ours['parameters'] / 1e6:.2f}M | cpu |") in report
    assert (f"| dense, every layer SDPA (ours) | full,full | {100 * dense['test_accuracy']:.2f} | "
            f"{100 * dense['validation_accuracy']:.2f} | {dense['steps']} | {dense['examples_seen']} |") in report
    assert "| Transformer (LRA paper) | – | 36.37 |" in report and "| Reformer (LRA paper) | – | 37.27 |" in report
    assert 'Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021, Table 1' in report
    assert "- Test accuracy >= 37.27 (the paper's Reformer" in report
    assert f"ours {100 * ours['test_accuracy']:.2f}, not met." in report  # a 6-token toy guesses among 10 labels
    verdict = "met" if ours["test_accuracy"] > dense["test_accuracy"] else "not met"
    assert (f"- Beating the dense model at equal GPU time: ours {100 * ours['test_accuracy']:.2f} after "
            f"{ours['training_seconds']:.3g} s against the dense model's {100 * dense['test_accuracy']:.2f} after "
            f"{dense['training_seconds']:.3g} s, {verdict}.") in report
    assert "max steps 100000, time budget 0.5 s" in report and f"`{ours['command']}`" in report
    for kind in ("reformer", "dense"):
        for name in ("results.json", "metrics.jsonl"):
            assert (out.parent / f"lra_listops_h100_{kind}_{name}").read_bytes() == (runs[kind] / name).read_bytes()
    if out.with_suffix(".png").exists():
        assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("reformer_fields, dense_fields, line", [
    ({"test_accuracy": 0.3727}, {"test_accuracy": 0.30}, "ours 37.27, met."),
    ({"device": "NVIDIA H100 80GB HBM3"}, {},
     "not decided, they ran on different devices (NVIDIA H100 80GB HBM3, cpu)"),
    ({"training_seconds": 0.2}, {}, "not decided, the Reformer run stopped at --max_steps before its time budget"),
])
def test_targets(runs, tmp_path, reformer_fields, dense_fields, line):
    reformer = edited_copy(runs["reformer"], tmp_path / "reformer", **reformer_fields)
    dense = edited_copy(runs["dense"], tmp_path / "dense", **dense_fields)
    lra_listops_report.write_report([reformer, dense], tmp_path / "report.md")
    assert line in (tmp_path / "report.md").read_text()


def test_a_reformer_above_the_dense_model_at_equal_time_meets_the_target(runs, tmp_path):
    reformer = edited_copy(runs["reformer"], tmp_path / "reformer", test_accuracy=0.40)
    dense = edited_copy(runs["dense"], tmp_path / "dense", test_accuracy=0.30)
    lra_listops_report.write_report([reformer, dense], tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "- Test accuracy >= 37.27 (the paper's Reformer, the best of its efficient transformers on ListOps): " \
           "ours 40.00, met." in report
    assert "- Beating the dense model at equal GPU time: ours 40.00 after" in report and "s, met." in report
    validation = 100 * results_of(runs["reformer"])["validation_accuracy"]
    assert f"| Reformer (ours) | lsh,local | 40.00 | {validation:.2f} |" in report
    assert "| dense, every layer SDPA (ours) | full,full | 30.00 |" in report


def test_a_reformer_run_alone_has_no_dense_row(runs, tmp_path):
    lra_listops_report.write_report([runs["reformer"]], tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "dense, every layer SDPA (ours)" not in report
    assert "- Beating the dense model at equal GPU time: no dense run." in report


def test_bad_runs_are_refused(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ([tmp_path / "missing"], "--runs: '" + str(tmp_path / "missing") + "' is not a folder"),
        ([tmp_path / "empty"], "holds no results.json: not a finished scripts/lra_listops.py run"),
        ([runs["reformer"], runs["reformer"]], "are both reformer runs; pass one Reformer run and one dense run"),
        ([runs["reformer"], edited_copy(runs["dense"], tmp_path / "other_data", data={"cache_key": "0"})],
         "the runs trained on different ListOps data"),
    ]
    for folders, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            lra_listops_report.main(["--runs", *map(str, folders), "--out", str(tmp_path / "report.md")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    truncated = edited_copy(runs["reformer"], tmp_path / "truncated")
    (truncated / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))
    with pytest.raises(ValueError, match=r"results.json lacks \['validation_accuracy'"):
        lra_listops_report.write_report([truncated], tmp_path / "report.md")
    with pytest.raises(ValueError, match="--out='report.txt': expected a .md path"):
        lra_listops_report.write_report([runs["reformer"]], "report.txt")
    assert not (tmp_path / "report.md").exists()
