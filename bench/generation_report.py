"""bench/generation_gpu.py --report: JSON-lines files rendered as a .md (decoding table against Llama,
throughput at the largest batch that fits, cache per layer, exactness, pipeline) and a .png
(ms per token and cache GiB against the prompt length)."""

import os

from common import (
    GIB,
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    length_label,
    markdown_table,
    plot_against_length,
    read_json_lines,
)
from generation_setup import FEED_FORWARD_CHUNK, PRESET, VARIANTS


def gib(value):
    return f"{value / GIB:.3g}" if value is not None else "–"


def ratio(numerator, denominator):
    """fmt_ratio, with two decimals below 1x (a slower or smaller row)."""
    if numerator is None or not denominator:
        return "–"
    return f"{numerator / denominator:.2f}x" if numerator < denominator else fmt_ratio(numerator, denominator)


VARIANT_LABELS = {  # (model, cache) as the report names them
    "reformer": ("reformer_hf", "ReformerCache"),
    "reformer-compile": ("reformer_hf", "ReformerCache + compile"),
    "reformer-graph": ("reformer_hf", "ReformerCache + CUDA graphs"),
    "llama-dynamic": ("Llama", "dynamic"),
    "llama-static-compile": ("Llama", "static + compile"),
}


def same_case(rows, row, variant):
    """The row of `variant` at `row`'s prompt and batch in `row`'s run, or None."""
    return next((other for other in rows if other["variant"] == variant and other["run_id"] == row["run_id"]
                 and other["prompt"] == row["prompt"] and other["batch"] == row["batch"]), None)


def largest_batch_section(ok_rows):
    """Per prompt and requested batch above 1: each variant's throughput at the largest batch it fitted."""
    fitted = {}  # (run, prompt, requested batch) -> {variant: row}
    for row in ok_rows:
        if row.get("requested_batch", row["batch"]) > 1 and not row.get("matched"):
            fitted.setdefault((row["run_id"], row["prompt"], row["requested_batch"]), {})[row["variant"]] = row
    table = []
    for (_, prompt, requested), rows in sorted(fitted.items(), key=lambda item: item[0][1:]):
        if not any(row["batch"] < requested for row in rows.values()):
            continue  # every variant fitted the batch asked for: the decoding table compares them already
        ours = rows.get("reformer")
        cells = [f"batch {rows[variant]['batch']}: {rows[variant]['tokens_per_s']:,.0f}" if variant in rows else "–"
                 for variant in ("reformer", "llama-dynamic", "llama-static-compile")]
        table.append([length_label(prompt), requested, *cells,
                      *(ratio(ours and ours["tokens_per_s"], rows[variant]["tokens_per_s"] if variant in rows else None)
                        for variant in ("llama-dynamic", "llama-static-compile"))])
    if not table:
        return []
    return ["## Throughput at the largest batch that fits", "",
            "Where a batch did not fit it was halved until it did: each variant's tokens/s at the largest batch "
            "it fitted, and ours over Llama's.", "",
            markdown_table(["prompt", "batch asked", "reformer_hf tokens/s", "Llama dynamic tokens/s",
                            "Llama static + compile tokens/s", "ours vs Llama dynamic",
                            "ours vs Llama static + compile"], table), ""]


def write_report(out_dir, stem, inputs):
    rows = read_json_lines(*inputs)
    environments = [row for row in rows if row.get("section") == "environment"]
    decode = [row for row in rows if row.get("section") == "decode"]
    text = ["# Generation on the GPU: reformer_hf against a dense Llama", ""]
    for env in environments:
        text += [f"Run `{env.get('run_id')}`:", "", environment_markdown(env), ""]
    text += [
        "Reproduce (repository root, one GPU): `PYTHONPATH=. python bench/generation_gpu.py --out DIR --exactness "
        "--decode --pipeline --report` (the commands of the runs are above). Raw numbers: the .jsonl of this "
        "file's name; plot: its .png.", "",
        f"Both models random-init, bf16 weights. Ours: the `{PRESET}` preset's layers (local-local-LSH-local x 3, "
        "d_model 1024, d_ff 4096, 8 heads of 128, LSH chunks of 256 with 2 hashes and `num_buckets=None`, local "
        f"chunks of 128), Triton kernels in the prefill, feed-forward over {FEED_FORWARD_CHUNK} positions at a time, "
        "its own cache (ReformerCache). Llama: `LlamaForCausalLM`, the same width, depth, heads, d_ff (a gated "
        "MLP: three matrices to our two) and vocabulary (260), `attn_implementation=\"sdpa\"`, with transformers' "
        "dynamic cache and with its static cache + torch.compile (`CompileConfig(mode=\"reduce-overhead\")`).", "",
        "Greedy `generate()` of a fixed number of tokens, eos off, prompts of random bytes. Prefill: from the "
        "prompt to the first new token. ms/token: median of the decoding steps after the first few (those hold "
        "compilation and CUDA-graph capture for the compiled variant), each step timed between two tokens handed "
        "to a streamer after a device synchronisation; tokens/s = batch / (ms/token). Peak: max_memory_allocated "
        "over the generate() call (weights and inputs included). Cache: measured on the returned cache "
        "(ours `ReformerCache.nbytes()`, Llama the storage of its layers' tensors). Speed: the baseline's ms/token "
        "over this row's (above 1x: this row is faster), against Llama's dynamic cache and against its static "
        "cache + compile (the fastest Llama), at the same prompt and batch in the same run; cache: this row's "
        "bytes over Llama dynamic's.", ""]
    header = ["model", "cache", "prompt", "batch", "prefill s", "ms/token", "tokens/s", "peak GiB", "cache GiB",
              "speed vs Llama dynamic", "speed vs Llama static + compile", "cache vs Llama dynamic"]
    table, layer_table = [], []
    ok = [row for row in decode if row.get("status") == "ok"]
    for row in sorted(ok, key=lambda row: (row["prompt"], row["batch"], VARIANTS.index(row["variant"]))):
        baseline, fastest = (same_case(ok, row, variant) for variant in ("llama-dynamic", "llama-static-compile"))
        model, cache = VARIANT_LABELS[row["variant"]]
        if row["variant"] in ("reformer-compile", "reformer-graph", "llama-static-compile") and not row.get("compiled"):
            cache += " (not compiled)"
        peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "–"
        table.append([model, cache, length_label(row["prompt"]), row["batch"], f"{row['prefill_s']:.3g}",
                      fmt_ms(row["ms_per_token"]), f"{row['tokens_per_s']:,.0f}", peak, gib(row["cache_bytes"]),
                      ratio(baseline and baseline["ms_per_token"], row["ms_per_token"]),
                      ratio(fastest and fastest["ms_per_token"], row["ms_per_token"]),
                      ratio(row["cache_bytes"], baseline and baseline["cache_bytes"])])
        if row["model"] == "reformer" and row["variant"] == "reformer":
            layers = row["layer_cache_bytes"]
            dense = row["dense_layer_kv_bytes"]
            measured = baseline["layer_cache_bytes"].get("dense") if baseline else None
            layer_table.append([length_label(row["prompt"]), row["batch"], row.get("lsh_buckets", "–"),
                                f"{layers.get('lsh', 0) / 2**20:,.1f}", f"{row.get('lsh_index_bytes', 0) / 2**20:,.2f}",
                                f"{layers.get('local', 0) / 2**20:,.2f}",
                                f"{dense / 2**20:,.1f}", f"{measured / 2**20:,.1f}" if measured else "–",
                                f"{layers.get('lsh', 0) / dense:.3f}", gib(row["cache_bytes"]),
                                gib(baseline and baseline["cache_bytes"])])
    text += ["## Decoding", "", markdown_table(header, table), ""]
    text += largest_batch_section(ok)
    if layer_table:
        text += ["## Cache per layer (ours) beside a dense layer's KV cache for the same context", "",
                 "Dense layer KV: keys and values of every head and position the cache holds, in the model's "
                 "dtype, counted; Llama's layer: measured on its dynamic cache in the same run. An LSH layer holds "
                 "every position's key and value once plus its index (an int32 ring per hash round and bucket, "
                 "the bucket counts and the hash rotations: the index column); a local layer a window.", "",
                 markdown_table(["prompt", "batch", "LSH buckets", "LSH layer MiB", "of which index MiB",
                                 "local layer MiB",
                                 "dense layer KV MiB", "Llama layer MiB", "LSH / dense", "ours whole GiB",
                                 "Llama whole GiB"], layer_table), ""]
    warmups = [row for row in rows if row.get("section") == "warmup"]
    if warmups:
        text += ["Warm-up, untimed, batch 1 (compilation included): one short generate() per variant before the "
                 "sweep, and for ours one per prompt length (Triton compiles the prefill's kernels per length): "
                 + "; ".join(f"{row['variant']} {length_label(row['prompt'])} {row['seconds']:.1f} s"
                             + ("" if row["status"] == "ok" else f" ({row['status'][:80]})") for row in warmups), ""]
    failed = [row for row in decode if row.get("status") != "ok"]
    if failed:
        text += ["## Cases that did not run", ""]
        text += [f"- {row['variant']} prompt {length_label(row['prompt'])} batch {row['batch']}: {row['status']}"
                 for row in failed]
        text.append("")
    exact = [row for row in rows if row.get("section") == "exactness"]
    if exact:
        table = []
        for row in exact:
            logits = (f"{row['max_logit_diff_vs_cache_free']:.2e} / {row['cached_error_vs_float32']:.2e} / "
                      f"{row['cache_free_error_vs_float32']:.2e}" if "max_logit_diff_vs_cache_free" in row else
                      (f"scores {row['max_sequence_score_diff']:.2e}" if "max_sequence_score_diff" in row else "–"))
            result = {True: "PASS", False: "FAIL", None: "reported"}[row.get("passed")]
            table.append([row["case"], row["dtype"], row.get("tokens_equal", "–"),
                          f"{row['token_agreement']:.1%}" if "token_agreement" in row else "–", logits,
                          row.get("tolerance", "–"), result if row.get("status") == "ok" else row["status"]])
        model = next((row for row in rows if row.get("section") == "exactness_model"), {})
        text += ["## Exactness: cached against cache-free decoding", "",
                 f"A small model ({model.get('summary', 'see the JSON lines')}), prompts of random bytes (lengths in "
                 "the JSON lines), greedy or beam search, each generated with the cache and with `use_cache=False`. "
                 "Logits (greedy): the largest absolute difference between the cached steps' logits and one "
                 "cache-free pass over the generated sequence in the same dtype / the cached logits' largest error "
                 "against the float32 cache-free pass / the bf16 cache-free pass's own error against it (bf16's "
                 "noise floor). Beam search: the largest difference of the returned sequences' scores.", "",
                 markdown_table(["case", "dtype", "tokens equal", "token agreement",
                                 "logits: vs cache-free / cached err / cache-free err", "tolerance", "result"], table),
                 ""]
    for row in (row for row in rows if row.get("section") == "sync_free_step"):
        text += [f"One decoding step (bf16, left-padded batch of {row['batch']}) under "
                 f"`torch.cuda.set_sync_debug_mode(\"error\")`: "
                 + ({True: "no host synchronisation.", False: f"FAILED: `{row['error']}`",
                     None: str(row["error"])}[row["passed"]]), ""]
    for row in (row for row in rows if row.get("section") == "attention_paths"):
        text += ["Attention paths taken (the package's log): " + "; ".join(f"`{message}`" for message in
                                                                          row["messages"]), ""]
    for row in (row for row in rows if row.get("section") == "pipeline"):
        detail = ""
        if row.get("generate_s") is not None:
            peak = f", peak {row['peak_gib']:.1f} GiB" if row.get("peak_gib") is not None else ""
            detail = (f"Loaded in {row['load_s']:.1f} s; generated {row['generated_tokens']} tokens in "
                      f"{row['generate_s']:.1f} s (prefill included){peak}.")
        text += ["## pipeline(\"text-generation\", model=folder, device=0, dtype=torch.bfloat16)", "",
                 f"A random-init model of the bench size saved with the byte tokenizer; a prompt of "
                 f"{row['prompt_tokens_encoded']:,} tokens, {row['new_tokens']} new tokens ({row['dtype']}): "
                 f"{row['status']}. {detail}", ""]
    path = os.path.join(out_dir, stem + ".md")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(text))
    plot(ok, os.path.join(out_dir, stem + ".png"))
    print("wrote", path, flush=True)


def plot(ok_rows, path):
    series = []
    for variant in VARIANTS:
        for batch in sorted({row["batch"] for row in ok_rows if row["variant"] == variant}):
            points = [(row["prompt"], row["ms_per_token"], row["cache_bytes"] / GIB) for row in ok_rows
                      if row["variant"] == variant and row["batch"] == batch]
            model, cache = VARIANT_LABELS[variant]
            series.append((f"{model} {cache}, batch {batch}", points))
    dtypes = ", ".join(sorted({row.get("dtype", "bfloat16") for row in ok_rows}))
    plot_against_length(path, series, ("ms per new token", "cache (GiB)"),
                        f"Greedy decoding after a prompt of the given length (x: prompt tokens), {dtypes}")
