"""scripts/duplication_task.py: a short run, a resumed second invocation, and the Table-2 row."""

import importlib.util
import json

import pytest
from script_runner import SCRIPTS, check, run_script

from reformer_hf.training import read_metrics

SMALL = ["--length", "32", "--config-overrides",
         "hidden_size=32,attention_head_size=16,num_attention_heads=2,feed_forward_size=32,"
         "lsh_attn_chunk_length=8,num_buckets=4",
         "--batch-size", "4", "--eval-size", "8", "--log-steps", "1", "--eval-steps", "3", "--save-steps", "3",
         "--warmup-steps", "0", "--no-progress"]


def load_script_module():
    spec = importlib.util.spec_from_file_location("duplication_task_script", SCRIPTS / "duplication_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_invocations_chain_into_the_uninterrupted_run_and_write_the_table(tmp_path):
    check(run_script("duplication_task.py", *SMALL, "--max-steps", "6", "--output-dir", tmp_path / "once"))
    # The same run in two invocations: the first stops at step 3 (its --max-steps), the second resumes.
    check(run_script("duplication_task.py", *SMALL, "--max-steps", "3", "--output-dir", tmp_path / "twice"))
    resumed = check(run_script("duplication_task.py", *SMALL, "--max-steps", "6", "--resume",
                               "--output-dir", tmp_path / "twice"))
    assert "resumed from" in resumed.stdout + resumed.stderr
    once = {row["step"]: row for row in read_metrics(tmp_path / "once" / "metrics.jsonl")}
    twice = {row["step"]: row for row in read_metrics(tmp_path / "twice" / "metrics.jsonl")}
    assert sorted(once) == sorted(twice) == [1, 2, 3, 4, 5, 6]
    for step in once:
        assert twice[step]["loss"] == pytest.approx(once[step]["loss"], rel=1e-6)
        assert twice[step]["accuracy"] == once[step]["accuracy"]
    assert twice[6]["eval_accuracy"] == pytest.approx(once[6]["eval_accuracy"])

    results = json.loads((tmp_path / "twice" / "results.json").read_text())
    assert results["step"] == 6 and set(results["results"]) == {"full", "1", "2", "4", "8"}
    for setting in results["results"].values():
        assert 0.0 <= setting["accuracy"] <= 1.0 and setting["loss"] > 0
    table = (tmp_path / "twice" / "table.md").read_text()
    assert "| LSH-4 |" in table and "Full attention" in table and "LSH-8" in table
    assert (tmp_path / "twice" / "final" / "config.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--length", "33"], "--length=33 must be an even number"),
    (["--eval-hashes", "1,two"], "--eval-hashes='1,two' must be comma-separated integers"),
    (["--length", "2048"], "--length=2048 is larger than the model's maximum of 1024"),
    (["--vocab-high", "200"], "--vocab-high=200 needs vocab_size > 200"),
    (["--config-overrides", 'attn_layers=["local"]'], "the duplication study trains LSH layers only"),
    (["--eval-only"], "--eval-only evaluates a trained run"),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main(["--output-dir", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    assert f"--output-dir={str(tmp_path / 'taken')!r} exists and is not a folder" in capsys.readouterr().err


def test_help_describes_the_task():
    completed = check(run_script("duplication_task.py", "--help", timeout=60))
    assert "0 w 0 w" in completed.stdout and "--train-hashes" in completed.stdout
