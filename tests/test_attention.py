"""The attention layers (attention.py): their packed projections, and the full layer against the
reference on its projections."""

import pytest
import torch
from test_attention_functions import right_padding

from reformer_hf.attention import FullSelfAttention, packed_projection
from reformer_hf.attention_functions import full_attention
from reformer_hf.attention_rules import merge_heads, split_heads, unpack_heads


def test_unpack_heads_splits_the_parts_then_the_heads():
    """Part p, head h, feature i of a position sits at column (p * heads + h) * d_head + i."""
    batch, length, heads, d_head = 2, 3, 2, 4
    packed = torch.arange(batch * length * 3 * heads * d_head, dtype=torch.float32).view(batch, length, -1)
    parts = unpack_heads(packed, 3, heads)
    for part, view in enumerate(parts):
        assert view.shape == (batch, heads, length, d_head)
        for head in range(heads):
            start = (part * heads + head) * d_head
            assert torch.equal(view[:, head], packed[:, :, start:start + d_head])
        assert view.data_ptr() == packed.data_ptr() + part * heads * d_head * packed.element_size()  # a view
    with pytest.raises(ValueError, match=r"packed projections have shape \(2, 3, 23\).*n_heads=2"):
        unpack_heads(packed[..., :23], 3, heads)


def test_packed_projection_is_the_projections_side_by_side_and_keeps_their_hooks():
    torch.manual_seed(3)
    projections = [torch.nn.Linear(8, 6, bias=False) for _ in range(3)]
    hidden = torch.randn(2, 5, 8)
    expected = torch.cat([hidden @ projection.weight.T for projection in projections], dim=-1)
    torch.testing.assert_close(packed_projection(hidden, projections), expected)
    calls = []
    handle = projections[1].register_forward_hook(lambda module, args, out: calls.append(out.shape) or out * 2)
    hooked = packed_projection(hidden, projections)
    handle.remove()
    assert calls == [torch.Size([2, 5, 6])]  # a hooked projection is called, and its hook's output used
    torch.testing.assert_close(hooked[..., 6:12], 2 * expected[..., 6:12])
    torch.testing.assert_close(split_heads(hooked[..., :6], 3, 2), unpack_heads(hooked, 3, 3)[0])


@pytest.mark.parametrize("is_decoder", [False, True])
def test_full_layer_equals_the_reference_on_its_projections(is_decoder):
    from reformer_hf import ReformerConfig

    config = ReformerConfig(hidden_size=16, num_attention_heads=2, attention_head_size=8, attn_layers=["full"],
                            axial_pos_embds=False, is_decoder=is_decoder)
    layer = FullSelfAttention(config).double()
    hidden = torch.randn(2, 7, 16, dtype=torch.float64)
    pad_mask = right_padding(2, 7, 3)
    query, key, value = layer.project(hidden)
    expected, _ = full_attention(query, key, value, causal=is_decoder, pad_mask=pad_mask)
    torch.testing.assert_close(layer(hidden, pad_mask), merge_heads(expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("reversible", [False, True])
def test_full_layer_with_dropout_compiles_to_the_eager_step(reversible):
    """A full layer with attention dropout under torch.compile: loss and gradients equal the eager
    step's (float64), the reversible stack's rebuilt layer included."""
    import copy

    from reformer_hf import ReformerForCausalLM
    from tiny_models import tiny_config

    torch._dynamo.reset()
    torch.manual_seed(0)
    config = tiny_config(attn_layers=["full", "local"], full_attention_probs_dropout=0.2, hidden_dropout_prob=0.1,
                         axial_pos_shape=[4, 12], max_position_embeddings=48, reversible=reversible)
    model = ReformerForCausalLM(config).to(torch.float64).train()
    compiled = torch.compile(copy.deepcopy(model), backend="aot_eager")
    input_ids = torch.randint(0, 40, (2, 48), generator=torch.Generator().manual_seed(1))

    def step(module, seed):
        torch.manual_seed(seed)
        loss = module(input_ids=input_ids, labels=input_ids).loss
        module.zero_grad()
        loss.backward()
        return loss.detach(), {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in module.named_parameters()}

    loss, grads = step(model, 5)
    compiled_loss, compiled_grads = step(compiled, 5)
    torch.testing.assert_close(compiled_loss, loss, atol=1e-12, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-12, rtol=0, msg=name)
    assert abs(step(model, 6)[0] - loss) > 1e-6  # dropout is on
