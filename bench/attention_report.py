"""bench/attention.py --report: a run's JSON lines rendered as a .md (full-size checks, tuning, the
profile, the op against dense SDPA and against its FlexAttention anchors, memory, the whole layer
against transformers', CUDA graphs and queued steps) and a .png (time and memory against length)."""

import os

from attention_cases import D_HEAD, FLEX_BLOCK, HEADS
from common import (
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    length_label,
    markdown_table,
    plot_against_length,
    read_json_lines,
)


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
