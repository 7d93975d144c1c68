"""What bench/model.py times besides one case: --sweep (ours at each length, the Llama anchor on each
SDPA backend and compiled, the other baselines) and the run's time estimate, --depth, --stored
(top layers kept instead of rebuilt, steps also queued), --profile (one step's device time by kind
of kernel) and --million (AdamW steps on one 1M-token sequence)."""

import time

import torch

import model_cases
from common import SDPA_BACKENDS, free_memory, kernel_times, measure
from model_cases import VOCAB, our_model, run_case, training_step


def run_sweep(log, lengths, baseline_limit, anchors_only=False):
    for length in lengths:
        run_case(log, "ours", length, 12)
        if length <= baseline_limit:
            run_llama_anchor(log, length)
            if not anchors_only:
                run_case(log, "llama", length, 12, checkpointing=False)
                run_case(log, "transformers_reformer", length, 12)


# Seconds per training step on one H100 (bench/results/model_h100_v15.md, 12 layers), fitted to
# lengths: ours about linear, Llama's attention quadratic; and guesses at the rest of a case (model
# built and moved), at one compile of the 12-layer Llama, and at the sections outside the sweep.
STEP_SECONDS = {"ours": lambda length: 0.05 + 3.1e-6 * length,
                "llama": lambda length: 7.7e-6 * length + 2.5e-10 * length**2}
CASE_SETUP_SECONDS, COMPILE_SECONDS = 5, 90
SECTION_SECONDS = {"check": 60, "profile": 30, "depth": 30, "stored": 60, "million": 60}


def estimated_minutes(args, depth_length):
    """A rough estimate of a run's GPU time: `measure`'s calls per case (first, warm-up, timed runs)
    at the step times above, the sweep's cases as run_sweep runs them, flat guesses elsewhere."""
    def case(kind, length, compiled=False):
        step_s = STEP_SECONDS["ours" if kind == "ours" else "llama"](length)
        runs = 10 if step_s * 10 <= 20 else max(3, int(20 // step_s))
        return CASE_SETUP_SECONDS + step_s * (1 + (2 if step_s <= 1 else 0) + runs) + (COMPILE_SECONDS if compiled else 0)

    seconds = sum(SECTION_SECONDS[name] for name in SECTION_SECONDS if getattr(args, name))
    if args.sweep:
        for length in args.lengths:
            seconds += case("ours", length)
            if length <= args.baseline_limit:
                seconds += 2 * case("llama", length) + case("llama", length, compiled=True)
                seconds += 0 if args.anchors_only else 2 * case("llama", length)
    return seconds / 60


def run_llama_anchor(log, length, n_layers=12):
    """Llama + SDPA + activation checkpointing: eager on each SDPA backend, then compiled on the
    faster of them (a backend that cannot run here, or a compile that fails, is a row saying so)."""
    eager = [run_case(log, "llama", length, n_layers, checkpointing=True, sdpa=name) for name in SDPA_BACKENDS]
    timed = [row for row in eager if row["status"] == "ok"]
    best = min(timed, key=lambda row: row["median_ms"])["sdpa_backend"] if timed else "default"
    run_case(log, "llama", length, n_layers, checkpointing=True, sdpa=best, compiled=True)


def run_depth(log, length):
    for n_layers in (2, 6, 24):
        run_case(log, "ours", length, n_layers)


STORED_CASES = ((12, 0), (12, 1), (12, 2), (12, 3), (24, 0), (24, 3))  # (layers, stored top layers)


def run_stored(log, length):
    for n_layers, stored_layers in STORED_CASES:
        run_case(log, "ours", length, n_layers, stored_layers=stored_layers, queued=True)


KERNEL_KINDS = [  # (kind, substrings of kernel names), first match wins
    ("matrix products", ("gemm", "xmma", "cutlass", "nvjet", "cublas")),
    ("LSH / local attention kernels", ("_window_fwd", "_window_bwd", "_delta_kernel")),
    ("hashing", ("_hash_kernel",)),
    ("sorting", ("sort", "radix")),
    ("layer norm", ("layer_norm", "LayerNorm")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
]


def run_profile(log, length, n_layers=12):
    """Where one training step of ours spends its device time, by kind of kernel."""
    model = our_model(length, n_layers)
    step = training_step(model, length)
    times = kernel_times(step, steps=2)
    kinds = {}
    for name, ms in times.items():
        kind = next((kind for kind, keys in KERNEL_KINDS if any(key in name for key in keys)), "other (elementwise, copies)")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    result = measure(step)
    record = log.write(section="profile", length=length, n_layers=n_layers, kinds_ms=kinds,
                       top_kernels_ms=dict(list(times.items())[:20]), step_ms=result.get("median_ms"))
    print("profile", {kind: round(ms, 1) for kind, ms in kinds.items()}, "step", record["step_ms"], flush=True)
    model = None
    free_memory()


def run_million(log, length, steps=3):
    """A few optimizer steps on one long sequence: it fits and trains; time and peak memory per step."""
    device = model_cases.DEVICE
    model = our_model(length, 12).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (1, length), generator=generator).to(device)
    losses, seconds = [], []
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    try:
        for _ in range(steps):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seconds.append(time.perf_counter() - started)
        status = "ok"
    except torch.cuda.OutOfMemoryError:
        status = "OOM"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    record = log.write(section="million", length=length, n_layers=12, losses=losses, step_seconds=seconds,
                       peak_gib=peak, status=status)
    print("1M-token training steps:", record, flush=True)
    model = optimizer = None
    free_memory()
