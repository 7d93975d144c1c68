"""The two halves of a reversible layer: F (`AttentionBlock`: layer norm, self-attention, output
projection, dropout) and G (`FeedForwardBlock`: layer norm, feed-forward, dropout)."""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .attention import SELF_ATTENTION_CLASSES, is_plain_linear
from .layer_norm import ReformerLayerNorm
from .linear_relu import linear_relu


class AttentionBlock(nn.Module):
    """F of a reversible layer: layer norm -> self-attention -> output projection -> dropout."""

    def __init__(self, config, kind):
        super().__init__()
        self.kind = kind
        self.layer_norm = ReformerLayerNorm(config.hidden_size, eps=config.layer_norm_eps, backend=config.attn_backend)
        self.self_attention = SELF_ATTENTION_CLASSES[kind](config)
        inner = config.num_attention_heads * config.head_size
        self.output = nn.Linear(inner, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, pad_mask=None, layer_cache=None):
        return self.body(self.layer_norm(hidden), pad_mask, layer_cache)

    def body(self, normed, pad_mask=None, layer_cache=None):
        """The block after its layer norm, on the normalised hidden states."""
        return self.dropout(self.output(self.self_attention(normed, pad_mask, layer_cache=layer_cache)))

    def fused_body(self, hidden, pad_mask):
        """normed -> the block's output on `hidden` once normalised, for a stack that runs the
        layer norm kernel itself (see fused_stack.py); None where that kernel does not run."""
        if not self.layer_norm.runs_kernel(hidden):
            return None
        return lambda normed: self.body(normed, pad_mask)

    def decode_step(self, hidden, layer_cache, is_pad):
        """One new position (batch, 1, hidden_size) attending through its generation cache."""
        return self.dropout(self.output(self.self_attention.decode_step(self.layer_norm(hidden), layer_cache, is_pad)))


class FeedForwardBlock(nn.Module):
    """G of a reversible layer: layer norm -> dense -> dropout -> activation -> dense -> dropout.

    Applied to `chunk_size_feed_forward` positions at a time when that is set: every position
    is independent, so the chunks give exactly the unchunked result with a smaller peak.  With
    ReLU the first dense layer applies it as it writes its product (`linear_relu`), before the
    dropout: the same values, one pass over the (positions, feed_forward_size) tensor fewer.
    """

    def __init__(self, config):
        super().__init__()
        self.chunk_size = config.chunk_size_feed_forward
        self.backend = config.attn_backend
        self.layer_norm = ReformerLayerNorm(config.hidden_size, eps=config.layer_norm_eps, backend=config.attn_backend)
        self.dense_in = nn.Linear(config.hidden_size, config.feed_forward_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fused_relu = config.hidden_act == "relu"
        self.dense_out = nn.Linear(config.feed_forward_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def transform(self, hidden):
        return self.body(self.layer_norm(hidden))

    def body(self, normed):
        """The block after its layer norm, on normalised positions."""
        if self.fused_relu:
            hidden = self.dropout(linear_relu(normed, self.dense_in, self.backend))
        else:
            hidden = self.activation(self.dropout(self.dense_in(normed)))
        return self.dropout(self.dense_out(hidden))

    def forward(self, hidden):
        if not self._chunks(hidden):
            return self.transform(hidden)
        return torch.cat([self.transform(part) for part in hidden.split(self.chunk_size, dim=1)], dim=1)

    def fused_body(self, hidden, pad_mask):
        """normed -> the block's output, as AttentionBlock.fused_body; None also where the block
        runs in chunks (whose point is not to hold a normalised copy of every position)."""
        if self._chunks(hidden) or not self.layer_norm.runs_kernel(hidden):
            return None
        return self.body

    def fused_output_bias(self):
        """dense_out's bias, which the body adds to its output last, for a stack that takes its
        gradient as the output gradient's column sums (fused_stack.py); None while dropout scales
        the output after it, or where dense_out is not a plain nn.Linear (an adapter, a hook)."""
        if not is_plain_linear(self.dense_out):
            return None
        bias = self.dense_out.bias
        if bias is None or not bias.requires_grad or (self.training and self.dropout.p > 0):
            return None
        return bias

    def _chunks(self, hidden):
        return bool(self.chunk_size) and hidden.shape[1] > self.chunk_size
