"""bench/model.py --report: a run's JSON lines rendered as a .md (tokens/s, memory and MFU by length
against the baselines, the Llama anchor, depth, stored layers, the profile by kind of kernel, the
checks, the 1M-token steps) and a .png (tokens/s and memory against length)."""

import os

import torch

import model_cases
from common import (
    SDPA_BACKENDS,
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    length_label,
    markdown_table,
    plot_against_length,
    read_json_lines,
)
from model_cases import CHUNK, D_HEAD, N_HASHES, our_model

# Row fields that older runs did not write, with the value they held.
ROW_DEFAULTS = {"sdpa_backend": "default", "compiled": False}


def fastest(rows, **match):
    """The fastest measured row with these fields (ROW_DEFAULTS for fields older runs lack), or None."""
    rows = [row for row in rows if row.get("status") == "ok"
            and all(row.get(key, ROW_DEFAULTS.get(key)) == value for key, value in match.items())]
    return min(rows, key=lambda row: row["median_ms"], default=None)


def llama_anchor_section(pick, lengths):
    """The anchor's table: Llama + SDPA + activation checkpointing on each SDPA backend and compiled,
    beside ours; empty for runs without it."""
    datasheet = "H100 SXM datasheet"

    def timing(row):
        return f"{fmt_ms(row['median_ms'])} ({row['mfu'][datasheet]:.1%})" if row else "–"

    table = []
    for length in lengths:
        ours = pick(kind="ours", length=length, n_layers=12)
        eager = [pick(kind="llama", length=length, n_layers=12, checkpointing=True, compiled=False, sdpa_backend=name)
                 for name in SDPA_BACKENDS]
        compiled = pick(kind="llama", length=length, n_layers=12, checkpointing=True, compiled=True)
        if not any(eager) and compiled is None:
            continue
        best = min(filter(None, [*eager, compiled]), key=lambda row: row["median_ms"])
        table.append([length_label(length), timing(ours), *map(timing, eager),
                      f"{timing(compiled)}, {compiled['sdpa_backend']}" if compiled else "–",
                      f"{best['peak_gib']:.1f}", fmt_ratio(best["median_ms"], ours and ours["median_ms"])])
    if not table:
        return []
    header = ["length", "ours ms (MFU)"] + [f"Llama+ckpt {name} ms (MFU)" for name in SDPA_BACKENDS] + [
        "Llama+ckpt compiled ms (MFU), SDPA backend", "fastest Llama GiB", "ours vs fastest Llama"]
    return ["## Anchor: Llama + SDPA + activation checkpointing (12 layers)", "",
            "LlamaForCausalLM of the same width, depth and vocabulary, SDPA held to each backend (`sdpa_kernel`), "
            "`gradient_checkpointing_enable` (non-reentrant); compiled: `torch.compile(model, dynamic=False)` on the "
            "faster eager backend, its first (compiling) step not timed. MFU counts the same useful FLOPs as ours "
            "(6 x matmul parameters x tokens + causal attention products, recomputation not counted) against "
            "989 TFLOP/s.", "", markdown_table(header, table), ""]


def write_report(out_dir, stem="model"):
    rows = read_json_lines(os.path.join(out_dir, stem + ".jsonl"))
    env = next((row for row in rows if row.get("section") == "environment"), {})
    all_model_rows = [row for row in rows if row.get("section") == "model"]
    # --stored's rows (with queued times) have a table of their own; runs before --stored lack both keys
    model_rows = [row for row in all_model_rows if not row.get("stored_layers") and "queued_ms" not in row]

    def pick(**match):
        return fastest(model_rows, **match)

    text = ["# Whole-model training step", "", environment_markdown(env), "",
            "Reproduce (repository root, one GPU): `PYTHONPATH=. python bench/model.py --out DIR --check --sweep --profile --depth --stored --million --report` "
            "(the anchors alone: `--sweep --anchors-only --report`). "
            "Plot: the .png of this file's name (tokens/s and memory against length). Raw numbers: the .jsonl of this file's name.", "",
            f"Byte vocabulary, d_model {model_cases.D_MODEL}, d_ff {model_cases.D_FF}, {model_cases.HEADS} heads of "
            f"{D_HEAD}, bf16 autocast over float32 "
            f"weights, dropout off, one sequence, forward + backward (optimizer excluded). Ours: local/LSH alternating, "
            f"n_hashes {N_HASHES}, chunk {CHUNK}, buckets 2L/64 factorised, reversible, Triton kernels. "
            "Allocator: `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` for every model. "
            "MFU = (6 x matmul parameters x tokens + needed attention FLOPs) / time / peak; the reversible "
            "recomputation is not counted as useful.", ""]
    lengths = sorted({row["length"] for row in model_rows if row["n_layers"] == 12})
    header = ["length", "ours ms", "ours tokens/s", "ours GiB", "ours MFU (989 / 790)", "Llama+ckpt ms (best eager)", "Llama+ckpt GiB",
              "Llama ms", "Llama GiB", "transformers Reformer ms", "transformers GiB", "ours vs Llama+ckpt",
              "ours vs transformers"]
    table = []
    for length in lengths:
        ours = pick(kind="ours", length=length, n_layers=12)
        ckpt = pick(kind="llama", length=length, n_layers=12, checkpointing=True, compiled=False)
        plain = pick(kind="llama", length=length, n_layers=12, checkpointing=False)
        theirs = pick(kind="transformers_reformer", length=length, n_layers=12)
        ms = lambda row: fmt_ms(row["median_ms"]) if row else "–"  # noqa: E731
        gib = lambda row: f"{row['peak_gib']:.1f}" if row else "–"  # noqa: E731
        mfu = (f"{ours['mfu']['H100 SXM datasheet']:.1%} / {ours['mfu']['measured bf16 matmul ceiling']:.1%}"
               if ours else "–")
        table.append([length_label(length), ms(ours), f"{ours['tokens_per_s']:,.0f}" if ours else "–", gib(ours), mfu,
                      ms(ckpt), gib(ckpt), ms(plain), gib(plain), ms(theirs), gib(theirs),
                      fmt_ratio(ckpt and ckpt["median_ms"], ours and ours["median_ms"]),
                      fmt_ratio(theirs and theirs["median_ms"], ours and ours["median_ms"])])
    text += ["## Tokens/s, memory and MFU by length (12 layers)", "", markdown_table(header, table), ""]
    text += llama_anchor_section(pick, lengths)

    depth_rows = sorted((row for row in model_rows if row["kind"] == "ours" and row.get("status") == "ok"
                         and row["length"] == 2**16), key=lambda row: row["n_layers"])
    if depth_rows:
        base = next((row for row in depth_rows if row["n_layers"] == 12), depth_rows[0])
        table = []
        for row in depth_rows:
            weights = parameter_gib(row["n_layers"]) * 2  # float32 parameters and their gradients
            table.append([row["n_layers"], fmt_ms(row["median_ms"]), f"{row['peak_gib']:.3f}", f"{weights:.3f}",
                          f"{row['peak_gib'] - base['peak_gib']:+.3f}",
                          f"{weights - parameter_gib(base['n_layers']) * 2:+.3f}"])
        text += ["## Depth at 64K tokens (ours)", "",
                 f"Growth against {base['n_layers']} layers: peak memory beside parameters + gradients (float32, counted "
                 "from the model); growth beyond the latter would be activations.", "",
                 markdown_table(["layers", "ms", "peak GiB", "params + grads GiB", "peak growth GiB",
                                 "params + grads growth GiB"], table), ""]
    stored_rows = [row for row in all_model_rows if "queued_ms" in row and row.get("status") == "ok"]
    if stored_rows:
        length = stored_rows[0]["length"]
        ckpt = pick(kind="llama", length=length, n_layers=12, checkpointing=True, compiled=False)
        table = []
        for row in sorted(stored_rows, key=lambda row: (row["n_layers"], row["stored_layers"])):
            datasheet = "H100 SXM datasheet"
            table.append([row["n_layers"], row["stored_layers"], fmt_ms(row["median_ms"]), fmt_ms(row["queued_ms"]),
                          f"{row['peak_gib']:.3f}", f"{row['mfu'][datasheet]:.1%} / {row['queued_mfu'][datasheet]:.1%}",
                          fmt_ratio(ckpt and ckpt["median_ms"], row["median_ms"]) if row["n_layers"] == 12 else "–",
                          f"{ckpt['peak_gib']:.2f}" if ckpt and row["n_layers"] == 12 else "–"])
        text += [f"## Stored top layers at {length_label(length)} tokens (ours, `reversible_stored_layers`)", "",
                 "The top layers keep their activations for the backward pass instead of being rebuilt: a forward "
                 "pass less per stored layer, for that layer's activations (freed as the backward pass reaches it). "
                 "Every other section of this report stores none. ms: one step at a time, as everywhere in this "
                 "report; queued: 5 steps back to back (median of 3), as a training loop runs them, so the CPU work "
                 "before a step's first kernel overlaps the step before. MFU against the 989 TFLOP/s datasheet peak.",
                 "",
                 markdown_table(["layers", "stored", "ms", "queued ms", "peak GiB", "MFU (one step / queued)",
                                 "vs Llama+ckpt", "Llama+ckpt GiB"], table), ""]
    for row in (row for row in rows if row.get("section") == "profile"):
        total = sum(row["kinds_ms"].values())
        table = [[kind, f"{ms:.1f}", f"{ms / total:.0%}"] for kind, ms in sorted(row["kinds_ms"].items(),
                                                                                 key=lambda item: -item[1])]
        text += [f"## One step of ours at {length_label(row['length'])} tokens, {row['n_layers']} layers, by kind of kernel",
                 "", f"torch.profiler device time; all kernels {total:.1f} ms, step {fmt_ms(row['step_ms'])} ms "
                 "(CUDA events).", "", markdown_table(["kind", "ms", "share"], table), ""]
        top = [[f"`{name[:90]}`", f"{ms:.1f}"] for name, ms in row.get("top_kernels_ms", {}).items()]
        if top:
            text += ["The largest kernels of that step:", "", markdown_table(["kernel", "ms"], top), ""]
    for row in (row for row in rows if row.get("section") == "layer_norm_check"):
        table = [[name, f"{row[name]['same_bf16_as_autocast']:.6f}",
                  " / ".join(f"{error:.1e}" for error in row[name]["grad_errors"]), fmt_ms(row[name].get("median_ms"))]
                 for name in ("fused", "torch")]
        text += [f"## Layer norm of the blocks: fused kernel vs torch under autocast ({length_label(row['length'])} x "
                 f"{row['d_model']}, float32 streams -> bf16)", "",
                 "Outputs: share equal to float64's result rounded to bf16 (what autocast's float32 layer norm and "
                 "cast give, up to near ties). Gradients (x, weight, bias): relative error against float64. "
                 "Time: forward + backward.", "",
                 markdown_table(["path", "outputs equal", "gradient errors", "ms"], table), ""]
    for row in (row for row in rows if row.get("section") == "fused_stack_check"):
        losses = row["losses"]
        text += [f"## Residual sums fused into the layer norms vs the half-by-half stack ({length_label(row['length'])} "
                 f"tokens, {row['n_layers']} layers)", "",
                 "One step under bf16 autocast with each stack, and one of the float32 model without autocast as the "
                 "reference. Gradient error: relative (norm) error of each parameter's gradient against the "
                 "reference. Pass: fused <= 2 x half-by-half + 1e-6 for every gradient.", "",
                 markdown_table(["losses (fused / half-by-half / float32)", "gradients bit-equal", "largest error fused",
                                 "largest error half-by-half", "worst ratio (gradient: fused / half-by-half)", "result"],
                                [[f"{losses['fused']:.6f} / {losses['half_by_half']:.6f} / {losses['float32']:.6f}",
                                  f"{row['bit_equal']} of {row['n_gradients']}", f"{row['max_error_fused']:.2e}",
                                  f"{row['max_error_half_by_half']:.2e}",
                                  f"`{row['worst_ratio_gradient']}`: {row['worst_ratio_errors'][0]:.2e} / "
                                  f"{row['worst_ratio_errors'][1]:.2e}", "PASS" if row["passed"] else "FAIL"]]), ""]
        if "stored_passed" in row:  # runs before the stored layers lack it
            text += [f"The fused stack with its top layer stored (`reversible_stored_layers=1`): loss "
                     f"{losses['stored']:.6f}, largest gradient error {row['max_error_stored']:.2e}, "
                     f"{'PASS' if row['stored_passed'] else 'FAIL'} (the same rule against the half-by-half stack).", ""]
    million = [row for row in rows if row.get("section") == "million"]
    for row in million:
        speed = (f"; {row['length'] / (sum(row['step_seconds']) / len(row['step_seconds'])):,.0f} tokens/s"
                 if row["step_seconds"] else "")
        text += ["## One 1M-token sequence, 12 layers, AdamW (forward, backward and optimizer step)", "",
                 f"status {row['status']}; losses {', '.join(f'{x:.4f}' for x in row['losses'])}; "
                 f"seconds per step {', '.join(f'{x:.2f}' for x in row['step_seconds'])}{speed}; "
                 f"peak {row['peak_gib']:.1f} GiB", ""]
    failed = [row for row in model_rows if row.get("status") != "ok"]
    if failed:
        text += ["## Cases that did not run", ""]
        text += [f"- {row['kind']} ckpt={row['checkpointing']} sdpa={row.get('sdpa_backend', 'default')} "
                 f"compiled={row.get('compiled', False)} {length_label(row['length'])} x {row['n_layers']}: "
                 f"{row['status']}" for row in failed]
        text.append("")
    with open(os.path.join(out_dir, stem + ".md"), "w", encoding="utf-8") as file:
        file.write("\n".join(text))
    plot(model_rows, os.path.join(out_dir, stem + ".png"))


def parameter_gib(n_layers, length=2**16):
    """GiB of float32 parameters of our model at this depth (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in our_model(length, n_layers).parameters()) * 4 / 2**30


def plot(model_rows, path):
    series = (("ours (Reformer, Triton)", dict(kind="ours")),
              ("Llama SDPA + checkpointing (faster eager backend)", dict(kind="llama", checkpointing=True, compiled=False)),
              ("Llama SDPA + checkpointing, compiled", dict(kind="llama", checkpointing=True, compiled=True)),
              ("Llama SDPA", dict(kind="llama", checkpointing=False)),
              ("transformers Reformer", dict(kind="transformers_reformer")))
    lengths = sorted({row["length"] for row in model_rows})
    lines = []
    for label, match in series:
        rows = filter(None, (fastest(model_rows, length=length, n_layers=12, **match) for length in lengths))
        lines.append((label, [(row["length"], row["tokens_per_s"], row["peak_gib"]) for row in rows]))
    plot_against_length(path, lines, ("training tokens / s", "peak memory (GiB)"),
                        "One training step, 12 layers, d_model 1024, bf16 autocast, one H100")
