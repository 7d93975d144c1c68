"""The fused Triton kernels' entry points, as `attention_dispatch.kernels_module()` hands them out.

The kernels compute what their torch references in attention_functions.py compute (`lsh_attention`,
`local_attention`, `hash_vectors`, `sort_by_bucket`), and `layer_norm` is torch's layer norm
written in another dtype (see `layer_norm.py`).  What the attention kernels do differently is
where the work happens:

- no sorted copy of queries, keys or values is ever built: the kernels read rows through the
  sorted-slot -> position map, and write outputs and gradients back to positions;
- a query chunk attends to its own and neighbouring chunks with an online softmax, so the
  (chunk x window) logits live in registers only;
- the shared-QK key normalisation is recomputed inside the kernels, forward and backward;
- the hash rounds are combined by their log-sum-exp weights in one extra pass, and the backward
  never needs the per-round outputs: the rounds together are one softmax over the union of
  their keys, so its gradient only needs the combined output and log-sum-exp.

The code is split by job, each module flat in the package (a saved folder's copy of the code
takes only the modules that a module imports by `from .module import name`):

- kernels_lsh.py, kernels_local.py: the attention entry points and their autograd functions;
- kernels_window.py: the chunked-window problem both share, its tiling and device functions;
- kernels_window_forward.py, kernels_window_backward.py: the window kernels and their launches;
- kernels_hashing.py, kernels_sorting.py: LSH hashing and the bucket sort;
- kernels_norm.py: the blocks' layer norm and the feed-forward's ReLU-bias gradient;
- kernels_device.py: device functions every kernel shares (products, rounding, prefetches);
- kernels_launch.py: Triton's presence, the interpreter flag, launch settings and the launch cache.

What they share with the torch reference (masking constants, argument checks, the heads'
layout) is in attention_rules.py; no kernels module imports the attention modules.
"""

import sys

from .kernels_hashing import hash_vectors
from .kernels_launch import _interpreting, triton_unusable_reason
from .kernels_local import LocalAttentionFunction, local_attention, local_attention_packed
from .kernels_lsh import LSHAttentionFunction, lsh_attention, lsh_attention_packed
from .kernels_norm import (
    LAYER_NORM_MAX_WIDTH,
    LayerNormFunction,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    relu_bias_grad,
)
from .kernels_sorting import sort_by_bucket

__all__ = [
    "LAYER_NORM_MAX_WIDTH",
    "LSHAttentionFunction",
    "LayerNormFunction",
    "LocalAttentionFunction",
    "_interpreting",
    "hash_vectors",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "local_attention",
    "local_attention_packed",
    "lsh_attention",
    "lsh_attention_packed",
    "relu_bias_grad",
    "sort_by_bucket",
    "triton_unusable_reason",
]

# This module, as `attention_dispatch.kernels_module()` imports it (by a name, so that save_pretrained
# copies this file and, through its imports, every kernels module into a saved folder).
ENTRY_POINTS = sys.modules[__name__]
