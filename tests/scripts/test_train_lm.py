"""scripts/train_lm.py as a user runs it: real subprocesses, a real SIGKILL, a real 2-process DDP launch."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from script_runner import SCRIPTS, accelerate_launch, check, run_script, script_env, stdlib_package

from reformer_hf.training import read_metrics


def corpus_args():
    return ["--corpus", stdlib_package("json"), "--corpus-pattern", "*.py"]


def load_script_module():
    spec = importlib.util.spec_from_file_location("train_lm_script", SCRIPTS / "train_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loss_curve(output_dir):
    rows = read_metrics(output_dir / "metrics.jsonl")
    return {row["step"]: row["loss"] for row in rows if "loss" in row}, {
        row["step"]: row["eval_bpb"] for row in rows if "eval_bpb" in row}


def test_help_lists_the_data_and_checkpoint_options():
    completed = check(run_script("train_lm.py", "--help", timeout=60))
    for option in ("--enwik8", "--corpus", "--seq-len", "--mixed-precision", "--grad-accum", "--save-steps", "--resume"):
        assert option in completed.stdout


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "/nonexistent/corpus", "--output-dir", "{tmp}/a"], "corpus path '/nonexistent/corpus' does not exist"),
    (["--output-dir", "{tmp}/a"], "give exactly one of --enwik8"),
    (["--corpus", "{corpus}", "--seq-len", "512", "--output-dir", "{tmp}/a"],
     "--seq-len=512 is larger than the model's maximum of 256 positions"),
    (["--corpus", "{corpus}", "--config-overrides", "num_hashs=4", "--output-dir", "{tmp}/a"],
     "config overrides ['num_hashs'] are not ReformerConfig fields"),
    (["--corpus", "{corpus}", "--batch-size", "0", "--output-dir", "{tmp}/a"], "--batch-size=0 must be >= 1"),
    (["--corpus", "{corpus}", "--resume", "--output-dir", "{tmp}/missing"], "there is nothing to resume"),
    (["--corpus", "{corpus}", "--seq-len", "200000", "--preset", "enwik8-paper", "--output-dir", "{tmp}/a"],
     "--seq-len=200000 is larger than the model's maximum of 65536"),
    (["--enwik8", "{tmp}/enwik8", "--output-dir", "{tmp}/a"], "holds 1000 bytes, shorter than split_sizes"),
    (["--corpus", "{corpus}", "--output-dir", "{tmp}/enwik8"], "--output-dir='{tmp}/enwik8' exists and is not a folder"),
    (["--corpus", "{corpus}", "--config-overrides", "num_buckets=[4,", "--output-dir", "{tmp}/a"],
     "config override 'num_buckets=[4,': the value of 'num_buckets' is not a JSON value"),
])
def test_bad_arguments_fail_before_any_work_with_a_clear_message(tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path, corpus=stdlib_package("json")) for arg in argv]
    (tmp_path / "enwik8").write_bytes(stdlib_package("json").joinpath("decoder.py").read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main(argv)
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


TRAIN_ARGS = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--max-steps", "24", "--save-steps", "3",
              "--eval-steps", "12", "--eval-windows", "2", "--lr", "3e-3", "--warmup-steps", "2", "--no-progress"]


def test_sigkilled_run_resumes_on_exactly_the_same_loss_curve(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    check(run_script("train_lm.py", *corpus_args(), *TRAIN_ARGS, "--output-dir", reference))

    # The same run, killed with SIGKILL as soon as its first checkpoint is complete on disk.
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(SCRIPTS / "train_lm.py"), *map(str, corpus_args()), *TRAIN_ARGS,
                                    "--output-dir", str(killed)], env=script_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not list((killed / "checkpoints").glob("step_*/checkpoint.json")):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "final").exists(), "the run finished before the kill: nothing was interrupted"
    killed_steps = max(loss_curve(killed)[0])
    assert killed_steps < 24

    resumed = check(run_script("train_lm.py", *corpus_args(), *TRAIN_ARGS, "--output-dir", killed, "--resume"))
    assert "resumed from" in resumed.stdout + resumed.stderr
    reference_loss, reference_eval = loss_curve(reference)
    resumed_loss, resumed_eval = loss_curve(killed)
    assert sorted(resumed_loss) == list(range(1, 25)) and sorted(resumed_eval) == [12, 24]
    for step in reference_loss:
        assert resumed_loss[step] == pytest.approx(reference_loss[step], rel=1e-6, abs=1e-7), step
    for step in reference_eval:
        assert resumed_eval[step] == pytest.approx(reference_eval[step], rel=1e-6), step
    # The curve really moved: training is not a no-op that would match trivially.
    assert reference_loss[24] < reference_loss[1] - 0.3
    final_reference = load_file(reference / "final" / "model.safetensors")
    final_resumed = load_file(killed / "final" / "model.safetensors")
    for name, tensor in final_reference.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=1e-6, atol=1e-6)
    # No half-written checkpoint is ever left behind, and only the newest two are kept.
    names = sorted(path.name for path in (killed / "checkpoints").iterdir())
    assert names == ["step_00000021", "step_00000024"]


def test_run_ends_with_a_loadable_model_tokenizer_and_card(tmp_path):
    check(run_script("train_lm.py", *corpus_args(), "--preset", "tiny", "--seq-len", "32", "--batch-size", "2",
                     "--max-steps", "2", "--eval-steps", "0", "--eval-windows", "2", "--no-progress",
                     "--output-dir", tmp_path))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final, trust_remote_code=True)
    ids = tokenizer("def f():", return_tensors="pt").input_ids
    assert ids[0].tolist() == [byte + 4 for byte in b"def f():"]
    assert model(input_ids=ids).logits.shape == (1, len(b"def f():"), 260)
    results = json.loads((final / "eval_results.json").read_text())
    final_row = [row for row in read_metrics(tmp_path / "metrics.jsonl") if "final_test_bpb" in row][0]
    assert results[1]["metrics"][0]["value"] == round(final_row["final_test_bpb"], 4)
    card = (final / "README.md").read_text()
    assert "bits per byte" in card and "tiny" in card
    # An untrained byte model sits near log2(260) bits per byte.
    assert abs(final_row["final_test_bpb"] - math.log2(260)) < 0.5
    assert (tmp_path / "tensorboard").is_dir() == (importlib.util.find_spec("tensorboard") is not None)


def test_two_process_ddp_with_accumulation_matches_one_process_on_the_global_batch(tmp_path):
    common = [*corpus_args(), "--preset", "tiny", "--seq-len", "32", "--max-steps", "3", "--eval-steps", "0",
              "--eval-windows", "2", "--lr", "1e-2", "--warmup-steps", "0", "--lr-scheduler", "constant_with_warmup",
              # Fixed hash rotations: every forward pass draws fresh ones otherwise, so two micro-batches
              # would be hashed differently from one batch of both.
              "--config-overrides", "hash_seed=5",
              # Adam's step g / (|g| + eps) turns the last-bit differences of summing gradients in another
              # order into large relative changes where |g| is near eps; a larger eps keeps the comparison
              # about the gradients, not about that amplification.
              "--adam-epsilon", "1e-6", "--no-progress"]
    check(run_script("train_lm.py", *common, "--batch-size", "4", "--output-dir", tmp_path / "single"))
    launched = check(accelerate_launch("ddp_cpu_2proc.yaml", "train_lm.py", *common, "--batch-size", "1",
                                       "--grad-accum", "2", "--output-dir", tmp_path / "ddp"))
    assert "final:" in launched.stdout
    single_loss, _ = loss_curve(tmp_path / "single")
    ddp_loss, _ = loss_curve(tmp_path / "ddp")
    for step in (1, 2, 3):
        assert ddp_loss[step] == pytest.approx(single_loss[step], abs=1e-5)
    ddp_rows = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert ddp_rows[0]["tokens"] == 4 * 32  # 2 processes x 2 micro-batches x 1 window
    single = load_file(tmp_path / "single" / "final" / "model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=0, atol=1e-5)
    # Three steps at lr 1e-2 moved the weights far more than the tolerance (the script seeds its
    # initialisation with accelerate's set_seed(--seed)).
    from accelerate.utils import set_seed

    from reformer_hf import ReformerForCausalLM
    from reformer_hf.training import preset_config

    set_seed(0)
    initial = ReformerForCausalLM(preset_config("tiny")).state_dict()
    assert max((single[name] - initial[name]).abs().max().item() for name in single) > 1e-3
