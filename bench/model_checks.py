"""bench/model.py --check: the blocks' fused layer norm (kernels.layer_norm) against torch's under
autocast at full size (outputs, gradients against float64, time), and the reversible stack with
the residual sums fused into the layer norms against the half-by-half stack, both against the
float32 model: loss and every gradient of one step."""

import torch

import model_cases
from common import free_memory, measure
from model_cases import VOCAB, our_model


def run_layer_norm_check(log, length=2**16):
    """kernels.layer_norm against torch's layer norm under autocast, at full size."""
    from reformer_hf import kernels

    device, d_model = model_cases.DEVICE, model_cases.D_MODEL
    generator = torch.Generator(device=device).manual_seed(0)
    streams = torch.randn(1, length, d_model, generator=generator, device=device).requires_grad_(True)
    weight = (1 + 0.1 * torch.randn(d_model, generator=generator, device=device)).requires_grad_(True)
    bias = (0.1 * torch.randn(d_model, generator=generator, device=device)).requires_grad_(True)
    grad_out = torch.randn(1, length, d_model, generator=generator, device=device).to(torch.bfloat16)
    leaves = (streams, weight, bias)

    def fused():
        out = kernels.layer_norm(streams, weight, bias, 1e-12, torch.bfloat16)
        return out, torch.autograd.grad(out, leaves, grad_out)

    def autocast():  # what nn.LayerNorm + the next projection's cast do under autocast
        out = torch.nn.functional.layer_norm(streams, (d_model,), weight, bias, 1e-12).to(torch.bfloat16)
        return out, torch.autograd.grad(out, leaves, grad_out)

    exact = [tensor.detach().double().requires_grad_(True) for tensor in leaves]
    reference = torch.nn.functional.layer_norm(exact[0], (d_model,), exact[1], exact[2], 1e-12)
    reference_grads = torch.autograd.grad(reference, exact, grad_out.double())
    record = {}
    for name, step in (("fused", fused), ("torch", autocast)):
        out, grads = step()
        record[name] = {
            "same_bf16_as_autocast": (out == reference.float().to(torch.bfloat16)).float().mean().item(),
            "grad_errors": [((g.double() - r).norm() / r.norm()).item() for g, r in zip(grads, reference_grads)],
            **measure(step),
        }
    log.write(section="layer_norm_check", length=length, d_model=d_model, **record)
    print("layer norm check", record, flush=True)


def run_fused_stack_check(log, length=2**14, n_layers=4):
    """The reversible stack with residual sums fused into the layer norms (fused_stack.py) against
    the half-by-half stack, both under bf16 autocast, and both against the float32 model without
    autocast: loss and every gradient of one step."""
    from reformer_hf import reversible

    device = model_cases.DEVICE
    torch.manual_seed(0)
    model = our_model(length, n_layers).to(device).train()
    input_ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length)).to(device)

    def gradients(autocast=True):
        torch.manual_seed(1)  # the layers' seeds (hash rotations) come from the global generator
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    fused_loss, fused = gradients()
    stack = model.reformer.encoder
    stack.stored_layers = 1  # the top layer keeps its graph (reversible_stored_layers=1)
    try:
        stored_loss, stored = gradients()
    finally:
        stack.stored_layers = 0
    split_halves = reversible.split_halves
    reversible.split_halves = lambda *args: None  # the half-by-half stack
    try:
        plain_loss, half_by_half = gradients()
        reference_loss, reference = gradients(autocast=False)
    finally:
        reversible.split_halves = split_halves

    def error(grads, name):
        return ((grads[name].double() - reference[name].double()).norm() / reference[name].double().norm()).item()

    errors = {name: (error(fused, name), error(half_by_half, name), error(stored, name)) for name in reference}
    worst = max(errors, key=lambda name: errors[name][0] / (errors[name][1] + 1e-6))
    record = dict(length=length, n_layers=n_layers, losses=dict(fused=fused_loss, half_by_half=plain_loss,
                                                                 stored=stored_loss, float32=reference_loss),
                  n_gradients=len(errors), bit_equal=sum(torch.equal(fused[n], half_by_half[n]) for n in reference),
                  max_error_fused=max(e[0] for e in errors.values()),
                  max_error_half_by_half=max(e[1] for e in errors.values()),
                  worst_ratio_gradient=worst, worst_ratio_errors=errors[worst][:2],
                  max_error_stored=max(e[2] for e in errors.values()),
                  passed=all(e[0] <= 2 * e[1] + 1e-6 for e in errors.values()),
                  stored_passed=all(e[2] <= 2 * e[1] + 1e-6 for e in errors.values()))
    log.write(section="fused_stack_check", **record)
    print("fused stack check", record, flush=True)
    model = None
    free_memory()
