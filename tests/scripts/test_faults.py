"""The training scripts under faults: SIGKILL at points spread through checkpoint and metrics
writes, planted pickles in every file of a checkpoint, a second run into a held output folder."""

import json
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
from script_runner import SCRIPTS, run_forked, script_env, stdlib_package

from reformer_hf.checkpointing import CHECKPOINT_INFO, FAULT_POINT_VARIABLE, checkpoint_folders
from reformer_hf.output_lock import LOCK_NAME
from reformer_hf.training import read_metrics

LM_ARGS = ["--corpus", stdlib_package("json"), "--corpus-pattern", "*.py", "--preset", "tiny", "--seq-len", "32",
           "--batch-size", "2", "--save-steps", "1", "--keep-checkpoints", "2", "--eval-steps", "4",
           "--eval-windows", "2", "--lr", "3e-3", "--warmup-steps", "2", "--no-progress", "--no-tensorboard",
           "--no-final-model"]
DUPLICATION_ARGS = ["--length", "32", "--config-overrides",
                    "hidden_size=32,attention_head_size=16,num_attention_heads=2,feed_forward_size=32,"
                    "lsh_attn_chunk_length=8,num_buckets=4",
                    "--batch-size", "4", "--eval-size", "8", "--log-steps", "1", "--eval-steps", "0",
                    "--save-steps", "1",
                    "--eval-hashes", "1", "--warmup-steps", "0", "--no-progress", "--no-tensorboard"]


class PlantedPayload:
    """Unpickling this object creates `marker` (the stand-in for running a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def loss_curve(output_dir):
    return {row["step"]: row["loss"] for row in read_metrics(output_dir / "metrics.jsonl") if "loss" in row}


def test_sigkill_at_twenty_points_of_checkpoint_and_metrics_writes_resumes_on_the_same_curve(tmp_path):
    max_steps = 12
    reference = tmp_path / "reference"
    assert run_forked("train_lm.py", *LM_ARGS, "--max-steps", max_steps, "--output-dir", reference,
                      log_path=tmp_path / "reference.log") == 0
    expected = loss_curve(reference)
    assert sorted(expected) == list(range(1, max_steps + 1))

    # The fault points of one step, with a checkpoint every step: before and halfway through the
    # metrics row (1, 2), before, halfway and after each of the five checkpoint files (3-17), before
    # and after the rename (18, 19), then, once two checkpoints exist, after moving the oldest aside
    # and after deleting it (20, 21; the run after K=21 prunes in its first step, so its K=20 lands
    # there).  A later K falls in the second step after the resume.
    killed = tmp_path / "killed"
    fault_points = [1, 2, 3, 4, 5, 7, 8, 10, 13, 15, 16, 17, 18, 19, 20, 21, 20, 27, 33, 40]
    killed_at = []
    for number, point in enumerate(fault_points):
        resume = ["--resume"] if checkpoint_folders(killed / "checkpoints") else []
        log = tmp_path / f"killed-{number}.log"
        code = run_forked("train_lm.py", *LM_ARGS, "--max-steps", max_steps, "--output-dir", killed, *resume,
                          log_path=log, environment={FAULT_POINT_VARIABLE: str(point)})
        text = log.read_text()
        assert code == -signal.SIGKILL, f"run {number} (fault point {point}): exit {code}\n{text[-3000:]}"
        killed_at.append(re.search(r"fault point \d+: (.*)", text).group(1))
        assert "cannot be used" not in text, text  # no damaged checkpoint was ever in view
        for folder in checkpoint_folders(killed / "checkpoints"):
            info = json.loads((folder / CHECKPOINT_INFO).read_text())
            assert sorted(path.name for path in folder.iterdir()) == sorted([*info["files"], CHECKPOINT_INFO])
    kinds = {re.sub(r"\d+", "N", name) for name in killed_at}
    for kind in ("halfway through model.safetensors", "halfway through optimizer.pt", "before the rename",
                 "after the rename", "halfway through checkpoint.json", "halfway through metrics row N",
                 "after moving step_N aside", "after deleting .old-step_N", "halfway through rng_state_N.safetensors"):
        assert kind in kinds, (kind, killed_at)

    log = tmp_path / "finished.log"
    assert run_forked("train_lm.py", *LM_ARGS, "--max-steps", max_steps, "--output-dir", killed, "--resume",
                      log_path=log) == 0, log.read_text()[-3000:]
    assert "cannot be used" not in log.read_text()
    resumed = loss_curve(killed)
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) <= 1e-6, (step, resumed[step], loss)
    assert expected[max_steps] < expected[1] - 0.3  # the curve moved: equality is not trivial
    assert not (killed / LOCK_NAME).exists()


def plant_everywhere(folders, tmp_path):
    """Replace every file of `folders` by a planted pickle; return the markers' folder."""
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    for folder in folders:
        for path in folder.iterdir():
            path.write_bytes(pickle.dumps(PlantedPayload(markers / f"{folder.name}-{path.name}")))
    return markers


@pytest.mark.parametrize("script, args", [("train_lm.py", LM_ARGS), ("duplication_task.py", DUPLICATION_ARGS)],
                         ids=["train_lm", "duplication_task"])
def test_planted_pickles_in_a_checkpoint_never_run_on_resume(tmp_path, script, args):
    output = tmp_path / "run"
    assert run_forked(script, *args, "--max-steps", 3, "--output-dir", output, log_path=tmp_path / "first.log") == 0
    folders = checkpoint_folders(output / "checkpoints")
    assert [folder.name for folder in folders] == ["step_00000002", "step_00000003"]

    # Every file of the newest checkpoint planted: the run falls back to the older one, named.
    markers = plant_everywhere(folders[-1:], tmp_path)
    log = tmp_path / "fallback.log"
    assert run_forked(script, *args, "--max-steps", 4, "--output-dir", output, "--resume", log_path=log) == 0
    text = log.read_text()
    assert "step_00000003 cannot be used" in text and "resumed from" in text and "at step 2" in text, text[-3000:]
    assert list(markers.iterdir()) == []

    # Every file of every checkpoint planted: a clear refusal naming the files, exit 2.
    markers = plant_everywhere(checkpoint_folders(output / "checkpoints"), tmp_path)
    log = tmp_path / "refused.log"
    assert run_forked(script, *args, "--max-steps", 5, "--output-dir", output, "--resume", log_path=log) == 2
    text = log.read_text()
    assert "no valid checkpoint under" in text and "checkpoint.json is not valid JSON" in text, text[-3000:]
    assert list(markers.iterdir()) == []


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_folder_and_pid(tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, str(SCRIPTS / "train_lm.py"), *map(str, LM_ARGS), "--max-steps", "100000",
               "--save-steps", "0", "--output-dir", str(output)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=script_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (output / "metrics.jsonl").is_file() or not read_metrics(output / "metrics.jsonl"):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first run never logged a step"
            time.sleep(0.1)
        holder = json.loads((output / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid

        second = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=240)
        assert second.returncode == 2
        assert f"--output-dir={str(output)!r} is in use by the run with pid {first.pid}" in second.stderr
        assert first.poll() is None  # the first run goes on

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
    assert not (output / LOCK_NAME).exists()  # SIGTERM released it
