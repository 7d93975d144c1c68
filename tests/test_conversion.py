"""Converted checkpoints of transformers' built-in Reformer compute what transformers computes.

transformers' Reformer is the oracle: every test builds one of its models, converts it and
compares outputs, losses or gradients.  Weights are initialised with a larger spread than usual
(initializer_range=0.2) so that attention is peaked and the LSH buckets change the outputs: a
comparison that ignored the hashing would fail (`test_comparison_is_sensitive_to_the_hashing`).
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import reformer_hf
from reformer_hf import compat, conversion

TOLERANCE = 1e-4
VOCAB_SIZE = 37


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    """No transformers notes about padding inputs."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def source_config(**overrides):
    """A small transformers ReformerConfig: two heads of 8, chunks of 4, deterministic hashing, no dropout."""
    fields = dict(
        vocab_size=VOCAB_SIZE, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=24,
        attn_layers=["local", "lsh"], is_decoder=False, lsh_attn_chunk_length=4, local_attn_chunk_length=4,
        num_hashes=1, num_buckets=4, hash_seed=3, axial_pos_embds=True, axial_pos_shape=(4, 8),
        axial_pos_embds_dim=(6, 10), max_position_embeddings=32, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, initializer_range=0.2,
        pad_token_id=0, eos_token_id=None,
    )
    fields.update(overrides)
    return transformers.ReformerConfig(**fields)


# Each case: the transformers class, config overrides, and lengths to compare at (a multiple of
# the chunks, one transformers pads internally, and one no longer than a chunk, which it attends densely).
CASES = {
    "local_bidirectional_axial": (
        "ReformerModel", dict(attn_layers=["local", "local"], local_num_chunks_after=1), (32, 19, 3)),
    "local_causal_plain_positions_chunked_ff": (
        "ReformerModelWithLMHead",
        dict(attn_layers=["local", "local"], is_decoder=True, axial_pos_embds=False, chunk_size_feed_forward=2),
        (32, 19, 2)),
    "lsh_causal_1_round": (
        "ReformerModelWithLMHead", dict(attn_layers=["lsh", "lsh"], is_decoder=True, num_hashes=1), (32, 19, 3)),
    "lsh_bidirectional_2_rounds_plain_positions": (
        "ReformerForSequenceClassification",
        dict(attn_layers=["lsh", "lsh"], num_hashes=2, lsh_num_chunks_after=1, axial_pos_embds=False, num_labels=3),
        (32, 19, 3)),
    "mixed_causal_4_rounds_factorised_buckets_chunked_ff": (
        "ReformerModelWithLMHead",
        dict(attn_layers=["local", "lsh", "local", "lsh"], is_decoder=True, num_hashes=4, num_buckets=[2, 4],
             chunk_size_feed_forward=4),
        (32, 19, 4)),
    "mixed_bidirectional_2_rounds_unequal_chunks": (
        "ReformerModel",
        dict(attn_layers=["lsh", "local"], num_hashes=2, lsh_attn_chunk_length=8, local_num_chunks_after=1),
        (32, 19, 3)),
}


def build_source(case):
    architecture, overrides, _ = CASES[case]
    torch.manual_seed(0)
    return getattr(transformers, architecture)(source_config(**overrides))


def padding_masks(length):
    """Rows: no padding, right padding of a third, right padding of a half (1 = real token)."""
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length - length // 3 :] = 0
    mask[2, length - length // 2 :] = 0
    return mask


def left_padding_with_holes(length):
    """One row: left padding of a third and a hole every third position of the second half."""
    mask = torch.ones(1, length, dtype=torch.long)
    mask[0, : length // 3] = 0
    mask[0, length // 2 :: 3] = 0
    return mask


def first_output(model, input_ids, attention_mask=None):
    with torch.no_grad():
        return model(input_ids, attention_mask=attention_mask)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_model_gives_transformers_outputs(case):
    source = build_source(case).eval()
    model = conversion.convert_transformers_model(source)
    assert not model.training
    generator = torch.Generator().manual_seed(1)
    for length in CASES[case][2]:
        input_ids = torch.randint(1, VOCAB_SIZE, (3, length), generator=generator)
        for attention_mask in (None, padding_masks(length)):
            expected = first_output(source, input_ids, attention_mask)
            converted = first_output(model, input_ids, attention_mask)
            assert converted.shape == expected.shape
            if attention_mask is not None and expected.dim() == 3:
                # a padding position's output is arbitrary in both models
                real = attention_mask.bool()
                expected, converted = expected[real], converted[real]
            torch.testing.assert_close(converted, expected, atol=TOLERANCE, rtol=0,
                                       msg=lambda m: f"length {length}, mask {attention_mask is not None}: {m}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_left_padding_and_holes_give_transformers_outputs_of_the_same_tokens_right_padded(case):
    """transformers' Reformer counts chunks and positions from the padded start, so its outputs move
    with left padding and holes; the converted model moves padding behind the real tokens and numbers
    positions by the mask, so its real positions get what transformers computes for the same tokens
    padded on the right to the same length.  (In "chunk" mode and with local_attn_wrap_around the
    padded length itself still matters, in both models: docs/parity.md.)"""
    source = build_source(case).eval()
    model = conversion.convert_transformers_model(source)
    generator = torch.Generator().manual_seed(5)
    for length in CASES[case][2]:
        input_ids = torch.randint(1, VOCAB_SIZE, (1, length), generator=generator)
        attention_mask = left_padding_with_holes(length)
        real = attention_mask[0].bool()
        n_real = int(real.sum())
        right_ids = torch.full_like(input_ids, source.config.pad_token_id)
        right_ids[0, :n_real] = input_ids[0, real]
        right_mask = (torch.arange(length) < n_real).long()[None]
        converted = first_output(model, input_ids, attention_mask)
        expected = first_output(source, right_ids, right_mask)
        if expected.dim() == 3:
            converted, expected = converted[:, real], expected[:, :n_real]
        torch.testing.assert_close(converted, expected, atol=TOLERANCE, rtol=0, msg=lambda m: f"length {length}: {m}")


@pytest.mark.parametrize("case", [name for name in sorted(CASES) if "lsh" in name])
def test_comparison_is_sensitive_to_the_hashing(case):
    source = build_source(case).eval()
    other_rotations = conversion.convert_transformers_model(source)
    other_rotations.config.hash_seed = source.config.hash_seed + 1
    input_ids = torch.randint(1, VOCAB_SIZE, (3, 32), generator=torch.Generator().manual_seed(1))
    difference = first_output(other_rotations, input_ids) - first_output(source, input_ids)
    assert difference.abs().max() > 100 * TOLERANCE


def relative_difference(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", [name for name in sorted(CASES) if CASES[name][0] != "ReformerModel"])
def test_training_loss_and_gradients_match_transformers(case):
    architecture = CASES[case][0]
    source = build_source(case).train()
    model = conversion.convert_transformers_model(source)
    assert model.training
    length = 32  # transformers trains only on multiples of the chunks covering the whole axial grid
    input_ids = torch.randint(1, VOCAB_SIZE, (3, length), generator=torch.Generator().manual_seed(2))
    attention_mask = padding_masks(length)
    if architecture == "ReformerModelWithLMHead":
        # no label on padding, nor on a token predicted from a padding position, whose output
        # is arbitrary in both models (docs/parity.md)
        predicted_from_padding = torch.nn.functional.pad(attention_mask[:, :-1] == 0, (1, 0))
        labels = input_ids.masked_fill((attention_mask == 0) | predicted_from_padding, -100)
    else:
        labels = torch.tensor([0, 2, 1])

    source_out = source(input_ids, attention_mask=attention_mask, labels=labels)
    source_out.logits.retain_grad()
    source_out.loss.backward()
    loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()

    assert relative_difference(loss.detach(), source_out.loss.detach()) <= TOLERANCE
    ours = dict(model.named_parameters())
    compared = set()
    for name, parameter in source.named_parameters():
        target = conversion.target_weight_name(name, architecture)
        if parameter.grad is None:
            # transformers 5 leaves lm_head.bias out of its logits; the gradient it would get is
            # the logits' gradient summed over positions.
            assert name == "lm_head.bias"
            expected = source_out.logits.grad.sum(dim=(0, 1))
        else:
            expected = parameter.grad.reshape(ours[target].shape)
        assert relative_difference(ours[target].grad, expected) <= TOLERANCE, target
        compared.add(target)
    assert compared == set(ours)


def test_lm_head_bias_is_applied():
    """The LM-head bias, saved as lm_head.bias (every version) and, where the installed transformers
    has it, lm_head.decoder.bias (tied in transformers 4, the applied one from 5.25): set alike under
    every name, as transformers 4 tied them, the converted model adds it to its logits."""
    source = build_source("lsh_causal_1_round").eval()
    bias = torch.randn(VOCAB_SIZE, generator=torch.Generator().manual_seed(2))
    names, _ = compat.lm_head_bias_names(source.state_dict())
    with torch.no_grad():
        for name in names:
            source.get_parameter(name).copy_(bias)
    model = conversion.convert_transformers_model(source)
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = source.reformer(input_ids).last_hidden_state
        expected = torch.nn.functional.linear(hidden, source.lm_head.decoder.weight, bias)
    torch.testing.assert_close(first_output(model, input_ids), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "saved, expected",
    [
        ({"lm_head.bias": [1.0, 2.0]}, [1.0, 2.0]),  # transformers 5.0-5.24
        ({"lm_head.bias": [1.0, 2.0], "lm_head.decoder.bias": [1.0, 2.0]}, [1.0, 2.0]),  # transformers 4 (tied)
        ({"lm_head.bias": [0.0, 0.0], "lm_head.decoder.bias": [3.0, 4.0]}, [3.0, 4.0]),  # 5.25, trained
        ({"lm_head.decoder.bias": [3.0, 4.0]}, [3.0, 4.0]),
        ({}, None),  # no LM head
    ],
)
def test_source_lm_head_bias_reads_the_bias_its_transformers_version_applied(saved, expected):
    state_dict = {name: torch.tensor(values) for name, values in saved.items()}
    bias = compat.source_lm_head_bias(state_dict)
    assert (bias is None) == (expected is None)
    if expected is not None:
        assert bias.tolist() == expected


def test_two_different_non_zero_lm_head_biases_are_refused():
    state_dict = {"lm_head.bias": torch.tensor([1.0, 2.0]), "lm_head.decoder.bias": torch.tensor([3.0, 4.0])}
    with pytest.raises(ValueError, match="two different LM-head biases"):
        compat.source_lm_head_bias(state_dict)


def test_bidirectional_local_attention_needs_the_ring():
    """transformers' local attention lets the first chunk see the last one; our default does not."""
    source = build_source("local_bidirectional_axial").eval()
    model = conversion.convert_transformers_model(source)
    assert model.config.local_attn_wrap_around
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 32), generator=torch.Generator().manual_seed(4))
    model.config.local_attn_wrap_around = False
    assert (first_output(model, input_ids) - first_output(source, input_ids)).abs().max() > 100 * TOLERANCE


def test_unset_num_buckets_agrees_when_twice_the_chunk_count_is_a_power_of_two():
    torch.manual_seed(0)
    source = transformers.ReformerModelWithLMHead(
        source_config(attn_layers=["lsh", "lsh"], is_decoder=True, num_buckets=None)
    ).eval()
    model = conversion.convert_transformers_model(source)
    assert model.config.num_buckets is None
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first_output(model, input_ids), first_output(source, input_ids), atol=TOLERANCE, rtol=0)


def test_pinned_num_buckets_reproduces_the_count_transformers_fixed():
    """At 6 chunks transformers takes 2**floor(log2(12)) = 8 buckets (and keeps 8 for every later
    length); reformer_hf rounds to the nearest power of two, 16, per pass, unless pinned."""
    torch.manual_seed(0)
    source = transformers.ReformerModelWithLMHead(
        source_config(attn_layers=["lsh", "lsh"], is_decoder=True, num_buckets=None)
    ).eval()
    per_pass = conversion.convert_transformers_model(source)
    pinned = conversion.convert_transformers_model(source, num_buckets=8)
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(6))
    expected = first_output(source, input_ids)
    assert source.config.num_buckets == 8
    torch.testing.assert_close(first_output(pinned, input_ids), expected, atol=TOLERANCE, rtol=0)
    assert (first_output(per_pass, input_ids) - expected).abs().max() > 100 * TOLERANCE
    after_first_pass = conversion.convert_transformers_model(source)
    assert after_first_pass.config.num_buckets == 8


def test_config_is_mapped_field_by_field():
    config = source_config(
        attn_layers=["lsh", "local", "lsh"], is_decoder=True, num_hashes=3, num_buckets=[4, 8], hash_seed=11,
        lsh_num_chunks_before=2, local_num_chunks_before=2, lsh_attn_chunk_length=8, local_attn_chunk_length=16,
        chunk_size_feed_forward=8, chunk_size_lm_head=16, hidden_act="gelu", layer_norm_eps=1e-6,
        lsh_attention_probs_dropout_prob=0.1, local_attention_probs_dropout_prob=0.2, hidden_dropout_prob=0.3,
        axial_pos_shape=(8, 16), axial_pos_embds_dim=(4, 12), max_position_embeddings=128, axial_norm_std=0.5,
        eos_token_id=2, bos_token_id=1, pad_token_id=3, use_cache=False, classifier_dropout=0.25,
        id2label={0: "no", 1: "yes"},
    )
    ours = conversion.config_from_transformers(config, "ReformerModelWithLMHead")
    for name in conversion.SAME_FIELDS:
        expected = getattr(config, name)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert getattr(ours, name) == expected, name
    assert ours.lsh_attention_probs_dropout == 0.1 and ours.local_attention_probs_dropout == 0.2
    assert ours.num_hidden_layers == 3 and ours.id2label == {0: "no", 1: "yes"}
    assert ours.lsh_window_mode == "chunk"
    assert not ours.local_attn_wrap_around  # causal: the wrapped keys would be masked anyway
    assert conversion.config_from_transformers(source_config(), "ReformerModel").local_attn_wrap_around


@pytest.mark.parametrize(
    "overrides, architecture, field",
    [
        (dict(hidden_act="gelu_fast"), "ReformerModel", "hidden_act"),
        (dict(num_buckets=[2, 2, 2]), "ReformerModel", "num_buckets"),
        (dict(lsh_attn_chunk_length=None), "ReformerModel", "lsh_attn_chunk_length"),
        (dict(output_attentions=True), "ReformerModel", "output_attentions"),
        (dict(is_decoder=True), "ReformerForSequenceClassification", "is_decoder"),
        (dict(), "ReformerForMaskedLM", "architecture"),
        (dict(is_decoder=True, tie_word_embeddings=True), "ReformerModelWithLMHead", "tie_word_embeddings"),
    ],
)
def test_unmappable_settings_are_refused_by_name(overrides, architecture, field):
    with pytest.raises(ValueError, match=field):
        conversion.config_from_transformers(source_config(**overrides), architecture)


def test_conflicting_num_buckets_override_is_refused():
    with pytest.raises(ValueError, match="num_buckets=8 conflicts"):
        conversion.config_from_transformers(source_config(num_buckets=4), "ReformerModel", num_buckets=8)


def test_unknown_weight_is_refused_by_name():
    with pytest.raises(ValueError, match="reformer.encoder.layers.0.attention.rotation"):
        conversion.target_weight_name("reformer.encoder.layers.0.attention.rotation", "ReformerModelWithLMHead")


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_to_transformers_round_trips(case):
    source = build_source(case).eval()
    exported = conversion.convert_to_transformers_model(conversion.convert_transformers_model(source))
    assert type(exported) is type(source) and not exported.training
    exported_weights = exported.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(exported_weights[name], tensor), name
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 19), generator=torch.Generator().manual_seed(8))
    assert torch.equal(first_output(exported, input_ids), first_output(source, input_ids))


def test_exported_native_model_computes_the_same_logits():
    config = reformer_hf.ReformerConfig(
        vocab_size=VOCAB_SIZE, hidden_size=16, num_attention_heads=2, attention_head_size=None, feed_forward_size=24,
        is_decoder=True,
        attn_layers=["local", "lsh", "lsh"], lsh_window_mode="chunk", num_hashes=2, num_buckets=4, hash_seed=5,
        lsh_attn_chunk_length=4, local_attn_chunk_length=8, axial_pos_shape=(4, 8), axial_pos_embds_dim=(6, 10),
        max_position_embeddings=32, hidden_dropout_prob=0.0, local_attention_probs_dropout=0.0, initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = reformer_hf.ReformerForCausalLM(config).eval()
    exported = conversion.convert_to_transformers_model(model)
    assert isinstance(exported, transformers.ReformerModelWithLMHead)
    assert exported.config.attention_head_size == 8
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 29), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(first_output(exported, input_ids), first_output(model, input_ids), atol=TOLERANCE, rtol=0)
    with torch.no_grad():
        model.lm_head.bias.fill_(0.5)
    _, bias_applied = compat.lm_head_bias_names(exported.state_dict())
    if not bias_applied:  # transformers 5.0-5.24: its logits would lack the bias
        with pytest.raises(ValueError, match="lm_head.bias is non-zero"):
            conversion.convert_to_transformers_model(model)
    else:
        exported = conversion.convert_to_transformers_model(model)
        torch.testing.assert_close(first_output(exported, input_ids), first_output(model, input_ids),
                                   atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(attn_layers=["lsh"], lsh_window_mode="bucket_window"), "lsh_window_mode"),
        (dict(attn_layers=["full", "lsh"], lsh_window_mode="chunk"), "attn_layers"),
        (dict(attn_layers=["local"], local_attn_wrap_around=False), "local_attn_wrap_around"),
        (dict(attn_layers=["local"], axial_pos_shape=(2, 4, 4), axial_pos_embds_dim=(4, 6, 6)), "axial_pos_shape"),
    ],
)
def test_export_refuses_what_transformers_cannot_compute(overrides, field):
    fields = dict(hidden_size=16, feed_forward_size=8, axial_pos_shape=(4, 8), axial_pos_embds_dim=(6, 10),
                  max_position_embeddings=32, local_attn_wrap_around=True)
    fields.update(overrides)
    model = reformer_hf.ReformerModel(reformer_hf.ReformerConfig(**fields))
    with pytest.raises(ValueError, match=field):
        conversion.convert_to_transformers_model(model)


def save_source_checkpoint(folder, case="local_causal_plain_positions_chunked_ff", **overrides):
    """A transformers checkpoint folder with a real (tiny BPE) ReformerTokenizer beside the weights."""
    architecture, case_overrides, _ = CASES[case]
    torch.manual_seed(0)
    source = getattr(transformers, architecture)(source_config(**{**case_overrides, **overrides})).eval()
    source.save_pretrained(folder)
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for char in "abcdefghijklmnopqrstuvwxyz\u2581":
        vocab[char] = len(vocab)
    merges = [("t", "h"), ("th", "e"), ("\u2581", "the")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    transformers.ReformerTokenizer(vocab=vocab, merges=merges, pad_token="<pad>").save_pretrained(folder)
    return source


@pytest.mark.parametrize("use_cache", [False, True])
def test_converted_checkpoint_generates_transformers_tokens(tmp_path, use_cache):
    # one token at a time through transformers' cache: no feed-forward chunks longer than 1
    source = save_source_checkpoint(tmp_path / "source", chunk_size_feed_forward=0, axial_pos_embds=True,
                                    axial_pos_shape=(8, 16), max_position_embeddings=128)
    conversion.convert_transformers_checkpoint(tmp_path / "source", tmp_path / "converted")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "converted")
    assert isinstance(model, reformer_hf.ReformerForCausalLM)
    prompt = tokenizer(["the cat sat on the mat", "a dog"], padding=False)["input_ids"]
    for prompt_ids in prompt:
        input_ids = torch.tensor([prompt_ids])
        settings = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False)
        expected = source.generate(input_ids, **settings)
        generated = model.generate(input_ids, use_cache=use_cache, **settings)
        assert generated.shape == (1, input_ids.shape[1] + 64)
        assert torch.equal(generated, expected)


@pytest.mark.parametrize("use_cache", [False, True])
def test_lsh_model_generates_the_tokens_of_transformers_full_forward_passes(use_cache):
    """transformers' own LSH cache is approximate (docs/parity.md); its use_cache=False is the reference."""
    torch.manual_seed(0)
    source = transformers.ReformerModelWithLMHead(
        source_config(attn_layers=["local", "lsh"], is_decoder=True, num_hashes=2, axial_pos_shape=(8, 16),
                      max_position_embeddings=128)
    ).eval()
    model = conversion.convert_transformers_model(source)
    input_ids = torch.randint(1, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(7))
    settings = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False)
    expected = source.generate(input_ids, use_cache=False, **settings)
    assert torch.equal(model.generate(input_ids, use_cache=use_cache, **settings), expected)


def test_incomplete_checkpoint_is_refused(tmp_path):
    save_source_checkpoint(tmp_path / "source")
    weights = load_file(tmp_path / "source" / "model.safetensors")
    del weights["reformer.encoder.layers.1.feed_forward.output.dense.bias"]
    save_file(weights, tmp_path / "source" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*layers.1.feed_forward.output.dense.bias"):
        conversion.convert_transformers_checkpoint(tmp_path / "source", tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_a_reformer_hf_folder_is_refused(tmp_path):
    reformer_hf.ReformerModel(reformer_hf.ReformerConfig(hidden_size=16, axial_pos_embds_dim=(6, 10),
                                                         axial_pos_shape=(4, 8), max_position_embeddings=32,
                                                         feed_forward_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='reformer_hf'"):
        conversion.load_transformers_checkpoint(tmp_path)


def load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_from_transformers.py"
    spec = importlib.util.spec_from_file_location("convert_from_transformers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_converts_and_verifies_a_checkpoint_without_hash_seed(tmp_path, capsys):
    save_source_checkpoint(tmp_path / "source", case="mixed_causal_4_rounds_factorised_buckets_chunked_ff",
                           hash_seed=None, num_buckets=None)
    assert load_script().main([str(tmp_path / "source"), str(tmp_path / "converted")]) == 0
    printed = capsys.readouterr().out
    assert "num_buckets=None" in printed
    difference = float(printed.rsplit("random tokens: ", 1)[1].split()[0])
    assert difference <= TOLERANCE
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    assert model.config.hash_seed is None and model.config.lsh_window_mode == "chunk"
    assert (tmp_path / "converted" / "tokenizer.json").is_file()


def test_script_reports_a_refusal_without_writing(tmp_path, capsys):
    save_source_checkpoint(tmp_path / "source", hidden_act="gelu_fast")
    assert load_script().main([str(tmp_path / "source"), str(tmp_path / "converted")]) == 1
    assert "hidden_act='gelu_fast'" in capsys.readouterr().err
    assert not (tmp_path / "converted").exists()
