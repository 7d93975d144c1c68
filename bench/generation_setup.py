"""The setting of bench/generation_gpu.py's runs: where and in which precision they happen (Setup), the
bench models (ours through the `enwik8-paper` preset, a dense Llama of the same sizes), the decoding
variants, the run's id, token counts as the command lines write them, and a failed case's error as
the JSON lines keep it."""

import argparse
import datetime
import math
import os
import traceback

import torch

from common import GIB

from reformer_hf import ReformerForCausalLM
from reformer_hf.training import preset_config

PRESET = "enwik8-paper"
NO_DROPOUT = dict(hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0, local_attention_probs_dropout=0.0,
                  full_attention_probs_dropout=0.0)
# The smoke model: one period of the preset's layer pattern, tiny widths.
SMOKE_SIZES = dict(hidden_size=64, num_attention_heads=2, attention_head_size=32, feed_forward_size=128,
                   attn_layers=["local", "local", "lsh", "local"], lsh_attn_chunk_length=16,
                   local_attn_chunk_length=16, axial_pos_embds_dim=[16, 48])
FEED_FORWARD_CHUNK = 2**14
VARIANTS = ("reformer", "llama-dynamic", "llama-static-compile", "reformer-compile", "reformer-graph")
DEFAULT_VARIANTS = VARIANTS[:3]
RUN_ID = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"


class Setup:
    """Where and in which precision the run happens: the GPU in bf16, or the CPU in float32 (--smoke)."""

    def __init__(self, smoke):
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.dtype = torch.float32 if smoke else torch.bfloat16

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return torch.cuda.max_memory_allocated() / GIB if self.device.type == "cuda" else None

    def memory_bytes(self):
        return torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else None


def axial_grid(positions):
    """The smallest power-of-two axial grid [rows, columns] covering `positions`."""
    power = max(2, math.ceil(math.log2(positions)))
    return [2 ** (power // 2), 2 ** (power - power // 2)]


def reformer_config(positions, setup, num_buckets=None, **overrides):
    """The bench model: the preset's layers, heads and widths (tiny ones with --smoke), dropout off, eos off."""
    grid = axial_grid(positions)
    fields = dict(axial_pos_shape=grid, max_position_embeddings=math.prod(grid), num_buckets=num_buckets,
                  attn_backend="auto", chunk_size_feed_forward=FEED_FORWARD_CHUNK, eos_token_id=None,
                  pad_token_id=0, **NO_DROPOUT)
    if setup.smoke:
        fields.update(SMOKE_SIZES)
    fields.update(overrides)
    return preset_config(PRESET, fields)


def llama_like(config, setup):
    """LlamaForCausalLM of the Reformer config's width, depth, heads, d_ff and vocabulary (SDPA, eos off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.feed_forward_size,
        num_hidden_layers=len(config.attn_layers), num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, head_dim=config.attention_head_size,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    model = LlamaForCausalLM._from_config(llama_config, attn_implementation="sdpa")
    return model.to(setup.device, setup.dtype).eval()


def reformer_model(config, setup, dtype=None):
    return ReformerForCausalLM(config).to(setup.device, dtype or setup.dtype).eval()


def token_count(text):
    """'4K' -> 4096, '1M' -> 1048576, '300' -> 300."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive token count such as 4096, 4K or 1M")
    return int(number) * scale


def count_list(text):
    return [token_count(item) for item in text.split(",") if item.strip()]


def error_text(error, limit=600):
    """The error in one line: its type, its message's first lines (a BackendCompilerFailed says only which
    backend raised on its first line) and the innermost cause, within `limit` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {' | '.join(lines[:4])}"
    cause = error
    while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
        cause = cause.__cause__ if cause.__cause__ is not None else cause.__context__
    if cause is not error:
        cause_lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        text += f" <- {type(cause).__name__}: {' | '.join(cause_lines[:2])}"
    return text[:limit]


def error_trace(error, limit=4000):
    """The end of the error's formatted traceback (its causes included), for the JSON lines."""
    return "".join(traceback.format_exception(error))[-limit:]
