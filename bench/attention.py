"""Attention layer on the GPU: full-size kernel checks, launch tuning, and the speed/memory sweep.

    PYTHONPATH=. python bench/attention.py --out DIR --check --profile --sweep --graphs --report

--check   fused kernels against the torch path at full sizes (causal / non-causal, padding,
          n_hashes 1/2/4/8, d_head 64/128, both window modes, local attention, float32): the
          kernel's error against a float64 reference must be at most twice the torch path's
          own bfloat16 error (flash-attention's rule).
--tune    times each kernel's launch choices (warps per program, key tile, hashing block) at 64K
          tokens and keeps the fastest: one LSH step by part (hashing, sorting, forward,
          forward + backward).
--profile device time per kernel of one LSH op step at 16K..1M (torch.profiler); the same
          attention kernels over the identity order (contiguous windows) against the hashed
          order; the hashing dot in float32 "ieee" against "tf32x3".
--sweep   forward+backward, batch 1, 8 heads, d_head 64, causal, bf16, chunk 64, lengths 1K..1M:
          dense SDPA on the flash and the cuDNN backend (the faster is the dense anchor), our LSH
          attention (n_hashes 1/2/4/8; "bucket_window" and "chunk"), our torch path, our local
          attention beside FlexAttention (compiled) with the local layers' window, our LSH
          attention beside FlexAttention over the bucket-sorted sequence (at 8K, 64K, 256K;
          bench/anchors.py), and the whole layer (projections + hashing + attention) against
          transformers' LSHSelfAttention in bf16.
--anchors-only  with --sweep: only the anchors (dense, FlexAttention local and LSH) and our
          kernels they are compared with (n_hashes 4), at 8K, 16K, 64K, 256K unless --lengths.
--graphs  SDPA and the LSH op with each step captured in a CUDA graph, at short lengths
          (1K..64K): the GPU time of both sides without the CPU's launch work; then the op
          and the whole layers (ours, transformers') with 10 steps queued back to back, as a
          training loop runs them.
--report  renders DIR/attention.jsonl as DIR/attention.md and DIR/attention.png.
"""

import argparse
import math
import os
import sys
import time

if "--smoke" in sys.argv:  # the whole script at toy sizes on the CPU, kernels under Triton's interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from anchors import flex_local_attention, flex_lsh_attention, local_block_mask, lsh_window_block_mask  # noqa: E402
from common import (  # noqa: E402
    SDPA_BACKENDS,
    JsonLines,
    environment,
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    free_memory,
    graphed,
    length_label,
    lsh_buckets,
    kernel_times,
    markdown_table,
    measure,
    measure_queued,
    plot_against_length,
    read_json_lines,
    sdpa_backend,
    sdpa_backend_problem,
)
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402

from reformer_hf import attention, attention_dispatch, attention_functions, attention_rules  # noqa: E402
from reformer_hf import kernels, kernels_hashing, kernels_launch  # noqa: E402
from reformer_hf.configuration import ReformerConfig  # noqa: E402

HEADS, D_HEAD, CHUNK = 8, 64, 64
LENGTHS = [2**10, 2**12, 2**13, 2**14, 2**15, 2**16, 2**18, 2**20]
ANCHOR_LENGTHS = [2**13, 2**14, 2**16, 2**18]  # --anchors-only
LSH_ANCHOR_LENGTHS = [2**13, 2**16, 2**18]  # FlexAttention over the sorted sequence
DEVICE = "cuda"
# FlexAttention as a user runs it: compiled on the GPU (main), one static graph per length and mask,
# with its default 128 x 128 blocks (its default backward tiles need them).  On the CPU (--smoke)
# eager and forward only: FlexAttention has no CPU backward, and its compiled CPU form no log-sum-exp.
FLEX, FLEX_BACKWARD, FLEX_BLOCK = flex_attention, False, 128


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def total_buckets(num_buckets):
    return math.prod(attention_rules.bucket_factors(num_buckets))


# ---------------------------------------------------------------------------------------------
# --check
# ---------------------------------------------------------------------------------------------

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


def forward_backward(function, inputs, grads, *args, **kwargs):
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out, lse = function(*inputs, *args, **kwargs)
    return [out, lse, *torch.autograd.grad([out, lse], inputs, [grads[0].to(out.dtype), grads[1]])]


def run_check(case):
    kind, mode, causal, before, after, n_hashes, d_head, n_pad, dtype_name, batch, heads, length = case
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator(device=DEVICE).manual_seed(len(str(case)))
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=DEVICE)  # noqa: E731
    pad_mask = None
    if n_pad:
        pad_mask = torch.zeros(batch, length, dtype=torch.bool, device=DEVICE)
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


def run_checks(log):
    print("== checks: error vs float64 (kernel | torch path)", flush=True)
    for case in CHECKS:
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


# ---------------------------------------------------------------------------------------------
# --tune
# ---------------------------------------------------------------------------------------------


def lsh_tensors(length, n_hashes, requires_grad=True):
    generator = torch.Generator(device=DEVICE).manual_seed(length + n_hashes)
    shape = (1, HEADS, length, D_HEAD)
    query_key = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    value = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    grad_out = torch.randn(shape, generator=generator, device=DEVICE, dtype=torch.bfloat16)
    num_buckets = lsh_buckets(length, CHUNK)
    rotations = torch.randn(HEADS, D_HEAD, n_hashes, attention_functions.rotation_size(num_buckets), generator=generator,
                            device=DEVICE)
    return query_key.requires_grad_(requires_grad), value.requires_grad_(requires_grad), grad_out, rotations, num_buckets


TUNE_CHOICES = {
    # 8 warps per hashing program stopped with an illegal memory access on the H100 (triton 3.6)
    "hash": [{"num_warps": 4, "block_l": b} for b in (32, 64, 128)],
    "forward": [{"num_warps": w, "block_n": b} for w in (4, 8) for b in (64, 32)],
    "backward": [{"num_warps": w, "block_n": b} for w in (4, 8) for b in (64, 32)],
}


def run_tune(log, length=2**16, n_hashes=4):
    """Times each kernel's launch choices (kernels_launch.LAUNCH) at 64K tokens and keeps the fastest."""
    length = length if DEVICE == "cuda" else 256
    print(f"== tune at {length_label(length)} tokens, n_hashes {n_hashes}", flush=True)
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes)
    n_buckets = total_buckets(num_buckets)
    bucket_ids = kernels.hash_vectors(query_key.detach(), rotations, num_buckets)
    positions, buckets = kernels.sort_by_bucket(bucket_ids, n_buckets)
    apply = lambda: kernels.LSHAttentionFunction.apply(  # noqa: E731
        query_key, value, positions, buckets, None, CHUNK, 1, 0, True, "bucket_window")
    result = measure(lambda: kernels.sort_by_bucket(bucket_ids, n_buckets))
    log.write(section="tune", part="sort", length=length, n_hashes=n_hashes, **result)
    print("sort", result, flush=True)
    steps = {
        "hash": lambda: kernels.hash_vectors(query_key.detach(), rotations, num_buckets),
        "forward": apply,
        "backward": lambda: torch.autograd.grad(apply()[0], (query_key, value), grad_out),
    }
    chosen = {}
    default = {phase: dict(settings) for phase, settings in kernels_launch.LAUNCH.items()}  # what a choice leaves out
    for phase, step in steps.items():
        timings = []
        for choice in TUNE_CHOICES[phase]:
            kernels_launch.LAUNCH[phase] = {**default[phase], **choice}
            result = measure(step)
            log.write(section="tune", part=phase, launch=choice, length=length, n_hashes=n_hashes, **result)
            print(phase, choice, result, flush=True)
            if result["status"] == "ok":
                timings.append((result["median_ms"], choice))
        chosen[phase] = min(timings, key=lambda item: item[0])[1] if timings else TUNE_CHOICES[phase][0]
        kernels_launch.LAUNCH[phase] = {**default[phase], **chosen[phase]}
    log.write(section="tune", part="chosen", launch=chosen)
    print("chosen", chosen, flush=True)


# ---------------------------------------------------------------------------------------------
# --profile
# ---------------------------------------------------------------------------------------------


def run_profile(log, lengths, n_hashes=4):
    """Where one LSH op step spends its device time, kernel by kernel; whether the row gathers
    are what grows past 256K (the same kernels over the identity order, where every window is
    contiguous); and the hashing dot's precision."""
    print(f"== profile (bucket_window, n_hashes {n_hashes})", flush=True)
    for length in lengths:
        profile_length(log, length, n_hashes)
        free_memory()


def profile_length(log, length, n_hashes):
    """run_profile at one length; its tensors are freed when it returns."""
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes)
    n_buckets = total_buckets(num_buckets)
    if DEVICE == "cuda":
        times = kernel_times(lsh_op_case(length, n_hashes, "bucket_window", "triton"))
        log.write(section="profile", length=length, n_hashes=n_hashes, kernels_ms=times)
        print(length_label(length), {name: round(ms, 3) for name, ms in list(times.items())[:8]}, flush=True)
    bucket_ids = kernels.hash_vectors(query_key.detach(), rotations, num_buckets)
    hashed = kernels.sort_by_bucket(bucket_ids, n_buckets)
    identity = (torch.arange(length, device=DEVICE, dtype=torch.int32).repeat(n_hashes).expand(1, HEADS, -1).contiguous(),
                (torch.arange(n_hashes, device=DEVICE, dtype=torch.int32) * (n_buckets + 1))
                .repeat_interleave(length).expand(1, HEADS, -1).contiguous())
    for order_name, (positions, buckets) in (("hashed", hashed), ("identity", identity)):
        def step(positions=positions, buckets=buckets):
            out, _ = kernels.LSHAttentionFunction.apply(query_key, value, positions, buckets, None, CHUNK, 1, 0,
                                                         True, "bucket_window")
            torch.autograd.grad(out, (query_key, value), grad_out)

        result = measure(step)
        log.write(section="profile_order", length=length, n_hashes=n_hashes, order=order_name, **result)
        print(length_label(length), "attention fwd+bwd,", order_name, "order:", result, flush=True)
    default_precision = kernels_hashing.HASH_PRECISION
    for precision in ("ieee", "tf32x3", "bf16x3"):
        kernels_hashing.HASH_PRECISION = precision
        result = measure(lambda: kernels.hash_vectors(query_key.detach(), rotations, num_buckets))
        mismatch = None
        if length <= 2**18:  # the torch path stores x @ R: 32 GiB at 1M
            mismatch = (kernels.hash_vectors(query_key.detach(), rotations, num_buckets)
                        != attention_functions.hash_vectors(query_key.detach().float(), rotations, num_buckets)
                        ).float().mean().item()
        log.write(section="profile_hash", length=length, n_hashes=n_hashes, precision=precision,
                  mismatch_vs_torch=mismatch, **result)
        print(length_label(length), "hash", precision, result, "mismatch", mismatch, flush=True)
    kernels_hashing.HASH_PRECISION = default_precision


# ---------------------------------------------------------------------------------------------
# --sweep
# ---------------------------------------------------------------------------------------------


def dense_tensors(length, requires_grad=True):
    """q, k, v and an output gradient (batch 1, HEADS, length, D_HEAD), bf16."""
    shape = (1, HEADS, length, D_HEAD)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=requires_grad) for _ in range(3))
    return q, k, v, torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)


def sdpa_case(length, backend):
    """Causal SDPA held to `backend` (common.SDPA_BACKENDS), forward + backward."""
    q, k, v, grad_out = dense_tensors(length)

    def step():
        with sdpa_backend(backend):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def local_op_case(length):
    """Our local attention kernel (the `local` layers' window: own chunk and the one before, causal)."""
    q, k, v, grad_out = dense_tensors(length)
    function = attention_dispatch.local_attention_dispatch("triton")

    def step():
        out, _ = function(q, k, v, chunk_length=CHUNK, n_chunks_before=1, n_chunks_after=0, causal=True)
        torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def flex_local_case(length):
    """FlexAttention with the same visible keys as local_op_case; its block mask built once, as for
    every layer and step of a model."""
    q, k, v, grad_out = dense_tensors(length, requires_grad=FLEX_BACKWARD)
    block_mask = local_block_mask(length, chunk_length=CHUNK, n_chunks_before=1, causal=True, block_size=FLEX_BLOCK,
                                  device=DEVICE)

    def step():
        out, _ = flex_local_attention(q, k, v, block_mask, flex=FLEX)
        if FLEX_BACKWARD:
            torch.autograd.grad(out, (q, k, v), grad_out)

    return step


def flex_lsh_case(length, n_hashes, mode):
    """LSH attention as sort + FlexAttention + un-sort (bench/anchors.py), the package's hashing (torch
    path) and sort included, as lsh_op_case times ours; the windows' blocks built once."""
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes, requires_grad=FLEX_BACKWARD)
    hash_function = attention_dispatch.hash_vectors_dispatch("torch")
    window_mask = lsh_window_block_mask(n_hashes * length, chunk_length=CHUNK, window_mode=mode, block_size=FLEX_BLOCK,
                                        device=DEVICE)

    def step():
        bucket_ids = hash_function(query_key.detach(), rotations, num_buckets)
        out, _ = flex_lsh_attention(query_key, value, bucket_ids, window_mask, n_buckets=total_buckets(num_buckets),
                                    chunk_length=CHUNK, causal=True, window_mode=mode, flex=FLEX)
        if FLEX_BACKWARD:
            torch.autograd.grad(out, (query_key, value), grad_out)

    return step


def lsh_op_case(length, n_hashes, mode, backend):
    query_key, value, grad_out, rotations, num_buckets = lsh_tensors(length, n_hashes)
    options = dict(n_buckets=total_buckets(num_buckets), chunk_length=CHUNK, causal=True, window_mode=mode)
    hash_function = attention_dispatch.hash_vectors_dispatch(backend)
    function = attention_dispatch.lsh_attention_dispatch(backend)

    def step():
        bucket_ids = hash_function(query_key.detach(), rotations, num_buckets)
        out, _ = function(query_key, value, bucket_ids, **options)
        torch.autograd.grad(out, (query_key, value), grad_out)

    return step


def layer_inputs(length):
    hidden = torch.randn(1, length, HEADS * D_HEAD, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    grad_out = torch.randn(1, length, HEADS * D_HEAD, device=DEVICE, dtype=torch.bfloat16)
    return hidden, grad_out


def our_layer_case(length, n_hashes, mode):
    config = ReformerConfig(
        hidden_size=HEADS * D_HEAD, num_attention_heads=HEADS, attention_head_size=D_HEAD, num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, lsh_window_mode=mode, is_decoder=True,
        attn_backend="triton", attn_layers=["lsh"], axial_pos_embds=False, max_position_embeddings=length,
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0,
    )
    layer = attention.LSHSelfAttention(config).to(DEVICE, torch.bfloat16)
    hidden, grad_out = layer_inputs(length)
    params = list(layer.parameters())

    def step():
        torch.autograd.grad(layer(hidden), [hidden, *params], grad_out)

    return step


def transformers_layer_case(length, n_hashes):
    from transformers import ReformerConfig as TransformersReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention as TransformersLSHSelfAttention

    config = TransformersReformerConfig(
        hidden_size=HEADS * D_HEAD, num_attention_heads=HEADS, attention_head_size=D_HEAD, num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, lsh_num_chunks_before=1,
        lsh_num_chunks_after=0, is_decoder=True, attn_layers=["lsh"], max_position_embeddings=length,
        lsh_attention_probs_dropout_prob=0.0, axial_pos_embds=False,
    )
    layer = TransformersLSHSelfAttention(config).to(DEVICE, torch.bfloat16)
    hidden, grad_out = layer_inputs(length)
    params = list(layer.parameters())

    def step():
        torch.autograd.grad(layer(hidden).hidden_states, [hidden, *params], grad_out)

    return step


def sweep_cases(length, hashes, anchors_only, lsh_anchor_lengths):
    """(impl, n_hashes, mode, build) of one length: the dense anchors, ours and FlexAttention for
    local and LSH attention, and (without anchors_only) the other n_hashes, our torch path and the layers."""
    cases = [(f"sdpa_{name}", None, None, (lambda name=name: sdpa_case(length, name))) for name in SDPA_BACKENDS]
    cases += [("local_triton", None, None, lambda: local_op_case(length)),
              ("flex_local", None, None, lambda: flex_local_case(length))]
    cases += [("lsh_triton", n, "bucket_window", (lambda n=n: lsh_op_case(length, n, "bucket_window", "triton")))
              for n in ([4] if anchors_only else hashes)]
    cases += [("lsh_triton", 4, "chunk", lambda: lsh_op_case(length, 4, "chunk", "triton"))]
    if length in lsh_anchor_lengths:
        cases += [("flex_lsh", 4, mode, (lambda mode=mode: flex_lsh_case(length, 4, mode)))
                  for mode in ("bucket_window", "chunk")]
    if anchors_only:
        return cases
    if length <= 2**18:
        cases += [("lsh_torch", 4, "bucket_window", lambda: lsh_op_case(length, 4, "bucket_window", "torch"))]
    return cases + [("layer_ours", 4, "chunk", lambda: our_layer_case(length, 4, "chunk")),
                    ("layer_ours", 4, "bucket_window", lambda: our_layer_case(length, 4, "bucket_window")),
                    ("layer_transformers", 4, "chunk", lambda: transformers_layer_case(length, 4))]


def run_sweep(log, lengths, hashes, anchors_only=False, lsh_anchor_lengths=LSH_ANCHOR_LENGTHS):
    print("== sweep (fwd+bwd, batch 1, 8 heads, d_head 64, causal, bf16, chunk 64)", flush=True)
    problems = {f"sdpa_{name}": sdpa_backend_problem(name, DEVICE) for name in SDPA_BACKENDS}
    for length in lengths:
        qkvo_gib = 4 * HEADS * length * D_HEAD * 2 / 2**30
        for impl, n_hashes, mode, build in sweep_cases(length, hashes, anchors_only, lsh_anchor_lengths):
            if problems.get(impl):  # a backend this device lacks is a row saying so
                result = {"status": f"unavailable: {problems[impl]}"}
            else:
                try:
                    result = measure(build())
                except torch.cuda.OutOfMemoryError:
                    result = {"status": "OOM"}
                except Exception as error:  # a case that cannot be built is a result, not a stop
                    result = {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            free_memory()
            if impl.startswith("flex"):
                result["backward"] = FLEX_BACKWARD  # False on the CPU: forward only
            record = log.write(section="sweep", impl=impl, n_hashes=n_hashes, mode=mode, length=length,
                               qkvo_gib=qkvo_gib, **result)
            print(f"{length_label(length):>5} {impl:20s} n={n_hashes} {mode or '':13s} "
                  f"{record.get('median_ms', float('nan')):10.3f} ms {record.get('peak_gib', float('nan')):7.2f} GiB "
                  f"{record['status'] if record['status'] != 'ok' else ''}", flush=True)


# Seconds per forward + backward step on one H100 against length (bench/results/attention_h100_v15.md
# where measured: SDPA flash, our LSH kernels, our torch path; guesses for the rest), a guess at one
# FlexAttention compile (forward + backward, one static shape), at a case's other costs, and at the
# sections outside the sweep; for the estimate printed before a run.
STEP_SECONDS = {
    "sdpa": lambda length, n: 13.7 * (length / 2**20) ** 2,
    "lsh_triton": lambda length, n: 0.001 + 0.014 * n * length / 2**20,
    "local_triton": lambda length, n: 0.001 + 0.015 * length / 2**20,
    "flex_local": lambda length, n: 0.001 + 0.03 * length / 2**20,
    "flex_lsh": lambda length, n: 0.003 + 0.25 * length / 2**20,
    "lsh_torch": lambda length, n: 0.005 + 0.73 * length / 2**20,
    "layer_ours": lambda length, n: 0.002 + 0.09 * length / 2**20,
    "layer_transformers": lambda length, n: 0.01 + 1.0 * length / 2**20,
}
FLEX_COMPILE_SECONDS, CASE_SETUP_SECONDS = 25, 1
SECTION_SECONDS = {"check": 60, "tune": 60, "profile": 60, "graphs": 120}


def estimated_minutes(args):
    """A rough estimate of a run's GPU time: `measure`'s calls per case (first, warm-up, timed runs)
    at the step times above, the sweep's cases as sweep_cases lists them, flat guesses elsewhere."""
    seconds = sum(SECTION_SECONDS[name] for name in SECTION_SECONDS if getattr(args, name))
    for length in args.lengths if args.sweep else []:
        for impl, n_hashes, _, _ in sweep_cases(length, args.hashes, args.anchors_only, args.lsh_anchor_lengths):
            step_s = STEP_SECONDS["sdpa" if impl.startswith("sdpa") else impl](length, n_hashes or 1)
            runs = 10 if step_s * 10 <= 20 else max(3, int(20 // step_s))
            seconds += CASE_SETUP_SECONDS + step_s * (1 + (2 if step_s <= 1 else 0) + runs)
            seconds += FLEX_COMPILE_SECONDS if impl.startswith("flex") else 0
    return seconds / 60


def run_graphs(log, lengths):
    """SDPA and the LSH op (n_hashes 4) with each step captured in a CUDA graph: both sides'
    launch overhead removed, which at short lengths is most of ours (8 Triton launches).  Then
    the op steps and the whole layers (ours, transformers') queued back to back, as a training
    loop runs them (`measure_queued`)."""
    print("== CUDA graphs (fwd+bwd, launch overhead removed on both sides)", flush=True)
    for length in lengths:
        op_cases = [("lsh_triton", 4, mode, (lambda mode=mode: lsh_op_case(length, 4, mode, "triton")))
                    for mode in ("bucket_window", "chunk")]
        op_cases += [("sdpa_flash", None, None, lambda: sdpa_case(length, "flash"))]
        layer_cases = [("layer_ours", 4, mode, (lambda mode=mode: our_layer_case(length, 4, mode)))
                       for mode in ("bucket_window", "chunk")]
        layer_cases += [("layer_transformers", 4, None, lambda: transformers_layer_case(length, 4))]
        runs = [("graphs", "graphed", case, lambda build: measure(graphed(build()))) for case in op_cases]
        runs += [("queued", "queued", case, lambda build: measure_queued(build())) for case in op_cases + layer_cases]
        for section, label, (impl, n_hashes, mode, build), timing in runs:
            try:
                result = timing(build)
            except Exception as error:  # a step that cannot be captured is a result, not a stop
                result = {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            free_memory()
            log.write(section=section, impl=impl, n_hashes=n_hashes, mode=mode, length=length, **result)
            print(f"{length_label(length):>5} {impl:20s} n={n_hashes} {mode or '':13s} {label} "
                  f"{result.get('median_ms', float('nan')):10.3f} ms {result['status'] if result['status'] != 'ok' else ''}",
                  flush=True)


# ---------------------------------------------------------------------------------------------
# --report
# ---------------------------------------------------------------------------------------------


def pick(rows, **match):
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()) and row.get("status") == "ok":
            return row
    return None


def anchor_sections(sweep, lengths, time_of, memory_of, dense_ms):
    """The tables of our local and LSH kernels beside their FlexAttention anchors; none for runs
    without them."""
    flex_rows = [row for row in sweep if row["impl"].startswith("flex_")]
    if not flex_rows:
        return []
    forward_only = [] if all(row.get("backward", True) for row in flex_rows) else [
        "**FlexAttention rows are forward only here (no backward on the CPU); ours are forward + backward.**", ""]

    def gib(value):
        return f"{value:.2f}" if value else "–"

    table = []
    for length in lengths:
        ours, flex = time_of(impl="local_triton", length=length), time_of(impl="flex_local", length=length)
        table.append([length_label(length), fmt_ms(ours), fmt_ms(flex), fmt_ratio(flex, ours),
                      fmt_ratio(dense_ms(length), ours), gib(memory_of(impl="local_triton", length=length)),
                      gib(memory_of(impl="flex_local", length=length))])
    text = ["## Local attention: ours against FlexAttention with the same visible keys", "",
            "Forward + backward, the `local` layers' window (own chunk of 64 and the one before, causal; "
            "bench/anchors.py). FlexAttention compiled on the GPU (`torch.compile(flex_attention, dynamic=False)`), its "
            f"block mask ({FLEX_BLOCK} x {FLEX_BLOCK} blocks, from the window's structure) built once outside "
            "the timed step. Target: FlexAttention / ours >= 1.2x at 16K-256K.", "", *forward_only,
            markdown_table(["length", "ours ms", "FlexAttention ms", "FlexAttention / ours", "best dense / ours",
                            "ours GiB", "FlexAttention GiB"], table), ""]
    table = []
    for length in sorted({row["length"] for row in flex_rows if row["impl"] == "flex_lsh"}):
        for mode in ("bucket_window", "chunk"):
            ours = time_of(impl="lsh_triton", n_hashes=4, mode=mode, length=length)
            flex = time_of(impl="flex_lsh", n_hashes=4, mode=mode, length=length)
            table.append([length_label(length), mode, fmt_ms(ours), fmt_ms(flex), fmt_ratio(flex, ours),
                          fmt_ratio(dense_ms(length), ours),
                          gib(memory_of(impl="lsh_triton", n_hashes=4, mode=mode, length=length)),
                          gib(memory_of(impl="flex_lsh", n_hashes=4, mode=mode, length=length))])
    if table:
        text += ["## LSH attention: ours against FlexAttention over the bucket-sorted sequence", "",
                 "n_hashes 4, forward + backward, hashing and sorting included on both sides. The anchor is what a "
                 "user could write in an afternoon (bench/anchors.py): the package's hashing (torch path), "
                 "`torch.argsort` by bucket, FlexAttention (compiled on the GPU) over the sorted sequence with the `lsh` "
                 "layers' windows (a mask_mod on sorted positions and buckets, the self logit replaced by a "
                 "score_mod), un-sorted, the hash rounds combined by their log-sum-exp. Target: FlexAttention / "
                 "ours >= 2x at 64K.", "", *forward_only,
                 markdown_table(["length", "mode", "ours ms", "FlexAttention ms", "FlexAttention / ours",
                                 "best dense / ours", "ours GiB", "FlexAttention GiB"], table), ""]
    return text


def write_report(out_dir, stem="attention"):
    rows = read_json_lines(os.path.join(out_dir, stem + ".jsonl"))
    env = next((row for row in rows if row.get("section") == "environment"), {})
    sweep = [row for row in rows if row.get("section") == "sweep"]
    lengths = sorted({row["length"] for row in sweep})
    text = ["# Attention layer benchmark", "", environment_markdown(env), "",
            "Reproduce (repository root, one GPU): `PYTHONPATH=. python bench/attention.py --out DIR --check --profile --sweep --graphs --report` (`--tune` re-times the launch settings; the last tuning run is `attention_h100_tune.jsonl`; the anchors alone: `--sweep --anchors-only --report`). "
            "Plot: the .png of this file's name (time and memory against length, log-log). Raw numbers: the .jsonl of this file's name.", ""]

    checks = [row for row in rows if row.get("section") == "check"]
    if checks:
        text += ["## Kernel vs torch path at full size", "",
                 "Relative error against a float64 reference: kernel | torch path in the same dtype. "
                 "Pass: kernel <= 2 x torch + 1e-6 (outputs at non-padding positions; gradients with "
                 "zero upstream gradient at padding positions).", ""]
        table = []
        for row in checks:
            errors = row.get("errors", {})
            cells = "; ".join(f"{name} {value['kernel']:.1e} / {value['torch']:.1e}"
                              for name, value in errors.items() if "kernel" in value)
            table.append([row["kind"], row["mode"] or "", row["causal"], row["n_hashes"], row["d_head"], row["n_pad"],
                          row["dtype"], f"{row['batch']}x{row['heads']}x{length_label(row['length'])}",
                          cells or row.get("status", ""), "PASS" if row["passed"] else "FAIL"])
        text += [markdown_table(["kind", "mode", "causal", "n_hashes", "d_head", "pad", "dtype", "b x h x L",
                                 "errors (kernel / torch)", "result"], table), ""]

    tune = [row for row in rows if row.get("section") == "tune"]
    if tune:
        text += ["## One LSH step at 64K tokens, n_hashes 4, by part", ""]
        table = [[row["part"], row.get("launch", row.get("warps", "")), fmt_ms(row.get("median_ms")),
                  row.get("status", "")] for row in tune if row["part"] != "chosen"]
        chosen = [row["launch"] for row in tune if row["part"] == "chosen" and "launch" in row]
        text += [markdown_table(["part", "launch", "median ms", "status"], table), ""]
        if chosen:
            text += [f"Chosen (and used for the sweep below): {chosen[-1]}", ""]

    profile = [row for row in rows if row.get("section") == "profile"]
    if profile:
        names = []
        for row in profile:
            names += [name for name in list(row["kernels_ms"])[:5] if name not in names]
        text += ["## One LSH op step by kernel (torch.profiler device time, ms)", "",
                 "bucket_window, n_hashes 4, causal, bf16, forward + backward including hashing and sorting.", ""]
        table = [[length_label(row["length"])] + [f"{row['kernels_ms'].get(name, 0.0):.3f}" for name in names]
                 + [f"{sum(row['kernels_ms'].values()):.3f}"] for row in profile]
        text += [markdown_table(["length"] + [f"`{name[:40]}`" for name in names] + ["all kernels"], table), ""]
    orders = [row for row in rows if row.get("section") == "profile_order"]
    if orders:
        text += ["## Attention kernels over hashed vs contiguous (identity) order, forward + backward", "",
                 "Same kernels and window sizes; the identity order reads every window as contiguous rows.", ""]
        table = []
        for length in sorted({row["length"] for row in orders}):
            hashed = pick(orders, length=length, order="hashed")
            identity = pick(orders, length=length, order="identity")
            table.append([length_label(length), fmt_ms(hashed and hashed["median_ms"]),
                          fmt_ms(identity and identity["median_ms"]),
                          fmt_ratio(hashed and hashed["median_ms"], identity and identity["median_ms"])])
        text += [markdown_table(["length", "hashed order ms", "identity order ms", "hashed / identity"], table), ""]
    hashing = [row for row in rows if row.get("section") == "profile_hash"]
    if hashing:
        text += ["## Hashing kernel: ieee (FMA units), tf32x3 (three tf32 products), bf16x3 (three bfloat16 products, the default for bfloat16)", ""]
        table = [[length_label(row["length"]), row["precision"], fmt_ms(row.get("median_ms")),
                  "–" if row.get("mismatch_vs_torch") is None else f"{row['mismatch_vs_torch']:.1e}"] for row in hashing]
        text += [markdown_table(["length", "precision", "ms", "buckets differing from the torch path"], table), ""]

    def time_of(**match):
        row = pick(sweep, **match)
        return None if row is None else row["median_ms"]

    def memory_of(**match):
        row = pick(sweep, **match)
        return None if row is None else row["peak_gib"]

    def best_dense(length):
        """The faster SDPA backend's row at this length (the dense anchor), or None."""
        rows = [row for row in sweep if row["impl"] in ("sdpa_flash", "sdpa_cudnn") and row["length"] == length
                and row.get("status") == "ok"]
        return min(rows, key=lambda row: row["median_ms"], default=None)

    def dense_ms(length):
        row = best_dense(length)
        return row and row["median_ms"]

    hashes = sorted({row["n_hashes"] for row in sweep if row["impl"] == "lsh_triton" and row["mode"] == "bucket_window"})
    header = ["length", "SDPA flash ms", "SDPA cuDNN ms", "best dense ms"] + [f"LSH n={n} ms" for n in hashes] + [
        "LSH n=4 chunk ms", "LSH n=4 torch path ms", "best dense / LSH n=4", "best dense / LSH n=4 chunk"]
    table = []
    for length in lengths:
        dense = dense_ms(length)
        chunk = time_of(impl="lsh_triton", n_hashes=4, mode="chunk", length=length)
        table.append([length_label(length), fmt_ms(time_of(impl="sdpa_flash", length=length)),
                      fmt_ms(time_of(impl="sdpa_cudnn", length=length)), fmt_ms(dense)]
                     + [fmt_ms(time_of(impl="lsh_triton", n_hashes=n, mode="bucket_window", length=length)) for n in hashes]
                     + [fmt_ms(chunk), fmt_ms(time_of(impl="lsh_torch", n_hashes=4, length=length)),
                        fmt_ratio(dense, time_of(impl="lsh_triton", n_hashes=4, mode="bucket_window", length=length)),
                        fmt_ratio(dense, chunk)])
    text += ["## Attention op, forward + backward (hashing and sorting included)", "",
             "Batch 1, 8 heads, d_head 64, causal, bf16, chunk 64, buckets 2L/64 (factorised above 128). "
             "Median of >= 10 runs (3 for steps over 2 s). Dense: causal SDPA held to one backend "
             "(`sdpa_kernel`); best dense is the faster of the two at each length.", "",
             markdown_table(header, table), ""]
    text += anchor_sections(sweep, lengths, time_of, memory_of, dense_ms)

    header = ["length", "SDPA GiB", "LSH n=4 GiB", "LSH n=4 / SDPA", "q/k/v/out GiB", "LSH n=4 / qkvo"]
    table = []
    for length in lengths:
        sdpa = best_dense(length) and best_dense(length)["peak_gib"]
        ours = memory_of(impl="lsh_triton", n_hashes=4, mode="bucket_window", length=length)
        qkvo = 4 * HEADS * length * D_HEAD * 2 / 2**30
        table.append([length_label(length), f"{sdpa:.2f}" if sdpa else "–", f"{ours:.2f}" if ours else "–",
                      fmt_ratio(ours, sdpa), f"{qkvo:.2f}", fmt_ratio(ours, qkvo)])
    text += ["## Peak memory (inputs, outputs and gradients included)", "",
             "SDPA: the best dense row's.", "", markdown_table(header, table), ""]

    layer_lengths = sorted({row["length"] for row in sweep if row["impl"].startswith("layer_")})
    header = ["length", "transformers LSHSelfAttention ms", "ours chunk ms", "ours bucket_window ms",
              "speed-up (chunk)", "transformers GiB", "ours chunk GiB"]
    table = []
    for length in layer_lengths:
        theirs = time_of(impl="layer_transformers", length=length)
        ours = time_of(impl="layer_ours", mode="chunk", length=length)
        table.append([length_label(length), fmt_ms(theirs), fmt_ms(ours),
                      fmt_ms(time_of(impl="layer_ours", mode="bucket_window", length=length)), fmt_ratio(theirs, ours),
                      f"{memory_of(impl='layer_transformers', length=length) or float('nan'):.2f}",
                      f"{memory_of(impl='layer_ours', mode='chunk', length=length) or float('nan'):.2f}"])
    if layer_lengths:
        text += ["## Whole layer (projections + hashing + attention), n_hashes 4, vs transformers", "",
                 "Hidden 512 -> 8 heads of 64, bf16 weights and activations, same bucket counts.", "",
                 markdown_table(header, table), ""]
    graphs = [row for row in rows if row.get("section") == "graphs"]
    if graphs:
        header = ["length", "SDPA flash ms (eager)", "LSH n=4 ms (eager)", "SDPA flash ms (graph)",
                  "LSH n=4 ms (graph)", "LSH n=4 chunk ms (graph)", "SDPA / LSH n=4 (graph)"]
        table = []
        for length in sorted({row["length"] for row in graphs}):
            sdpa = pick(graphs, impl="sdpa_flash", length=length)
            ours = pick(graphs, impl="lsh_triton", mode="bucket_window", length=length)
            chunk = pick(graphs, impl="lsh_triton", mode="chunk", length=length)
            table.append([length_label(length), fmt_ms(time_of(impl="sdpa_flash", length=length)),
                          fmt_ms(time_of(impl="lsh_triton", n_hashes=4, mode="bucket_window", length=length)),
                          fmt_ms(sdpa and sdpa["median_ms"]), fmt_ms(ours and ours["median_ms"]),
                          fmt_ms(chunk and chunk["median_ms"]),
                          fmt_ratio(sdpa and sdpa["median_ms"], ours and ours["median_ms"])])
        text += ["## Short sequences with each step captured in a CUDA graph", "",
                 "The same op steps as above (forward + backward, hashing and sorting included), captured once "
                 "with `torch.cuda.graph` and replayed (`--graphs`): the CPU's launch work is gone on both sides, "
                 "so each figure is GPU time. Eager columns: the sweep above, same process.", "",
                 markdown_table(header, table), ""]
    queued = [row for row in rows if row.get("section") == "queued"]
    if queued:
        header = ["length", "SDPA flash ms", "LSH n=4 ms", "LSH n=4 chunk ms", "SDPA / LSH n=4 chunk",
                  "transformers layer ms", "our layer ms", "our layer chunk ms", "transformers / our layer chunk"]
        table = []

        def queued_ms(**fields):
            row = pick(queued, **fields)
            return row and row.get("median_ms")

        for length in sorted({row["length"] for row in queued}):
            sdpa = queued_ms(impl="sdpa_flash", length=length)
            chunk = queued_ms(impl="lsh_triton", mode="chunk", length=length)
            theirs = queued_ms(impl="layer_transformers", length=length)
            our_chunk = queued_ms(impl="layer_ours", mode="chunk", length=length)
            table.append([length_label(length), fmt_ms(sdpa),
                          fmt_ms(queued_ms(impl="lsh_triton", mode="bucket_window", length=length)), fmt_ms(chunk),
                          fmt_ratio(sdpa, chunk), fmt_ms(theirs),
                          fmt_ms(queued_ms(impl="layer_ours", mode="bucket_window", length=length)), fmt_ms(our_chunk),
                          fmt_ratio(theirs, our_chunk)])
        text += ["## Steps queued back to back", "",
                 "The same op and layer steps, 10 at a time between two CUDA events without waiting in between "
                 "(median of 5), as a training loop issues them: one step's CPU launch work overlaps the GPU's "
                 "work on the steps before it, so a step costs the larger of its CPU and GPU times. The tables "
                 "above wait for the GPU before each step, which adds the CPU time before a step's first large "
                 "kernel. Same process as above.", "",
                 markdown_table(header, table), ""]
    failed = [row for row in sweep + graphs + queued if row.get("status") != "ok"]
    if failed:
        text += ["## Cases that did not run", ""]
        text += [f"- {row['impl']} n={row['n_hashes']} {row['mode']} at {length_label(row['length'])}: {row['status']}"
                 for row in failed]
        text.append("")
    with open(os.path.join(out_dir, stem + ".md"), "w", encoding="utf-8") as file:
        file.write("\n".join(text))
    plot(sweep, os.path.join(out_dir, stem + ".png"))


def plot(sweep, path):
    series = [("SDPA flash (dense)", dict(impl="sdpa_flash")), ("SDPA cuDNN (dense)", dict(impl="sdpa_cudnn")),
              ("transformers LSHSelfAttention layer", dict(impl="layer_transformers")),
              ("FlexAttention local window", dict(impl="flex_local")), ("ours local", dict(impl="local_triton")),
              ("FlexAttention over sorted, n_hashes=4", dict(impl="flex_lsh", mode="bucket_window"))]
    series += [(f"ours LSH n_hashes={n}", dict(impl="lsh_triton", n_hashes=n, mode="bucket_window")) for n in (1, 2, 4, 8)]
    series += [("ours LSH layer n_hashes=4", dict(impl="layer_ours", mode="chunk")),
               ("ours torch path n_hashes=4", dict(impl="lsh_torch"))]
    lines = [(label, [(row["length"], row["median_ms"], row["peak_gib"]) for row in sweep
                      if all(row.get(k) == v for k, v in match.items()) and row.get("status") == "ok"])
             for label, match in series]
    plot_against_length(path, lines, ("forward + backward time (ms)", "peak memory (GiB)"),
                        "Causal attention, batch 1, 8 heads, d_head 64, bf16, one H100", figsize=(13, 5))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for attention.jsonl, .md and .png")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2**14, 2**16, 2**18, 2**20])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--graphs", action="store_true")
    parser.add_argument("--graph-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2**10, 2**12, 2**13, 2**14, 2**16])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--anchors-only", action="store_true",
                        help="with --sweep: the anchors and our kernels beside them only (default lengths 8K..256K)")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="default 1K..1M (8K, 16K, 64K, 256K with --anchors-only)")
    parser.add_argument("--lsh-anchor-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=LSH_ANCHOR_LENGTHS, help="lengths of --sweep that time FlexAttention over the sorted sequence")
    parser.add_argument("--hashes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--stem", default="attention", help="file name stem of the .jsonl/.md/.png in --out")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test this script")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    global DEVICE, CHECKS, FLEX, FLEX_BACKWARD
    if args.lengths is None:
        args.lengths = ANCHOR_LENGTHS if args.anchors_only else LENGTHS
    if args.smoke:
        DEVICE = "cpu"
        CHECKS = [case[:9] + (1, 2, 256) for case in CHECKS[::3]]
        args.lengths = [128, 256]
        args.lsh_anchor_lengths = [256]
        args.profile_lengths = [256]
        args.graph_lengths = [256]
    else:
        FLEX, FLEX_BACKWARD = torch.compile(flex_attention, dynamic=False), True
        torch._dynamo.config.recompile_limit = 64  # one static graph per length and mask
    if args.check or args.tune or args.profile or args.sweep or args.graphs:
        if not torch.cuda.is_available() and not args.smoke:
            raise SystemExit("bench/attention.py measures on a CUDA GPU; none is available here.")
        if not args.smoke:
            print(f"estimated GPU time on one H100: about {estimated_minutes(args):.0f} min", flush=True)
        started = time.perf_counter()
        log = JsonLines(os.path.join(args.out, args.stem + ".jsonl"))
        log.write(section="environment", **environment())
        if args.check:
            run_checks(log)
        if args.tune:
            run_tune(log)
        if args.profile:
            run_profile(log, args.profile_lengths)
        if args.sweep:
            run_sweep(log, args.lengths, args.hashes, args.anchors_only, args.lsh_anchor_lengths)
        if args.graphs:
            run_graphs(log, args.graph_lengths)
        print(f"measured in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if args.report:
        write_report(args.out, args.stem)


if __name__ == "__main__":
    main()
