"""What the training scripts share: named model presets, bits per byte, per-step data seeds,
the output folder's lock and a metrics log that survives a resume.

Exact resume rests on three things:

- data are a pure function of (seed, step, micro-batch, rank) (`step_generator`), so a resumed run
  draws the same batches without replaying a sampler;
- `checkpointing.CheckpointManager` writes the model, optimizer, scheduler and every process's RNG
  states atomically and restores them without unpickling anything;
- `MetricsLog` drops what a killed run logged after its last checkpoint (a row torn by the kill
  included), so the resumed run's log continues the curve instead of repeating steps.
"""

import contextlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from .checkpointing import fault_point
from .configuration import ReformerConfig
from .output_lock import OutputDirLock

# ------------------------------------------------------------------------------------ presets

_NO_DROPOUT = dict(hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0,
                   local_attention_probs_dropout=0.0, full_attention_probs_dropout=0.0)

PRESETS = {
    # A model for tests and smoke runs: two layers, every feature on, 256 positions.
    "tiny": dict(
        vocab_size=260, hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
        attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4, lsh_attn_chunk_length=16,
        local_attn_chunk_length=16, axial_pos_shape=[16, 16], axial_pos_embds_dim=[16, 16],
        max_position_embeddings=256, is_decoder=True, **_NO_DROPOUT,
    ),
    # The paper's enwik8 model (Kitaev et al. 2020, section 5; trax's reformer_enwik8.gin with its
    # "more memory" settings): 12 layers, d_model 1024, d_ff 4096, 8 heads of 128, the pattern
    # local-local-LSH-local, LSH chunks of 256 with 512 buckets and 2 hashes, local chunks of 128,
    # dropout 0.2, sequences of 64K bytes with (128, 512) axial positions.
    "enwik8-paper": dict(
        vocab_size=260, hidden_size=1024, num_attention_heads=8, attention_head_size=128,
        feed_forward_size=4096, hidden_act="relu", attn_layers=["local", "local", "lsh", "local"] * 3,
        num_hashes=2, num_buckets=512, lsh_attn_chunk_length=256, lsh_num_chunks_before=1,
        local_attn_chunk_length=128, local_num_chunks_before=1, axial_pos_shape=[128, 512],
        axial_pos_embds_dim=[256, 768], max_position_embeddings=65536, hidden_dropout_prob=0.2,
        lsh_attention_probs_dropout=0.2, local_attention_probs_dropout=0.2, is_decoder=True,
    ),
    # trax's default (smaller-memory) variant of the same model: d_model 768, d_ff 2048, heads of 64.
    "enwik8-paper-d768": dict(
        vocab_size=260, hidden_size=768, num_attention_heads=8, attention_head_size=64,
        feed_forward_size=2048, hidden_act="relu", attn_layers=["local", "local", "lsh", "local"] * 3,
        num_hashes=2, num_buckets=512, lsh_attn_chunk_length=256, lsh_num_chunks_before=1,
        local_attn_chunk_length=128, local_num_chunks_before=1, axial_pos_shape=[128, 512],
        axial_pos_embds_dim=[256, 512], max_position_embeddings=65536, hidden_dropout_prob=0.2,
        lsh_attention_probs_dropout=0.2, local_attention_probs_dropout=0.2, is_decoder=True,
    ),
    # A 6-layer byte LM for 16K-byte sequences (the LSH-versus-dense comparison): local and LSH
    # layers alternate; `--attn-layers full` turns it into the dense model of the same size.
    "lm-6layer-16k": dict(
        vocab_size=260, hidden_size=512, num_attention_heads=4, attention_head_size=128, feed_forward_size=2048,
        attn_layers=["local", "lsh"] * 3, num_hashes=2, num_buckets=None, lsh_attn_chunk_length=128,
        local_attn_chunk_length=128, axial_pos_shape=[128, 128], axial_pos_embds_dim=[128, 384],
        max_position_embeddings=16384, is_decoder=True, **_NO_DROPOUT,
    ),
    # The paper's duplication task (section 5): one LSH layer, d_model 256, 4 heads, length 1024,
    # symbols 1..127 (vocabulary 128).  One learned vector per position, not axial embeddings: with
    # shared-QK attention a query at 512 + j finds its source j + 1 only if the two positions have
    # nearly the same code (a code of period 511), which a per-position table learns directly; an
    # axial code is a sum of a row and a column part and cannot express that shift for every
    # position (trained axially, the model stalls at 78% accuracy, with full attention too:
    # bench/results/duplication_axial_table.md).
    "duplication": dict(
        vocab_size=128, hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=512,
        attn_layers=["lsh"], num_hashes=4, num_buckets=32, lsh_attn_chunk_length=64,
        axial_pos_embds=False, max_position_embeddings=1024,
        is_decoder=True, pad_token_id=0, eos_token_id=None, **_NO_DROPOUT,
    ),
}


_OVERRIDE_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def parse_overrides(text):
    """"key=value,key=value" -> dict, parsed strictly: each value is one JSON value (number, string,
    list, object, true/false/null) or a bare word such as `chunk` or `gelu_new` (read as that
    string); anything else, e.g. an unclosed bracket, raises ValueError naming the override.

    Lists go in brackets and may hold commas: "attn_layers=[\"lsh\",\"local\"],num_hashes=4".
    """
    overrides, position = {}, 0
    decoder = json.JSONDecoder()
    while text and position <= len(text):
        key_match = _OVERRIDE_KEY.match(text, position)
        piece = text[position:].split(",", 1)[0]
        if key_match is None:
            raise ValueError(f"config override {piece!r} is not key=value with a field name as key (in {text!r}).")
        key, value_start = key_match.group(1), key_match.end()
        while value_start < len(text) and text[value_start].isspace():
            value_start += 1
        try:
            value, value_end = decoder.raw_decode(text, value_start)
        except json.JSONDecodeError:
            bare = _BARE_WORD.match(text, value_start)
            value_end = bare.end() if bare else value_start
            value = bare.group(0) if bare else None
        while value_end < len(text) and text[value_end].isspace():
            value_end += 1
        if value_end == value_start or (value_end < len(text) and text[value_end] != ","):
            raise ValueError(f"config override {text[position:].strip()!r}: the value of {key!r} is not a JSON value "
                             f"or a bare word (in {text!r}); quote strings, close brackets, separate overrides "
                             "with commas.")
        if key in overrides:
            raise ValueError(f"config override {key!r} is given twice (in {text!r}).")
        overrides[key] = value
        position = value_end + 1
        if position == len(text):
            raise ValueError(f"config overrides {text!r} end with a comma: an override is missing after it.")
    return overrides


def preset_config(name, overrides=None):
    """A validated ReformerConfig from a preset name and field overrides (unknown fields are errors)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}.")
    fields = dict(PRESETS[name])
    defaults = ReformerConfig()
    unknown = sorted(key for key in overrides or {} if not hasattr(defaults, key))
    if unknown:
        raise ValueError(f"config overrides {unknown} are not ReformerConfig fields.")
    fields.update(overrides or {})
    return ReformerConfig(**fields)


# ------------------------------------------------------------------------------------ metrics


def bits_per_byte(nll_sum_nats, n_predicted_bytes):
    """Mean negative log-likelihood of byte predictions, converted from nats to bits."""
    if n_predicted_bytes <= 0:
        raise ValueError(f"n_predicted_bytes={n_predicted_bytes}; expected at least one predicted byte.")
    return float(nll_sum_nats) / float(n_predicted_bytes) / math.log(2)


def step_generator(seed, *indices):
    """A CPU generator that depends only on (seed, *indices): batches are a function of the step."""
    state = np.random.SeedSequence([seed, *indices]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def dense_shared_qk_overrides(length):
    """Config fields under which every LSH layer computes exact dense shared-QK attention.

    One hash round whose single sorted chunk covers the whole (padded) sequence, in "chunk" window
    mode (which ignores buckets inside the window): each query sees every key, causal masking
    still applies, and the self-logit keeps its LSH value.  This is the "full attention" column of
    the paper's Table 2 for a model trained with LSH attention.
    """
    return dict(num_hashes=1, lsh_window_mode="chunk", lsh_attn_chunk_length=length,
                lsh_num_chunks_before=0, lsh_num_chunks_after=0)


def make_accelerator(mixed_precision, cpu):
    """The training scripts' `Accelerator`.  Under an FSDP launch config, FSDP keeps float32
    parameters, gradient reduction and buffers and autocast does the low-precision compute, as
    under DDP: accelerate's FSDP default for `mixed_precision="bf16"` gathers bfloat16 parameters,
    which makes the reversible layers' residual streams bfloat16, so the inputs the backward pass
    rebuilds (x = y - F(x)) lose precision layer after layer (on 2 H200s its training loss drifted
    0.15 above DDP's within 30 steps)."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    fsdp_plugin = None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        full = dict(param_dtype=torch.float32, reduce_dtype=torch.float32)
        if os.environ.get("FSDP_VERSION", "1") == "2":
            from torch.distributed.fsdp import MixedPrecisionPolicy

            policy = MixedPrecisionPolicy(**full)
        else:
            from torch.distributed.fsdp import MixedPrecision

            policy = MixedPrecision(**full, buffer_dtype=torch.float32)
        fsdp_plugin = FullyShardedDataParallelPlugin(mixed_precision_policy=policy)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, fsdp_plugin=fsdp_plugin)


def _full_parameters(model):
    """A context in which an FSDP-wrapped `model`'s unwrapped module holds its full parameters
    (every process must enter it: gathering them is a collective); a no-op for other wrappers.
    Forward passes of the unwrapped module inside it are then local, so the processes may run
    different numbers of them."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def evaluating(accelerator, model, seed=None):
    """The unwrapped `model` in eval mode under no_grad; its training mode comes back afterwards.
    Every process must enter it (under FSDP the full parameters are gathered for the block).

    With `seed`, the block draws from a forked RNG seeded with it, so evaluation (LSH hash
    rotations included) neither disturbs the training RNG stream (exact resume) nor varies between
    evaluations of the same weights.
    """
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    try:
        with _full_parameters(model), rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            yield unwrapped
    finally:
        unwrapped.train(was_training)


def gather_state_dict(accelerator, model):
    """The trained model's full state dict for `save_pretrained(..., state_dict=...)` on the main
    process.  Every process must call it: under FSDP the shards are gathered (a collective), which
    `unwrap_model(model).state_dict()` on one process would not do."""
    return accelerator.get_state_dict(model)


# ------------------------------------------------------------------------------------ output folder


def output_dir_lock(accelerator, folder):
    """The output folder's lock (`output_lock.OutputDirLock`), held by the main process only: the
    other processes write nothing there that the main one does not wait for."""
    return OutputDirLock(folder) if accelerator.is_main_process else contextlib.nullcontext()


def run_folder_error(output_dir, resume):
    """Why `output_dir` cannot take a checkpointed run (None where it can): locked by a live run or
    not a folder; with `resume`, missing or without a complete checkpoint; without, already holding
    another run's checkpoints (a new run would mix with them)."""
    from .checkpointing import checkpoint_folders
    from .output_lock import OutputDirLocked, check_output_dir

    output = Path(output_dir)
    try:
        check_output_dir(output)
    except (NotADirectoryError, OutputDirLocked) as error:
        return str(error)
    if resume and not output.is_dir():
        return f"--resume: --output-dir={str(output_dir)!r} does not exist, so there is nothing to resume"
    if resume and not checkpoint_folders(output / "checkpoints"):
        return f"--resume: no complete checkpoint under {output / 'checkpoints'}"
    if not resume and checkpoint_folders(output / "checkpoints"):
        return (f"--output-dir={str(output_dir)!r} already holds checkpoints; pass --resume to continue that run, "
                "or choose a new folder")
    return None


def optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm):
    """One update after the backward passes: clip the gradient norm to `max_grad_norm` (0 or None:
    no clipping), step the optimizer and the scheduler, clear the gradients."""
    if max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def stop_on_every_process(stop_here, device):
    """Whether any process wants to stop (`stop_here`: this process's own answer, e.g. its clock
    past a time budget), the same answer on every process.  Clocks differ between processes, so a
    budget read on each alone could stop one at a step where another goes on into the next step's
    gradient all-reduce and waits there for ever.  A collective: under torch.distributed every
    process calls it at every step.  A lone process answers for itself, with no device tensor and no
    wait for the device."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return bool(stop_here)
    flag = torch.tensor([float(stop_here)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


class MetricsLog:
    """Metrics as JSON lines (`metrics.jsonl`) and, when tensorboard is installed, TensorBoard events.

    Opened with `resume_step`, it first drops the rows a killed run wrote after that step (and a
    last row that a kill cut short), and TensorBoard purges its events after it, so the log reads as
    one uninterrupted run.  Only the main process writes.
    """

    def __init__(self, output_dir, resume_step=0, enabled=True, tensorboard=True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(self.path, drop_torn_last_row=True) if resume_step else []
        kept = [row for row in rows if row["step"] <= resume_step]
        temporary = self.path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(temporary, self.path)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step, values):
        if not self.enabled:
            return
        row = (json.dumps({"step": step, **values}) + "\n").encode("utf-8")
        fault_point(f"before metrics row {step}")
        with open(self.path, "ab") as handle:
            handle.write(row[: len(row) // 2])
            handle.flush()
            fault_point(f"halfway through metrics row {step}")
            handle.write(row[len(row) // 2 :])
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def read_metrics(path, drop_torn_last_row=False):
    """Rows of a metrics.jsonl file (empty when it does not exist).  A last row without its newline
    is one a kill cut short: with `drop_torn_last_row` it is left out, otherwise it is an error like
    any row that does not parse."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    if drop_torn_last_row:
        lines = lines[:-1]  # "" after a final newline, else the torn row
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not a JSON row ({error}): {line[:80]!r}") from error
    return rows


def tensorboard_available():
    return importlib.util.find_spec("tensorboard") is not None
