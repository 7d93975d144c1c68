"""The attention functions (attention_functions.py) against dense references written from their definitions."""

import math

import pytest
import torch

from reformer_hf.attention_functions import (
    buckets_for_length,
    full_attention,
    full_attention_sdpa,
    hash_vectors,
    local_attention,
    lsh_attention,
    normalize_keys,
)
from reformer_hf.attention_rules import MASK_VALUE, SELF_MASK_VALUE


def dense_softmax(logits, visible, value, self_mask=None):
    """Replace masked logits, optionally push self-logits to SELF_MASK_VALUE, softmax, average."""
    logits = torch.where(visible, logits, torch.tensor(MASK_VALUE, dtype=logits.dtype))
    if self_mask is not None:
        logits = torch.where(self_mask & visible, torch.tensor(SELF_MASK_VALUE, dtype=logits.dtype), logits)
    lse = torch.logsumexp(logits, dim=-1)
    return torch.softmax(logits, dim=-1) @ value, lse


def shared_qk_dense(query_key, value, causal, pad_mask):
    length, d_head = query_key.shape[2:]
    keys = query_key / query_key.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() / math.sqrt(d_head)
    logits = query_key @ keys.transpose(-1, -2)
    positions = torch.arange(length)
    visible = torch.ones(length, length, dtype=torch.bool)
    if causal:
        visible = positions[None, :] <= positions[:, None]
    visible = visible[None, None]
    if pad_mask is not None:
        visible = visible & ~pad_mask[:, None, None, :]
    return dense_softmax(logits, visible, value, (positions[:, None] == positions[None, :])[None, None])


def lsh_by_definition(query_key, value, bucket_ids, n_buckets, chunk_length, before, after, causal, mode, pad_mask):
    """Each round as a dense (n_hashes*L) x (n_hashes*L) problem over the sorted sequence, then combined."""
    batch, heads, length, d_head = query_key.shape
    n_hashes = bucket_ids.shape[2]
    keys = normalize_keys(query_key)
    outs, lses = [], []
    for b in range(batch):
        for h in range(heads):
            pad = pad_mask[b] if pad_mask is not None else torch.zeros(length, dtype=torch.bool)
            rounds = []
            for r in range(n_hashes):
                buckets = torch.where(pad, n_buckets, bucket_ids[b, h, r])
                order = sorted(range(length), key=lambda i: (int(buckets[i]), i))
                rounds.append([(r, int(buckets[i]), i) for i in order])
            slots = [item for round_items in rounds for item in round_items]  # sorted sequence, rounds end to end
            n_slots = len(slots)
            n_chunks = n_slots // chunk_length
            visible = torch.zeros(n_slots, n_slots, dtype=torch.bool)
            for qi, (qr, qb, qpos) in enumerate(slots):
                for ki, (kr, kb, kpos) in enumerate(slots):
                    if pad[kpos] or (causal and kpos > qpos):
                        continue
                    if mode == "chunk":
                        shift = (ki // chunk_length - qi // chunk_length) % n_chunks
                        ok = shift <= after or n_chunks - shift <= before
                    else:
                        ok = (qr, qb) == (kr, kb) and -after * chunk_length <= qi - ki <= before * chunk_length
                    visible[qi, ki] = ok
            if mode == "chunk":
                # a ring with fewer chunks than the window repeats chunks; the implementation
                # gathers each neighbour once per window slot, so count multiplicities
                multiplicity = torch.zeros(n_slots, n_slots)
                for qi in range(n_slots):
                    for offset in range(-before, after + 1):
                        chunk = (qi // chunk_length + offset) % n_chunks
                        multiplicity[qi, chunk * chunk_length : (chunk + 1) * chunk_length] += 1
            else:
                multiplicity = torch.ones(n_slots, n_slots)
            positions = torch.tensor([pos for _, _, pos in slots])
            q = query_key[b, h][positions]
            k = keys[b, h][positions]
            v = value[b, h][positions]
            logits = q @ k.T
            logits = torch.where(visible, logits, torch.tensor(MASK_VALUE, dtype=logits.dtype))
            logits = torch.where(visible & (positions[:, None] == positions[None, :]),
                                 torch.tensor(SELF_MASK_VALUE, dtype=logits.dtype), logits)
            weights = torch.exp(logits - logits.max(-1, keepdim=True).values) * multiplicity
            lse = torch.log(weights.sum(-1)) + logits.max(-1).values
            out = (weights / weights.sum(-1, keepdim=True)) @ v
            round_out = torch.zeros(n_hashes, length, d_head, dtype=query_key.dtype)
            round_lse = torch.zeros(n_hashes, length, dtype=query_key.dtype)
            for qi, (qr, _, qpos) in enumerate(slots):
                round_out[qr, qpos] = out[qi]
                round_lse[qr, qpos] = lse[qi]
            total = torch.logsumexp(round_lse, dim=0)
            outs.append((round_out * torch.exp(round_lse - total)[..., None]).sum(0))
            lses.append(total)
    return torch.stack(outs).view(batch, heads, length, d_head), torch.stack(lses).view(batch, heads, length)


def random_inputs(batch, heads, length, d_head, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, d_head, generator=generator, dtype=dtype) for _ in range(3)]


def right_padding(batch, length, n_pad):
    pad_mask = torch.zeros(batch, length, dtype=torch.bool)
    pad_mask[0, length - n_pad :] = True
    return pad_mask


@pytest.mark.parametrize("mode", ["chunk", "bucket_window"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_lsh_one_bucket_equals_dense(mode, causal, n_hashes):
    query_key, value, _ = random_inputs(2, 3, 16, 8)
    pad_mask = right_padding(2, 16, 5)
    bucket_ids = torch.zeros(2, 3, n_hashes, 16, dtype=torch.long)
    # one chunk per round: in "chunk" mode it must see only itself; the bucket window must span it
    before, after = (0, 0) if mode == "chunk" else (1, 0 if causal else 1)
    out, lse = lsh_attention(query_key, value, bucket_ids, n_buckets=1, chunk_length=16, n_chunks_before=before,
                             n_chunks_after=after, causal=causal, window_mode=mode, pad_mask=pad_mask)
    expected_out, expected_lse = shared_qk_dense(query_key, value, causal, pad_mask)
    real = ~pad_mask[:, None, :, None]
    torch.testing.assert_close(out * real, expected_out * real, atol=1e-10, rtol=0)
    torch.testing.assert_close(lse * real[..., 0], (expected_lse + math.log(n_hashes)) * real[..., 0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["chunk", "bucket_window"])
@pytest.mark.parametrize("causal", [False, True])
def test_lsh_matches_definition(mode, causal):
    query_key, value, _ = random_inputs(1, 2, 24, 4, seed=1)
    n_buckets, n_hashes, chunk_length = 4, 2, 4
    bucket_ids = torch.randint(0, n_buckets, (1, 2, n_hashes, 24), generator=torch.Generator().manual_seed(2))
    pad_mask = right_padding(1, 24, 3)
    after = 0 if causal else 1
    out, lse = lsh_attention(query_key, value, bucket_ids, n_buckets=n_buckets, chunk_length=chunk_length,
                             n_chunks_before=1, n_chunks_after=after, causal=causal, window_mode=mode, pad_mask=pad_mask)
    expected_out, expected_lse = lsh_by_definition(query_key, value, bucket_ids, n_buckets, chunk_length, 1, after,
                                                   causal, mode, pad_mask)
    real = ~pad_mask[0]
    torch.testing.assert_close(out[..., real, :], expected_out[..., real, :], atol=1e-10, rtol=0)
    torch.testing.assert_close(lse[..., real], expected_lse[..., real], atol=1e-10, rtol=0)


def test_lsh_query_alone_in_its_bucket_attends_to_itself():
    query_key, value, _ = random_inputs(1, 1, 8, 4)
    bucket_ids = torch.zeros(1, 1, 1, 8, dtype=torch.long)
    bucket_ids[..., 5] = 1
    out, _ = lsh_attention(query_key, value, bucket_ids, n_buckets=2, chunk_length=4, causal=True)
    torch.testing.assert_close(out[0, 0, 5], value[0, 0, 5], atol=1e-10, rtol=0)
    torch.testing.assert_close(out[0, 0, 0], value[0, 0, 0], atol=1e-10, rtol=0)


def band_reference(query, key, value, chunk_length, before, after, causal, pad_mask):
    length, d_head = query.shape[2:]
    positions = torch.arange(length)
    chunk_distance = positions[:, None] // chunk_length - positions[None, :] // chunk_length
    visible = (chunk_distance <= before) & (chunk_distance >= -after)
    if causal:
        visible = visible & (positions[None, :] <= positions[:, None])
    visible = visible[None, None]
    if pad_mask is not None:
        visible = visible & ~pad_mask[:, None, None, :]
    return dense_softmax(query @ key.transpose(-1, -2) / math.sqrt(d_head), visible, value)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("before,after", [(1, 0), (2, 1), (0, 0)])
def test_local_equals_dense_band(causal, before, after):
    if causal and after:
        pytest.skip("a causal window has no look-ahead")
    query, key, value = random_inputs(2, 2, 20, 4)
    pad_mask = right_padding(2, 20, 6)
    out, lse = local_attention(query, key, value, chunk_length=4, n_chunks_before=before, n_chunks_after=after,
                               causal=causal, pad_mask=pad_mask)
    expected_out, expected_lse = band_reference(query, key, value, 4, before, after, causal, pad_mask)
    real = ~pad_mask[0]  # a padding query with no visible key is defined by nothing; compare real ones
    torch.testing.assert_close(out[:, :, real], expected_out[:, :, real], atol=1e-10, rtol=0)
    torch.testing.assert_close(lse[:, :, real], expected_lse[:, :, real], atol=1e-10, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_full_matches_torch_sdpa(causal):
    query, key, value = random_inputs(2, 2, 10, 4)
    pad_mask = torch.zeros(2, 10, dtype=torch.bool)
    pad_mask[1, 7:] = True
    out, _ = full_attention(query, key, value, causal=causal, pad_mask=pad_mask)
    allowed = ~pad_mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(10, 10, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_hash_vectors_hand_computed():
    # d_head 2, one round, 4 buckets: rotation = identity, so bucket = argmax([x0, x1, -x0, -x1])
    vectors = torch.tensor([[1.0, 0.2], [0.1, 2.0], [-3.0, 0.5], [0.3, -1.0]]).view(1, 1, 4, 2)
    rotations = torch.eye(2).view(1, 2, 1, 2)
    assert hash_vectors(vectors, rotations, 4).flatten().tolist() == [0, 1, 2, 3]


def test_hash_vectors_factorised_buckets():
    vectors = torch.tensor([[1.0, 0.2, 0.0], [-0.1, -2.0, 0.0]]).view(1, 1, 2, 3)
    # factor 2 reads column 0, factor 4 reads columns 1-2: bucket = a + 2 * b
    rotations = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 3, 1, 3)
    # row 0: a = argmax(1, -1) = 0, b = argmax(0.2, 0, -0.2, 0) = 0 -> 0
    # row 1: a = argmax(-0.1, 0.1) = 1, b = argmax(-2, 0, 2, 0) = 2 -> 1 + 2 * 2 = 5
    assert hash_vectors(vectors, rotations, [2, 4]).flatten().tolist() == [0, 5]


def test_buckets_for_length_follows_the_paper():
    assert buckets_for_length(4096, 64) == 128
    assert buckets_for_length(100, 64) == 4
    assert buckets_for_length(8, 64) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_masks_stay_finite(dtype):
    query_key, value, _ = random_inputs(1, 2, 16, 8, dtype=dtype)
    pad_mask = right_padding(1, 16, 12)
    bucket_ids = torch.randint(0, 4, (1, 2, 2, 16))
    for mode in ("chunk", "bucket_window"):
        out, lse = lsh_attention(query_key, value, bucket_ids, n_buckets=4, chunk_length=4, causal=True,
                                 window_mode=mode, pad_mask=pad_mask)
        assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(lse).all()
    out, lse = local_attention(query_key, value, value, chunk_length=4, causal=True, pad_mask=pad_mask)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    out, lse = full_attention(query_key, value, value, causal=True, pad_mask=torch.ones(1, 16, dtype=torch.bool))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


# ---------------------------------------------------------------- full attention through SDPA

def full_sdpa_cases():
    """(q_length, k_length, causal, pad_mask) for batch 3: no padding, right padding, a row of
    nothing but padding, left padding under causal (early queries see nothing), and query blocks
    shorter than the keys (a block continuing a cached prefix) and longer (leading queries see nothing)."""
    right = torch.zeros(3, 12, dtype=torch.bool)
    right[0, 9:] = True
    right[2, 5:] = True
    all_pad = right.clone()
    all_pad[1] = True
    left = torch.zeros(3, 12, dtype=torch.bool)
    left[1, :4] = True
    cases = []
    for causal in (False, True):
        cases += [(12, 12, causal, None), (12, 12, causal, right), (12, 12, causal, all_pad), (5, 12, causal, None),
                  (5, 12, causal, right), (1, 12, causal, all_pad)]
    cases += [(12, 12, True, left), (12, 7, True, None), (12, 7, True, right[:, :7])]
    return cases


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("q_length, k_length, causal, pad_mask", full_sdpa_cases())
def test_full_sdpa_matches_the_reference_with_gradients(dtype, tolerance, q_length, k_length, causal, pad_mask):
    generator = torch.Generator().manual_seed(q_length * 100 + k_length)
    query = torch.randn(3, 2, q_length, 8, generator=generator, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(3, 2, k_length, 8, generator=generator, dtype=dtype, requires_grad=True) for _ in "kv")
    grad_out = torch.randn(3, 2, q_length, 8, generator=generator, dtype=dtype)
    expected, _ = full_attention(query, key, value, causal=causal, pad_mask=pad_mask)
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad_out)
    out = full_attention_sdpa(query, key, value, causal=causal, pad_mask=pad_mask)
    grads = torch.autograd.grad(out, (query, key, value), grad_out)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=tolerance, rtol=0)


def test_full_sdpa_query_seeing_no_key_weighs_every_value_as_the_reference():
    """The reference replaces every logit of such a row by MASK_VALUE and weighs each value by
    exp(MASK_VALUE - logsumexp): 1 / k_length in float64 (an average, up to the rounding of
    MASK_VALUE + log(k_length) to float64's spacing near 1e9, about 1e-7); in float32 that sum
    rounds back to MASK_VALUE, so each weight is 1 (a sum)."""
    for dtype, weight in ((torch.float64, 1 / 6), (torch.float32, 1.0)):
        query, key, value = random_inputs(2, 2, 6, 4, dtype=dtype)
        pad_mask = torch.zeros(2, 6, dtype=torch.bool)
        pad_mask[1] = True
        out = full_attention_sdpa(query, key, value, pad_mask=pad_mask)
        expected = weight * value[1].sum(dim=1, keepdim=True).expand(2, 6, 4)
        torch.testing.assert_close(out[1], expected, atol=0, rtol=2e-7)
    query, key, value = random_inputs(2, 2, 6, 4)
    causal_out = full_attention_sdpa(query[:, :, :4], key[:, :, :2], value[:, :, :2], causal=True)
    # q_length 4 against 2 keys: query i sees keys j <= i - 2, so queries 0 and 1 see none
    torch.testing.assert_close(causal_out[:, :, :2], value[:, :, :2].mean(dim=2, keepdim=True).expand(2, 2, 2, 4),
                               atol=0, rtol=2e-7)
    torch.testing.assert_close(causal_out[:, :, 2], value[:, :, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("q_length, pad, causal, expect_mask, expect_causal", [
    (8, False, True, False, True),  # the flash kernel's case: no mask at all
    (8, False, False, False, False),
    (3, False, True, True, False),  # a block after a cached prefix: SDPA's is_causal would align it top-left
    (8, True, True, True, False),
    (8, True, False, True, False),
])
def test_full_sdpa_passes_a_mask_only_where_is_causal_cannot_say_it(monkeypatch, q_length, pad, causal, expect_mask,
                                                                    expect_causal):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    query, key, value = random_inputs(2, 2, 8, 4)
    pad_mask = right_padding(2, 8, 3) if pad else None
    full_attention_sdpa(query[:, :, :q_length], key, value, causal=causal, pad_mask=pad_mask)
    assert len(calls) == 1
    assert (calls[0].get("attn_mask") is not None) == expect_mask
    assert calls[0].get("is_causal", False) == expect_causal


@pytest.mark.parametrize("causal, pad", [(False, False), (True, False), (True, True)])
def test_full_sdpa_dropout_draws_the_references_mask(causal, pad):
    """On the CPU, SDPA's math kernel drops the probabilities with the generator's next draws, as the
    reference's F.dropout does: the same seed gives the same output.  In evaluation nothing drops."""
    query, key, value = random_inputs(2, 3, 9, 8, dtype=torch.float32)
    pad_mask = right_padding(2, 9, 4) if pad else None
    no_dropout, _ = full_attention(query, key, value, causal=causal, pad_mask=pad_mask)
    torch.manual_seed(5)
    expected, _ = full_attention(query, key, value, causal=causal, pad_mask=pad_mask, dropout_p=0.4, training=True)
    torch.manual_seed(5)
    out = full_attention_sdpa(query, key, value, causal=causal, pad_mask=pad_mask, dropout_p=0.4, training=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (out - no_dropout).abs().max() > 0.1
    evaluated = full_attention_sdpa(query, key, value, causal=causal, pad_mask=pad_mask, dropout_p=0.4, training=False)
    torch.testing.assert_close(evaluated, no_dropout, atol=1e-5, rtol=0)


def test_full_sdpa_dropout_keeps_the_expected_output():
    """Dropout scales kept probabilities by 1 / (1 - p): averaged over many draws the output is the
    undropped one, and a fraction p of the weights is zeroed (the output of one value column shows it)."""
    query, key, _ = random_inputs(1, 1, 4, 8, dtype=torch.float32)
    value = torch.eye(16)[None, None]  # key j's value is the unit vector j: out holds the weights themselves
    key = torch.cat([key, key, key, key], dim=2)
    no_dropout = full_attention_sdpa(query, key, value)
    torch.manual_seed(0)
    draws = torch.stack([full_attention_sdpa(query, key, value, dropout_p=0.25, training=True) for _ in range(4000)])
    zeroed = (draws == 0).float().mean()
    assert abs(zeroed - 0.25) < 0.01
    torch.testing.assert_close(draws.mean(dim=0), no_dropout, atol=0.01, rtol=0)


def test_full_sdpa_under_compile_with_dropout_runs_the_reference(monkeypatch):
    """A reversible layer rebuilt under torch.compile replays F.dropout's draws, not SDPA's."""
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    query, key, value = random_inputs(1, 2, 6, 4)
    torch.manual_seed(1)
    expected, _ = full_attention(query, key, value, causal=True, dropout_p=0.3, training=True)
    torch.manual_seed(1)
    out = full_attention_sdpa(query, key, value, causal=True, dropout_p=0.3, training=True)
    assert calls == []
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_full_sdpa_bfloat16_autocast_error_is_the_references():
    """Under bf16 autocast SDPA runs in bf16; its error against float64 stays within a small
    multiple of the reference's own error under the same autocast."""
    query, key, value = random_inputs(2, 4, 64, 32, dtype=torch.float32)
    pad_mask = right_padding(2, 64, 20)
    exact, _ = full_attention(query.double(), key.double(), value.double(), causal=True, pad_mask=pad_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, _ = full_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), causal=True,
                                      pad_mask=pad_mask)
        out = full_attention_sdpa(query.bfloat16(), key.bfloat16(), value.bfloat16(), causal=True, pad_mask=pad_mask)
    assert out.dtype == torch.bfloat16
    reference_error = (reference.double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 3 * reference_error
