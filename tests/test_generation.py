"""generate() with the Reformer cache: greedy, beam search and sampling against cache-free generation."""

import pytest
import torch
from tiny_models import tiny_config

from reformer_hf import ReformerForCausalLM, ReformerForConditionalGeneration

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def generation_lm(seed=0, **overrides):
    """A local + LSH + full causal model that covers 256 positions and never stops early (no eos)."""
    fields = dict(axial_pos_shape=[16, 16], max_position_embeddings=256, eos_token_id=None)
    fields.update(overrides)
    torch.manual_seed(seed)
    return ReformerForCausalLM(tiny_config(**fields)).eval()


def left_padded_prompts(model, lengths, seed=0):
    """Three prompts of different lengths, left-padded with the pad id (0) to the longest."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    input_ids = torch.randint(4, model.config.vocab_size, (len(lengths), total), generator=generator)
    attention_mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, total - length :] = 1
    return input_ids.masked_fill(attention_mask == 0, model.config.pad_token_id), attention_mask


def generate_both_ways(model, input_ids, attention_mask, **kwargs):
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(1234)
        outputs.append(
            model.generate(
                input_ids, attention_mask=attention_mask, use_cache=use_cache, output_logits=True,
                return_dict_in_generate=True, **kwargs,
            )
        )
    return outputs


def test_greedy_generation_with_cache_equals_generation_without():
    # 200 new tokens cross 50 LSH chunks (length 4) and 33 local chunks (length 6).
    model = generation_lm()
    input_ids, attention_mask = left_padded_prompts(model, [13, 9, 4])
    cached, uncached = generate_both_ways(model, input_ids, attention_mask, max_new_tokens=200, do_sample=False)
    assert cached.sequences.shape == (3, 13 + 200)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert len(cached.logits) == len(uncached.logits) == 200
    for step, (cached_logits, uncached_logits) in enumerate(zip(cached.logits, uncached.logits)):
        torch.testing.assert_close(cached_logits, uncached_logits, **TOLERANCE, msg=f"step {step}")
    assert cached.past_key_values.get_seq_length() == 13 + 199  # the last token is never fed back
    assert uncached.past_key_values is None


def test_beam_search_with_cache_equals_beam_search_without_and_repeats():
    model = generation_lm()
    input_ids, attention_mask = left_padded_prompts(model, [11, 6, 8], seed=1)
    kwargs = dict(max_new_tokens=30, num_beams=4, num_return_sequences=2, do_sample=False, output_scores=True)
    cached, uncached = generate_both_ways(model, input_ids, attention_mask, **kwargs)
    again, _ = generate_both_ways(model, input_ids, attention_mask, **kwargs)
    assert cached.sequences.shape == (6, 11 + 30)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, **TOLERANCE)
    assert torch.equal(cached.sequences, again.sequences)


@pytest.mark.parametrize("hash_seed", [7, None])
def test_sampling_is_reproducible_with_a_seed_and_follows_the_full_forward_logits(hash_seed):
    model = generation_lm(hash_seed=hash_seed)
    input_ids, attention_mask = left_padded_prompts(model, [10, 3, 7], seed=2)
    kwargs = dict(max_new_tokens=40, do_sample=True, top_k=12, top_p=0.9, temperature=0.8,
                  output_logits=True, return_dict_in_generate=True)

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(input_ids, attention_mask=attention_mask, **kwargs)

    first, second, other = sample(0), sample(0), sample(1)
    assert torch.equal(first.sequences, second.sequences)
    assert not torch.equal(first.sequences, other.sequences)
    if hash_seed is None:
        return  # a cache-free pass would hash with other rotations
    # Every step sampled from the logits a cache-free pass computes for the sampled prefix.
    sequences = first.sequences
    mask = torch.cat([attention_mask, torch.ones(3, 40, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        full = model(sequences, attention_mask=mask, position_ids=positions, use_cache=False).logits
    for step, step_logits in enumerate(first.logits):
        torch.testing.assert_close(step_logits, full[:, 10 + step - 1], **TOLERANCE, msg=f"step {step}")


def test_generation_from_inputs_embeds_with_cache_equals_without():
    model = generation_lm()
    input_ids, attention_mask = left_padded_prompts(model, [9, 5, 9], seed=3)
    inputs_embeds = model.get_input_embeddings()(input_ids)
    outputs = []
    for use_cache in (True, False):
        outputs.append(model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      max_new_tokens=25, do_sample=False, use_cache=use_cache))
    assert outputs[0].shape == (3, 25)
    assert torch.equal(outputs[0], outputs[1])
    from_ids = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=25, do_sample=False)
    assert torch.equal(outputs[0], from_ids[:, 9:])


def test_chunk_mode_generation_with_cache_equals_generation_without():
    model = generation_lm(lsh_window_mode="chunk")
    input_ids, attention_mask = left_padded_prompts(model, [12, 5, 9], seed=4)
    cached, uncached = generate_both_ways(model, input_ids, attention_mask, max_new_tokens=30, do_sample=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for cached_logits, uncached_logits in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(cached_logits, uncached_logits, **TOLERANCE)


def test_assisted_generation_is_refused_because_the_cache_cannot_be_cropped():
    model = generation_lm()
    input_ids, attention_mask = left_padded_prompts(model, [5], seed=5)
    with pytest.raises(ValueError, match="assistant_model=ReformerForCausalLM asks for assisted generation"):
        model.generate(input_ids, attention_mask=attention_mask, assistant_model=generation_lm(seed=1),
                       max_new_tokens=3)


def forward_lengths(model):
    """Records the number of new positions each forward pass of `model` receives."""
    lengths = []

    def record(module, args, kwargs):
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("decoder_input_ids")
        lengths.append(inputs.shape[1])

    model.register_forward_pre_hook(record, with_kwargs=True)
    return lengths


@pytest.mark.parametrize("from_embeds", [False, True], ids=["input_ids", "inputs_embeds"])
def test_generate_with_the_cache_feeds_each_position_once(from_embeds):
    """After the prefill every step passes one new token: the cache is used, whichever name the installed
    transformers gives it (past_key_values up to 5.17, cache from 5.25)."""
    model = generation_lm()
    input_ids, attention_mask = left_padded_prompts(model, [9, 5, 9], seed=3)
    lengths = forward_lengths(model)
    inputs = dict(inputs_embeds=model.get_input_embeddings()(input_ids)) if from_embeds else dict(input_ids=input_ids)
    model.generate(**inputs, attention_mask=attention_mask, max_new_tokens=6, do_sample=False)
    assert lengths == [9, 1, 1, 1, 1, 1]


def test_seq2seq_generate_with_the_cache_feeds_each_decoder_position_once():
    torch.manual_seed(0)
    config = tiny_config(is_decoder=False, is_encoder_decoder=True, eos_token_id=None)
    model = ReformerForConditionalGeneration(config).eval()
    source = torch.randint(4, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    lengths = forward_lengths(model)
    cached = model.generate(source, max_new_tokens=6, do_sample=False)
    assert lengths == [1] * 6
    uncached = model.generate(source, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("from_embeds", [False, True], ids=["input_ids", "inputs_embeds"])
@pytest.mark.parametrize("kind", ["local", "lsh", "full", "mixed"])
def test_generation_resumed_from_a_returned_cache_equals_one_uninterrupted_run(kind, from_embeds):
    layers = {"local": ["local", "local"], "lsh": ["lsh", "lsh"], "full": ["full", "full"],
              "mixed": ["local", "lsh", "full"]}[kind]
    model = generation_lm(attn_layers=layers)
    input_ids, attention_mask = left_padded_prompts(model, [9, 5, 7], seed=6)
    embed = model.get_input_embeddings()
    options = dict(do_sample=False, output_logits=True, return_dict_in_generate=True)
    prompt = dict(inputs_embeds=embed(input_ids)) if from_embeds else dict(input_ids=input_ids)
    whole = model.generate(**prompt, attention_mask=attention_mask, max_new_tokens=4, **options)
    first = model.generate(**prompt, attention_mask=attention_mask, max_new_tokens=3, **options)
    generated = first.sequences[:, -3:]
    mask = torch.cat([attention_mask, torch.ones(3, 3, dtype=torch.long)], dim=1)
    if from_embeds:
        resumed_prompt = dict(inputs_embeds=torch.cat([embed(input_ids), embed(generated)], dim=1))
    else:
        resumed_prompt = dict(input_ids=first.sequences)
    resumed = model.generate(**resumed_prompt, attention_mask=mask, past_key_values=first.past_key_values,
                             max_new_tokens=1, **options)
    assert torch.equal(resumed.sequences[:, -1], whole.sequences[:, -1])
    torch.testing.assert_close(resumed.logits[0], whole.logits[3], **TOLERANCE)
