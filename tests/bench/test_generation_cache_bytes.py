"""bench/generation_cache_bytes.py: a transformers cache's bytes against its keys and values counted by
hand, and the lower bound that tells a case it cannot fit (every dense layer, or ours' LSH and full
layers only)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import DynamicCache

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from generation_cache_bytes import (  # noqa: E402
    cache_bytes,
    dense_layer_kv_bytes,
    estimated_cache_bytes,
    per_layer_cache_bytes,
)

BATCH, HEADS, POSITIONS, HEAD_SIZE, LAYERS = 2, 3, 5, 4, 3


def test_dynamic_cache_bytes_are_its_keys_and_values():
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.randn(BATCH, HEADS, POSITIONS, HEAD_SIZE)
        cache.update(keys, torch.randn_like(keys), layer)
    layer_bytes = 2 * BATCH * HEADS * POSITIONS * HEAD_SIZE * 4  # keys and values, float32
    assert dense_layer_kv_bytes(BATCH, POSITIONS, HEADS, HEAD_SIZE, element_size=4) == layer_bytes
    assert cache_bytes(cache) == LAYERS * layer_bytes
    assert per_layer_cache_bytes(cache) == {"dense": layer_bytes}
    assert cache_bytes(None) is None and per_layer_cache_bytes(None) == {}


def test_estimate_counts_the_layers_that_keep_every_position():
    config = SimpleNamespace(num_attention_heads=HEADS, attention_head_size=HEAD_SIZE,
                             attn_layers=["local", "lsh", "local", "full"])
    layer_bytes = 2 * BATCH * HEADS * POSITIONS * HEAD_SIZE * 2  # bf16
    assert estimated_cache_bytes("llama-dynamic", config, BATCH, POSITIONS, 2) == 4 * layer_bytes
    assert estimated_cache_bytes("reformer", config, BATCH, POSITIONS, 2) == 2 * layer_bytes
