"""The steps bench/attention.py times and where they run: the sizes (batch 1, 8 heads, d_head 64,
chunk 64), the device and FlexAttention's form (set_device: the GPU with FlexAttention compiled and
its backward timed, or the CPU with --smoke, eager and forward only), the inputs, and one forward
+ backward step of each implementation: dense SDPA held to a backend, our local and LSH kernels,
FlexAttention with the same visible keys (bench/anchors.py), our LSH layer and transformers'."""

import math

import torch
from torch.nn.attention.flex_attention import flex_attention

from anchors import flex_local_attention, flex_lsh_attention, local_block_mask, lsh_window_block_mask
from common import lsh_buckets, sdpa_backend

from reformer_hf import attention, attention_dispatch, attention_functions, attention_rules
from reformer_hf.configuration import ReformerConfig

HEADS, D_HEAD, CHUNK = 8, 64, 64
DEVICE = "cuda"
# FlexAttention as a user runs it: compiled on the GPU (set_device), one static graph per length and mask,
# with its default 128 x 128 blocks (its default backward tiles need them).  On the CPU (--smoke)
# eager and forward only: FlexAttention has no CPU backward, and its compiled CPU form no log-sum-exp.
FLEX, FLEX_BACKWARD, FLEX_BLOCK = flex_attention, False, 128


def set_device(smoke):
    """Where the cases run: the CPU with --smoke (FlexAttention eager, forward only), else the GPU with
    FlexAttention compiled and its backward timed.  The other modules read DEVICE, FLEX and
    FLEX_BACKWARD from this module when a case runs (attention_cases.DEVICE), never as copies."""
    global DEVICE, FLEX, FLEX_BACKWARD
    if smoke:
        DEVICE = "cpu"
    else:
        FLEX, FLEX_BACKWARD = torch.compile(flex_attention, dynamic=False), True
        torch._dynamo.config.recompile_limit = 64  # one static graph per length and mask


def total_buckets(num_buckets):
    return math.prod(attention_rules.bucket_factors(num_buckets))


def lsh_tensors(length, n_hashes, requires_grad=True):
    generator = torch.Generator(device=DEVICE).manual_seed(length + n_hashes)
    shape = (1, HEADS, length, D_HEAD)
    query_key = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    value = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    grad_out = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    num_buckets = lsh_buckets(length, CHUNK)
    rotations = torch.randn(HEADS, D_HEAD, n_hashes, attention_functions.rotation_size(num_buckets), generator=generator,
                            device=DEVICE)
    return query_key.requires_grad_(requires_grad), value.requires_grad_(requires_grad), grad_out, rotations, num_buckets


def dense_tensors(length, requires_grad=True):
    """q, k, v and an output gradient (batch 1, HEADS, length, D_HEAD), bf16."""
    shape = (1, HEADS, length, D_HEAD)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=requires_grad) for _ in range(3))
    return q, k, v, torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)


def sdpa_case(length, backend):
    """Causal SDPA held to `backend` (common.SDPA_BACKENDS), forward + backward."""
    q, k, v, grad_out = dense_tensors(length)

    def step():
        with sdpa_backend(backend):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def local_op_case(length):
    """Our local attention kernel (the `local` layers' window: own chunk and the one before, causal)."""
    q, k, v, grad_out = dense_tensors(length)
    function = attention_dispatch.local_attention_dispatch("triton")

    def step():
        out, _ = function(q, k, v, chunk_length=CHUNK, n_chunks_before=1, n_chunks_after=0, causal=True)
        torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def flex_local_case(length):
    """FlexAttention with the same visible keys as local_op_case; its block mask built once, as for
    every layer and step of a model."""
    q, k, v, grad_out = dense_tensors(length, requires_grad=FLEX_BACKWARD)
    block_mask = local_block_mask(length, chunk_length=CHUNK, n_chunks_before=1, causal=True, block_size=FLEX_BLOCK,
                                  device=DEVICE)

    def step():
        out, _ = flex_local_attention(q, k, v, block_mask, flex=FLEX)
        if FLEX_BACKWARD:
            torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def flex_lsh_case(length, n_hashes, mode):
    """LSH attention as sort + FlexAttention + un-sort (bench/anchors.py), the package's hashing (torch
    path) and sort included, as lsh_op_case times ours; the windows' blocks built once."""
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes, requires_grad=FLEX_BACKWARD)
    hash_function = attention_dispatch.hash_vectors_dispatch("torch")
    window_mask = lsh_window_block_mask(n_hashes * length, chunk_length=CHUNK, window_mode=mode, block_size=FLEX_BLOCK,
                                        device=DEVICE)

    def step():
        bucket_ids = hash_function(query_key.detach(), rotations, num_buckets)
        out, _ = flex_lsh_attention(query_key, value, bucket_ids, window_mask, n_buckets=total_buckets(num_buckets),
                                    chunk_length=CHUNK, causal=True, window_mode=mode, flex=FLEX)
        if FLEX_BACKWARD:
            torch.autograd.grad(out, (query_key, value), grad_out)

    return step


def lsh_op_case(length, n_hashes, mode, backend):
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes)
    options = dict(n_buckets=total_buckets(num_buckets), chunk_length=CHUNK, causal=True, window_mode=mode)
    hash_function = attention_dispatch.hash_vectors_dispatch(backend)
    function = attention_dispatch.lsh_attention_dispatch(backend)

    def step():
        bucket_ids = hash_function(query_key.detach(), rotations, num_buckets)
        out, _ = function(query_key, value, bucket_ids, **options)
        torch.autograd.grad(out, (query_key, value), grad_out)

    return step


def layer_inputs(length):
    hidden = torch.randn(1, length, HEADS * D_HEAD, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    grad_out = torch.randn(1, length, HEADS * D_HEAD, device=DEVICE, dtype=torch.bfloat16)
    return hidden, grad_out


def our_layer_case(length, n_hashes, mode):
    config = ReformerConfig(
        hidden_size=HEADS * D_HEAD, num_attention_heads=HEADS, attention_head_size=D_HEAD, num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, lsh_window_mode=mode, is_decoder=True,
        attn_backend="triton", attn_layers=["lsh"], axial_pos_embds=False, max_position_embeddings=length,
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0,
    )
    layer = attention.LSHSelfAttention(config).to(DEVICE, torch.bfloat16)
    hidden, grad_out = layer_inputs(length)
    params = list(layer.parameters())

    def step():
        torch.autograd.grad(layer(hidden), [hidden, *params], grad_out)

    return step


def transformers_layer_case(length, n_hashes):
    from transformers import ReformerConfig as TransformersReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention as TransformersLSHSelfAttention

    config = TransformersReformerConfig(
        hidden_size=HEADS * D_HEAD, num_attention_heads=HEADS, attention_head_size=D_HEAD, num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, lsh_num_chunks_before=1,
        lsh_num_chunks_after=0, is_decoder=True, attn_layers=["lsh"], max_position_embeddings=length,
        lsh_attention_probs_dropout_prob=0.0, axial_pos_embds=False,
    )
    layer = TransformersLSHSelfAttention(config).to(DEVICE, torch.bfloat16)
    hidden, grad_out = layer_inputs(length)
    params = list(layer.parameters())

    def step():
        torch.autograd.grad(layer(hidden).hidden_states, [hidden, *params], grad_out)

    return step
