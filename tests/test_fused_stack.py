"""The reversible stack with residual sums fused into the layer norms (fused_stack.py) against the
half-by-half reversible stack and against plain autograd.

The fused stack runs where the blocks' layer norm kernel runs: CUDA autocast at full size, and
here the CPU under Triton's interpreter with autocast, with the kernel's length floor
(`layer_norm.FUSED_FROM_ROWS`) lowered to the tiny model's.  The interpreter rounds every product
and sum on its own, so the two stacks agree bit for bit here; on the GPU a fused multiply-add
makes them differ by rounding (`bench/model.py --check` compares both against float32 there).
"""

import copy

import pytest
import torch

from reformer_hf import ReformerForCausalLM, fused_stack, layer_norm, reversible
from tiny_models import tiny_config

pytest.importorskip("triton", reason="the fused layer norm needs triton")

from reformer_hf import kernels, kernels_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYERS = ["local", "lsh", "local", "lsh"]


# On a GPU the two stacks differ by rounding (a fused multiply-add), so the comparisons below
# are the interpreter's; `bench/model.py --check` compares them on the GPU against float32.
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="compared under Triton's interpreter; on "
                                      "the GPU by bench/model.py --check")


@pytest.fixture
def kernel_norms(monkeypatch):
    monkeypatch.setattr(layer_norm, "FUSED_FROM_ROWS", 1)


def run(model, input_ids, attention_mask, seed, dtype=torch.bfloat16):
    """Loss and every gradient (parameters and the embeddings) of one step."""
    model.train()
    embeds = model.reformer.embeddings.word_embeddings(input_ids).detach().requires_grad_(True)
    torch.manual_seed(seed)  # the per-layer seeds (dropout, rotations) come from the global generator
    with torch.autocast(DEVICE, dtype=dtype):
        output = model(inputs_embeds=embeds, attention_mask=attention_mask, labels=input_ids)
    model.zero_grad()
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["inputs_embeds"] = embeds.grad.clone()
    return output.loss.detach(), grads


def paired(**overrides):
    torch.manual_seed(0)
    fields = dict(attn_layers=LAYERS, hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.1,
                  local_attention_probs_dropout=0.1, hash_seed=None)
    config = tiny_config(**{**fields, **overrides})
    model = ReformerForCausalLM(config).to(DEVICE)
    with torch.no_grad():  # layer norms away from their identity start, so their gradients matter
        for module in model.modules():
            if isinstance(module, layer_norm.ReformerLayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model, copy.deepcopy(model)


def inputs():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 40, (2, 24), generator=generator).to(DEVICE)
    attention_mask = torch.ones(2, 24, dtype=torch.long, device=DEVICE)
    attention_mask[1, 19:] = 0
    return input_ids, attention_mask


def count_fused_sums(monkeypatch):
    calls = []
    original = kernels.layer_norm_forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("residual") is not None)
        return original(*args, **kwargs)

    for module in (kernels, kernels_norm):  # the entry point the stack calls, the one LayerNormFunction calls
        monkeypatch.setattr(module, "layer_norm_forward", counting)
    return calls


# float16 too: the backward pass runs on autograd's thread, where autocast's dtype is the
# device's default (CUDA: float16, CPU: bfloat16), so the fused stack must keep the forward's.
@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_stack_equals_the_half_by_half_stack_bit_for_bit(kernel_norms, monkeypatch, dtype):
    fused, half_by_half = paired()
    input_ids, attention_mask = inputs()
    calls = count_fused_sums(monkeypatch)
    loss, grads = run(fused, input_ids, attention_mask, seed=5, dtype=dtype)
    # 4 layers = 8 halves: 7 sums fused forward, 7 rebuilt sums backward, one plain norm each way;
    # and the final norm over both streams, for the LM head.
    assert calls.count(True) == 14 and calls.count(False) == 3

    monkeypatch.setattr(reversible, "split_halves", lambda *args: None)
    calls.clear()
    expected_loss, expected_grads = run(half_by_half, input_ids, attention_mask, seed=5, dtype=dtype)
    assert not any(calls)  # the blocks' own layer norm kernel, no fused sums
    assert torch.equal(loss, expected_loss)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        assert torch.equal(grads[name], expected_grads[name]), name


@interpreter_only
def test_output_bias_gradients_are_the_layer_norm_backward_column_sums(kernel_norms, monkeypatch):
    """Without dropout after it, a feed-forward's output bias gradient is the column sums of its
    output gradient, which the layer norm backward of the half above takes (float32 sums of the
    float32 stream gradient); every other gradient stays bit-equal to the half-by-half stack's."""
    fused, half_by_half = paired(hidden_dropout_prob=0.0)
    input_ids, attention_mask = inputs()
    sums = []
    original = kernels.layer_norm_backward
    for module in (kernels, kernels_norm):
        monkeypatch.setattr(module, "layer_norm_backward", lambda *args, **kwargs: sums.append(
            kwargs.get("column_sums")) or original(*args, **kwargs))
    loss, grads = run(fused, input_ids, attention_mask, seed=5)
    assert sums.count(True) == len(LAYERS) - 1  # every feed-forward half but the top one

    monkeypatch.setattr(reversible, "split_halves", lambda *args: None)
    output_grads = {}  # each feed-forward output's gradient, as the half-by-half stack's backward sees it

    def capture(name):
        def hook(module, args, output):
            if output.requires_grad:
                output.register_hook(lambda grad: output_grads.__setitem__(name, grad.double()))
        return hook

    for index, layer in enumerate(half_by_half.reformer.encoder.layers):
        layer.feed_forward.dense_out.register_forward_hook(capture(f"reformer.encoder.layers.{index}.feed_forward"))
    expected_loss, expected_grads = run(half_by_half, input_ids, attention_mask, seed=5)
    assert torch.equal(loss, expected_loss)
    folded = {f"reformer.encoder.layers.{index}.feed_forward.dense_out.bias" for index in range(len(LAYERS) - 1)}
    for name in expected_grads:
        if name not in folded:
            assert torch.equal(grads[name], expected_grads[name]), name
    for name in folded:
        output_grad = output_grads[name.removesuffix(".dense_out.bias")]
        # the reference's gradient is the float32 one rounded to bf16: half a bf16 unit per position
        bound = 2**-9 * output_grad.abs().sum((0, 1)) + 1e-6
        assert ((grads[name].double() - output_grad.sum((0, 1))).abs() <= bound).all(), name
        assert not torch.equal(grads[name], expected_grads[name]), name  # the fold did run


@interpreter_only
def test_fused_stack_gradients_match_plain_autograd(kernel_norms):
    fused, plain = paired()
    plain.config.reversible = False
    plain.reformer.encoder.reversible = False
    input_ids, attention_mask = inputs()
    loss, grads = run(fused, input_ids, attention_mask, seed=5)
    expected_loss, expected_grads = run(plain, input_ids, attention_mask, seed=5)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    for name in expected_grads:
        # The rebuilt streams differ from the forward ones by float32 rounding ((x + f) - f), which
        # may move a bf16 operand by one unit (measured here: at most 1.4e-7 of a gradient's size).
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=1e-4 * scale, msg=name)


@interpreter_only
def test_stored_halves_run_their_bodies_once_and_match_plain_autograd(kernel_norms, monkeypatch):
    """With the top layer stored (reversible_stored_layers=1) its two halves keep their graphs:
    their bodies run in the forward pass only, the six below run again in the backward pass."""
    stored, plain = paired(reversible_stored_layers=1)
    plain.config.reversible = False
    plain.reformer.encoder.reversible = False
    calls = []
    split = fused_stack.split_halves

    def counting_split(*args):
        halves = split(*args)
        for index, half in enumerate(halves):
            half.body = lambda normed, body=half.body, index=index: calls.append(index) or body(normed)
        return halves

    monkeypatch.setattr(reversible, "split_halves", counting_split)
    input_ids, attention_mask = inputs()
    loss, grads = run(stored, input_ids, attention_mask, seed=5)
    assert sorted(calls) == sorted(list(range(8)) + list(range(6)))
    expected_loss, expected_grads = run(plain, input_ids, attention_mask, seed=5)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:  # the tolerance of the test above
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=1e-4 * scale, msg=name)


@interpreter_only
def test_a_second_backward_pass_rebuilds_the_stored_halves(kernel_norms):
    """retain_graph: the first backward pass uses the stored graphs up; a second one rebuilds those
    halves like the others and gives the same gradients."""
    model, _ = paired(reversible_stored_layers=1)
    input_ids, attention_mask = inputs()
    model.train()
    torch.manual_seed(5)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
    names, params = zip(*[(name, p) for name, p in model.named_parameters() if p.requires_grad])
    first = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(loss, params, allow_unused=True)
    for name, a, b in zip(names, first, second):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * a.abs().max().item(), msg=name)


def test_split_halves_declines_what_it_cannot_fuse(kernel_norms):
    model = ReformerForCausalLM(tiny_config(attn_layers=LAYERS, chunk_size_feed_forward=8)).to(DEVICE)
    layers = model.reformer.encoder.layers
    seeds = [[1, 2]] * len(layers)
    hidden = torch.randn(1, 24, 16, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert fused_stack.split_halves(layers, seeds, hidden, None) is None  # chunked feed-forward
        assert len(fused_stack.split_halves(layers, seeds, hidden[:, :8], None)) == 8
    assert fused_stack.split_halves(layers, seeds, hidden[:, :8], None) is None  # no autocast: nn.LayerNorm
