"""Model-level properties: causality, padding, chunking, heads, save/load, and learning real text."""

import copy
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from reformer_hf import ReformerForCausalLM, ReformerForSequenceClassification, ReformerModel
from tiny_models import tiny_config


def eval_model(**overrides):
    torch.manual_seed(0)
    return ReformerForCausalLM(tiny_config(**overrides)).eval()


@pytest.mark.parametrize("kind", ["local", "full", "lsh"])
def test_perturbing_a_token_never_changes_earlier_outputs(kind):
    # random embeddings of unit scale, so that a perturbation really moves tokens between buckets
    model = eval_model(attn_layers=[kind, kind], num_hashes=2, num_buckets=4)
    generator = torch.Generator().manual_seed(3)
    for seed in range(4):
        model.config.hash_seed = seed
        length = int(torch.randint(5, 40, (1,), generator=generator))
        inputs_embeds = torch.randn(1, length, 16, generator=generator)
        t = int(torch.randint(0, length, (1,), generator=generator))
        perturbed = inputs_embeds.clone()
        perturbed[0, t] = 3 * torch.randn(16, generator=generator)
        with torch.no_grad():
            before, after = model(inputs_embeds=inputs_embeds).logits, model(inputs_embeds=perturbed).logits
        torch.testing.assert_close(before[:, :t], after[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(before[:, t:], after[:, t:])


def test_chunk_window_lets_later_tokens_change_earlier_outputs():
    # In "chunk" mode a later token's bucket shifts the sorted chunk boundaries, so a query's
    # visible keys depend on the future: some perturbation of a late token moves an early output.
    model = eval_model(attn_layers=["lsh"], num_hashes=1, num_buckets=8, lsh_window_mode="chunk")
    generator = torch.Generator().manual_seed(0)
    inputs_embeds = torch.randn(1, 32, 16, generator=generator)
    with torch.no_grad():
        reference = model(inputs_embeds=inputs_embeds).logits
        leaked = False
        for _ in range(10):
            perturbed = inputs_embeds.clone()
            perturbed[0, 31] = 3 * torch.randn(16, generator=generator)
            leaked |= not torch.allclose(model(inputs_embeds=perturbed).logits[:, :31], reference[:, :31], atol=1e-6)
    assert leaked


def test_chunked_loss_normalises_chunk_by_chunk():
    """With chunk_size_lm_head the final layer norm, like the LM head, sees one chunk at a time
    (forward and recomputation): the (length, 2 * hidden) normalised states are never built."""
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(chunk_size_lm_head=7))
    lengths = []
    model.reformer.layer_norm.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    input_ids = torch.randint(0, 40, (2, 30))
    model(input_ids, labels=input_ids).loss.backward()
    assert lengths[:5] == [7, 7, 7, 7, 2] and sorted(lengths[5:]) == [2, 7, 7, 7, 7]  # forward; each rebuilt
    lengths.clear()
    assert model(input_ids).logits.shape[1] == 30 and lengths == [30]  # no labels: the whole sequence


def test_chunked_loss_equals_full_loss_and_gradients():
    torch.manual_seed(0)
    full = ReformerForCausalLM(tiny_config(chunk_size_lm_head=0))
    chunked = ReformerForCausalLM(tiny_config(chunk_size_lm_head=7))
    chunked.load_state_dict(full.state_dict())
    input_ids = torch.randint(0, 40, (2, 30))
    labels = input_ids.clone()
    labels[0, :5] = -100
    losses, grads = [], []
    for model in (full, chunked):
        torch.manual_seed(1)
        output = model(input_ids, labels=labels)
        output.loss.backward()
        losses.append(output.loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert chunked(input_ids, labels=labels).logits is None
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)
    expected = torch.nn.functional.cross_entropy(full(input_ids).logits[:, :-1].reshape(-1, 40),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(losses[0], expected, atol=1e-6, rtol=0)


def test_every_length_runs_in_train_and_eval():
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(lsh_window_mode="chunk"))  # lcm of chunks 4 and 6 = 12
    for length in range(1, 3 * 12 + 2):
        input_ids = torch.randint(0, 40, (2, length))
        model.train()
        output = model(input_ids, labels=input_ids)
        assert output.logits.shape == (2, length, 40)
        # One position has no next token: the mean over no target is NaN, as in transformers.
        assert bool(torch.isfinite(output.loss)) == (length > 1)
        if length > 1:
            output.loss.backward()
        model.eval()
        with torch.no_grad():
            assert model(input_ids).logits.shape == (2, length, 40)


@pytest.mark.parametrize("kind", ["local", "full", "lsh"])
def test_padding_never_changes_real_outputs(kind):
    model = eval_model(attn_layers=[kind, kind])
    input_ids = torch.randint(0, 40, (1, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids).logits
        for extra in (1, 7, 30):
            padded = torch.cat([input_ids, torch.zeros(1, extra, dtype=torch.long)], dim=1)
            mask = torch.cat([torch.ones(1, 17), torch.zeros(1, extra)], dim=1).long()
            logits = model(padded, attention_mask=mask).logits
            torch.testing.assert_close(logits[:, :17], reference, atol=1e-6, rtol=0)


def test_batch_of_different_lengths_matches_single_sequences():
    torch.manual_seed(0)
    model = ReformerModel(tiny_config(attn_layers=["lsh", "local"], is_decoder=False, local_num_chunks_after=1,
                                      lsh_num_chunks_after=1)).eval()
    lengths = (9, 14)
    sequences = [torch.randint(1, 40, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    batch = torch.zeros(2, 14, dtype=torch.long)
    mask = torch.zeros(2, 14, dtype=torch.long)
    for row, seq in enumerate(sequences):
        batch[row, : seq.shape[1]] = seq
        mask[row, : seq.shape[1]] = 1
    with torch.no_grad():
        batched = model(batch, attention_mask=mask).last_hidden_state
        for row, seq in enumerate(sequences):
            single = model(seq).last_hidden_state[0]
            torch.testing.assert_close(batched[row, : seq.shape[1]], single, atol=1e-6, rtol=0)


def test_too_long_input_is_refused_before_any_work():
    model = eval_model()
    with pytest.raises(ValueError, match="position_ids hold values from 0 to 128; allowed are 0 to 127"):
        model(torch.zeros(1, 129, dtype=torch.long))


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(input_ids=torch.tensor([[5, 40, 6]])), r"input_ids hold values from 5 to 40; allowed are token ids 0 to 39"),
        (dict(input_ids=torch.tensor([[5, -1, 6]])), r"input_ids hold values from -1 to 6; allowed are token ids 0 to 39"),
        (dict(input_ids=torch.tensor([[5, 6, 7]]), position_ids=torch.tensor([[-10, -9, -8]])),
         r"position_ids hold values from -10 to -8; allowed are 0 to 127"),
        (dict(inputs_embeds=torch.zeros(1, 3, 16), position_ids=torch.tensor([[126, 127, 128]])),
         r"position_ids hold values from 126 to 128; allowed are 0 to 127"),
    ],
)
def test_out_of_range_token_and_position_ids_are_refused_naming_the_argument(inputs, message):
    """Negative positions used to wrap (-10..-1 gave the logits of 118..127) and bad token ids gave
    an IndexError from the embedding."""
    model = eval_model()
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_a_decoding_step_checks_its_indices_without_reading_them_on_the_host():
    """On the CPU the check of a step after the cache is the same host check; on a GPU it is a device
    assertion (_check_index_ranges), so the step never waits for the answer."""
    model = ReformerForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        cache = model(torch.tensor([[5, 6, 7]]), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="input_ids hold values from 40 to 40"):
            model(torch.tensor([[40]]), past_key_values=cache)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(), "exactly one of input_ids and inputs_embeds"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), inputs_embeds=torch.zeros(1, 4, 16)), "exactly one"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5)), "attention_mask has shape"),
        (dict(inputs_embeds=torch.zeros(1, 4, 8)), "inputs_embeds has last dimension 8"),
        (dict(input_ids=torch.zeros(0, 4, dtype=torch.long)), r"shape \(batch >= 1, length >= 1\), got \(0, 4\)"),
        (dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), r"shape \(batch >= 1, length >= 1\), got \(2, 0\)"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), output_attentions=True), "output_attentions"),
        (dict(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 5, dtype=torch.long)), "labels has shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        eval_model()(**kwargs)


def test_causal_lm_requires_a_decoder_config():
    with pytest.raises(ValueError, match="is_decoder=True"):
        ReformerForCausalLM(tiny_config(is_decoder=False))


def test_inputs_embeds_equal_input_ids_path():
    model = eval_model()
    input_ids = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        by_ids = model(input_ids).logits
        by_embeds = model(inputs_embeds=model.reformer.embeddings.word_embeddings(input_ids)).logits
    torch.testing.assert_close(by_embeds, by_ids, atol=0, rtol=0)


def test_logits_to_keep_are_the_last_positions_of_all_logits():
    model = eval_model()
    input_ids = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        every = model(input_ids).logits
        last = model(input_ids, logits_to_keep=3).logits
    assert last.shape == (2, 3, 40)
    torch.testing.assert_close(last, every[:, -3:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares the kernel under Triton's interpreter")
def test_lm_head_input_is_the_final_norm_in_autocast_dtype_through_the_kernel(monkeypatch):
    """Where the layer norm kernel runs, the head reads the final norm written in autocast's dtype
    in one pass: the float32 norm `final_output` gives, rounded once, and the same gradients."""
    pytest.importorskip("triton")
    from reformer_hf import kernels, kernels_norm, layer_norm

    monkeypatch.setattr(layer_norm, "FUSED_FROM_ROWS", 1)
    model = eval_model()
    with torch.no_grad():  # a norm away from its identity start
        model.reformer.layer_norm.weight.uniform_(0.5, 1.5)
        model.reformer.layer_norm.bias.uniform_(-0.2, 0.2)
    generator = torch.Generator().manual_seed(4)
    y1, y2 = (torch.randn(2, 24, 16, generator=generator).requires_grad_(True) for _ in range(2))
    grad = torch.randn(2, 24, 32, generator=generator)
    calls, original = [], kernels.layer_norm_forward

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    for module in (kernels, kernels_norm):  # the entry point head_input calls, the one LayerNormFunction calls
        monkeypatch.setattr(module, "layer_norm_forward", counting)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model.reformer.head_input(y1, y2)
        reference = model.reformer.final_output(y1, y2)
    assert fused.dtype == torch.bfloat16 and reference.dtype == torch.float32
    assert calls == [(2, 24, 32)]
    torch.testing.assert_close(fused, reference.to(torch.bfloat16), rtol=0, atol=0)
    fused_grads = torch.autograd.grad(fused, (y1, y2, model.reformer.layer_norm.weight), grad.to(torch.bfloat16))
    reference_grads = torch.autograd.grad(reference, (y1, y2, model.reformer.layer_norm.weight),
                                          grad.to(torch.bfloat16).float())
    for actual, expected in zip(fused_grads, reference_grads):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_hidden_states_and_tuple_outputs():
    model = eval_model()
    input_ids = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        output = model(input_ids, output_hidden_states=True)
        as_tuple = model(input_ids, return_dict=False)
    assert len(output.hidden_states) == 4 and output.hidden_states[0].shape == (2, 11, 32)
    torch.testing.assert_close(as_tuple[0], output.logits, atol=0, rtol=0)


def test_save_load_round_trip_and_auto_classes(tmp_path):
    model = eval_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "ReformerConfig"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, ReformerForCausalLM) and not loaded.training
    input_ids = torch.randint(0, 40, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)
    assert isinstance(AutoModel.from_config(loaded.config), ReformerModel)
    assert isinstance(AutoModelForSequenceClassification.from_config(loaded.config), ReformerForSequenceClassification)


def classifier(num_labels, problem_type=None, is_decoder=False):
    torch.manual_seed(0)
    config = tiny_config(num_labels=num_labels, problem_type=problem_type, is_decoder=is_decoder)
    return ReformerForSequenceClassification(config).eval()


def test_classification_losses_match_their_definitions():
    input_ids = torch.randint(0, 40, (3, 10))
    model = classifier(3)
    labels = torch.tensor([0, 2, 1])
    output = model(input_ids, labels=labels)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    assert model.config.problem_type == "single_label_classification"

    model = classifier(3, "multi_label_classification")
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])
    output = model(input_ids, labels=targets)
    torch.testing.assert_close(output.loss, torch.nn.functional.binary_cross_entropy_with_logits(output.logits, targets))

    model = classifier(1)
    values = torch.tensor([0.5, -1.0, 2.0])
    output = model(input_ids, labels=values)
    torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), values))


def test_causal_classifier_pools_the_last_real_token():
    model = classifier(2, is_decoder=True)
    input_ids = torch.randint(1, 40, (1, 9))
    padded = torch.cat([input_ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits, model(input_ids).logits,
                                   atol=1e-6, rtol=0)


def stdlib_bytes(limit):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(chunks)[:limit]


def test_two_layer_model_learns_real_text_below_unigram_entropy():
    text = torch.tensor(list(stdlib_bytes(400_000)), dtype=torch.long)
    counts = torch.bincount(text, minlength=256).float()
    probs = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(probs * probs.log()).sum())  # nats per byte

    torch.manual_seed(0)
    config = tiny_config(vocab_size=256, hidden_size=64, attention_head_size=32, axial_pos_embds_dim=[32, 32],
                         feed_forward_size=128, attn_layers=["local", "lsh"], lsh_attn_chunk_length=16,
                         local_attn_chunk_length=16, num_buckets=8, num_hashes=2, hash_seed=None)
    model = ReformerForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    seq_len, batch = 128, 8
    train, held_out = text[:350_000], text[350_000:]
    for step in range(200):
        starts = torch.randint(0, len(train) - seq_len, (batch,), generator=generator)
        input_ids = torch.stack([train[s : s + seq_len] for s in starts])
        loss = model(input_ids, labels=input_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    starts = torch.arange(0, 16 * seq_len, seq_len)
    input_ids = torch.stack([held_out[s : s + seq_len] for s in starts])
    with torch.no_grad():
        held_out_loss = float(model(input_ids, labels=input_ids).loss)
    assert held_out_loss < 0.8 * unigram_entropy, (held_out_loss, unigram_entropy)
    assert math.isfinite(held_out_loss)


# ------------------------------------------------------------------------------------ hidden states under autograd


def keep_layer_stream_gradients(layers):
    """Forward hooks on `layers` (ReversibleLayer, in order) that make each layer's two input streams
    and the last layer's two outputs distinct graph nodes keeping their gradients: by plain
    autograd, the gradient of every state between layers.  Returns the kept (x1, x2) pairs."""
    kept = []

    def kept_pair(x1, x2):
        x1, x2 = x1.clone(), x2.clone()
        x1.retain_grad()
        x2.retain_grad()
        kept.append((x1, x2))
        return x1, x2

    for layer in layers:
        layer.register_forward_pre_hook(lambda module, args: (*kept_pair(*args[:2]), *args[2:]))
    layers[-1].register_forward_hook(lambda module, args, output: kept_pair(*output))
    return kept


def hidden_state_gradients(model, loss_of, stacks, length, **inputs):
    """Loss, parameter gradients and hidden state gradients of `model` (train mode, dropout off),
    once with output_hidden_states (the gradients of the returned states) and once from a plain
    copy through hooks (the reference).  stacks: model -> [(output field, ReversibleLayer list)]."""
    reference = copy.deepcopy(model)
    for _, layers in stacks(reference):
        layers.reversible = False
    kept = {field: keep_layer_stream_gradients(list(layers.layers)) for field, layers in stacks(reference)}
    results = []
    for candidate, hidden_states in ((model, True), (reference, False)):
        candidate.train()
        output = candidate(**inputs, output_hidden_states=hidden_states)
        if hidden_states:
            for field, _ in stacks(model):
                for state in output[field]:
                    state.retain_grad()
        loss = loss_of(output)
        loss.backward()
        params = {name: p.grad.clone() for name, p in candidate.named_parameters() if p.grad is not None}
        if hidden_states:
            states = {field: [state.grad for state in output[field]] for field, _ in stacks(model)}
        else:
            states = {field: [torch.cat([x1.grad, x2.grad], dim=-1)[:, :length] for x1, x2 in pairs]
                      for field, pairs in kept.items()}
        results.append((loss.detach(), params, states))
    return results


def assert_same_gradients(actual, expected):
    (loss, params, states), (expected_loss, expected_params, expected_states) = actual, expected
    torch.testing.assert_close(loss, expected_loss, atol=1e-12, rtol=0)
    assert params.keys() == expected_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], expected_params[name], atol=1e-12, rtol=0, msg=name)
    for field in expected_states:
        assert len(states[field]) == len(expected_states[field]) == 4
        for index, (grad, expected_grad) in enumerate(zip(states[field], expected_states[field])):
            assert grad is not None, (field, index)
            assert expected_grad.abs().sum() > 0
            torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0, msg=f"{field}[{index}]")


def encoder_stack(model):
    return [("hidden_states", model.reformer.encoder)]


@pytest.mark.parametrize("reversible", [True, False])
@pytest.mark.parametrize("head", ["model", "causal_lm", "causal_lm_chunked_loss", "classification"])
def test_returned_hidden_states_carry_the_gradients_of_plain_autograd(head, reversible):
    """hidden_states[i] is the state the layers above read, so its gradient is the loss's gradient
    with respect to that state (float64, against hooks on a plain copy's layers), and asking for
    the states changes neither the loss nor any parameter gradient."""
    torch.manual_seed(0)
    config = tiny_config(reversible=reversible, chunk_size_lm_head=5 if head == "causal_lm_chunked_loss" else 0,
                         is_decoder=head != "classification", num_labels=3)
    input_ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))  # padded to 12 inside
    if head == "model":
        model = ReformerModel(config)
        weights = torch.randn(2, 10, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        loss_of, inputs = (lambda output: (output.last_hidden_state * weights).sum()), dict(input_ids=input_ids)
        stacks = lambda model: [("hidden_states", model.encoder)]  # noqa: E731
    elif head == "classification":
        model = ReformerForSequenceClassification(config)
        loss_of, inputs, stacks = (lambda output: output.loss), dict(input_ids=input_ids,
                                                                      labels=torch.tensor([0, 2])), encoder_stack
    else:
        model = ReformerForCausalLM(config)
        loss_of, inputs, stacks = (lambda output: output.loss), dict(input_ids=input_ids, labels=input_ids), encoder_stack
    actual, expected = hidden_state_gradients(model.double(), loss_of, stacks, 10, **inputs)
    assert_same_gradients(actual, expected)


@pytest.mark.parametrize("reversible", [True, False])
def test_seq2seq_hidden_states_carry_the_gradients_of_plain_autograd(reversible):
    """The encoder's and the decoder's returned states, as the test above (the encoder states also
    receive the gradient that reaches them through the cross attention of every decoder layer)."""
    from reformer_hf import ReformerConfig, ReformerForConditionalGeneration

    torch.manual_seed(0)
    config = ReformerConfig(
        vocab_size=50, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=32,
        attn_layers=["local", "lsh", "full"], decoder_attn_layers=["full", "local", "lsh"], num_hashes=2,
        num_buckets=4, lsh_attn_chunk_length=4, local_attn_chunk_length=6, axial_pos_embds=False,
        max_position_embeddings=64, is_encoder_decoder=True, hidden_dropout_prob=0.0,
        local_attention_probs_dropout=0.0, lsh_attention_probs_dropout=0.0, full_attention_probs_dropout=0.0,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, hash_seed=7, reversible=reversible,
    )
    model = ReformerForConditionalGeneration(config).double()
    source = torch.randint(3, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, 50, (2, 10), generator=torch.Generator().manual_seed(2))

    def stacks(model):
        return [("encoder_hidden_states", model.encoder.encoder), ("decoder_hidden_states", model.decoder.layers)]

    actual, expected = hidden_state_gradients(model, lambda output: output.loss, stacks, 10, input_ids=source,
                                              labels=labels)
    assert_same_gradients(actual, expected)


# ------------------------------------------------------------------------------------ labels with nothing to count


def transformers_losses_without_targets():
    """transformers' own heads on tiny random configs, labels all -100: the convention to follow."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    input_ids = torch.randint(0, 40, (2, 6))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    bert = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=3))
    return (llama(input_ids, labels=torch.full_like(input_ids, -100)).loss,
            bert(input_ids, labels=torch.full((2,), -100)).loss)


@pytest.mark.parametrize("head", ["causal_lm", "causal_lm_chunked_loss", "classification", "seq2seq"])
def test_labels_all_ignored_give_nan_as_transformers_heads_do(head):
    """No counted target: the mean over no item is NaN (0 / 0) in every head, as in transformers'
    LlamaForCausalLM and BertForSequenceClassification; under gradient accumulation a micro-batch
    without targets adds 0 to the step's sum (num_items_in_batch counts the whole step's), and
    num_items_in_batch=0 is NaN again."""
    assert all(torch.isnan(loss) for loss in transformers_losses_without_targets())
    torch.manual_seed(0)
    input_ids = torch.randint(0, 40, (2, 10))
    if head == "seq2seq":
        from reformer_hf import ReformerConfig, ReformerForConditionalGeneration

        model = ReformerForConditionalGeneration(ReformerConfig(
            vocab_size=40, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=32,
            attn_layers=["local"], decoder_attn_layers=["full"], local_attn_chunk_length=6, axial_pos_embds=False,
            max_position_embeddings=64, is_encoder_decoder=True, pad_token_id=0, eos_token_id=2,
            decoder_start_token_id=0))
        inputs = dict(input_ids=input_ids, decoder_input_ids=input_ids)
    elif head == "classification":
        model, inputs = classifier(3), dict(input_ids=input_ids)
    else:
        model = ReformerForCausalLM(tiny_config(chunk_size_lm_head=4 if head == "causal_lm_chunked_loss" else 0))
        inputs = dict(input_ids=input_ids)
    labels = torch.full((2,) if head == "classification" else (2, 10), -100)
    loss = model(**inputs, labels=labels).loss
    assert torch.isnan(loss)
    assert model(**inputs, labels=labels, num_items_in_batch=torch.tensor(7)).loss.item() == 0.0
    assert torch.isnan(model(**inputs, labels=labels, num_items_in_batch=torch.tensor(0)).loss)


# ------------------------------------------------------------------------------------ keywords a head does not take


@pytest.mark.parametrize("head", ["model", "causal_lm", "classification"])
@pytest.mark.parametrize("keyword", ["attention_maks", "decoder_input_ids", "token_type_ids", "labelz"])
def test_unknown_keywords_are_refused_naming_them_before_any_work(head, keyword):
    """forward(**kwargs) swallowed misspelt and foreign keywords.  A head now takes besides its
    named parameters only what transformers' generate() passes (compat.GENERATION_ONLY_ARGUMENTS);
    the bare model has no **kwargs at all (so that generate(), which hands a seq2seq encoder its own
    keywords where the forward looks like it takes any, gives it only those it names)."""
    from reformer_hf import compat

    torch.manual_seed(0)
    config = tiny_config(is_decoder=head != "classification", num_labels=2)
    model = {"model": ReformerModel, "causal_lm": ReformerForCausalLM,
             "classification": ReformerForSequenceClassification}[head](config).eval()
    embedding_calls = []
    model.get_input_embeddings().register_forward_pre_hook(lambda *args: embedding_calls.append(1))
    input_ids = torch.randint(0, 40, (2, 7))
    if head == "model":
        error, message = TypeError, rf"got an unexpected keyword argument '{keyword}'"
    else:
        error, message = ValueError, (rf"{type(model).__name__}.forward got unexpected keyword argument\(s\) "
                                      rf"\['{keyword}'\]; it takes \['input_ids', 'attention_mask',")
    with pytest.raises(error, match=message):
        model(input_ids=input_ids, **{keyword: input_ids})
    assert not embedding_calls
    if head != "model":
        with torch.no_grad():  # what generate() may pass is taken
            reference = model(input_ids=input_ids)[0]
            passed = model(input_ids=input_ids, **{name: None for name in compat.GENERATION_ONLY_ARGUMENTS})[0]
        torch.testing.assert_close(passed, reference, atol=0, rtol=0)


@pytest.mark.parametrize("head, labels, message", [
    ("causal_lm", torch.zeros(3, 7, dtype=torch.long), r"labels has shape \(3, 7\); expected \(2, 7\), one token id"),
    ("causal_lm", torch.zeros(2, 6, dtype=torch.long), r"labels has shape \(2, 6\); expected \(2, 7\)"),
    ("classification", torch.zeros(3, dtype=torch.long), r"labels has shape \(3,\); expected 2 rows, one per example"),
    ("classification", torch.tensor(1), r"labels has shape \(\); expected 2 rows"),
])
def test_labels_of_another_batch_are_refused_before_any_work(head, labels, message):
    """The causal LM checked its labels only after the stack had run; the classifier gave torch's
    'Expected input batch_size (2) to match target batch_size (3)'."""
    torch.manual_seed(0)
    config = tiny_config(is_decoder=head == "causal_lm", num_labels=3)
    model = (ReformerForCausalLM if head == "causal_lm" else ReformerForSequenceClassification)(config)
    embedding_calls = []
    model.get_input_embeddings().register_forward_pre_hook(lambda *args: embedding_calls.append(1))
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.randint(0, 40, (2, 7)), labels=labels)
    assert not embedding_calls
