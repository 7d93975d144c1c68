"""Timing, memory and reporting helpers shared by the benchmarks (see docs/benchmarking.md)."""

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

GIB = 2**30


def environment():
    """Device, driver, versions, command and date: what every committed figure carries."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(arg) for arg in sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("triton", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info["nvidia_smi"] = f"unavailable ({error})"
    return info


class JsonLines:
    """Append one JSON object per line, flushed at once, so a killed run keeps what it measured."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, **record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return record


def read_json_lines(*paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            rows += [json.loads(line) for line in file if line.strip()]
    return rows


# The dense anchors: SDPA held to one backend.  "default" leaves the choice to torch.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


def sdpa_backend(name):
    """A context that holds scaled_dot_product_attention to backend `name` (a key of SDPA_BACKENDS),
    or changes nothing for "default"."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def sdpa_backend_problem(name, device, dtype=torch.bfloat16):
    """Why SDPA cannot run on backend `name` here, from a tiny causal call held to it (torch's
    warnings say why a backend was passed over), or None when it runs."""
    probe = torch.zeros(1, 1, 128, 64, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_backend(name):
                torch.nn.functional.scaled_dot_product_attention(probe, probe, probe, is_causal=True)
        except RuntimeError as error:
            reasons = [str(warning.message).splitlines()[0] for warning in caught] or [str(error).splitlines()[0]]
            return "; ".join(reasons)[:300]
    return None


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(step, *, min_runs=10, budget_s=20.0, warmup=2):
    """Median time (ms) of `step` after warm-up, with CUDA events, and its peak memory (GiB).

    Peak memory is `max_memory_allocated` over the first (warm-up) call after
    `reset_peak_memory_stats`, so it includes the inputs held by the caller.  A step slower
    than budget_s / min_runs runs fewer times (at least 3); the run count is reported.
    Returns a dict with status "ok", "OOM" or "error: ...".
    """
    free_memory()
    if not torch.cuda.is_available():  # --smoke runs on the CPU: one timed call, no memory figure
        return {**_timed_once_on_cpu(step), "peak_gib": 0.0}
    try:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        first_s = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / GIB
        for _ in range(0 if first_s > 1.0 else warmup):  # a slow first call has warmed up enough
            step()
        torch.cuda.synchronize()
        single = _time_once(step)
        runs = min_runs if single * min_runs <= budget_s * 1000 else max(3, int(budget_s * 1000 // single))
        times = [single] + [_time_once(step) for _ in range(runs - 1)]
        return {"status": "ok", "median_ms": float(sorted(times)[len(times) // 2]), "runs": runs,
                "min_ms": float(min(times)), "peak_gib": peak}
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as error:  # a failed case is a result to report, not a reason to stop the sweep
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        return {"status": f"error: {message}"}
    finally:
        free_memory()


def measure_queued(step, *, steps=10, repeats=5, warmup=2):
    """Median time (ms) per step of `steps` calls queued back to back between two CUDA events, as
    a training loop runs them: the CPU's launch work for one step overlaps the GPU's work on
    the steps before, so a step costs max(its GPU time, its CPU time) instead of (in `measure`,
    which waits for the GPU before each step) the CPU time before its first large kernel plus
    its GPU time.  Without a GPU (--smoke) one timed call."""
    if not torch.cuda.is_available():
        return _timed_once_on_cpu(step)
    free_memory()
    try:
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        per_step = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            per_step.append(start.elapsed_time(end) / steps)
        return {"status": "ok", "median_ms": float(sorted(per_step)[len(per_step) // 2]), "runs": steps * repeats,
                "min_ms": float(min(per_step))}
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    finally:
        free_memory()


def _timed_once_on_cpu(step):
    started = time.perf_counter()
    step()
    return {"status": "ok", "median_ms": (time.perf_counter() - started) * 1000, "runs": 1}


def graphed(step, warmup=3):
    """`step` captured once in a CUDA graph; the returned function replays it.  Replaying skips
    the CPU work of launching (Python, autograd, the launchers), so a step's time is its GPU time.
    Without a GPU (--smoke) the step itself is returned."""
    if not torch.cuda.is_available():
        return step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, allocator pools) outside the capture
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def replay():
        graph.replay()

    # The graph reads the inputs that `step` holds (allocated outside its memory pool): they must
    # live as long as the graph, or the allocator hands their memory back while it is replayed.
    replay.step = step
    return replay


def kernel_times(step, steps=3):
    """Device time per step (ms) of each kernel `step` launches, from torch.profiler, largest first.
    Without a GPU (--smoke) the CPU operators' own times stand in for it."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
        sync()
    totals = {}
    for event in profiler.key_averages():
        if on_gpu:
            time_us = getattr(event, "device_time_total", None)
            if time_us is None:
                time_us = getattr(event, "cuda_time_total", 0.0)
        else:
            time_us = event.self_cpu_time_total
        if time_us > 0 and event.key:
            totals[event.key[:80]] = totals.get(event.key[:80], 0.0) + time_us / 1000 / steps
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _time_once(step):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_markdown(info):
    keys = ("device", "nvidia_smi", "torch", "triton", "transformers", "python", "date", "command")
    return "\n".join(f"- {key}: `{info[key]}`" for key in keys if key in info)


def fmt_ms(value):
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def fmt_ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return "–"
    ratio = numerator / denominator
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def length_label(length):
    if length >= 2**20 and length % 2**20 == 0:
        return f"{length // 2**20}M"
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def lsh_buckets(length, chunk_length):
    """The paper's bucket count (2 * length / chunk_length, a power of two), factorised into two
    near-equal factors above 128 as transformers' Reformer does, so the hash rotation stays small."""
    power = max(1, round(math.log2(max(2.0, 2.0 * length / chunk_length))))
    if 2**power <= 128:
        return 2**power
    return [2 ** (power // 2), 2 ** (power - power // 2)]


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend), or None without matplotlib (and it is said)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return None
    return plt


def save_figure(plt, figure, axes, title, path):
    """Grid and legend on every axis, the title, then the figure written to `path` (120 dpi) and closed."""
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_against_length(path, series, ylabels, title, figsize=(12, 5)):
    """Two log-log panels against sequence length, one line per series, saved as a PNG.

    series: (label, points) pairs, points (length, left value, right value) tuples; a series
    without points is left out, and with no points at all nothing is drawn.  Without matplotlib
    nothing is drawn either (and it is said).
    """
    series = [(label, sorted(points)) for label, points in series if points]
    if not series:
        return
    plt = pyplot()
    if plt is None:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=figsize)
    for label, points in series:
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    for axis, ylabel in zip((left, right), ylabels):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length (tokens)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def two_gpu_parser(description):
    """The arguments of the 2-GPU `scripts/train_lm.py` benchmarks: corpus, output folder, model."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--preset", default="lm-6layer-16k")
    return parser


def parse_two_gpu_args(parser, argv=None):
    args = parser.parse_args(argv)
    if not args.corpus.exists():
        parser.error(f"--corpus={str(args.corpus)!r} does not exist")
    if torch.cuda.device_count() < 2:
        parser.error(f"this benchmark needs 2 GPUs; torch sees {torch.cuda.device_count()}")
    return args


def two_gpu_environment(root):
    """The environment of the launched training processes: NCCL with NVLink multicast off (the
    lent machines' rule) and the repository on PYTHONPATH."""
    return dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
