"""Which path runs an attention call: the torch reference (attention_functions.py) or the fused
Triton kernel, decided per call from `attn_backend`, the operands' device and dropout, and logged
once per decision.  The kernels are imported only where one is about to run (`kernels_module`).
"""

import importlib.util
import logging

import torch

from .attention_functions import (
    hash_vectors,
    local_attention,
    local_attention_packed,
    lsh_attention,
    lsh_attention_packed,
)
from .attention_rules import bucket_factors, head_rows
from .configuration import ATTENTION_BACKENDS

logger = logging.getLogger(__name__)
_ANNOUNCED = set()


def _check_backend(backend):
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is invalid: expected one of {ATTENTION_BACKENDS}.")


def _announce(message, level=logging.INFO):
    """Log each distinct backend decision once per process; not while dynamo traces, where a
    logging call would end the graph (the compiled model takes the decisions eager calls log)."""
    if message not in _ANNOUNCED and not torch.compiler.is_compiling():
        _ANNOUNCED.add(message)
        logger.log(level, message)


def _triton_installed():
    """Looked up once per process (at import), not on every attention call; a constant, not a
    functools.cache, which torch 2.11's dynamo ends the graph at."""
    return _TRITON_INSTALLED


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def kernels_module():
    """kernels.py, imported (with triton) only where a kernel is about to run; while dynamo
    traces, kernel_ops.py: the same entry points as custom operators, which a compiled graph
    calls where it would otherwise end at the kernel's launch.  Each is imported by a name it
    defines (`from .module import name`): save_pretrained copies into a saved folder only the
    modules named that way, and `from . import module` is not one of them."""
    if torch.compiler.is_compiling():
        from .kernel_ops import ENTRY_POINTS

        return ENTRY_POINTS
    from .kernels import ENTRY_POINTS

    return ENTRY_POINTS


def _runs_kernel(backend, kind, tensors, dropout_p=0.0, training=False):
    """Whether this call goes to the fused Triton kernel: "auto" takes it on CUDA when triton
    imports, "triton" takes it or raises, and attention dropout in training always goes to torch
    because the kernels do not implement it."""
    if backend == "torch":
        return False
    if dropout_p > 0.0 and training:
        _announce(f"{kind}: torch path, because the Triton kernel does not implement attention dropout "
                  f"(dropout_p={dropout_p} in training)", logging.WARNING if backend == "triton" else logging.INFO)
        return False
    if backend == "auto" and not all(tensor.is_cuda for tensor in tensors):
        return False
    if not _triton_installed():
        reason = "triton is not installed"
    else:
        reason = kernels_module().triton_unusable_reason(*tensors)
    if reason is None:
        _announce(f"{kind}: fused Triton kernel (attn_backend={backend!r})")
        return True
    if backend == "triton":
        raise RuntimeError(f"attn_backend='triton' cannot run {kind} here: {reason}.")
    _announce(f"{kind}: torch path, attn_backend='auto' found {reason}")
    return False


def lsh_attention_dispatch(backend, packed=False):
    """The LSH attention function for `backend` ("auto", "torch" or "triton"): `lsh_attention`,
    or with `packed` `lsh_attention_packed`, with its signature.

    The returned function decides per call (see `_runs_kernel`); the decision is logged once.
    """
    if packed:
        return _dispatch(backend, "LSH attention", lsh_attention_packed, "lsh_attention_packed", n_parts=2)
    return _dispatch(backend, "LSH attention", lsh_attention, "lsh_attention", n_tensors=2)


def local_attention_dispatch(backend, packed=False):
    """The local attention function for `backend`: `local_attention`, or with `packed`
    `local_attention_packed`, with its signature."""
    if packed:
        return _dispatch(backend, "local attention", local_attention_packed, "local_attention_packed", n_parts=3)
    return _dispatch(backend, "local attention", local_attention, "local_attention", n_tensors=3)


def _dispatch(backend, kind, reference, kernel_name, n_tensors=None, n_parts=None):
    """`reference`, or a function that calls the kernels' function of the same signature,
    `kernel_name`, where `_runs_kernel` takes the kernel for the call's operands: its first
    `n_tensors` arguments, or its packed first argument viewed with d_head last (one view: the
    kernels' entry points split the heads themselves)."""
    _check_backend(backend)
    if backend == "torch":
        return reference

    def dispatched(*arguments, **options):
        if n_parts is None:
            operands = arguments[:n_tensors]
        else:
            operands = (head_rows(arguments[0], n_parts, options["n_heads"]),)
        if _runs_kernel(backend, kind, operands, options.get("dropout_p", 0.0), options.get("training", False)):
            return getattr(kernels_module(), kernel_name)(*arguments, **options)
        return reference(*arguments, **options)

    return dispatched


def hash_vectors_dispatch(backend):
    """The hashing function for `backend`: takes query_keys in their own dtype and hashes them in
    float32 (the reference upcasts first; the kernel upcasts as it reads, never storing x @ R)."""
    _check_backend(backend)

    def dispatched(vectors, rotations, num_buckets):
        if backend != "torch" and len(bucket_factors(num_buckets)) <= 2 and _runs_kernel(
            backend, "LSH hashing", (vectors,)
        ):
            return kernels_module().hash_vectors(vectors, rotations, num_buckets)
        return hash_vectors(vectors.float(), rotations, num_buckets)

    return dispatched
