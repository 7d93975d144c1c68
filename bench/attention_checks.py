"""bench/attention.py --check: our fused kernels against the package's torch path at full sizes (LSH
over n_hashes, d_head, window modes and padding; local attention), each output and gradient's
error against a float64 reference at most twice the torch path's own in the same dtype."""

import math

import torch

import attention_cases
from attention_cases import CHUNK, total_buckets
from common import free_memory, lsh_buckets

from reformer_hf import attention_functions, kernels

CHECKS = [
    # kind, mode, causal, before, after, n_hashes, d_head, n_pad, dtype, batch, heads, length
    ("lsh", "bucket_window", True, 1, 0, 1, 64, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "bucket_window", True, 1, 0, 2, 64, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "bucket_window", True, 1, 0, 4, 64, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "bucket_window", True, 1, 0, 8, 64, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "bucket_window", False, 1, 1, 2, 128, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "chunk", True, 1, 0, 4, 128, 0, "bfloat16", 2, 4, 4096),
    ("lsh", "chunk", True, 1, 0, 2, 64, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "chunk", False, 1, 1, 8, 64, 0, "bfloat16", 2, 4, 4096),
    ("lsh", "chunk", True, 1, 0, 1, 128, 100, "bfloat16", 2, 4, 4096),
    ("lsh", "bucket_window", True, 1, 0, 2, 64, 100, "float32", 2, 4, 4096),
    ("lsh", "bucket_window", True, 1, 0, 4, 64, 0, "bfloat16", 1, 8, 65536),
    ("lsh", "chunk", True, 1, 0, 4, 64, 0, "bfloat16", 1, 8, 65536),
    ("local", None, True, 1, 0, 1, 64, 100, "bfloat16", 2, 4, 4096),
    ("local", None, False, 1, 1, 1, 128, 100, "bfloat16", 2, 4, 4096),
    ("local", "wrap", False, 1, 0, 1, 64, 0, "bfloat16", 2, 4, 4096),
]


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def forward_backward(function, inputs, grads, *args, **kwargs):
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out, lse = function(*inputs, *args, **kwargs)
    return [out, lse, *torch.autograd.grad([out, lse], inputs, [grads[0].to(out.dtype), grads[1]])]


def run_check(case):
    kind, mode, causal, before, after, n_hashes, d_head, n_pad, dtype_name, batch, heads, length = case
    dtype = getattr(torch, dtype_name)
    device = attention_cases.DEVICE
    generator = torch.Generator(device=device).manual_seed(len(str(case)))
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=device)  # noqa: E731
    pad_mask = None
    if n_pad:
        pad_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        pad_mask[0, length - n_pad:] = True
    shape = (batch, heads, length, d_head)
    grad_out, grad_lse = randn(*shape), randn(*shape[:3])
    if pad_mask is not None:  # the model strips padding positions, so no gradient reaches them
        grad_out = grad_out.masked_fill(pad_mask[:, None, :, None], 0.0)
        grad_lse = grad_lse.masked_fill(pad_mask[:, None, :], 0.0)
    if kind == "lsh":
        query_key, value = randn(*shape).to(dtype), randn(*shape).to(dtype)
        num_buckets = lsh_buckets(length, CHUNK)
        rotations = randn(heads, d_head, n_hashes, attention_functions.rotation_size(num_buckets))
        bucket_ids = attention_functions.hash_vectors(query_key.float(), rotations, num_buckets)
        fused_ids = kernels.hash_vectors(query_key, rotations, num_buckets)
        options = dict(n_buckets=total_buckets(num_buckets), chunk_length=CHUNK, n_chunks_before=before,
                       n_chunks_after=after, causal=causal, window_mode=mode, pad_mask=pad_mask)
        inputs, args, reference, fused = [query_key, value], [bucket_ids], attention_functions.lsh_attention, kernels.lsh_attention
        names = ("out", "lse", "d query_key", "d value")
        extra = {"hash_mismatch": (fused_ids != bucket_ids).float().mean().item()}
    else:
        inputs = [randn(*shape).to(dtype) for _ in range(3)]
        options = dict(chunk_length=CHUNK, n_chunks_before=before, n_chunks_after=after, causal=causal,
                       wrap_around=mode == "wrap", pad_mask=pad_mask)
        args, reference, fused = [], attention_functions.local_attention, kernels.local_attention
        names = ("out", "lse", "dq", "dk", "dv")
        extra = {}
    grads = (grad_out, grad_lse)
    exact = forward_backward(reference, [t.double() for t in inputs], (grad_out.double(), grad_lse.double()),
                             *args, **options)
    low = forward_backward(reference, inputs, grads, *args, **options)
    kernel = forward_backward(fused, inputs, grads, *args, **options)
    real = None if pad_mask is None else (~pad_mask)[:, None, :].expand(shape[:3])
    errors, passed = {}, True
    for index, name in enumerate(names):
        pick = (lambda t: t[real]) if (index < 2 and real is not None) else (lambda t: t)  # noqa: E731
        kernel_error = relative_error(pick(kernel[index]), pick(exact[index]))
        torch_error = relative_error(pick(low[index]), pick(exact[index]))
        ok = math.isfinite(kernel_error) and kernel_error <= 2 * torch_error + 1e-6
        errors[name] = {"kernel": kernel_error, "torch": torch_error, "ok": ok}
        passed = passed and ok
    if dtype == torch.float32:
        # float32: the same formula in the same precision; compare the two paths directly as well
        same = all(relative_error(k, t) < 1e-4 for k, t in zip(kernel, low))
        errors["kernel vs torch (float32)"] = {"ok": same}
        passed = passed and same
    return dict(errors=errors, passed=passed, **extra)


def run_checks(log, checks=CHECKS):
    """Each case of `checks` (CHECKS, or fewer and smaller ones with --smoke) checked and written."""
    print("== checks: error vs float64 (kernel | torch path)", flush=True)
    for case in checks:
        fields = dict(zip(("kind", "mode", "causal", "before", "after", "n_hashes", "d_head", "n_pad", "dtype",
                           "batch", "heads", "length"), case))
        try:
            result = run_check(case)
        except Exception as error:
            result = {"passed": False, "status": f"error: {type(error).__name__}: {str(error)[:300]}"}
        free_memory()
        log.write(section="check", **fields, **result)
        summary = " ".join(f"{name}={value['kernel']:.1e}|{value['torch']:.1e}"
                           for name, value in result.get("errors", {}).items() if "kernel" in value)
        print(("PASS" if result["passed"] else "FAIL"), case, summary, result.get("status", ""), flush=True)
