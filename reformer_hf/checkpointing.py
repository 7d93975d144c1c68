"""Training checkpoints that resume exactly and never execute anything they read.

A checkpoint is the folder `ROOT/step_00000123` holding

    model.safetensors              the model's weights (FSDP: accelerate's full-state file, see below)
    optimizer.pt                   optimizer.state_dict(), read back with torch.load(weights_only=True)
    scheduler.json                 the LR scheduler's state_dict
    rng_state_<rank>.safetensors   each process's RNG states: torch's CPU generator, every CUDA device's,
                                   numpy's and python `random`'s MT19937 keys; their scalars sit in the
                                   header's metadata as JSON
    checkpoint.json                written last: step, world size, the caller's info and the size and
                                   sha256 of every other file (the manifest)

Nothing is unpickled: safetensors and JSON are data only, and the optimizer's torch.save file goes
through torch's weights-only unpickler, which refuses any object but tensors and plain containers.
Under FSDP the model and optimizer are written by accelerate's FSDP helpers with per-rank
`torch.save` files (no torch.distributed.checkpoint, whose metadata file is a pickle) and read
back by the same helpers, which load them with weights_only=True.

Every file is written into `ROOT/.tmp-step_00000123`, flushed and fsynced; the folder is renamed
into place after checkpoint.json, so a kill at any moment leaves the previous checkpoints intact.
Old checkpoints leave by a rename to `.old-*` before they are deleted.  Before resuming, a
checkpoint is read completely (every manifest file present with its size and sha256, safetensors
and JSON parse, tensor names and shapes match the model); one that fails is reported with a
warning naming it and what was wrong, and the next older one is tried.

Fault injection (tests only): with the environment variable REFORMER_HF_FAULT_POINT=K, the
process sends itself SIGKILL at the K-th fault point it reaches (1-based, counted from its start):
before, halfway through and after every checkpoint file, around the rename and the pruning, and
before and halfway through every metrics row (`training.MetricsLog`).  Unset, the fault points do
nothing.
"""

import hashlib
import io
import json
import os
import random
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_INFO = "checkpoint.json"
CHECKPOINT_FORMAT = "reformer_hf-checkpoint-v2"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
FAULT_POINT_VARIABLE = "REFORMER_HF_FAULT_POINT"

_fault_points_reached = 0


def fault_point(name):
    """SIGKILL this process here if it is the REFORMER_HF_FAULT_POINT-th point reached (tests only)."""
    global _fault_points_reached
    target = os.environ.get(FAULT_POINT_VARIABLE)
    if not target:
        return
    _fault_points_reached += 1
    if _fault_points_reached == int(target):
        print(f"fault point {_fault_points_reached}: {name}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names its folder and the reason."""


def rng_state_file(rank):
    return f"rng_state_{rank}.safetensors"


def write_durably(path, data):
    """Write `data` (bytes) to `path`, fsynced; fault points before, halfway and after."""
    name = Path(path).name
    fault_point(f"before writing {name}")
    with open(path, "wb") as handle:
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        fault_point(f"halfway through {name}")
        handle.write(data[half:])
        handle.flush()
        os.fsync(handle.fileno())
    fault_point(f"after writing {name}")


def fsync_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_bytes(payload, what):
    try:
        return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} is not JSON-serialisable ({error}); the checkpoint stores it as JSON.") from error


# ------------------------------------------------------------------------------------ RNG states


def capture_rng_state():
    """This process's RNG states as (tensors, metadata) for a safetensors file."""
    python_version, python_key, python_gauss = random.getstate()
    numpy_kind, numpy_key, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "python_key": torch.tensor(python_key, dtype=torch.int64),
        "numpy_key": torch.from_numpy(numpy_key.astype(np.int64)),
    }
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for index, state in enumerate(cuda_states):
        tensors[f"torch_cuda_{index}"] = state
    scalars = {"python_version": python_version, "python_gauss": python_gauss, "numpy_kind": numpy_kind,
               "numpy_pos": int(numpy_pos), "numpy_has_gauss": int(numpy_has_gauss),
               "numpy_gauss": float(numpy_gauss), "cuda_devices": len(cuda_states)}
    return tensors, {"scalars": json.dumps(scalars)}


def restore_rng_state(tensors, metadata, source):
    """Set every RNG of this process from `capture_rng_state`'s output read from `source`; any
    mismatch raises CheckpointError (an exact resume is impossible without it)."""
    try:
        scalars = json.loads(metadata["scalars"])
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if scalars["cuda_devices"] != cuda_devices:
            raise ValueError(f"it holds the RNG states of {scalars['cuda_devices']} CUDA devices, this process sees "
                             f"{cuda_devices}")
        python_key = tuple(int(value) for value in tensors["python_key"].tolist())
        numpy_key = tensors["numpy_key"].numpy().astype(np.uint32)
        if len(python_key) != 625 or numpy_key.shape != (624,):
            raise ValueError(f"key lengths {len(python_key)} (python) and {numpy_key.shape} (numpy) are not "
                             "MT19937's 625 and (624,)")
        random.setstate((scalars["python_version"], python_key, scalars["python_gauss"]))
        np.random.set_state((scalars["numpy_kind"], numpy_key, scalars["numpy_pos"], scalars["numpy_has_gauss"],
                             scalars["numpy_gauss"]))
        torch.set_rng_state(tensors["torch_cpu"])
        for index in range(cuda_devices):
            torch.cuda.set_rng_state(tensors[f"torch_cuda_{index}"], index)
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{source}: the RNG state cannot be restored ({type(error).__name__}: {error}); "
                              "resuming without it would not continue the same run") from error


# ------------------------------------------------------------------------------------ reading


def _read_verified(folder, name, manifest):
    """The bytes of `folder/name`, checked against the manifest's size and sha256."""
    if name not in manifest:
        raise CheckpointError(f"{folder}: {name} is not listed in {CHECKPOINT_INFO}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: {name} is missing")
    data = path.read_bytes()
    expected = manifest[name]
    if len(data) != expected["bytes"]:
        raise CheckpointError(f"{folder}: {name} holds {len(data)} bytes, the manifest says {expected['bytes']} "
                              "(truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{folder}: {name} does not match its sha256 in {CHECKPOINT_INFO} (corrupt or replaced)")
    return data


def _parse_safetensors(folder, name, data):
    """(tensors, header metadata) of a safetensors file's bytes."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        header_length = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    except Exception as error:  # safetensors raises its own SafetensorError, an Exception
        raise CheckpointError(f"{folder}: {name} is not a readable safetensors file ({error})") from error
    return tensors, metadata


def read_info(folder):
    """checkpoint.json of `folder`, checked for its format and fields."""
    path = folder / CHECKPOINT_INFO
    if not path.is_file():
        raise CheckpointError(f"{folder}: {CHECKPOINT_INFO} is missing (an incomplete save)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder}: {CHECKPOINT_INFO} is not valid JSON ({error})") from error
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(f"{folder}: {CHECKPOINT_INFO} has format {found!r}, expected {CHECKPOINT_FORMAT!r} "
                              "(written by another version or another program)")
    files = info.get("files")
    fields_ok = (isinstance(info.get("step"), int) and isinstance(info.get("world_size"), int)
                 and isinstance(files, dict))
    if not fields_ok or not all(isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                                and isinstance(entry.get("sha256"), str) for entry in files.values()):
        raise CheckpointError(f"{folder}: {CHECKPOINT_INFO} lacks step, world_size or a files manifest of "
                              "{name: {bytes, sha256}}")
    return info


def checkpoint_folders(root):
    """Folders under `root` with a checkpoint.json (complete saves, not yet validated), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        number = path.name[len(CHECKPOINT_PREFIX):]
        if path.name.startswith(CHECKPOINT_PREFIX) and number.isdigit() and (path / CHECKPOINT_INFO).is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


class CheckpointManager:
    """Checkpoints of `model`, `optimizer` and `scheduler` (prepared by `accelerator`) under `root`.

    `save(step, info)` writes one atomically; `resume()` restores the newest valid one.  The newest
    `keep` are kept.  Every process must call both.
    """

    def __init__(self, accelerator, root, model, optimizer, scheduler, keep=2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} is not allowed; expected an integer >= 1.")
        self.accelerator = accelerator
        self.root = Path(root)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.keep = keep
        self.fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)

    # -------------------------------------------------------------------------------- listing

    def checkpoints(self):
        return checkpoint_folders(self.root)

    # -------------------------------------------------------------------------------- saving

    def save(self, step, info):
        """Write the state at `step` with the caller's `info` (JSON-able) and prune old checkpoints."""
        accelerator = self.accelerator
        final = self.root / f"{CHECKPOINT_PREFIX}{step:08d}"
        temporary = self.root / f".tmp-{final.name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            for leftover in list(self.root.glob(".tmp-*")) + list(self.root.glob(".old-*")):
                shutil.rmtree(leftover)
            temporary.mkdir()
        accelerator.wait_for_everyone()
        self._write_model_and_optimizer(temporary)
        if accelerator.is_main_process:
            write_durably(temporary / SCHEDULER_FILE, _json_bytes(self.scheduler.state_dict(), "the scheduler state"))
        from safetensors.torch import save

        tensors, metadata = capture_rng_state()
        write_durably(temporary / rng_state_file(accelerator.process_index), save(tensors, metadata=metadata))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {}
            for path in sorted(temporary.iterdir()):
                data = path.read_bytes()
                files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            payload = {"format": CHECKPOINT_FORMAT, "step": step, "world_size": accelerator.num_processes,
                       "files": files, "info": info}
            write_durably(temporary / CHECKPOINT_INFO, _json_bytes(payload, "the checkpoint info"))
            fsync_directory(temporary)
            self._move_into_place(temporary, final)
        accelerator.wait_for_everyone()
        return final

    def _write_model_and_optimizer(self, folder):
        accelerator = self.accelerator
        if self.fsdp_plugin is not None:
            from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

            fault_point("before the FSDP model and optimizer files")
            save_fsdp_model(self.fsdp_plugin, accelerator, self.model, str(folder), use_dcp=False)
            save_fsdp_optimizer(self.fsdp_plugin, accelerator, self.optimizer, self.model, str(folder), use_dcp=False)
            fault_point("after the FSDP model and optimizer files")
            return
        if not accelerator.is_main_process:
            return
        from safetensors.torch import save

        # Copies: tied weights share storage, which safetensors refuses; each name gets its own tensor.
        weights = {name: tensor.detach().cpu().contiguous().clone()
                   for name, tensor in accelerator.unwrap_model(self.model).state_dict().items()}
        write_durably(folder / MODEL_FILE, save(weights))
        buffer = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buffer)
        write_durably(folder / OPTIMIZER_FILE, buffer.getvalue())

    def _move_into_place(self, temporary, final):
        displaced = []
        if final.exists():  # a re-run reached the same step: the old copy steps aside first
            displaced.append(final.with_name(f".old-{final.name}"))
            os.replace(final, displaced[-1])
        fault_point("before the rename")
        os.replace(temporary, final)
        fsync_directory(self.root)
        fault_point("after the rename")
        for old in self.checkpoints()[: -self.keep]:
            displaced.append(old.with_name(f".old-{old.name}"))
            os.replace(old, displaced[-1])
            fault_point(f"after moving {old.name} aside")
        fsync_directory(self.root)
        for old in displaced:
            shutil.rmtree(old)
            fault_point(f"after deleting {old.name}")

    # -------------------------------------------------------------------------------- resuming

    def resume(self):
        """Restore the newest valid checkpoint and return its info (None when there is none at all).

        Invalid ones are skipped with a warning naming them and the reason; if some exist but none
        is valid, CheckpointError lists every reason.
        """
        candidates = list(reversed(self.checkpoints()))
        if not candidates:
            return None
        problems = []
        for folder in candidates:
            try:
                contents = self._read(folder)
                error = None
            except CheckpointError as caught:
                contents, error = None, caught
            if self._all_processes_agree(error is None):
                info = self._apply(folder, contents)
                self.accelerator.print(f"resumed from {folder} at step {info['step']}")
                return info
            problems.append(str(error) if error is not None else f"{folder}: invalid on another process")
            warnings.warn(f"checkpoint {folder.name} cannot be used, trying an older one: {problems[-1]}",
                          stacklevel=2)
        raise CheckpointError(f"no valid checkpoint under {self.root}: " + "; ".join(problems))

    def _all_processes_agree(self, valid):
        flag = torch.tensor(0.0 if valid else 1.0, device=self.accelerator.device)
        return self.accelerator.reduce(flag, "sum").item() == 0.0

    def _read(self, folder):
        """Every file this process needs from `folder`, verified and parsed (nothing applied yet)."""
        info = read_info(folder)
        manifest = info["files"]
        if info["world_size"] != self.accelerator.num_processes:
            raise CheckpointError(f"{folder}: saved by {info['world_size']} processes, resumed by "
                                  f"{self.accelerator.num_processes}; batches and RNG streams would differ")
        for name in manifest:
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder}: {name} is missing")
        contents = {"info": info}
        rng_name = rng_state_file(self.accelerator.process_index)
        contents["rng"] = _parse_safetensors(folder, rng_name, _read_verified(folder, rng_name, manifest))
        try:
            contents["scheduler"] = json.loads(_read_verified(folder, SCHEDULER_FILE, manifest))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{folder}: {SCHEDULER_FILE} is not valid JSON ({error})") from error
        if self.fsdp_plugin is not None:
            for name in manifest:
                if name.endswith(".bin"):
                    _read_verified(folder, name, manifest)
            return contents
        weights, _ = _parse_safetensors(folder, MODEL_FILE, _read_verified(folder, MODEL_FILE, manifest))
        expected = {name: tuple(tensor.shape)
                    for name, tensor in self.accelerator.unwrap_model(self.model).state_dict().items()}
        found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
        if found != expected:
            differing = sorted(set(found) ^ set(expected)) or sorted(n for n in found if found[n] != expected[n])
            raise CheckpointError(f"{folder}: {MODEL_FILE} does not fit this model (differing tensors: "
                                  f"{differing[:5]}{' ...' if len(differing) > 5 else ''})")
        contents["model"] = weights
        data = _read_verified(folder, OPTIMIZER_FILE, manifest)
        try:
            contents["optimizer"] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # the weights-only unpickler raises UnpicklingError, zip errors RuntimeError
            raise CheckpointError(f"{folder}: {OPTIMIZER_FILE} cannot be read as weights only ({error})") from error
        return contents

    def _apply(self, folder, contents):
        accelerator = self.accelerator
        try:
            if self.fsdp_plugin is not None:
                from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

                load_fsdp_model(self.fsdp_plugin, accelerator, self.model, str(folder), use_dcp=False)
                load_fsdp_optimizer(self.fsdp_plugin, accelerator, self.optimizer, self.model, str(folder),
                                    use_dcp=False)
            else:
                accelerator.unwrap_model(self.model).load_state_dict(contents["model"], strict=True)
                self.optimizer.load_state_dict(contents["optimizer"])
            self.scheduler.load_state_dict(contents["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{folder}: its state does not fit this run "
                                  f"({type(error).__name__}: {error})") from error
        tensors, metadata = contents["rng"]
        restore_rng_state(tensors, metadata, folder / rng_state_file(accelerator.process_index))
        return {"step": contents["info"]["step"], **contents["info"]["info"]}
