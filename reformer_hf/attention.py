"""LSH, local and full self-attention layers.

The modules project, hash, call the attention functions and merge heads: the math is in
`attention_functions.py` (pure tensor functions), the choice between those and the fused kernels
in `attention_dispatch.py`, and what the torch path and the kernels must agree on in
`attention_rules.py`.
"""

import math

import torch
from torch import nn

from . import replay
from .attention_dispatch import hash_vectors_dispatch, local_attention_dispatch, lsh_attention_dispatch
from .attention_functions import (
    buckets_for_length,
    full_attention_sdpa,
    hash_vectors,
    local_decode_step,
    lsh_decode_step,
    normalize_keys,
    rotation_size,
)
from .attention_rules import bucket_factors, merge_heads, split_heads, unpack_heads


def is_plain_linear(module):
    """Whether `module` is exactly nn.Linear with no forward hook (its own or global): only then may a
    fused path read its weight and bias instead of calling it.  An adapter (PEFT's LoRA), a quantised
    layer or a hook changes what the call computes or observes it, so those are called."""
    return (type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks)


def packed_projection(hidden, projections):
    """`hidden` through bias-free nn.Linear `projections`, their outputs side by side: (batch,
    length, sum of their widths).  Plain nn.Linear layers without hooks (`is_plain_linear`) run as
    one product; others are called one by one, their outputs concatenated."""
    if all(is_plain_linear(projection) and projection.bias is None for projection in projections):
        return nn.functional.linear(hidden, torch.cat([projection.weight for projection in projections]))
    return torch.cat([projection(hidden) for projection in projections], dim=-1)


class LSHSelfAttention(nn.Module):
    """Shared-QK LSH self-attention: projections, hashing, and a call to `lsh_attention`."""

    kind = "lsh"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.n_heads = config.num_attention_heads
        self.d_head = config.head_size
        inner = self.n_heads * self.d_head
        self.query_key = nn.Linear(config.hidden_size, inner, bias=False)
        self.value = nn.Linear(config.hidden_size, inner, bias=False)
        # Rotations drawn from hash_seed: (seed, shape) -> float32 CPU draw, and (seed, shape, device,
        # dtype) -> its copy there; drawn here already for a fixed num_buckets, so that a model compiled
        # before its first call creates no generator inside the traced code.
        self._seeded_draws, self._seeded_copies = {}, {}
        if config.hash_seed is not None and config.num_buckets is not None:
            self.draw_rotations(config.num_buckets, "cpu", torch.float32)

    def num_buckets_for(self, length):
        if self.config.num_buckets is None:
            return buckets_for_length(length, self.config.lsh_attn_chunk_length)
        return self.config.num_buckets

    def draw_rotations(self, num_buckets, device, dtype):
        """Random rotations (heads, d_head, n_hashes, rotation_size).

        With `hash_seed` they come from a CPU generator seeded with it, so they are the same on
        every call and every device; otherwise from the global generator, which the reversible
        stack seeds per layer and step so that its backward pass redraws the same ones.
        """
        shape = (self.n_heads, self.d_head, self.config.num_hashes, rotation_size(num_buckets))
        if self.config.hash_seed is None:
            return replay.randn(shape, device=device, dtype=dtype)  # replayed under torch.compile too
        # The same seed always gives the same rotations: draw them (on the CPU, then copy to the
        # device) once, not on every forward pass of every layer.
        draw_key = (self.config.hash_seed, shape)
        if draw_key not in self._seeded_draws:
            generator = torch.Generator().manual_seed(self.config.hash_seed)
            self._seeded_draws[draw_key] = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
        copy_key = (*draw_key, torch.device(device), dtype)
        if copy_key not in self._seeded_copies:
            self._seeded_copies[copy_key] = self._seeded_draws[draw_key].to(device=device, dtype=dtype)
        return self._seeded_copies[copy_key]

    def forward(self, hidden, pad_mask=None, rotations=None, layer_cache=None):
        """hidden (batch, length, hidden_size) -> (batch, length, heads * d_head).

        With a `layer_cache` (generation, see cache.py) the first pass stores its hashing and
        what decoding needs; a later full pass over a cache hashes with the stored rotations
        and bucket count, so that every step of one generation hashes alike.
        """
        query_key_value = packed_projection(hidden, (self.query_key, self.value))
        query_key, value = unpack_heads(query_key_value, 2, self.n_heads)
        num_buckets = self.num_buckets_for(hidden.shape[1])
        if rotations is None and layer_cache is not None and layer_cache.rotations is not None:
            num_buckets, rotations = layer_cache.num_buckets, layer_cache.rotations
        if rotations is None:
            rotations = self.draw_rotations(num_buckets, hidden.device, torch.float32)
        bucket_ids = hash_vectors_dispatch(self.config.attn_backend)(query_key.detach(), rotations, num_buckets)
        options = dict(
            n_buckets=math.prod(bucket_factors(num_buckets)),
            chunk_length=self.config.lsh_attn_chunk_length,
            n_chunks_before=self.config.lsh_num_chunks_before,
            n_chunks_after=self.config.lsh_num_chunks_after,
            causal=self.config.is_decoder,
            window_mode=self.config.lsh_window_mode,
            pad_mask=pad_mask,
            dropout_p=self.config.lsh_attention_probs_dropout,
            training=self.training,
        )
        out, _ = lsh_attention_dispatch(self.config.attn_backend, packed=True)(
            query_key_value, bucket_ids, n_heads=self.n_heads, **options
        )
        if layer_cache is not None and layer_cache.rotations is None:
            layer_cache.prefill(rotations, num_buckets, normalize_keys(query_key), value, bucket_ids, pad_mask)
        return merge_heads(out)

    def decode_step(self, hidden, layer_cache, is_pad):
        """One new position, hidden (batch, 1, hidden_size), against the per-bucket keys of `layer_cache`.

        Only "bucket_window" mode decodes this way (cache.py says why "chunk" mode cannot).
        is_pad: (batch,) bool; a padding position is not kept as a key.
        """
        if self.config.lsh_window_mode != "bucket_window":
            raise RuntimeError(
                f"LSHSelfAttention.decode_step needs lsh_window_mode='bucket_window', "
                f"got {self.config.lsh_window_mode!r}; 'chunk' mode decodes by recomputing the whole sequence."
            )
        query_key = split_heads(self.query_key(hidden), self.n_heads, self.d_head)
        value = split_heads(self.value(hidden), self.n_heads, self.d_head)
        bucket_ids = hash_vectors(query_key.detach().float(), layer_cache.rotations, layer_cache.num_buckets)
        bucket_ids = bucket_ids[..., 0]  # (batch, heads, n_hashes)
        keys = normalize_keys(query_key)
        bucket_keys, bucket_values, bucket_valid = layer_cache.step(keys, value, bucket_ids, is_pad)
        out, _ = lsh_decode_step(
            query_key,
            value,
            bucket_keys,
            bucket_values,
            bucket_valid,
            dropout_p=self.config.lsh_attention_probs_dropout,
            training=self.training,
        )
        return merge_heads(out)


class SeparateQKVAttention(nn.Module):
    """Base of the attention kinds with separate query, key and value projections (local, full)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.n_heads = config.num_attention_heads
        self.d_head = config.head_size
        inner = self.n_heads * self.d_head
        self.query = nn.Linear(config.hidden_size, inner, bias=False)
        self.key = nn.Linear(config.hidden_size, inner, bias=False)
        self.value = nn.Linear(config.hidden_size, inner, bias=False)

    def project(self, hidden):
        """hidden (batch, length, hidden_size) -> query, key, value, each (batch, heads, length, d_head)."""
        return tuple(split_heads(proj(hidden), self.n_heads, self.d_head) for proj in (self.query, self.key, self.value))


class LocalSelfAttention(SeparateQKVAttention):
    """Chunked sliding-window self-attention."""

    kind = "local"

    def forward(self, hidden, pad_mask=None, rotations=None, layer_cache=None):
        query_key_value = packed_projection(hidden, (self.query, self.key, self.value))
        if layer_cache is not None:
            _, key, value = unpack_heads(query_key_value, 3, self.n_heads)
            layer_cache.prefill(key, value, pad_mask)
        options = dict(
            chunk_length=self.config.local_attn_chunk_length,
            n_chunks_before=self.config.local_num_chunks_before,
            n_chunks_after=self.config.local_num_chunks_after,
            causal=self.config.is_decoder,
            wrap_around=self.config.local_attn_wrap_around,
            pad_mask=pad_mask,
            dropout_p=self.config.local_attention_probs_dropout,
            training=self.training,
        )
        out, _ = local_attention_dispatch(self.config.attn_backend, packed=True)(
            query_key_value, n_heads=self.n_heads, **options
        )
        return merge_heads(out)

    def decode_step(self, hidden, layer_cache, is_pad):
        """One new position, hidden (batch, 1, hidden_size), against the latest keys in `layer_cache`."""
        query, key, value = self.project(hidden)
        layer_cache.append(key, value)
        out = local_decode_step(
            query,
            layer_cache.keys,
            layer_cache.values,
            layer_cache.window.attend_bias,
            dropout_p=self.config.local_attention_probs_dropout,
            training=self.training,
        )
        return merge_heads(out)


class FullSelfAttention(SeparateQKVAttention):
    """Dense self-attention, through torch's scaled_dot_product_attention (`full_attention_sdpa`)."""

    kind = "full"

    def forward(self, hidden, pad_mask=None, rotations=None, layer_cache=None):
        query_key_value = packed_projection(hidden, (self.query, self.key, self.value))
        query, key, value = unpack_heads(query_key_value, 3, self.n_heads)
        if layer_cache is not None:
            layer_cache.prefill(key, value, pad_mask)
        out = full_attention_sdpa(
            query,
            key,
            value,
            causal=self.config.is_decoder,
            pad_mask=pad_mask,
            dropout_p=self.config.full_attention_probs_dropout,
            training=self.training,
        )
        return merge_heads(out)

    def decode_step(self, hidden, layer_cache, is_pad):
        """One new position, hidden (batch, 1, hidden_size), against every earlier key in `layer_cache`."""
        query, key, value = self.project(hidden)
        layer_cache.append(key, value, is_pad)
        keys, values, key_is_pad = layer_cache.attended()
        out = full_attention_sdpa(
            query,
            keys,
            values,
            pad_mask=key_is_pad,
            dropout_p=self.config.full_attention_probs_dropout,
            training=self.training,
        )
        return merge_heads(out)


SELF_ATTENTION_CLASSES = {"lsh": LSHSelfAttention, "local": LocalSelfAttention, "full": FullSelfAttention}
