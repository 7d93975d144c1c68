"""Bytes of a decoding cache, for bench/generation_gpu.py's rows: measured on the cache generate()
returns (ours `ReformerCache.nbytes()`, a transformers cache the storage of its layers' tensors),
per layer kind, and the lower bound (keys and values only) that says a case cannot fit."""

import torch

from reformer_hf import ReformerCache


def tensor_storage_bytes(tensors):
    """Bytes of the storages under `tensors`, each storage counted once (as allocated)."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def transformers_cache_layers(cache):
    """The layer objects of a transformers Cache: `.layers` in 5.17-5.25 (DynamicCache, StaticCache, ...);
    an EncoderDecoderCache's self- and cross-attention caches in turn."""
    if hasattr(cache, "self_attention_cache"):
        return transformers_cache_layers(cache.self_attention_cache) + transformers_cache_layers(
            cache.cross_attention_cache)
    return list(cache.layers)


def layer_tensors(layer):
    """Every tensor a cache layer holds as an attribute (keys, values and whatever a layer kind adds)."""
    held = []
    for value in vars(layer).values():
        if torch.is_tensor(value):
            held.append(value)
        elif isinstance(value, (list, tuple)):
            held += [item for item in value if torch.is_tensor(item)]
    return held


def cache_bytes(cache):
    """Whole-cache bytes as allocated: ReformerCache.nbytes(), or the storages of a transformers cache's layers."""
    if cache is None:
        return None
    if isinstance(cache, ReformerCache):
        return cache.nbytes()
    layers = transformers_cache_layers(cache)
    return tensor_storage_bytes([tensor for layer in layers for tensor in layer_tensors(layer)])


def per_layer_cache_bytes(cache, attn_layers=None):
    """{kind: bytes of the first layer of that kind}: ours "lsh" / "local" / "full"; a transformers cache "dense"."""
    if cache is None:
        return {}
    if isinstance(cache, ReformerCache):
        return {kind: cache.layers[attn_layers.index(kind)].nbytes() for kind in ("lsh", "local", "full")
                if kind in attn_layers and cache.layers[attn_layers.index(kind)] is not None}
    return {"dense": tensor_storage_bytes(layer_tensors(transformers_cache_layers(cache)[0]))}


def dense_layer_kv_bytes(batch, positions, heads, head_size, element_size):
    """A dense layer's KV cache (keys and values of every head and position) for this context."""
    return 2 * batch * heads * positions * head_size * element_size


def estimated_cache_bytes(variant, config, batch, positions, element_size):
    """A lower bound of the cache (keys and values only): a case whose estimate exceeds the GPU is not tried."""
    per_layer = dense_layer_kv_bytes(batch, positions, config.num_attention_heads, config.attention_head_size,
                                     element_size)
    if variant.startswith("llama"):
        return len(config.attn_layers) * per_layer
    return sum(1 for kind in config.attn_layers if kind in ("lsh", "full")) * per_layer
