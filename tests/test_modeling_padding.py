"""Padding never changes what a real position computes: left, right or inner padding against the
unpadded sequence, for every attention kind and every head, train and eval, cached and uncached."""

import pytest
import torch
from tiny_models import tiny_config
from transformers import pipeline

from reformer_hf import (
    ReformerByteTokenizer,
    ReformerForCausalLM,
    ReformerForConditionalGeneration,
    ReformerForSequenceClassification,
    ReformerModel,
)

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PROMPT_LENGTHS = [13, 9, 4]
LAYER_KINDS = {
    "local": ["local", "local"],
    "lsh": ["lsh", "lsh"],
    "full": ["full", "full"],
    "mixed": ["local", "lsh", "full"],
}


def padded_batch(lengths, side, vocab_size, seed=0, total=None):
    """Rows of random tokens of `lengths`, padded (id 0) on `side` ("left", "right" or "inner": the
    padding split around the middle of the row) to `total`; position_ids follow the mask."""
    generator = torch.Generator().manual_seed(seed)
    total = total or max(lengths) + 3
    rows = [torch.randint(4, vocab_size, (length,), generator=generator) for length in lengths]
    input_ids = torch.zeros(len(rows), total, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), total, dtype=torch.long)
    for index, row in enumerate(rows):
        real = real_columns(len(row), total, side)
        input_ids[index, real] = row
        attention_mask[index, real] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return rows, input_ids, attention_mask, position_ids


def real_columns(length, total, side):
    pads = total - length
    if side == "left":
        return torch.arange(pads, total)
    if side == "right":
        return torch.arange(length)
    before = pads // 2 + 1
    return torch.cat([torch.arange(length // 2), torch.arange(length // 2 + before, length // 2 + before + length - length // 2)])


def causal_lm(kind, seed=0, **overrides):
    torch.manual_seed(seed)
    return ReformerForCausalLM(tiny_config(attn_layers=LAYER_KINDS[kind], **overrides))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("side", ["left", "right", "inner"])
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_causal_lm_real_positions_get_the_logits_of_the_unpadded_sequence(kind, side, training):
    model = causal_lm(kind).train(training)
    rows, input_ids, attention_mask, position_ids = padded_batch(PROMPT_LENGTHS, side, model.config.vocab_size)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
    for index, row in enumerate(rows):
        alone = model(row[None], use_cache=False).logits[0]
        real = real_columns(len(row), input_ids.shape[1], side)
        torch.testing.assert_close(logits[index, real], alone, **TOLERANCE, msg=f"row {index}")


def test_five_left_pads_leave_local_attention_unchanged():
    """The reported case: with local layers the last position's logits moved by 8e-2 under 5 left pads
    (chunk boundaries were counted from the padded start)."""
    model = causal_lm("local").eval()
    row = torch.randint(4, model.config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), row], dim=1)
    attention_mask = (padded != 0).long()
    attention_mask[:, 5:] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(row).logits[0, -1]
        got = model(padded, attention_mask=attention_mask, position_ids=position_ids).logits[0, -1]
    torch.testing.assert_close(got, expected, **TOLERANCE)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("is_decoder", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_sequence_classification_logits_do_not_depend_on_padding(kind, is_decoder, side):
    overrides = dict(is_decoder=is_decoder, num_labels=3)
    if not is_decoder:
        overrides.update(local_num_chunks_after=1, lsh_num_chunks_after=1)
    torch.manual_seed(0)
    model = ReformerForSequenceClassification(tiny_config(attn_layers=LAYER_KINDS[kind], **overrides)).eval()
    rows, input_ids, attention_mask, position_ids = padded_batch(PROMPT_LENGTHS, side, model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        expected = torch.cat([model(row[None]).logits for row in rows])
    torch.testing.assert_close(logits, expected, **TOLERANCE)


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_base_model_hidden_states_of_real_positions_do_not_depend_on_padding(kind):
    torch.manual_seed(0)
    model = ReformerModel(tiny_config(attn_layers=LAYER_KINDS[kind], is_decoder=False, local_num_chunks_after=1,
                                      lsh_num_chunks_after=1)).eval()
    rows, input_ids, attention_mask, position_ids = padded_batch(PROMPT_LENGTHS, "left", model.config.vocab_size)
    with torch.no_grad():
        out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True)
        for index, row in enumerate(rows):
            alone = model(row[None], output_hidden_states=True)
            real = real_columns(len(row), input_ids.shape[1], "left")
            torch.testing.assert_close(out.last_hidden_state[index, real], alone.last_hidden_state[0], **TOLERANCE)
            for padded_state, alone_state in zip(out.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(padded_state[index, real], alone_state[0], **TOLERANCE)


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_seq2seq_logits_do_not_depend_on_source_or_target_padding(kind):
    torch.manual_seed(0)
    config = tiny_config(attn_layers=LAYER_KINDS[kind], is_decoder=False, is_encoder_decoder=True)
    model = ReformerForConditionalGeneration(config).eval()
    rows, source, source_mask, _ = padded_batch(PROMPT_LENGTHS, "left", config.vocab_size, seed=1)
    targets, target_ids, target_mask, _ = padded_batch([7, 10, 5], "right", config.vocab_size, seed=2)
    with torch.no_grad():
        logits = model(input_ids=source, attention_mask=source_mask, decoder_input_ids=target_ids,
                       decoder_attention_mask=target_mask).logits
        for index, (row, target) in enumerate(zip(rows, targets, strict=True)):
            alone = model(input_ids=row[None], decoder_input_ids=target[None]).logits[0]
            torch.testing.assert_close(logits[index, : len(target)], alone, **TOLERANCE, msg=f"row {index}")


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_cached_decoding_of_a_left_padded_batch_equals_each_row_alone(kind):
    model = causal_lm(kind).eval()
    rows, input_ids, attention_mask, position_ids = padded_batch(PROMPT_LENGTHS, "left", model.config.vocab_size)
    continuation = torch.randint(4, model.config.vocab_size, (len(rows), 15), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        cache, steps = out.past_key_values, []
        for step in range(continuation.shape[1]):
            attention_mask = torch.cat([attention_mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            step_out = model(continuation[:, step : step + 1], attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=cache)
            steps.append(step_out.logits[:, -1])
        for index, row in enumerate(rows):
            alone = model(torch.cat([row, continuation[index]])[None], use_cache=False).logits[0, len(row):]
            torch.testing.assert_close(torch.stack(steps, dim=1)[index], alone, **TOLERANCE, msg=f"row {index}")


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_text_generation_pipeline_gives_the_same_continuations_at_batch_size_4_and_1(kind):
    """Five prompts of different lengths, greedy: batching (left padding) changes no continuation."""
    tokenizer = ReformerByteTokenizer(padding_side="left")
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(attn_layers=LAYER_KINDS[kind], vocab_size=len(tokenizer),
                                            eos_token_id=None, max_position_embeddings=128)).eval()
    prompts = ["The quick brown fox", "Reformer", "LSH attention hashes", "a", "Chunks of sixty-four bytes each"]
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    options = dict(max_new_tokens=12, do_sample=False, return_tensors=True)
    alone = [result[0]["generated_token_ids"] for result in generator(prompts, batch_size=1, **options)]
    batched = [result[0]["generated_token_ids"] for result in generator(prompts, batch_size=4, **options)]
    pad = tokenizer.pad_token_id
    batched = [ids[next(index for index, token in enumerate(ids) if token != pad):] for ids in batched]
    assert batched == alone
    assert [len(ids) for ids in alone] == [len(tokenizer(prompt)["input_ids"]) + 12 for prompt in prompts]


def test_an_all_zero_attention_mask_row_warns_that_its_logits_come_from_padding(caplog):
    torch.manual_seed(0)
    model = ReformerForSequenceClassification(tiny_config(is_decoder=False, num_labels=2)).eval()
    input_ids = torch.randint(4, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1] = 0
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    with caplog.at_level("WARNING"), torch.no_grad():
        model(input_ids, attention_mask=attention_mask)
    assert "a row of attention_mask is all zeros" in caplog.text


@pytest.mark.parametrize("kind", ["local", "full", "lsh"])
def test_nan_in_a_later_embedding_reaches_earlier_positions_only_through_masked_products(kind):
    """A NaN at position 30 reaches an earlier position only as 0 x NaN in the attention sum of a query
    whose window holds position 30 as a masked (later) key: its probability is exactly 0, its value NaN.
    Local windows of chunk 6 put position 30 (chunk 5) in no earlier query's window, so nothing earlier
    changes; full and LSH windows hold it for every earlier query, which all turn NaN.  No information
    flows back: a finite value at position 30 (as large as 1e4) leaves every earlier output bit-identical."""
    model = causal_lm(kind).eval()
    inputs_embeds = torch.randn(1, 36, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(inputs_embeds=inputs_embeds).logits[0]
        outputs = []
        for value in (float("nan"), 1e4, -1e4):
            changed = inputs_embeds.clone()
            changed[0, 30] = value
            outputs.append(model(inputs_embeds=changed).logits[0])
    poisoned, *finite = outputs
    for logits in finite:
        assert torch.equal(logits[:30], clean[:30])
    if kind == "local":
        assert torch.equal(poisoned[:30], clean[:30])
    else:
        assert poisoned[:30].isnan().all()


@pytest.mark.parametrize("hash_seed", [None, 7])
@pytest.mark.parametrize("reversible", [False, True])
def test_a_padded_batch_compiles_into_one_graph_with_the_eager_logits(reversible, hash_seed):
    """The padding and index checks read nothing back under torch.compile (they would end the graph),
    and seeded rotations are drawn before any tracing: a left-padded batch through local, LSH and full
    layers of a model compiled before its first call is one graph, with eager's logits."""
    model = causal_lm("mixed", reversible=reversible, hash_seed=hash_seed).eval()
    input_ids = torch.randint(4, 40, (2, 24), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(2, 24, dtype=torch.long)
    attention_mask[1, :5] = 0
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(input_ids, attention_mask=attention_mask, use_cache=False)
        torch.manual_seed(3)
        eager = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        torch.manual_seed(3)
        compiled = torch.compile(model, backend="aot_eager")(input_ids, attention_mask=attention_mask,
                                                             use_cache=False).logits
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    real = attention_mask.bool()
    torch.testing.assert_close(compiled[real], eager[real], **TOLERANCE)
