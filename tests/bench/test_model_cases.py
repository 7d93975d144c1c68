"""bench/model_cases.py: the useful FLOPs of one training step (the numerator of MFU), counted by hand
for a dense model and for ours."""

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from model_cases import matmul_params, useful_flops  # noqa: E402


def test_useful_flops_by_hand():
    # 4 x 8 weights in products; the embedding table is a lookup, not a product
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 8))
    assert matmul_params(model) == 32
    length, n_layers = 4, 2
    dense = 6 * 32 * 4  # 6 x matmul parameters x tokens
    # Llama: 16 heads x 2 layers x the 4 * 5 / 2 causal pairs of 4 tokens; 3 x 4 x d_head (64) FLOPs a pair
    assert useful_flops("llama", model, length, n_layers) == dense + 12 * 64 * 320
    # ours: 1 LSH + 1 local layer, 16 heads, each query sees 2 chunks of 64 once per hash round (2) and once locally
    assert useful_flops("ours", model, length, n_layers) == dense + 12 * 64 * (16 * 4 * 128 * 3)
