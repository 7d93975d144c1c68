"""bench/anchors.py: the FlexAttention anchors see exactly the keys this package's layers see.

At tiny sizes on the CPU, FlexAttention (eager, forward; backward with its CPU refusal lifted)
against the package's torch references: `local_attention` for the sliding window, `lsh_attention`
with the same bucket ids for sort + FlexAttention + un-sort.  The block masks built from the
windows' structure are compared with create_block_mask's (which evaluates every pair).
"""

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.attention import flex_attention as flex_module
from torch.nn.attention.flex_attention import create_block_mask

from reformer_hf.attention_functions import hash_vectors, local_attention, lsh_attention, rotation_size

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
import anchors  # noqa: E402
from common import sdpa_backend_problem  # noqa: E402

BATCH, HEADS, LENGTH, D_HEAD, CHUNK, N_BUCKETS = 2, 3, 512, 16, 32, 16

# Eager FlexAttention warns on every call that it is not compiled; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def random_tensors(*shapes, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=dtype) for shape in shapes]


@pytest.mark.parametrize("before, after, causal, block_size", [
    (1, 0, True, 32),  # block = chunk: every earlier chunk of the window is a full block
    (1, 0, True, 64),
    (2, 0, True, 128),
    (2, 1, False, 64),
    (1, 1, True, 128),  # causal hides the chunk after: no block of it is visited
])
def test_flex_local_sees_the_local_layers_keys(before, after, causal, block_size):
    query, key, value = random_tensors(*[(BATCH, HEADS, LENGTH, D_HEAD)] * 3)
    block_mask = anchors.local_block_mask(LENGTH, chunk_length=CHUNK, n_chunks_before=before, n_chunks_after=after,
                                          causal=causal, block_size=block_size)
    out, lse = anchors.flex_local_attention(query, key, value, block_mask)
    expected_out, expected_lse = local_attention(query, key, value, chunk_length=CHUNK, n_chunks_before=before,
                                                 n_chunks_after=after, causal=causal)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-5, atol=1e-5)

    every_pair = create_block_mask(anchors.local_mask_mod(CHUNK, before, after, causal), None, None, LENGTH, LENGTH,
                                   device="cpu", BLOCK_SIZE=block_size)
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(block_mask, name), getattr(every_pair, name)), name
    assert torch.equal(block_mask.to_dense(), every_pair.to_dense())


@pytest.mark.parametrize("mode", ["bucket_window", "chunk"])
def test_lsh_window_blocks_are_create_block_masks_blocks(mode):
    n_slots = 3 * LENGTH
    window_mask = anchors.lsh_window_block_mask(n_slots, chunk_length=CHUNK, n_chunks_before=1, n_chunks_after=1,
                                                window_mode=mode, block_size=64)
    # All sorted places in one bucket at position 0: the mask_mod keeps exactly the window.
    same = torch.zeros(1, 1, n_slots, dtype=torch.long)
    window_only = anchors.lsh_mask_mod(same, same, chunk_length=CHUNK, n_chunks_before=1, n_chunks_after=1,
                                       causal=False, window_mode=mode)
    every_pair = create_block_mask(window_only, None, None, n_slots, n_slots, device="cpu", BLOCK_SIZE=64)
    assert torch.equal(window_mask.to_dense(), every_pair.to_dense())


def lsh_case(n_hashes, seed, dtype=torch.float32):
    query_key, value, rotations = random_tensors((BATCH, HEADS, LENGTH, D_HEAD), (BATCH, HEADS, LENGTH, D_HEAD),
                                                 (HEADS, D_HEAD, n_hashes, rotation_size(N_BUCKETS)), seed=seed,
                                                 dtype=dtype)
    return query_key, value, hash_vectors(query_key, rotations, N_BUCKETS)


def both_lsh(query_key, value, bucket_ids, mode, causal, before, after):
    n_hashes = bucket_ids.shape[2]
    window_mask = anchors.lsh_window_block_mask(n_hashes * LENGTH, chunk_length=CHUNK, n_chunks_before=before,
                                                n_chunks_after=after, window_mode=mode, block_size=64)
    options = dict(n_buckets=N_BUCKETS, chunk_length=CHUNK, n_chunks_before=before, n_chunks_after=after,
                   causal=causal, window_mode=mode)
    return (lambda q, v: anchors.flex_lsh_attention(q, v, bucket_ids, window_mask, **options),
            lambda q, v: lsh_attention(q, v, bucket_ids, **options))


@pytest.mark.parametrize("mode", ["bucket_window", "chunk"])
@pytest.mark.parametrize("causal, before, after", [(True, 1, 0), (False, 1, 1), (True, 2, 0)])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_flex_lsh_is_lsh_attention(mode, causal, before, after, n_hashes):
    query_key, value, bucket_ids = lsh_case(n_hashes, seed=n_hashes)
    flex, reference = both_lsh(query_key, value, bucket_ids, mode, causal, before, after)
    out, lse = flex(query_key, value)
    expected_out, expected_lse = reference(query_key, value)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["bucket_window", "chunk"])
def test_flex_lsh_gradients_are_lsh_attentions(mode, monkeypatch):
    """Gradients of output and log-sum-exp through the sort, the un-sort and the rounds' combination.
    FlexAttention refuses a backward on the CPU before it starts; its eager (math) backward runs
    once that check is lifted, and stands in for the GPU kernel's."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda *tensors: None)
    query_key, value, bucket_ids = lsh_case(2, seed=7, dtype=torch.float64)
    grad_out, grad_lse = random_tensors((BATCH, HEADS, LENGTH, D_HEAD), (BATCH, HEADS, LENGTH), seed=8,
                                        dtype=torch.float64)
    gradients = []
    for function in both_lsh(query_key, value, bucket_ids, mode, True, 1, 0):
        leaves = [query_key.clone().requires_grad_(True), value.clone().requires_grad_(True)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, lse = function(*leaves)
        gradients.append(torch.autograd.grad([out, lse], leaves, [grad_out, grad_lse]))
    for flex_gradient, reference_gradient in zip(*gradients):
        # FlexAttention's math path keeps its scores in float32
        torch.testing.assert_close(flex_gradient, reference_gradient, rtol=1e-6, atol=1e-6)


def test_block_structure_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="block_size=48 must be a multiple of chunk_length=32"):
        anchors.chunk_window_blocks(512, 32, 1, 0, circular=False, block_size=48, device="cpu")
    with pytest.raises(ValueError, match="2 chunks cannot hold a window of n_before=1 \\+ n_after=1"):
        anchors.chunk_window_blocks(64, 32, 1, 1, circular=True, block_size=64, device="cpu")
    query_key, value = random_tensors((1, 1, CHUNK, D_HEAD), (1, 1, CHUNK, D_HEAD))
    bucket_ids = torch.zeros(1, 1, 2, CHUNK, dtype=torch.long)
    window_mask = anchors.lsh_window_block_mask(2 * CHUNK, chunk_length=CHUNK, window_mode="chunk", block_size=CHUNK)
    with pytest.raises(ValueError, match="length == chunk_length in 'chunk' mode"):
        anchors.flex_lsh_attention(query_key, value, bucket_ids, window_mask, n_buckets=N_BUCKETS,
                                   chunk_length=CHUNK, window_mode="chunk")


def test_sdpa_backend_problem_names_a_backend_this_device_lacks():
    assert sdpa_backend_problem("flash", "cpu") is None  # torch's CPU flash kernel
    assert sdpa_backend_problem("default", "cpu") is None
    assert "No viable backend" in sdpa_backend_problem("cudnn", "cpu")
