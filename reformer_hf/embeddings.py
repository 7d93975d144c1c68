"""Token embeddings plus axial or learned position embeddings."""

import math

import torch
from torch import nn


def axial_coordinates(position_ids, axial_shape):
    """Row-major coordinates of flat positions on the axial grid: a list of tensors, one per axis."""
    coordinates = []
    remainder = position_ids
    for axis in range(len(axial_shape)):
        stride = math.prod(axial_shape[axis + 1 :])
        coordinates.append(torch.div(remainder, stride, rounding_mode="floor"))
        remainder = remainder % stride
    return coordinates


class AxialPositionEmbeddings(nn.Module):
    """Position p < prod(axial_shape) gets concat(w_0[c_0], w_1[c_1], ...), c = p's grid coordinates.

    One small table per axis instead of one row per position, and any position below the
    product works, so inputs of any length up to it need no special case in training or eval.
    """

    def __init__(self, config):
        super().__init__()
        self.axial_shape = list(config.axial_pos_shape)
        # Registered directly on this module (not in a ParameterList) so that transformers'
        # weight initialisation, which visits modules with parameters of their own, reaches them.
        for axis, (size, dim) in enumerate(zip(self.axial_shape, config.axial_pos_embds_dim)):
            self.register_parameter(f"weight_{axis}", nn.Parameter(torch.empty(size, dim)))

    @property
    def weights(self):
        """One (axis size, axis dim) table per axis."""
        return [getattr(self, f"weight_{axis}") for axis in range(len(self.axial_shape))]

    def forward(self, position_ids):
        """position_ids (batch, length) -> (batch, length, hidden_size)."""
        coordinates = axial_coordinates(position_ids, self.axial_shape)
        return torch.cat([weight[coord] for weight, coord in zip(self.weights, coordinates)], dim=-1)


class PositionEmbeddings(nn.Module):
    """One learned vector per position."""

    def __init__(self, config):
        super().__init__()
        self.embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, position_ids):
        return self.embedding(position_ids)


def position_embeddings(config):
    """The position embedding module `config` asks for: axial (`axial_pos_embds`) or one vector per position."""
    return AxialPositionEmbeddings(config) if config.axial_pos_embds else PositionEmbeddings(config)


class ReformerEmbeddings(nn.Module):
    """inputs_embeds (or the embedding of input_ids) + position embeddings, then dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = position_embeddings(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, inputs_embeds=None, position_ids=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.dropout(inputs_embeds + self.position_embeddings(position_ids).to(inputs_embeds.dtype))
