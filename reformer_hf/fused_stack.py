"""The reversible stack with each residual sum fused into the layer norm that reads it.

Every half of a layer is "layer norm, then a body" (attention: projections, attention, output
projection; feed-forward: the two products), so the stack is a chain of halves over two float32
streams, s[k+1] = s[k-1] + body_k(norm_k(s[k])) with s[-1] = s[0] = the stack's input.  Run
half by half, each sum is written by one pass and read again by the next half's layer norm;
here one pass (`kernels.layer_norm_forward` with a residual) writes the sum and its normalised
copy: forward, s[k+1] and norm_{k+1}(s[k+1]); backward, the rebuilt s[k-1] = s[k+1] - body_k(...)
and norm_{k-1}(s[k-1]).  In the backward pass each layer norm's gradient is added to the stream
gradient it joins, and the sum's copy in autocast's dtype, the output gradient that the next
body takes, is written by the same pass (`kernels.layer_norm_backward`); where the body below
ends by adding a bias (the feed-forward's, without dropout after it) that pass also sums the new
stream gradient over the positions, which is that bias's gradient, instead of a reduction over
the body's output gradient in autocast's dtype.  The sums and the normalised values are those of
the half-by-half stack (the same float32 additions and kernel), and so are the gradients up to
rounding: compiled for the GPU, the layer norm gradient's last product and the stream gradient's
addition become one fused multiply-add, rounded once instead of twice, and the output biases'
gradients are float32 sums of the float32 gradient.  Under Triton's interpreter the two stacks
agree bit for bit but for those biases (tests/test_fused_stack.py); `bench/model.py --check`
compares both against the float32 model at full size.

The top `n_stored` halves (`ReformerConfig.reversible_stored_layers`, two per layer) keep their
bodies' autograd graphs from the forward pass, so the backward pass takes their gradients without
running them again; it still rebuilds the streams below them.

`split_halves` says where this runs: where every block normalises with the layer norm kernel
(`ReformerLayerNorm.runs_kernel`) and offers its body (`fused_body`), and nothing but the two
streams passes between layers (no cross-attention context).
"""

import torch

from .attention_dispatch import kernels_module
from .replay import autocast_state, seeded, uncached_autocast


def trainable_parameters(module, skip=None):
    """`[p for p in module.parameters() if p.requires_grad]`, in that order, leaving out the
    submodule `skip`.  A plain walk over the modules' own parameters: `parameters()` builds a
    qualified name for every module and parameter, which cost a millisecond of the CPU per
    training step here, before the first kernel of the stack could start."""
    found, seen = [], set()

    def visit(node):
        for param in node._parameters.values():
            if param is not None and param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                found.append(param)
        for child in node._modules.values():
            if child is not None and child is not skip:
                visit(child)

    visit(module)
    return found


class Half:
    """One half of a reversible layer: its layer norm, its body (normed -> update, a closure
    over anything else it reads, e.g. the padding mask), its seed and the body's parameters.
    out_bias: a bias the body adds to its output last (`block.fused_output_bias()`), whose
    gradient is the column sums of the output gradient, or None."""

    __slots__ = ("norm", "body", "seed", "body_params", "out_bias", "params_but_out_bias")

    def __init__(self, block, body, seed):
        self.norm, self.body, self.seed = block.layer_norm, body, seed
        self.body_params = trainable_parameters(block, skip=block.layer_norm)
        output_bias = getattr(block, "fused_output_bias", None)
        self.out_bias = output_bias() if output_bias is not None else None
        self.params_but_out_bias = [param for param in self.body_params if param is not self.out_bias]


def split_halves(layers, seeds, hidden, pad_mask):
    """[Half, ...] in the order they run (each layer's attention, then its feed-forward), or None
    where a block does not split into the layer norm kernel and a body on `hidden`."""
    halves = []
    for layer, layer_seeds in zip(layers, seeds):
        for block, seed in zip((layer.attention, layer.feed_forward), layer_seeds):
            fused_body = getattr(block, "fused_body", None)
            body = fused_body(hidden, pad_mask) if fused_body is not None else None
            if body is None:
                return None
            halves.append(Half(block, body, seed))
    return halves


def _normalise(norm, stream, low_dtype, update=None, subtract=False, with_stats=False):
    """(stream +- update, or stream itself; its normalised copy; mean; rstd) in one pass."""
    return kernels_module().layer_norm_forward(stream, norm.weight, norm.bias, norm.eps, low_dtype, residual=update,
                                               subtract=subtract, with_stats=with_stats)


class FusedNormStackFunction(torch.autograd.Function):
    """x1, x2 (batch, length, d) float32 through `halves` -> the last layer's (y1, y2); keeps
    only those for the backward pass, like the half-by-half reversible stack, and the graphs of
    the top `n_stored` halves' bodies.  Eager under torch.compile, as `reversible._ReversibleStackFunction`."""

    @staticmethod
    @torch.compiler.disable
    def forward(ctx, x1, x2, halves, n_stored, *params):
        ctx.halves, ctx.params = halves, params
        ctx.autocast = autocast_state(x1.device.type)
        low_dtype = ctx.autocast[1]
        first_stored = len(halves) - n_stored
        ctx.stored = {}  # half index -> (its body's input leaf, its update with the body's graph)
        ctx.top_stats = None  # the top half's layer norm statistics, kept when that half is stored
        with torch.no_grad(), uncached_autocast(ctx.autocast):
            before, current = x1, x2  # s[k-1], s[k]
            normed = _normalise(halves[0].norm, current, low_dtype)[1]
            for index, half in enumerate(halves):
                with seeded(half.seed, current.device), torch.set_grad_enabled(index >= first_stored):
                    if index >= first_stored:
                        normed = normed.requires_grad_(True)
                    update = half.body(normed)
                if index >= first_stored:
                    ctx.stored[index] = (normed, update)
                if index + 1 < len(halves):
                    top_stored = index + 2 == len(halves) and n_stored > 0
                    summed, normed, mean, rstd = _normalise(halves[index + 1].norm, before, low_dtype, update.detach(),
                                                            with_stats=top_stored)
                    if top_stored:
                        ctx.top_stats = (mean, rstd)
                else:
                    summed = before + update.detach()
                before, current = current, summed
        ctx.save_for_backward(before, current)
        return before, current

    @staticmethod
    @torch.compiler.disable
    def backward(ctx, grad_y1, grad_y2):
        halves = ctx.halves
        y1, y2 = ctx.saved_tensors
        low_dtype = ctx.autocast[1]  # not read here: autocast's state is the forward thread's
        # Before each half k: `inner` = s[k] with the gradient of every later use but this half's
        # (`grad_inner`), `outer` = s[k+1] with its whole gradient, also in autocast's dtype.
        inner, grad_inner = y1, grad_y1
        outer, grad_outer, grad_outer_low = y2, grad_y2, grad_y2.to(low_dtype)
        if len(halves) - 1 in ctx.stored:  # not after a first backward pass that used it up
            normed, (mean, rstd) = None, ctx.top_stats
        else:
            _, normed, mean, rstd = _normalise(halves[-1].norm, inner, low_dtype, with_stats=True)
        grads = {}
        with uncached_autocast(ctx.autocast):
            for index in range(len(halves) - 1, -1, -1):
                half = halves[index]
                # Below the top, the layer norm backward of the half above summed this body's output
                # gradient over the positions: its output bias's gradient is in `grads` already.
                params = half.params_but_out_bias if index + 1 < len(halves) else half.body_params
                with torch.enable_grad():
                    if index in ctx.stored:
                        normed, update = ctx.stored.pop(index)
                    else:
                        normed = normed.detach().requires_grad_(True)
                        with seeded(half.seed, inner.device):
                            update = half.body(normed)
                    body_grads = torch.autograd.grad(update, [normed, *params], grad_outer_low, allow_unused=True)
                grads.update(zip(params, body_grads[1:]))
                below = halves[index - 1] if index > 0 else None
                grad_inner, grad_inner_low, grad_weight, grad_bias, grad_sums = kernels_module().layer_norm_backward(
                    inner, half.norm.weight, mean, rstd, body_grads[0], accumulate=grad_inner,
                    low_dtype=low_dtype if below is not None else None,
                    column_sums=below is not None and below.out_bias is not None)
                grads[half.norm.weight], grads[half.norm.bias] = grad_weight, grad_bias
                if grad_sums is not None:
                    grads[below.out_bias] = grad_sums.to(below.out_bias.dtype)
                if index > 0:  # rebuild s[k-1], normalised for the half before
                    rebuilt, normed, mean, rstd = _normalise(halves[index - 1].norm, outer, low_dtype, update.detach(),
                                                             subtract=True, with_stats=True)
                    inner, grad_inner, outer, grad_outer, grad_outer_low = (
                        rebuilt, grad_outer, inner, grad_inner, grad_inner_low)
        # inner = x2 with its whole gradient now; x1 = s[-1] only feeds s[1] = x1 + body_0(...).
        return (grad_outer, grad_inner, None, None, *(grads.get(p) for p in ctx.params))
