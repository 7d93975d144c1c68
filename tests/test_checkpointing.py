"""reformer_hf.checkpointing: exact round trips, validation with fallback, nothing unpickled."""

import json
import pickle
import random
import re

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import get_scheduler

from reformer_hf.checkpointing import (
    CHECKPOINT_INFO,
    MODEL_FILE,
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    CheckpointError,
    CheckpointManager,
    checkpoint_folders,
    fault_point,
    rng_state_file,
)


class PlantedPayload:
    """Unpickling this object creates `marker` (the stand-in for running a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def planted_pickle(marker):
    return pickle.dumps(PlantedPayload(marker))


def test_the_planted_payload_really_runs_when_unpickled(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(planted_pickle(marker)).close()
    assert marker.exists()


def make_run(root, keep=2):
    """A model, AdamW and a warmup-cosine schedule behind a CheckpointManager."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=20)
    model, optimizer = accelerator.prepare(model, optimizer)
    return CheckpointManager(accelerator, root, model, optimizer, scheduler, keep=keep)


def train_steps(manager, first, last):
    """Steps first+1..last, each drawing its batch and noise from every RNG; a checkpoint after each."""
    model, optimizer, scheduler = manager.model, manager.optimizer, manager.scheduler
    for step in range(first + 1, last + 1):
        inputs = torch.randn(5, 4) + random.random() + float(np.random.rand())
        loss = torch.nn.functional.dropout(model(inputs), 0.5).square().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        manager.save(step, {"elapsed_seconds": float(step)})


def snapshot(manager):
    return {
        "weights": {name: tensor.clone() for name, tensor in manager.model.state_dict().items()},
        "adam": {key: value.clone() for key, value in manager.optimizer.state_dict()["state"][0].items()},
        "lr": manager.scheduler.get_last_lr(),
        "draws": (torch.rand(3).tolist(), random.random(), float(np.random.rand())),
    }


def assert_same_snapshot(got, expected):
    for name, tensor in expected["weights"].items():
        assert torch.equal(got["weights"][name], tensor), name
    for key, value in expected["adam"].items():
        assert torch.equal(got["adam"][key], value), key
    assert got["lr"] == expected["lr"] and got["draws"] == expected["draws"]


def test_resume_restores_weights_optimizer_scheduler_and_every_rng_exactly(tmp_path):
    manager = make_run(tmp_path)
    train_steps(manager, 0, 3)
    expected = snapshot(manager)  # consumes RNG draws after the step-3 checkpoint

    resumed = make_run(tmp_path)  # fresh weights and optimizer, RNGs moved on
    random.seed(123)
    np.random.seed(123)
    info = resumed.resume()
    assert info == {"step": 3, "elapsed_seconds": 3.0}
    assert_same_snapshot(snapshot(resumed), expected)
    assert [path.name for path in checkpoint_folders(tmp_path)] == ["step_00000002", "step_00000003"]
    names = sorted(path.name for path in (tmp_path / "step_00000003").iterdir())
    assert names == sorted([CHECKPOINT_INFO, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, rng_state_file(0)])
    manifest = json.loads((tmp_path / "step_00000003" / CHECKPOINT_INFO).read_text())["files"]
    assert sorted(manifest) == sorted(set(names) - {CHECKPOINT_INFO})


def test_leftovers_of_a_killed_save_are_never_loaded_and_are_cleared_by_the_next_save(tmp_path):
    manager = make_run(tmp_path)
    train_steps(manager, 0, 2)
    (tmp_path / ".tmp-step_00000003").mkdir()
    (tmp_path / ".old-step_00000001").mkdir()
    (tmp_path / "step_00000004").mkdir()  # no checkpoint.json: not a checkpoint
    assert [path.name for path in checkpoint_folders(tmp_path)] == ["step_00000001", "step_00000002"]
    assert make_run(tmp_path).resume()["step"] == 2
    train_steps(manager, 2, 3)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def two_checkpoints(tmp_path):
    manager = make_run(tmp_path)
    train_steps(manager, 0, 1)
    after_one = snapshot(manager)
    train_steps(manager, 1, 2)
    return after_one


def test_a_truncated_optimizer_file_falls_back_to_the_older_checkpoint_with_a_warning(tmp_path):
    after_one = two_checkpoints(tmp_path)
    optimizer_file = tmp_path / "step_00000002" / OPTIMIZER_FILE
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])
    resumed = make_run(tmp_path)
    with pytest.warns(UserWarning, match=r"step_00000002 cannot be used.*optimizer\.pt holds 100 bytes"):
        assert resumed.resume()["step"] == 1
    assert_same_snapshot(snapshot(resumed), after_one)


@pytest.mark.parametrize("damage", ["garbage", "missing", "empty"])
def test_a_damaged_rng_file_falls_back_never_silently(tmp_path, damage):
    two_checkpoints(tmp_path)
    rng_file = tmp_path / "step_00000002" / rng_state_file(0)
    if damage == "missing":
        rng_file.unlink()
    else:
        rng_file.write_bytes(b"" if damage == "empty" else bytes(range(256)) * 40)
    with pytest.warns(UserWarning, match=re.escape(rng_state_file(0))):
        assert make_run(tmp_path).resume()["step"] == 1


def test_an_rng_file_that_parses_but_cannot_be_restored_fails_loudly(tmp_path):
    """Even with a manifest rewritten to match, a wrong RNG state is an error, not a silent resume."""
    from safetensors.torch import load_file, save_file

    two_checkpoints(tmp_path)
    for folder in checkpoint_folders(tmp_path):
        rng_file = folder / rng_state_file(0)
        tensors = load_file(rng_file)
        tensors["torch_cpu"] = tensors["torch_cpu"][:100]
        metadata = json.loads(rng_file.read_bytes()[8:8 + int.from_bytes(rng_file.read_bytes()[:8], "little")])
        save_file(tensors, rng_file, metadata=metadata["__metadata__"])
        rewrite_manifest(folder)
    with pytest.raises(CheckpointError, match=r"rng_state_0\.safetensors: the RNG state cannot be restored"):
        make_run(tmp_path).resume()


def rewrite_manifest(folder):
    """Make checkpoint.json vouch for the folder's current files (what an attacker can do)."""
    import hashlib

    info_path = folder / CHECKPOINT_INFO
    info = json.loads(info_path.read_text())
    for name in info["files"]:
        data = (folder / name).read_bytes()
        info["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("damage", ["not json", "other format", "no manifest"])
def test_a_damaged_checkpoint_json_falls_back(tmp_path, damage):
    two_checkpoints(tmp_path)
    info_path = tmp_path / "step_00000002" / CHECKPOINT_INFO
    info = json.loads(info_path.read_text())
    if damage == "not json":
        info_path.write_text(info_path.read_text()[:-10])
    else:
        info.pop("files") if damage == "no manifest" else info.update(format="accelerate")
        info_path.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match=r"step_00000002 cannot be used.*checkpoint\.json"):
        assert make_run(tmp_path).resume()["step"] == 1


def test_a_checkpoint_of_another_model_is_refused_by_name_and_shape(tmp_path):
    two_checkpoints(tmp_path)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    manager = CheckpointManager(accelerator, tmp_path, model, optimizer, scheduler)
    refusal = r"no valid checkpoint.*does not fit this model"
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=refusal):
        manager.resume()


@pytest.mark.parametrize("rewrite", [False, True], ids=["manifest as saved", "manifest rewritten to match"])
def test_a_planted_pickle_in_any_file_never_runs(tmp_path, rewrite):
    two_checkpoints(tmp_path)
    newest = tmp_path / "step_00000002"
    for path in sorted(newest.iterdir()):
        marker = tmp_path / f"marker-{path.name}"
        original = path.read_bytes()
        path.write_bytes(planted_pickle(marker))
        if rewrite and path.name != CHECKPOINT_INFO:
            rewrite_manifest(newest)
        with pytest.warns(UserWarning, match=re.escape(path.name)):
            assert make_run(tmp_path).resume()["step"] == 1
        assert not marker.exists(), path.name
        path.write_bytes(original)
        if rewrite:
            rewrite_manifest(newest)
    assert make_run(tmp_path).resume()["step"] == 2


def test_no_valid_checkpoint_is_an_error_listing_every_reason(tmp_path):
    two_checkpoints(tmp_path)
    for folder in checkpoint_folders(tmp_path):
        (folder / MODEL_FILE).unlink()
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as error:
        make_run(tmp_path).resume()
    message = str(error.value)
    assert "no valid checkpoint" in message and message.count("model.safetensors is missing") == 2
    assert make_run(tmp_path / "empty").resume() is None


def test_fault_points_do_nothing_unless_the_test_variable_is_set(monkeypatch):
    monkeypatch.delenv("REFORMER_HF_FAULT_POINT", raising=False)
    for _ in range(5):
        fault_point("anywhere")  # still alive


def test_keep_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match="keep=0 is not allowed"):
        make_run(tmp_path, keep=0)
