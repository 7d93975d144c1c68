"""What bench/attention.py times: --tune (each kernel's launch choices at 64K tokens), --profile (one
LSH op step by kernel, hashed against contiguous order, the hashing dot's precision), --sweep
(forward + backward of every implementation at each length, and the run's time estimate) and
--graphs (steps captured in CUDA graphs, and queued back to back); each result a JSON line."""

import torch

import attention_cases
from attention_cases import (
    CHUNK,
    D_HEAD,
    HEADS,
    flex_local_case,
    flex_lsh_case,
    local_op_case,
    lsh_op_case,
    lsh_tensors,
    our_layer_case,
    sdpa_case,
    total_buckets,
    transformers_layer_case,
)
from common import (
    SDPA_BACKENDS,
    free_memory,
    graphed,
    kernel_times,
    length_label,
    measure,
    measure_queued,
    sdpa_backend_problem,
)

from reformer_hf import attention_functions, kernels, kernels_hashing, kernels_launch

LSH_ANCHOR_LENGTHS = [2**13, 2**16, 2**18]  # FlexAttention over the sorted sequence


TUNE_CHOICES = {
    # 8 warps per hashing program stopped with an illegal memory access on the H100 (triton 3.6)
    "hash": [{"num_warps": 4, "block_l": b} for b in (32, 64, 128)],
    "forward": [{"num_warps": w, "block_n": b} for w in (4, 8) for b in (64, 32)],
    "backward": [{"num_warps": w, "block_n": b} for w in (4, 8) for b in (64, 32)],
}


def run_tune(log, length=2**16, n_hashes=4):
    """Times each kernel's launch choices (kernels_launch.LAUNCH) at 64K tokens and keeps the fastest."""
    length = length if attention_cases.DEVICE == "cuda" else 256
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
    device = attention_cases.DEVICE
    if device == "cuda":
        times = kernel_times(lsh_op_case(length, n_hashes, "bucket_window", "triton"))
        log.write(section="profile", length=length, n_hashes=n_hashes, kernels_ms=times)
        print(length_label(length), {name: round(ms, 3) for name, ms in list(times.items())[:8]}, flush=True)
    bucket_ids = kernels.hash_vectors(query_key.detach(), rotations, num_buckets)
    hashed = kernels.sort_by_bucket(bucket_ids, n_buckets)
    identity = (torch.arange(length, device=device, dtype=torch.int32).repeat(n_hashes).expand(1, HEADS, -1).contiguous(),
                (torch.arange(n_hashes, device=device, dtype=torch.int32) * (n_buckets + 1))
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
    problems = {f"sdpa_{name}": sdpa_backend_problem(name, attention_cases.DEVICE) for name in SDPA_BACKENDS}
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
                result["backward"] = attention_cases.FLEX_BACKWARD  # False on the CPU: forward only
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
