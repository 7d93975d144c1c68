"""Reversible residual layers: y1 = x1 + F(x2), y2 = x2 + G(y1).

The inputs of a layer follow from its outputs (x2 = y2 - G(y1), x1 = y1 - F(x2)), so the
backward pass rebuilds them layer by layer from the stack's output and keeps one copy of the
activations for the whole stack.  Rebuilding needs F and G to compute exactly what they computed
forward: every sub-layer runs under its own seed (dropout masks, hash rotations) and under the
autocast state of the forward pass.  The layers run with autocast's weight cache off: a cached
low-precision copy of every layer's weights would live until the autocast region ends, memory
that grows with depth, while a reversible layer uses each cast once per pass anyway.

Where every block normalises with the layer norm kernel, the stack runs half by half with each
residual sum fused into the layer norm that reads it (fused_stack.py), with the same results
up to rounding.

A stack may also read a `context` that is not one of the streams, e.g. the encoder output that
a decoder's cross attention attends to: every layer's attention half receives it (and its
`context_mask`), and the backward pass sums its gradient over the layers.
"""

import functools
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fused_stack import FusedNormStackFunction, split_halves, trainable_parameters
from .replay import autocast_state, draw_seeds, seeded, uncached_autocast

logger = logging.getLogger(__name__)


class ReversibleLayer(nn.Module):
    """One layer: F = attention block, G = feed-forward block."""

    def __init__(self, attention_block, feed_forward_block):
        super().__init__()
        self.attention = attention_block
        self.feed_forward = feed_forward_block

    def attention_half(self, x2, seed, pad_mask, layer_cache=None, context=None, context_mask=None):
        with seeded(seed, x2.device):
            if context is None:
                return self.attention(x2, pad_mask, layer_cache)
            return self.attention(x2, pad_mask, layer_cache, context=context, context_mask=context_mask)

    def feed_forward_half(self, y1, seed):
        with seeded(seed, y1.device):
            return self.feed_forward(y1)

    def forward(self, x1, x2, seeds, pad_mask=None, layer_cache=None, context=None, context_mask=None):
        y1 = x1 + self.attention_half(x2, seeds[0], pad_mask, layer_cache, context, context_mask)
        y2 = x2 + self.feed_forward_half(y1, seeds[1])
        return y1, y2

    def decode_step(self, x1, x2, layer_cache, is_pad):
        """The layer on one new position (batch, 1, d) per stream, attending through `layer_cache`.

        Decoding has no backward pass, so nothing is rebuilt and no seed is replayed.
        """
        y1 = x1 + self.attention.decode_step(x2, layer_cache, is_pad)
        y2 = x2 + self.feed_forward(y1)
        return y1, y2

    def backward_pass(self, y1, y2, grad_y1, grad_y2, seeds, pad_mask, context=None, context_mask=None):
        """Rebuild (x1, x2) from (y1, y2) and push the gradients through this layer.

        Returns x1, x2, grad_x1, grad_x2 and a dict {tensor: gradient} over this layer's parameters
        and, when `context` requires grad, the context (this layer's share of its gradient).
        """
        ff_params = [p for p in self.feed_forward.parameters() if p.requires_grad]
        attn_params = [p for p in self.attention.parameters() if p.requires_grad]

        with torch.enable_grad():
            y1 = y1.detach().requires_grad_(True)
            g_out = self.feed_forward_half(y1, seeds[1])
            grads = torch.autograd.grad(g_out, [y1, *ff_params], grad_y2, allow_unused=True)
        grad_y1_total = grad_y1 + grads[0]
        ff_grads = grads[1:]
        with torch.no_grad():
            x2 = y2 - g_out

        with torch.enable_grad():
            x2 = x2.detach().requires_grad_(True)
            f_out = self.attention_half(x2, seeds[0], pad_mask, context=context, context_mask=context_mask)
            attn_inputs = [context, *attn_params] if context is not None and context.requires_grad else attn_params
            grads = torch.autograd.grad(f_out, [x2, *attn_inputs], grad_y1_total, allow_unused=True)
        grad_x2 = grad_y2 + grads[0]
        attn_grads = grads[1:]
        with torch.no_grad():
            x1 = y1 - f_out

        param_grads = dict(zip(ff_params, ff_grads))
        param_grads.update(zip(attn_inputs, attn_grads))
        return x1.detach(), x2.detach(), grad_y1_total, grad_x2, param_grads


class _ReversibleStackFunction(torch.autograd.Function):
    """Runs the layers without recording a graph and keeps only the stack's output.

    Under torch.compile both passes run eagerly (`torch.compiler.disable`): autograd runs the
    backward pass outside the compiled graph, and its rebuild must compute what the forward pass
    computed, which a compiled forward, rounding otherwise, would not."""

    @staticmethod
    @torch.compiler.disable
    def forward(ctx, x1, x2, layers, seeds, pad_mask, layer_caches, context, context_mask, *params):
        ctx.layers, ctx.seeds, ctx.params = layers, seeds, params
        ctx.autocast = autocast_state(x1.device.type)
        with torch.no_grad(), uncached_autocast(ctx.autocast):
            for layer, layer_seeds, layer_cache in zip(layers, seeds, layer_caches):
                x1, x2 = layer(x1, x2, layer_seeds, pad_mask, layer_cache, context, context_mask)
        ctx.save_for_backward(x1, x2, pad_mask, context, context_mask)
        return x1, x2

    @staticmethod
    @torch.compiler.disable
    def backward(ctx, grad_y1, grad_y2):
        y1, y2, pad_mask, context, context_mask = ctx.saved_tensors
        if context is not None:
            # One leaf shared by every layer, so that the layers' gradients add up under one key.
            context = context.detach().requires_grad_(ctx.needs_input_grad[_CONTEXT_INPUT])
        grads = {}
        with uncached_autocast(ctx.autocast):
            for layer, layer_seeds in zip(reversed(ctx.layers), reversed(ctx.seeds)):
                y1, y2, grad_y1, grad_y2, layer_grads = layer.backward_pass(
                    y1, y2, grad_y1, grad_y2, layer_seeds, pad_mask, context, context_mask
                )
                for tensor, grad in layer_grads.items():
                    if grad is not None:
                        grads[tensor] = grad if tensor not in grads else grads[tensor] + grad
        grad_context = grads.get(context) if context is not None else None
        return (grad_y1, grad_y2, None, None, None, None, grad_context, None, *(grads.get(p) for p in ctx.params))


# Position of `context` among the Function's inputs (x1, x2, layers, seeds, pad_mask, caches, context, ...).
_CONTEXT_INPUT = 6


class ReformerStack(nn.Module):
    """The layers over two residual streams; reversible or plain per `config.reversible`, with the
    top `stored_layers` (`config.reversible_stored_layers`) keeping their activations.

    Hidden states asked for while autograd records (`output_hidden_states` under grad) are the
    states the layers above read, so each receives its gradient as in any transformers model; the
    layers then run under plain autograd, which keeps every layer's activations.

    Gradient checkpointing (`gradient_checkpointing`, set by transformers'
    `gradient_checkpointing_enable()`): a plain stack (reversible=False) in training recomputes each
    layer in the backward pass from its input (each sub-layer under its seed, so the same dropout
    masks and hash rotations).  A reversible stack keeps one copy of the streams whatever the depth
    already, so there it changes nothing (logged once).
    """

    def __init__(self, layers, reversible, stored_layers=0):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reversible = reversible
        self.stored_layers = min(stored_layers, len(self.layers))
        self._checkpoints_layers = False
        self._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)

    @property
    def gradient_checkpointing(self):
        return self._checkpoints_layers

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable):
        if enable and self.reversible:
            _note_checkpointing_is_a_no_op()
        self._checkpoints_layers = bool(enable)

    def forward(self, hidden, pad_mask=None, output_hidden_states=False, layer_caches=None, context=None,
                context_mask=None, kept_length=None):
        """hidden (batch, length, d) -> (y1, y2) and, if asked, the concatenated streams per layer
        (batch, kept_length, 2d): the first `kept_length` positions (default: all), the others being
        padding the caller strips.

        layer_caches: one generation cache per layer (see cache.py), filled or read by the
        attention layers, or None.
        context: a tensor every layer's attention half also reads (e.g. the encoder output,
        (batch, context_length, d_context), for cross attention), or None; it receives gradients.
        context_mask: passed along with it (e.g. its padding, (batch, context_length)), no gradient.
        """
        seeds = draw_seeds(len(self.layers))
        layer_caches = layer_caches if layer_caches is not None else [None] * len(self.layers)
        x1 = x2 = hidden
        # A generation cache keeps keys and values that later steps differentiate through; the
        # reversible function keeps no graph, so a pass that fills a cache under grad runs plainly.
        fills_cache = any(layer_cache is not None for layer_cache in layer_caches)
        recording = torch.is_grad_enabled()
        reversible = self.reversible and recording and not fills_cache and not output_hidden_states
        halves = split_halves(self.layers, seeds, hidden, pad_mask) if reversible and context is None else None
        if halves is not None:
            x1, x2 = FusedNormStackFunction.apply(x1, x2, halves, 2 * self.stored_layers,
                                                  *trainable_parameters(self.layers))
            return x1, x2, None
        # Below `plain`, layers are rebuilt in the backward pass; from it on, autograd stores them.
        layers = list(self.layers)  # a ModuleList slice builds a new ModuleList on every call
        plain = len(layers) - self.stored_layers if reversible else 0
        if plain:
            rebuilt = self.layers if plain == len(layers) else nn.ModuleList(layers[:plain])
            x1, x2 = _ReversibleStackFunction.apply(
                x1, x2, layers[:plain], seeds[:plain], pad_mask, layer_caches[:plain], context, context_mask,
                *trainable_parameters(rebuilt)
            )
        all_hidden = [] if output_hidden_states else None
        if all_hidden is not None:
            x1, x2 = record_state(all_hidden, x1, x2, kept_length)
        checkpointed = (self.gradient_checkpointing and not self.reversible and self.training and recording
                        and not fills_cache)
        for layer, layer_seeds, layer_cache in zip(layers[plain:], seeds[plain:], layer_caches[plain:]):
            if checkpointed:
                x1, x2 = self._gradient_checkpointing_func(layer.__call__, x1, x2, layer_seeds, pad_mask, None,
                                                           context, context_mask)
            else:
                x1, x2 = layer(x1, x2, layer_seeds, pad_mask, layer_cache, context, context_mask)
            if all_hidden is not None:
                x1, x2 = record_state(all_hidden, x1, x2, kept_length)
        return x1, x2, (tuple(all_hidden) if all_hidden is not None else None)

    def decode_step(self, hidden, layer_caches, is_pad, output_hidden_states=False):
        """One new position, hidden (batch, 1, d), through every layer and its cache; is_pad (batch,)."""
        all_hidden = [] if output_hidden_states else None
        x1 = x2 = hidden
        if all_hidden is not None:
            x1, x2 = record_state(all_hidden, x1, x2)
        for layer, layer_cache in zip(self.layers, layer_caches):
            x1, x2 = layer.decode_step(x1, x2, layer_cache, is_pad)
            if all_hidden is not None:
                x1, x2 = record_state(all_hidden, x1, x2)
        return x1, x2, (tuple(all_hidden) if all_hidden is not None else None)


def record_state(states, x1, x2, kept_length=None):
    """Append the concatenated streams (batch, kept_length, 2d) to `states`; under grad, continue
    from the appended tensor (views of it, and the positions after kept_length), so that the state
    returned is the node the layers above read, and its gradient the stack's."""
    state = torch.cat([x1, x2], dim=-1)
    kept = state[:, :kept_length]
    states.append(kept)
    if not torch.is_grad_enabled():
        return x1, x2
    if kept.shape[1] < state.shape[1]:
        state = torch.cat([kept, state[:, kept.shape[1]:]], dim=1)
    return state.chunk(2, dim=-1)


@functools.cache
def _note_checkpointing_is_a_no_op():
    logger.warning("gradient checkpointing changes nothing in a reversible stack (config.reversible=True): the "
                   "backward pass already rebuilds every layer's inputs from the stack's output, which is the "
                   "only copy of the activations it keeps.")
