"""linear_relu against nn.Linear + dropout + ReLU computed by plain autograd."""

import pytest
import torch
from torch import nn

from reformer_hf.blocks import FeedForwardBlock
from reformer_hf.linear_relu import linear_relu
from tiny_models import tiny_config


def plain_and_fused(dtype, autocast_dtype=None, dropout=0.0, seed=0):
    """Outputs and gradients (input, weight, bias) of both computations on the same inputs."""
    torch.manual_seed(seed)
    linear = nn.Linear(12, 20).to(dtype)
    hidden = torch.randn(3, 5, 12, dtype=dtype)
    grad_out = torch.randn(3, 5, 20, dtype=dtype)
    drop = nn.Dropout(dropout).train()
    results = []
    for compute in (lambda x: torch.relu(drop(linear(x))), lambda x: drop(linear_relu(x, linear))):
        x = hidden.clone().requires_grad_(True)
        linear.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1)  # the same dropout mask for both
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out = compute(x)
        out.backward(grad_out.to(out.dtype))
        results.append([out, x.grad, linear.weight.grad, linear.bias.grad])
    return results


def test_equals_linear_then_relu_in_float64():
    plain, fused = plain_and_fused(torch.float64)
    assert (plain[0] == 0).any() and (plain[0] > 0).any()  # the ReLU cuts somewhere
    for name, got, want in zip(("out", "d input", "d weight", "d bias"), fused, plain):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_dropout_before_or_after_the_relu_gives_the_same_values():
    plain, fused = plain_and_fused(torch.float64, dropout=0.3)
    undropped = plain_and_fused(torch.float64)[0][0]
    assert (plain[0] == 0).sum() > (undropped == 0).sum()  # dropout zeroed some positive outputs
    for name, got, want in zip(("out", "d input", "d weight", "d bias"), fused, plain):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_under_autocast_it_computes_in_autocasts_dtype_with_float32_weight_gradients():
    plain, fused = plain_and_fused(torch.float32, autocast_dtype=torch.bfloat16)
    exact, _ = plain_and_fused(torch.float64)
    assert fused[0].dtype == plain[0].dtype == torch.bfloat16
    assert [g.dtype for g in fused[1:]] == [g.dtype for g in plain[1:]] == [torch.float32] * 3
    for got, want, reference in zip(fused, plain, exact):
        fused_error = (got.double() - reference).norm() / reference.norm()
        plain_error = (want.double() - reference).norm() / reference.norm()
        assert fused_error <= 2 * plain_error + 1e-6


def test_feed_forward_block_with_relu_equals_the_unfused_composition():
    torch.manual_seed(3)
    block = FeedForwardBlock(tiny_config(hidden_act="relu")).double()
    assert block.fused_relu
    hidden = torch.randn(2, 7, block.dense_in.in_features, dtype=torch.float64)
    expected = block.dense_out(torch.relu(block.dense_in(block.layer_norm(hidden))))
    torch.testing.assert_close(block(hidden), expected, rtol=1e-12, atol=1e-12)


def test_kernel_backward_equals_threshold_backward_and_sum(monkeypatch):
    """Where the blocks' kernels run, the masked gradient and the bias gradient come from one
    kernel (`kernels.relu_bias_grad`); on a machine without a GPU under Triton's interpreter,
    with the length floor lowered to these sizes."""
    pytest.importorskip("triton", reason="the kernel needs triton")
    from reformer_hf import kernels, kernels_norm, layer_norm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(layer_norm, "FUSED_FROM_ROWS", 1)
    monkeypatch.setattr(kernels_norm, "RELU_GRAD_ROWS_PER_PROGRAM", 64)  # several row programs at 150 rows
    torch.manual_seed(0)
    linear = nn.Linear(24, 300).to(device)  # three column blocks, the last one partial
    hidden = torch.randn(3, 50, 24, device=device)
    grad_out = torch.randn(3, 50, 300, device=device).to(torch.bfloat16)
    results = []
    for backend in ("torch", "auto"):
        x = hidden.clone().requires_grad_(True)
        linear.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = linear_relu(x, linear, backend)
        out.backward(grad_out)
        results.append([out, x.grad, linear.weight.grad, linear.bias.grad])
    (plain_out, *plain_grads), (out, *grads) = results
    assert torch.equal(out, plain_out) and (out == 0).any() and (out > 0).any()
    torch.testing.assert_close(grads[0], plain_grads[0], rtol=0, atol=0)  # same masked gradient, same products
    torch.testing.assert_close(grads[1], plain_grads[1], rtol=0, atol=0)
    # The bias gradient: float32 column sums in another order, rounded to bf16 either way.
    torch.testing.assert_close(grads[2], plain_grads[2], rtol=2**-7, atol=1e-6)

    masked, bias_grad = kernels.relu_bias_grad(grad_out.reshape(150, 300), out.reshape(150, 300))
    expected = torch.ops.aten.threshold_backward(grad_out, out, 0).reshape(150, 300)
    assert torch.equal(masked, expected)
    torch.testing.assert_close(bias_grad.float(), expected.double().sum(0).float(), rtol=2**-7, atol=1e-6)
    with pytest.raises(ValueError, match=r"grad_out \(150, 299\) and out \(150, 300\)"):
        kernels.relu_bias_grad(grad_out.reshape(150, 300)[:, 1:], out.reshape(150, 300))


# ------------------------------------------------------------------------------------ wrapped and hooked layers


def linear_names(model):
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def test_a_hook_on_every_linear_layer_fires():
    """The fused ReLU product and the packed attention projections run only for plain nn.Linear
    layers without hooks; a hooked layer is called as a module, so its hook sees every pass."""
    from reformer_hf import ReformerForCausalLM

    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(hidden_act="relu")).train()
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert any(name.endswith("dense_in") for name in linears) and any(name.endswith("query") for name in linears)
    fired = []
    for name, module in linears.items():
        module.register_forward_hook(lambda module, args, output, name=name: fired.append(name))
    input_ids = torch.randint(0, 40, (2, 12))
    model(input_ids, labels=input_ids).loss.backward()
    assert set(fired) == set(linears)


def test_lora_on_every_linear_layer_changes_the_output_and_trains():
    """PEFT's LoRA wraps each nn.Linear: the fused paths must call the wrapper (they read dense_in's
    weight directly before, and an adapter on it changed nothing)."""
    import peft  # the dev extra's

    from reformer_hf import ReformerForCausalLM

    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(hidden_act="relu")).train()
    names = linear_names(model)
    assert {"dense_in", "dense_out", "query", "key", "value", "query_key", "output", "lm_head"} <= set(names)
    input_ids = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_logits = model(input_ids).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=names, lora_dropout=0.0,
                                                      init_lora_weights=False))
    adapters = {name: p for name, p in lora.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    wrapped_dense_in = [module for name, module in lora.named_modules() if name.endswith("dense_in")]
    with torch.no_grad():
        lora_logits = lora(input_ids=input_ids).logits
        for module in wrapped_dense_in:  # the adapter on dense_in alone moves the output
            module.enable_adapters(False)
        without_dense_in = lora(input_ids=input_ids).logits
        for module in wrapped_dense_in:
            module.enable_adapters(True)
    assert (lora_logits - base_logits).abs().max() > 1e-3
    assert (lora_logits - without_dense_in).abs().max() > 1e-3

    optimizer = torch.optim.SGD(adapters.values(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = lora(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad()
        loss.backward()
        for name, p in adapters.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
