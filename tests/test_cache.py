"""The generation cache: every cached decoding step against a full forward pass over the same prefix."""

import re

import pytest
import torch
from tiny_models import tiny_config

from transformers import CompileConfig
from transformers.generation import utils as generation_utils

from reformer_hf import ReformerCache, ReformerForCausalLM, ReformerModel, compat
from reformer_hf.attention_functions import (
    buckets_for_length,
    local_attention,
    local_decode_step,
    lsh_attention,
    lsh_decode_step,
    normalize_keys,
)
from reformer_hf.cache_layers import LocalLayerCache, LocalWindow, LSHLayerCache, SequenceIndex
from reformer_hf.stack_running import padding_multiple

TOLERANCE = dict(rtol=1e-5, atol=1e-5)



def left_padded_batch(n_pads, total, vocab_size, seed):
    """Token ids (batch, total) whose row i starts with n_pads[i] positions of left padding (id 0)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab_size, (len(n_pads), total), generator=generator)
    attention_mask = torch.ones(len(n_pads), total, dtype=torch.long)
    for row, pads in enumerate(n_pads):
        attention_mask[row, :pads] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def positions_from_mask(attention_mask):
    """What generate() feeds: each row counts its real tokens from 0."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def tiny_lm(seed=0, **overrides):
    torch.manual_seed(seed)
    return ReformerForCausalLM(tiny_config(**overrides)).eval()


def assert_steps_match_full_forward(model, prompt_length, total, n_pads=(0, 5, 10), seed=1):
    """Prefill `prompt_length` positions (rows left-padded by n_pads), decode the rest one at a time,
    and compare every step's logits and hidden states with a cache-free pass over the whole prefix."""
    input_ids, attention_mask = left_padded_batch(n_pads, total, model.config.vocab_size, seed)
    position_ids = positions_from_mask(attention_mask)
    with torch.no_grad():
        prefill = model(
            input_ids[:, :prompt_length],
            attention_mask=attention_mask[:, :prompt_length],
            position_ids=position_ids[:, :prompt_length],
            use_cache=True,
        )
        cache = prefill.past_key_values
        assert cache.get_seq_length() == prompt_length
        for end in range(prompt_length + 1, total + 1):
            step = model(
                input_ids[:, end - 1 : end],
                attention_mask=attention_mask[:, :end],
                position_ids=position_ids[:, end - 1 : end],
                past_key_values=cache,
                output_hidden_states=True,
            )
            full = model(
                input_ids[:, :end],
                attention_mask=attention_mask[:, :end],
                position_ids=position_ids[:, :end],
                use_cache=False,
                output_hidden_states=True,
            )
            torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], **TOLERANCE)
            for step_hidden, full_hidden in zip(step.hidden_states, full.hidden_states, strict=True):
                torch.testing.assert_close(step_hidden[:, -1], full_hidden[:, -1], **TOLERANCE)
            assert step.past_key_values is cache and cache.get_seq_length() == end


# ---------------------------------------------------------------- pure decode steps


def started_index(prefilled):
    """The sequence index a ReformerCache shares with its layers, after a prefill of `prefilled` positions."""
    index = SequenceIndex(fixed=False)
    index.start("cpu")
    index.advance(prefilled)
    return index


@pytest.mark.parametrize("n_hashes,n_chunks_before", [(1, 1), (2, 2), (3, 0)])
def test_lsh_decode_step_equals_lsh_attention_at_every_position(n_hashes, n_chunks_before):
    batch, heads, length, d_head, chunk_length, n_buckets, prompt = 2, 2, 32, 8, 4, 4, 10
    generator = torch.Generator().manual_seed(0)
    query_key = torch.randn(batch, heads, length, d_head, generator=generator)
    value = torch.randn(batch, heads, length, d_head, generator=generator)
    bucket_ids = torch.randint(0, n_buckets, (batch, heads, n_hashes, length), generator=generator)
    pad_mask = torch.zeros(batch, length, dtype=torch.bool)
    pad_mask[1, :3] = True
    expected, expected_lse = lsh_attention(
        query_key, value, bucket_ids, n_buckets=n_buckets, chunk_length=chunk_length,
        n_chunks_before=n_chunks_before, causal=True, window_mode="bucket_window", pad_mask=pad_mask,
    )

    index = started_index(prompt)
    cache = LSHLayerCache(window=n_chunks_before * chunk_length, keep_buckets=True, index=index)
    cache.prefill_length = prompt
    rotations = torch.randn(heads, d_head, n_hashes, n_buckets // 2, generator=generator)
    cache.prefill(rotations, n_buckets, normalize_keys(query_key[:, :, :prompt]), value[:, :, :prompt],
                  bucket_ids[..., :prompt], pad_mask[:, :prompt])
    for position in range(prompt, length):
        new = slice(position, position + 1)
        keys, values, valid = cache.step(normalize_keys(query_key[:, :, new]), value[:, :, new],
                                         bucket_ids[..., position], pad_mask[:, position])
        out, lse = lsh_decode_step(query_key[:, :, new], value[:, :, new], keys, values, valid)
        torch.testing.assert_close(out[:, :, 0], expected[:, :, position], **TOLERANCE)
        torch.testing.assert_close(lse[:, :, 0], expected_lse[:, :, position], **TOLERANCE)
        index.advance(1)


def test_lsh_cache_keeps_the_latest_window_of_each_bucket():
    # One head, one round, buckets of positions 0..5 = [0, 1, 0, 0, 1, 0], window 2: bucket 0 keeps
    # positions 3 and 5 (of 0, 2, 3, 5) and bucket 1 keeps 1 and 4; padding (position 6) is not kept.
    bucket_ids = torch.tensor([0, 1, 0, 0, 1, 0, 0]).view(1, 1, 1, 7)
    keys = torch.arange(7.0).view(1, 1, 7, 1)
    pad_mask = torch.tensor([[False] * 6 + [True]])
    cache = LSHLayerCache(window=2, keep_buckets=True, index=started_index(7))
    cache.prefill_length = 7
    cache.prefill(torch.zeros(1, 1, 1, 1), 2, keys, keys + 100, bucket_ids, pad_mask)
    held, held_values, valid = cache.bucket_window(torch.tensor([[[0]]]))
    assert sorted(held.flatten().tolist()) == [3.0, 5.0] and valid.all()
    assert sorted(held_values.flatten().tolist()) == [103.0, 105.0]
    held, _, valid = cache.bucket_window(torch.tensor([[[1]]]))
    assert sorted(held.flatten().tolist()) == [1.0, 4.0] and valid.all()
    # The next position of bucket 0 sees the two kept, then replaces the oldest one (3).
    held, _, valid = cache.step(torch.full((1, 1, 1, 1), 7.0), torch.full((1, 1, 1, 1), 107.0),
                                torch.tensor([[[0]]]), torch.tensor([False]))
    assert sorted(held.flatten().tolist()) == [3.0, 5.0] and valid.all()
    held, _, _ = cache.bucket_window(torch.tensor([[[0]]]))
    assert sorted(held.flatten().tolist()) == [5.0, 7.0]
    assert cache.counts.flatten().tolist() == [5, 2]


@pytest.mark.parametrize("n_chunks_before", [0, 1, 2])
def test_local_decode_step_equals_local_attention_at_every_position(n_chunks_before):
    """Row 0 has 4 padding positions at the front, row 1 two in the middle of its prompt: each row's
    decoded outputs equal local attention over that row's real positions alone."""
    batch, heads, length, d_head, chunk_length, prompt = 2, 2, 30, 8, 6, 7
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(batch, heads, length, d_head, generator=generator) for _ in range(3))
    pad_mask = torch.zeros(batch, length, dtype=torch.bool)
    pad_mask[0, :4] = True
    pad_mask[1, 2:4] = True
    expected = []
    for row in range(batch):
        real = ~pad_mask[row]
        out, _ = causal_local_attention_any_length(
            query[row : row + 1, :, real], key[row : row + 1, :, real], value[row : row + 1, :, real],
            chunk_length, n_chunks_before,
        )
        expected.append((out[0], real.long().cumsum(0) - 1))
    window = LocalWindow(chunk_length, n_chunks_before)
    cache = LocalLayerCache(window)
    cache.prefill_length = prompt
    order = torch.sort(pad_mask[:, :prompt].to(torch.uint8), dim=1, stable=True).indices  # real positions first
    gather = order[:, None, :, None].expand(-1, heads, -1, d_head)
    cache.prefill(key[:, :, :prompt].gather(2, gather), value[:, :, :prompt].gather(2, gather),
                  pad_mask[:, :prompt].gather(1, order))
    for position in range(prompt, length):
        new = slice(position, position + 1)
        window.begin_step(pad_mask[:, position])
        cache.append(key[:, :, new], value[:, :, new])
        out = local_decode_step(query[:, :, new], cache.keys, cache.values, window.attend_bias)
        for row, (row_out, real_index) in enumerate(expected):
            real_position = int(real_index[position])
            assert window.real_length[row] == real_position + 1
            # the slots seen hold exactly the real positions local attention shows this one
            first_visible = max(0, (real_position // chunk_length - n_chunks_before) * chunk_length)
            seen = window.slot_positions[row][window.attend_bias[row] == 0]
            assert sorted(seen.tolist()) == list(range(first_visible, real_position + 1))
            torch.testing.assert_close(out[row, :, 0], row_out[:, real_position], **TOLERANCE)


def causal_local_attention_any_length(query, key, value, chunk_length, n_chunks_before):
    """Causal local_attention over any length: right-padded to a multiple of chunk_length."""
    length = query.shape[2]
    padded = -(-length // chunk_length) * chunk_length
    pad_mask = torch.arange(padded) >= length
    grow = lambda tensor: torch.nn.functional.pad(tensor, (0, 0, 0, padded - length))  # noqa: E731
    out, lse = local_attention(grow(query), grow(key), grow(value), chunk_length=chunk_length,
                               n_chunks_before=n_chunks_before, causal=True, pad_mask=pad_mask[None])
    return out[:, :, :length], lse[:, :, :length]


# ---------------------------------------------------------------- the model with a cache


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attn_layers=["local", "local"]),
        dict(attn_layers=["lsh", "lsh"]),
        dict(attn_layers=["full", "full"]),
        dict(attn_layers=["local", "lsh", "full"]),
        dict(attn_layers=["lsh", "local"], num_hashes=3, num_buckets=[2, 4], lsh_num_chunks_before=2),
        dict(attn_layers=["local", "lsh"], local_num_chunks_before=2, reversible=False, chunk_size_feed_forward=3),
        dict(attn_layers=["lsh", "local"], axial_pos_embds=False, lsh_num_chunks_before=0),
    ],
    ids=["local", "lsh", "full", "mixed", "lsh-3-hashes-factored", "plain-residual", "learned-positions"],
)
def test_every_cached_step_equals_full_forward_over_the_prefix(overrides):
    assert_steps_match_full_forward(tiny_lm(**overrides), prompt_length=14, total=40)


@pytest.mark.parametrize(
    "overrides",
    [dict(lsh_window_mode="chunk"), dict(attn_layers=["local", "full"], local_attn_wrap_around=True,
                                         local_num_chunks_before=2)],
    ids=["lsh-chunk-mode", "local-wrap-around"],
)
def test_recomputing_cache_equals_full_forward_over_the_prefix(overrides):
    model = tiny_lm(**overrides)
    assert ReformerCache(model.config).recomputes
    assert_steps_match_full_forward(model, prompt_length=14, total=30)


def test_several_new_tokens_in_one_call_equal_full_forward():
    model = tiny_lm()
    input_ids, attention_mask = left_padded_batch([0, 7, 14], 31, model.config.vocab_size, seed=3)
    position_ids = positions_from_mask(attention_mask)
    with torch.no_grad():
        cache = model(input_ids[:, :20], attention_mask=attention_mask[:, :20], position_ids=position_ids[:, :20]
                      ).past_key_values
        step = model(input_ids[:, 20:], attention_mask=attention_mask, position_ids=position_ids[:, 20:],
                     past_key_values=cache)
        full = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    torch.testing.assert_close(step.logits, full.logits[:, 20:], **TOLERANCE)


def test_decoding_without_hash_seed_hashes_with_the_prefill_rotations():
    model = tiny_lm(hash_seed=None)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 25), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.manual_seed(11)
        cache = model(input_ids[:, :12]).past_key_values
        torch.manual_seed(12)
        other_rotations = model(input_ids[:, :12]).past_key_values.layers[1].rotations
        rotations = cache.layers[1].rotations
        assert not torch.equal(rotations, other_rotations)  # rotations really are random per pass
        steps = [model(input_ids[:, end - 1 : end], past_key_values=cache).logits[:, -1] for end in range(13, 26)]
        # The reference: full passes whose LSH layer draws exactly the prefill's rotations.
        lsh_attention_module = model.reformer.encoder.layers[1].attention.self_attention
        lsh_attention_module.draw_rotations = lambda num_buckets, device, dtype: rotations
        for end, step_logits in zip(range(13, 26), steps):
            full = model(input_ids[:, :end], use_cache=False).logits[:, -1]
            torch.testing.assert_close(step_logits, full, **TOLERANCE)


def test_num_buckets_none_decodes_with_the_prefill_bucket_count():
    model = tiny_lm(num_buckets=None)
    prompt, total = 13, 40
    multiple = padding_multiple(model.config)
    padded_prompt, padded_total = -(-prompt // multiple) * multiple, -(-total // multiple) * multiple
    prefill_count = buckets_for_length(padded_prompt, model.config.lsh_attn_chunk_length)
    assert prefill_count != buckets_for_length(padded_total, model.config.lsh_attn_chunk_length)
    fixed = ReformerForCausalLM(tiny_config(num_buckets=prefill_count)).eval()
    fixed.load_state_dict(model.state_dict())
    input_ids = torch.randint(4, model.config.vocab_size, (2, total), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model(input_ids[:, :prompt]).past_key_values
        assert cache.layers[1].n_buckets == prefill_count
        for end in range(prompt + 1, total + 1):
            step = model(input_ids[:, end - 1 : end], past_key_values=cache).logits[:, -1]
            full = fixed(input_ids[:, :end], use_cache=False).logits[:, -1]
            torch.testing.assert_close(step, full, **TOLERANCE)


def test_reorder_cache_moves_every_row_with_its_beam():
    model = tiny_lm()
    input_ids, attention_mask = left_padded_batch([0, 7], 16, model.config.vocab_size, seed=4)
    next_ids = torch.tensor([[7], [9], [11]])
    beam_idx = torch.tensor([1, 1, 0])
    with torch.no_grad():
        cache = model(input_ids, attention_mask=attention_mask).past_key_values
        cache.reorder_cache(beam_idx)
        mask = torch.cat([attention_mask[beam_idx], torch.ones(3, 1, dtype=torch.long)], dim=1)
        reordered = model(next_ids, attention_mask=mask, past_key_values=cache).logits
        fresh_cache = model(input_ids[beam_idx], attention_mask=attention_mask[beam_idx]).past_key_values
        fresh = model(next_ids, attention_mask=mask, past_key_values=fresh_cache).logits
    torch.testing.assert_close(reordered, fresh, **TOLERANCE)


def dense_kv_bytes(config, batch, positions, element_size=4):
    """What a dense layer's KV cache holds for `positions`: a key and a value per head and position."""
    return 2 * batch * config.num_attention_heads * positions * config.head_size * element_size


def lsh_index_bytes(config, batch, n_buckets):
    """An LSH layer's index: an int32 ring of window slots per round and bucket (plus one sink slot),
    int64 counts per round and bucket, and the float32 rotations."""
    window = config.lsh_num_chunks_before * config.lsh_attn_chunk_length
    heads, rounds = config.num_attention_heads, config.num_hashes
    ring = batch * heads * rounds * (n_buckets * window + 1) * 4
    counts = batch * heads * rounds * n_buckets * 8
    rotations = heads * config.head_size * rounds * (n_buckets // 2) * 4
    return ring + counts + rotations


@pytest.mark.parametrize("num_buckets", [4, None])
def test_cache_bytes_grow_as_stated(num_buckets):
    """Measured bytes: a local layer's window does not grow; an LSH layer stores each position's key and
    value once (a dense layer's KV bytes) plus its index (fixed for a fixed num_buckets, about 2 *
    n_hashes * window int32 per position with num_buckets=None); a full layer stores a dense KV cache."""
    model = tiny_lm(attn_layers=["local", "lsh", "full"], max_position_embeddings=128, num_buckets=num_buckets)
    config, batch = model.config, 2
    local_bytes = []
    with torch.no_grad():
        for prompt in (16, 96):
            input_ids = torch.randint(4, config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(prompt))
            cache = ReformerCache(config, max_length=prompt + 5)
            model(input_ids, past_key_values=cache)
            for _ in range(5):
                model(torch.full((batch, 1), 5), past_key_values=cache)
            local, lsh, full = cache.layers
            n_buckets = lsh.n_buckets
            padded = -(-prompt // padding_multiple(config)) * padding_multiple(config)
            expected_buckets = num_buckets or buckets_for_length(padded, config.lsh_attn_chunk_length)
            assert n_buckets == expected_buckets
            assert lsh.store.nbytes() == dense_kv_bytes(config, batch, prompt + 5)
            assert lsh.nbytes() == dense_kv_bytes(config, batch, prompt + 5) + lsh_index_bytes(config, batch, n_buckets)
            assert full.store.nbytes() == dense_kv_bytes(config, batch, prompt + 5)
            # a local layer's keys and values in (n_chunks_before + 1) * chunk + 1 slots, rounded up to 16
            slots = -(-((config.local_num_chunks_before + 1) * config.local_attn_chunk_length + 1) // 16) * 16
            assert local.nbytes() == 2 * batch * config.num_attention_heads * slots * config.head_size * 4
            local_bytes.append(local.nbytes())
            window_bytes = batch * slots * 8 + batch * 8  # the local layers' shared slot positions and lengths
            assert cache.local_window.nbytes() == window_bytes
            # and the sequence index (int64)
            assert cache.nbytes() == sum(layer.nbytes() for layer in cache.layers) + window_bytes + 8
    assert local_bytes[0] == local_bytes[1]  # a window, whatever the prefix


def test_generate_sizes_its_cache_for_the_positions_it_feeds():
    model = tiny_lm(attn_layers=["local", "lsh", "full"], max_position_embeddings=128, eos_token_id=None)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    out = model.generate(input_ids, max_new_tokens=7, do_sample=False, return_dict_in_generate=True)
    _, lsh, full = out.past_key_values.layers
    fed = 20 + 7 - 1  # the last token is never fed back
    assert lsh.store.keys.shape[2] == full.store.keys.shape[2] == fed
    assert lsh.store.nbytes() == dense_kv_bytes(model.config, 2, fed)


def test_stores_grow_by_an_eighth_past_their_capacity():
    model = tiny_lm(attn_layers=["full"], max_position_embeddings=128)
    with torch.no_grad():
        cache = model(torch.randint(4, 40, (1, 8)), use_cache=True).past_key_values
        capacities = []
        for _ in range(70):
            model(torch.full((1, 1), 5), past_key_values=cache)
            capacities.append(cache.layers[0].store.keys.shape[2])
    assert capacities[0] == 8 + 64 and capacities[-1] == 8 + 64 + 64
    assert cache.get_seq_length() == 78


def test_gradients_flow_through_the_cache_as_through_a_full_pass():
    model = tiny_lm(reversible=True)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 18), generator=torch.Generator().manual_seed(6))
    cache = model(input_ids[:, :17], use_cache=True).past_key_values
    model(input_ids[:, 17:], past_key_values=cache).logits.sum().backward()
    cached_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(input_ids, use_cache=False).logits[:, -1].sum().backward()
    for cached, full in zip(cached_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(cached, full, **TOLERANCE)


def test_use_cache_defaults_to_a_cache_only_for_a_causal_model_in_eval_mode():
    model = tiny_lm()
    input_ids = torch.randint(4, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert isinstance(model(input_ids).past_key_values, ReformerCache)
        assert model(input_ids, use_cache=False).past_key_values is None
        assert model(input_ids, labels=input_ids).past_key_values is None  # a loss needs no cache
        model.train()
        assert model(input_ids).past_key_values is None
        bidirectional = ReformerModel(tiny_config(is_decoder=False)).eval()
        assert bidirectional(input_ids).past_key_values is None
        with pytest.raises(ValueError, match="use_cache=True.*needs a causal model"):
            bidirectional(input_ids, use_cache=True)


def test_bad_cache_inputs_raise_naming_the_argument():
    model = tiny_lm()
    input_ids = torch.randint(4, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        cache = model(input_ids).past_key_values
        with pytest.raises(ValueError, match="past_key_values must be a ReformerCache.*got tuple"):
            model(input_ids[:, :1], past_key_values=((torch.zeros(1),),))
        with pytest.raises(ValueError, match="batch size 1 but past_key_values holds 2 rows"):
            model(input_ids[:1, :1], past_key_values=cache)
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\); expected \(2, 10\).*or \(2, 1\)"):
            model(input_ids[:, :1], attention_mask=torch.ones(2, 4, dtype=torch.long), past_key_values=cache)
        with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 1\) covers only the new.*position_ids"):
            model(input_ids[:, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), past_key_values=cache)
        with pytest.raises(ValueError, match="cache_position=\\[3\\] does not continue the cache"):
            model(input_ids[:, :1], past_key_values=cache, cache_position=torch.tensor([3]))
        assert cache.get_seq_length() == 9  # nothing was consumed by the refused calls


def to_meta(cache):
    """Every tensor the cache holds moved to the meta device (shapes only, no data)."""

    def move(holder):
        for name, value in vars(holder).items():
            if isinstance(value, torch.Tensor):
                setattr(holder, name, value.to("meta"))
            elif hasattr(value, "__dict__") and not isinstance(value, type):
                move(value)

    for layer in cache.layers:
        if layer is not None:
            move(layer)
    return cache


@pytest.mark.parametrize("max_length", [None, 24], ids=["growing", "fixed-capacity"])
@pytest.mark.parametrize("layers", [["local", "lsh", "full"], ["lsh", "lsh"]])
def test_a_decoding_step_reads_no_tensor_on_the_host(layers, max_length):
    """The CPU check for the GPU's sync-free decoding step: the same step on meta tensors, which hold no
    data, so any host read of a value (.item(), bool(), int(), .tolist(), a comparison read in Python)
    raises.  Prefill on the CPU, then one step of the generate() path (prepare_inputs_for_generation
    told it feeds one position, and forward; left padding, batch 3) on the meta device."""
    model = tiny_lm(attn_layers=layers)
    input_ids, attention_mask = left_padded_batch((0, 5, 10), 20, model.config.vocab_size, seed=1)
    with torch.no_grad():
        cache = ReformerCache(model.config, max_length)
        model(input_ids, attention_mask=attention_mask, past_key_values=cache)
        model.to("meta")
        to_meta(cache)
        sequence = torch.cat([input_ids, torch.full((3, 1), 5)], dim=1).to("meta")
        mask = torch.cat([attention_mask, torch.ones(3, 1, dtype=torch.long)], dim=1).to("meta")
        inputs = model.prepare_inputs_for_generation(sequence, past_key_values=cache, attention_mask=mask,
                                                     use_cache=True, next_sequence_length=1)
        logits = model(**inputs).logits
    assert logits.device.type == "meta" and logits.shape == (3, 1, model.config.vocab_size)
    assert inputs["attention_mask"].shape == (3, 1)  # the new position's flag: the cache holds the rest
    assert cache.known_length() == (21 if max_length is None else None)


# ---------------------------------------------------------------- compiled decoding


def cache_tensors(cache):
    """{attribute path: tensor} of every tensor a ReformerCache holds, its layers' included."""
    found, seen = {}, set()

    def walk(holder, path):
        if id(holder) in seen:
            return
        seen.add(id(holder))
        for name, value in vars(holder).items():
            if isinstance(value, torch.Tensor):
                found[f"{path}.{name}"] = value
            elif isinstance(value, list):
                for position, item in enumerate(value):
                    if item is not None:
                        walk(item, f"{path}.{name}[{position}]")
            elif hasattr(value, "__dict__") and not isinstance(value, type):
                walk(value, f"{path}.{name}")

    walk(cache, "cache")
    return found


def storage_addresses(cache):
    return {path: tensor.data_ptr() for path, tensor in cache_tensors(cache).items()}


def decode_with(step, model, input_ids, attention_mask, prompt_length, reorders=None):
    """Prefill `prompt_length` positions into a fixed-capacity cache (eagerly), then feed the rest one
    position at a time through `step` (model.forward or a compiled one) as generate() does: the new
    token, its own mask entry and position.  `reorders[t]` (a row permutation) reorders the cache
    before step t, as beam search does.  Returns the steps' logits (batch, steps, vocab), the cache
    and its buffers' addresses right after the prefill."""
    position_ids = positions_from_mask(attention_mask)
    cache = ReformerCache(model.config, max_length=input_ids.shape[1])
    logits = []
    with torch.no_grad():
        model(input_ids[:, :prompt_length], attention_mask=attention_mask[:, :prompt_length],
              position_ids=position_ids[:, :prompt_length], past_key_values=cache)
        addresses = storage_addresses(cache)
        for t in range(prompt_length, input_ids.shape[1]):
            if reorders is not None:
                cache.reorder_cache(reorders[t - prompt_length])
            new = slice(t, t + 1)
            out = step(input_ids=input_ids[:, new], attention_mask=attention_mask[:, new],
                       position_ids=position_ids[:, new], past_key_values=cache, use_cache=True, return_dict=True)
            logits.append(out.logits)
    return torch.cat(logits, dim=1), cache, addresses


def compiled_forward(model, backend):
    """model.forward under torch.compile as generate() compiles it for decoding, in one graph
    (fullgraph) with static shapes; dynamo is reset so that only this test's graphs count."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return torch.compile(model.forward, fullgraph=True, dynamic=False, backend=backend)


def assert_one_graph():
    """Dynamo traced one graph for every compiled step (no recompilation, no graph break)."""
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize(
    "layers,backend",
    [(["local", "local"], "aot_eager"), (["lsh", "lsh"], "aot_eager"), (["full", "full"], "aot_eager"),
     (["local", "lsh", "full"], "inductor")],
    ids=["local", "lsh", "full", "mixed-inductor"],
)
def test_a_compiled_decoding_step_serves_every_step_with_the_eager_logits(layers, backend):
    """torch.compile(fullgraph=True, dynamic=False) of the forward, 10 decoding steps after an eager
    prefill (batch 2, left padding, hash_seed set): one graph for all of them (a recompilation is an
    error), logits equal to eager decoding and to a cache-free pass over the whole sequence, and every
    buffer of the cache still at the address the prefill gave it (the steps allocate no cache storage)."""
    model = tiny_lm(attn_layers=layers)
    input_ids, attention_mask = left_padded_batch((0, 5), 24, model.config.vocab_size, seed=3)
    eager, _, _ = decode_with(model.forward, model, input_ids, attention_mask, prompt_length=14)
    step = compiled_forward(model, backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, cache, addresses = decode_with(step, model, input_ids, attention_mask, prompt_length=14)
    assert_one_graph()
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask),
                     use_cache=False).logits
    torch.testing.assert_close(compiled, full[:, 14:], **TOLERANCE)
    assert storage_addresses(cache) == addresses
    assert cache.get_seq_length() == 24


def test_a_compiled_step_follows_beam_reordering_in_place():
    """Beam search reorders the cache between steps: the rows are copied into the buffers the compiled
    step reads (no new storage, no recompilation), and the logits follow the permuted rows exactly as
    an eagerly reordered cache gives them."""
    model = tiny_lm(attn_layers=["local", "lsh", "full"])
    input_ids, attention_mask = left_padded_batch((0, 5, 2), 20, model.config.vocab_size, seed=4)
    generator = torch.Generator().manual_seed(5)
    reorders = [torch.randint(0, 3, (3,), generator=generator) for _ in range(8)]
    eager, _, _ = decode_with(model.forward, model, input_ids, attention_mask, 12, reorders)
    step = compiled_forward(model, "aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, cache, addresses = decode_with(step, model, input_ids, attention_mask, 12, reorders)
    assert_one_graph()
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    assert storage_addresses(cache) == addresses


def test_an_inductor_step_writes_the_cache_where_it_is_without_copying_a_buffer():
    """inductor keeps a write in place only where nothing reads the buffer's old contents after it (it
    reorders the traced graph first); otherwise it allocates a new buffer of the whole size, writes the
    position there and copies it back: two passes over every stored key and value per token (70% of a
    step at 128K on the GPU before).  The generated step (torch's run_and_get_code) allocates no buffer
    of any cache tensor's shape and dtype, and gives the eager logits.  Sizes are chosen so that no
    intermediate has a cache tensor's shape and dtype: counts (2, 2, 2, 8), ring (2, 2, 2, 33), stores
    (2, 2, 40, 8), local windows (2, 2, 16, 8), slot positions (2, 16), key_is_pad (2, 40)."""
    from torch._inductor.utils import run_and_get_code

    model = tiny_lm(attn_layers=["local", "lsh", "full"], num_buckets=8)
    input_ids, attention_mask = left_padded_batch((0, 5), 40, model.config.vocab_size, seed=3)
    eager, _, _ = decode_with(model.forward, model, input_ids, attention_mask, prompt_length=30)
    step = compiled_forward(model, "inductor")
    (compiled, cache, addresses), codes = run_and_get_code(decode_with, step, model, input_ids, attention_mask, 30)
    assert_one_graph()
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    assert storage_addresses(cache) == addresses
    held = {(tuple(tensor.shape), str(tensor.dtype)): path for path, tensor in cache_tensors(cache).items()
            if tensor.numel() > 2}
    allocated = re.findall(r"empty_strided_\w+\(\(([\d, ]*)\), \([\d, ]*\), (torch\.\w+)", "\n".join(codes))
    assert allocated, "no allocation found in the generated code: the pattern no longer matches inductor's output"
    buffers = {(tuple(int(size) for size in shape.split(",") if size.strip()), dtype) for shape, dtype in allocated}
    copies = {held[buffer]: buffer for buffer in buffers if buffer in held}
    assert not copies, f"the compiled step allocates whole copies of cache buffers: {copies}"


def test_only_an_asked_for_fixed_capacity_cache_that_decodes_from_its_state_is_compileable():
    config = tiny_config()
    assert ReformerCache(config, max_length=32, compileable=True).is_compileable
    assert not ReformerCache(config, max_length=32).is_compileable  # not asked for: eager steps
    assert not ReformerCache(tiny_config(lsh_window_mode="chunk"), max_length=32,
                             compileable=True).is_compileable  # recomputes
    with pytest.raises(ValueError, match="max_length must be a positive int or None.*got 0"):
        ReformerCache(config, max_length=0)
    with pytest.raises(ValueError, match="compileable=True with max_length=None: a compiled decoding step needs"):
        ReformerCache(config, compileable=True)  # grows on the host
    with pytest.raises(ValueError, match="compileable='yes'"):
        ReformerCache(config, max_length=32, compileable="yes")


def test_generate_asks_for_a_compiled_step_only_with_a_static_cache_or_a_compile_config(monkeypatch):
    """As for transformers' own models: the default and "dynamic" decode eagerly (the cache is not
    compileable, so generate() compiles nothing even on a GPU), "static" makes the cache compileable
    (generate() compiles its steps on an accelerator; on the CPU it decodes eagerly) without
    transformers' warning that the choice is ignored, with the tokens of cache-free decoding; any
    other cache_implementation is refused before any work, naming it."""
    model = tiny_lm(attn_layers=["local", "lsh", "full"], eos_token_id=None)
    input_ids, attention_mask = left_padded_batch((0, 3), 12, model.config.vocab_size, seed=4)
    greedy = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    uncached = model.generate(input_ids, use_cache=False, **greedy).sequences
    warnings = []  # transformers' logger neither propagates nor repeats a warning_once: record the calls
    monkeypatch.setattr(generation_utils.logger, "warning_once", lambda message, *args: warnings.append(message))
    for implementation, compileable in ((None, False), ("dynamic", False), ("static", True)):
        out = model.generate(input_ids, cache_implementation=implementation, **greedy)
        assert torch.equal(out.sequences, uncached), implementation
        assert out.past_key_values.is_compileable is compileable, implementation
        assert not [message for message in warnings if "cache_implementation" in message], implementation
    with pytest.raises(ValueError, match=r"cache_implementation='offloaded' is not supported; expected one of "
                                         r"\(None, 'dynamic', 'static'\)"):
        model.generate(input_ids, cache_implementation="offloaded", **greedy)


def test_a_fixed_capacity_cache_refuses_positions_past_it():
    model = tiny_lm()
    input_ids = torch.randint(4, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        with pytest.raises(ValueError, match="12 more position.*do not fit a cache of max_length=10"):
            model(input_ids, past_key_values=ReformerCache(model.config, max_length=10))
        cache = ReformerCache(model.config, max_length=11)
        model(input_ids[:, :10], past_key_values=cache)
        model(input_ids[:, 10:11], past_key_values=cache)
        # The length is on the device only (read here, on the CPU, before any write).
        with pytest.raises(ValueError, match="1 more position.*do not fit a cache of max_length=11.*holds 11"):
            model(input_ids[:, 11:12], past_key_values=cache)
        cache.reserve(12)
        grown = model(input_ids[:, 11:12], past_key_values=cache).logits
        full = model(input_ids, use_cache=False).logits
    torch.testing.assert_close(grown[:, -1], full[:, -1], **TOLERANCE)


def test_generate_compiles_its_decoding_step_and_gives_the_eager_tokens():
    """generate() with a CompileConfig (made to compile on the CPU too) runs every step after the
    prefill through one compiled graph (inductor, fullgraph, static shapes; a recompilation is an
    error) and gives eager generate()'s tokens and logits (batch 2, left padding, hash_seed set).
    Without a CompileConfig nothing is compiled on the CPU (transformers compiles by itself on
    accelerators only).  Beam search runs its steps eagerly in transformers, on the same
    fixed-capacity cache reordered in place: its sequences equal cache-free beam search's."""
    model = tiny_lm(attn_layers=["local", "lsh", "full"], eos_token_id=None)
    input_ids, attention_mask = left_padded_batch((0, 5), 16, model.config.vocab_size, seed=9)
    greedy = dict(attention_mask=attention_mask, max_new_tokens=10, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = model.generate(input_ids, **greedy)
    assert not torch._dynamo.utils.counters["stats"]
    compile_config = compat.compile_on_every_device(CompileConfig(fullgraph=True, dynamic=False, backend="inductor"))
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = model.generate(input_ids, compile_config=compile_config, **greedy)
    assert_one_graph()
    assert torch.equal(compiled.sequences, eager.sequences)
    for compiled_logits, eager_logits in zip(compiled.logits, eager.logits, strict=True):
        torch.testing.assert_close(compiled_logits, eager_logits, **TOLERANCE)
    assert compiled.past_key_values.is_compileable

    beam = dict(attention_mask=attention_mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                do_sample=False, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(input_ids, compile_config=compile_config, **beam)
    uncached = model.generate(input_ids, use_cache=False, **beam)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, **TOLERANCE)


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_generate_at_batch_one_compiles_its_decoding_step_once(with_mask):
    """At batch 1 the step's inputs are (1, 1) slices of the growing sequence, whose first stride is
    the sequence length unless copied to fresh strides: torch.compile guards on strides, so each step
    would be compiled again (and on a GPU a CUDA graph recorded for every step).  One graph, no
    recompilation (an error here), the eager tokens."""
    model = tiny_lm(attn_layers=["local", "lsh", "full"], eos_token_id=None)
    input_ids = torch.randint(4, model.config.vocab_size, (1, 14), generator=torch.Generator().manual_seed(3))
    options = dict(max_new_tokens=8, do_sample=False)
    if with_mask:
        options["attention_mask"] = torch.ones_like(input_ids)
    eager = model.generate(input_ids, **options)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compile_config = compat.compile_on_every_device(CompileConfig(fullgraph=True, dynamic=False, backend="eager"))
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = model.generate(input_ids, cache_implementation="static", compile_config=compile_config, **options)
    assert_one_graph()
    assert torch.equal(compiled, eager)
