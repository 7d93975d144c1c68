"""The reversible stack against plain autograd, its memory, and its precision."""

import copy

import pytest
import torch

from reformer_hf import ReformerForCausalLM, ReformerModel
from tiny_models import tiny_config


def paired_models(dtype, **overrides):
    """The same weights twice: reversible, and plain residuals through ordinary autograd."""
    torch.manual_seed(0)
    reversible = ReformerForCausalLM(tiny_config(reversible=True, **overrides)).to(dtype)
    plain = copy.deepcopy(reversible)
    plain.config.reversible = False
    plain.reformer.encoder.reversible = False
    return reversible, plain


def gradients(model, input_ids, dtype, seed):
    model.train()
    embeds = model.reformer.embeddings.word_embeddings(input_ids).detach().to(dtype).requires_grad_(True)
    torch.manual_seed(seed)  # the per-layer seeds (dropout, rotations) come from the global generator
    loss = model(inputs_embeds=embeds, labels=input_ids).loss
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["inputs_embeds"] = embeds.grad.clone()
    return loss.detach(), grads


@pytest.mark.parametrize("kind", ["lsh", "local", "full"])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_reversible_gradients_equal_plain_autograd(kind, dtype, atol):
    overrides = dict(attn_layers=[kind, kind], hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.1,
                     local_attention_probs_dropout=0.1, full_attention_probs_dropout=0.1, num_hashes=3,
                     hash_seed=None)
    reversible, plain = paired_models(dtype, **overrides)
    input_ids = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(1))
    loss_rev, grads_rev = gradients(reversible, input_ids, dtype, seed=5)
    loss_plain, grads_plain = gradients(plain, input_ids, dtype, seed=5)
    torch.testing.assert_close(loss_rev, loss_plain, atol=atol, rtol=0)
    assert grads_rev.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_rev[name], grads_plain[name], atol=atol, rtol=0, msg=name)
    assert any(g.abs().sum() > 0 for g in grads_rev.values())


@pytest.mark.parametrize("stored", [1, 2])
def test_stored_top_layers_give_the_gradients_of_plain_autograd(stored):
    """The top `stored` layers keep their graphs (the rest are rebuilt): float64 gradients equal
    plain autograd's, dropout and fresh hash rotations included."""
    overrides = dict(attn_layers=["lsh", "local"], hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.1,
                     local_attention_probs_dropout=0.1, num_hashes=2, hash_seed=None,
                     reversible_stored_layers=stored)
    stored_model, plain = paired_models(torch.float64, **overrides)
    assert stored_model.reformer.encoder.stored_layers == stored
    input_ids = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(1))
    loss, grads = gradients(stored_model, input_ids, torch.float64, seed=5)
    expected_loss, expected_grads = gradients(plain, input_ids, torch.float64, seed=5)
    torch.testing.assert_close(loss, expected_loss, atol=1e-10, rtol=0)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-10, rtol=0, msg=name)


def saved_activation_bytes(n_layers, reversible, stored=0):
    """Bytes of every tensor autograd keeps for backward, parameters (and views of them) aside."""
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(attn_layers=["local", "lsh"] * (n_layers // 2), reversible=reversible,
                                            reversible_stored_layers=stored))
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    input_ids = torch.randint(0, 40, (2, 48), generator=torch.Generator().manual_seed(1))
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.untyped_storage().data_ptr() not in parameter_storages:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()  # outside the hooks: the layer-by-layer recomputation is transient, not kept
    return total


def test_activation_memory_is_flat_in_depth():
    reversible = [saved_activation_bytes(n, reversible=True) for n in (2, 4, 8)]
    plain = [saved_activation_bytes(n, reversible=False) for n in (2, 4, 8)]
    assert reversible[0] == reversible[1] == reversible[2]
    per_two_layers = plain[1] - plain[0]
    assert per_two_layers > 0
    assert plain[2] - plain[1] == 2 * per_two_layers  # linear in depth
    assert plain[0] > reversible[0]


def test_stored_top_layers_keep_their_activations_whatever_the_depth():
    """Two stored layers keep what two plain layers keep, on top of the reversible stack's streams."""
    stored = [saved_activation_bytes(n, reversible=True, stored=2) for n in (2, 4, 8)]
    reversible = saved_activation_bytes(4, reversible=True)
    two_plain_layers = saved_activation_bytes(4, reversible=False) - saved_activation_bytes(2, reversible=False)
    assert stored[1] == stored[2]  # flat in depth
    assert stored[1] - reversible == two_plain_layers


def test_bf16_reconstruction_and_gradients_stay_close():
    torch.manual_seed(0)
    config = tiny_config(attn_layers=["local", "lsh"] * 6, hidden_size=32, attention_head_size=16,
                         axial_pos_embds_dim=[16, 16], feed_forward_size=64)
    model = ReformerModel(config).train()
    layers = model.encoder.layers
    hidden = torch.randn(2, 48, 32)
    seeds = [[11 * i, 11 * i + 1] for i in range(len(layers))]

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x1 = x2 = hidden
        true_inputs = []
        for layer, layer_seeds in zip(layers, seeds):
            true_inputs.append((x1, x2))
            x1, x2 = layer(x1, x2, layer_seeds)
    assert x1.dtype == torch.float32  # the residual streams stay in float32 under autocast

    y1, y2 = x1, x2
    zero = torch.zeros_like(y1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for layer, layer_seeds, (true_x1, true_x2) in zip(reversed(layers), reversed(seeds), reversed(true_inputs)):
            y1, y2, _, _, _ = layer.backward_pass(y1, y2, zero, zero, layer_seeds, None)
            for rebuilt, true in ((y1, true_x1), (y2, true_x2)):
                assert (rebuilt - true).norm() / true.norm() < 1e-2

    input_ids = torch.randint(0, 40, (2, 48), generator=torch.Generator().manual_seed(3))

    def grads(autocast):
        model.zero_grad()
        torch.manual_seed(9)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids).last_hidden_state.float().pow(2).mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    fp32, bf16 = grads(False), grads(True)
    assert (bf16 - fp32).norm() / fp32.norm() < 5e-2


def test_fp16_model_has_no_nan_from_masks():
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config()).half().eval()
    input_ids = torch.randint(0, 40, (2, 30))
    attention_mask = torch.ones(2, 30, dtype=torch.long)
    attention_mask[1, 10:] = 0
    logits = model(input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["lsh", "local", "full"])
def test_float16_autocast_training_step_is_finite(kind):
    """Under float16 autocast the attention products run in float16; their logits come back to
    float32 before masking, since MASK_VALUE and SELF_MASK_VALUE lie outside float16's range (as
    float16 they were -inf, and a query that sees only itself got NaN)."""
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(attn_layers=[kind, kind])).train()
    input_ids = torch.randint(0, 40, (2, 24), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 24, dtype=torch.long)
    attention_mask[1, 19:] = 0
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids, attention_mask=attention_mask, labels=input_ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_reversible_layers_run_autocast_without_its_weight_cache():
    """autocast caches a bfloat16 copy of each weight until its region ends: memory that grows with
    depth.  The reversible layers turn the cache off (forward and rebuild), still under autocast;
    the layers outside the stack (the LM head) keep the user's setting."""
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(reversible=True))
    seen = []

    def record(where):
        def hook(module, args, output):
            seen.append((where, torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled(), output.dtype))
        return hook

    model.reformer.encoder.layers[0].feed_forward.register_forward_hook(record("layer"))
    model.lm_head.register_forward_hook(record("head"))
    input_ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
    layer_calls = [entry for entry in seen if entry[0] == "layer"]
    assert len(layer_calls) == 2  # forward, and the rebuild in the backward pass
    assert all(enabled and not cached for _, enabled, cached, _ in layer_calls)
    assert ("head", True, True, torch.bfloat16) in seen


# ------------------------------------------------------------------------------------ gradient checkpointing


def enable_checkpointing(model):
    """transformers' switch: activation_checkpointing_enable from 5.25 on, gradient_checkpointing_enable before."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def test_gradient_checkpointing_recomputes_each_plain_layer_with_the_same_gradients():
    """reversible=False: each layer runs again in the backward pass from its saved input, under the
    same seeds (dropout masks, fresh hash rotations), so the float64 gradients equal plain autograd's
    exactly, and autograd keeps fewer activations."""
    overrides = dict(attn_layers=["lsh", "local", "full"], hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.1,
                     local_attention_probs_dropout=0.1, full_attention_probs_dropout=0.1, hash_seed=None)
    _, plain = paired_models(torch.float64, **overrides)
    checkpointed = copy.deepcopy(plain)
    enable_checkpointing(checkpointed)
    assert checkpointed.reformer.encoder.gradient_checkpointing
    calls = []
    checkpointed.reformer.encoder.layers[1].attention.register_forward_pre_hook(lambda *args: calls.append(1))
    input_ids = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(1))
    loss, grads = gradients(checkpointed, input_ids, torch.float64, seed=5)
    expected_loss, expected_grads = gradients(plain, input_ids, torch.float64, seed=5)
    assert len(calls) == 2  # forward, and again in the backward pass
    torch.testing.assert_close(loss, expected_loss, atol=1e-12, rtol=0)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-12, rtol=0, msg=name)

    def kept_bytes(model):
        model.train()
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids, labels=input_ids).loss.backward()
        return total

    assert kept_bytes(checkpointed) < kept_bytes(plain) / 2


def test_gradient_checkpointing_of_a_reversible_stack_changes_nothing_and_says_so(caplog):
    from reformer_hf.reversible import _note_checkpointing_is_a_no_op

    _note_checkpointing_is_a_no_op.cache_clear()
    reversible, _ = paired_models(torch.float64, attn_layers=["lsh", "local"], hidden_dropout_prob=0.1)
    checkpointed = copy.deepcopy(reversible)
    with caplog.at_level("WARNING", logger="reformer_hf.reversible"):
        enable_checkpointing(checkpointed)
        enable_checkpointing(copy.deepcopy(reversible))
    notes = [record for record in caplog.records if "changes nothing in a reversible stack" in record.message]
    assert len(notes) == 1
    calls = []
    checkpointed.reformer.encoder.layers[1].attention.register_forward_pre_hook(lambda *args: calls.append(1))
    input_ids = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(1))
    loss, grads = gradients(checkpointed, input_ids, torch.float64, seed=5)
    expected_loss, expected_grads = gradients(reversible, input_ids, torch.float64, seed=5)
    assert len(calls) == 2  # forward, and the reversible rebuild; no third (checkpoint) pass
    assert torch.equal(loss, expected_loss)
    for name in expected_grads:
        assert torch.equal(grads[name], expected_grads[name]), name
