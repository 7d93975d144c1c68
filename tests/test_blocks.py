"""The reversible layer's halves (blocks.py)."""

import torch

from reformer_hf.blocks import FeedForwardBlock
from tiny_models import tiny_config


def test_chunked_feed_forward_equals_unchunked():
    torch.manual_seed(0)
    block = FeedForwardBlock(tiny_config(chunk_size_feed_forward=0))
    chunked = FeedForwardBlock(tiny_config(chunk_size_feed_forward=5))
    chunked.load_state_dict(block.state_dict())
    assert (block.chunk_size, chunked.chunk_size) == (0, 5)
    hidden = torch.randn(2, 23, 16)
    torch.testing.assert_close(chunked(hidden), block(hidden), atol=0, rtol=0)
