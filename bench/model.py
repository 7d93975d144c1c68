"""Whole-model training step on the GPU: our Reformer against a dense Llama and transformers' Reformer.

    PYTHONPATH=. python bench/model.py --out DIR --check --sweep --profile --depth --stored --million --report

One step = forward + backward of the language-model loss on one sequence of random bytes
(optimizer excluded), bf16 autocast over float32 weights, dropout off in every model.
Shared shape: byte vocabulary (256), d_model 1024, d_ff 4096, 16 heads of 64.

--sweep    ours (12 layers, local/LSH alternating) at 4K..1M tokens; where their step fits the time
           budget, the anchor LlamaForCausalLM + SDPA + gradient checkpointing on each SDPA backend
           (flash, cuDNN) and compiled (torch.compile) on the faster one, Llama without
           checkpointing, and transformers' ReformerModelWithLMHead.
--anchors-only  with --sweep: ours and the Llama anchor only, at 4K, 16K and 64K unless --lengths.
--depth    ours at 64K tokens with 2 / 6 / 12 / 24 layers (memory flat in depth).
--stored   ours at 64K tokens with the top 0 / 1 / 2 / 3 of 12 layers stored instead of rebuilt
           (`reversible_stored_layers`), and 0 / 3 of 24 (memory for speed; the other sections store
           none); each also with steps queued back to back, as a training loop runs them.
--profile  device time of one step of ours at 64K tokens and 12 layers by kind of kernel
           (torch.profiler): matrix products, attention kernels, sorting, normalisation, the rest.
--check    the blocks' fused layer norm (kernels.layer_norm) against torch's at 64K x 1024: outputs
           against autocast's (float32 layer norm rounded to bf16), gradients against float64,
           and the time of forward + backward of each.
--million  three AdamW steps of ours on one 1M-token sequence of random bytes: it fits and trains
           (time and peak memory per step; the loss of random bytes stays near ln 256 = 5.55).
--report   renders DIR/model.jsonl as DIR/model.md and DIR/model.png.
"""

import argparse
import math
import os
import sys
import time

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

# Every model here, ours and the baselines, allocates through expandable segments: at 1M tokens
# the caching allocator's fixed-size segments fragment (46 GiB reserved for 25 GiB live after one
# forward pass on the H100).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    SDPA_BACKENDS,
    JsonLines,
    environment,
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    free_memory,
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

from reformer_hf import ReformerConfig, ReformerForCausalLM  # noqa: E402

VOCAB, D_MODEL, D_FF, HEADS, D_HEAD, CHUNK = 256, 1024, 4096, 16, 64, 64
N_HASHES = 2
PEAK_TFLOPS = {"H100 SXM datasheet": 989.0, "measured bf16 matmul ceiling": 790.0}
DEVICE = "cuda"
COMPILE_BACKEND = "inductor"
SMOKE_COMPILE_BACKEND = "aot_eager"  # --smoke: dynamo and autograd tracing without code generation
ANCHOR_LENGTHS = [2**12, 2**14, 2**16]
# Row fields that older runs did not write, with the value they held.
ROW_DEFAULTS = {"sdpa_backend": "default", "compiled": False}


def axial_shape(length):
    power = int(math.log2(length))
    return [2 ** (power - power // 2), 2 ** (power // 2)]


# From this length on, the feed-forward blocks and the LM head run over 16K positions at a time
# (chunk_size_feed_forward, chunk_size_lm_head): without that, one 1M-token step peaked at 73 GiB
# and ran out of memory on the H100 (bench/results/model_h100.md).
CHUNKED_FROM = 2**19


def our_model(length, n_layers, n_hashes=N_HASHES, stored_layers=0):
    chunk = 2**14 if length >= CHUNKED_FROM else 0
    config = ReformerConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
        feed_forward_size=D_FF, attn_layers=["local", "lsh"] * (n_layers // 2), num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, local_attn_chunk_length=CHUNK,
        is_decoder=True, axial_pos_shape=axial_shape(length), axial_pos_embds_dim=[D_MODEL // 2, D_MODEL // 2],
        max_position_embeddings=length, hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0,
        local_attention_probs_dropout=0.0, attn_backend="auto", chunk_size_feed_forward=chunk,
        chunk_size_lm_head=chunk, reversible_stored_layers=stored_layers,
    )
    return ReformerForCausalLM(config)


def llama_model(length, n_layers):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=n_layers,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=length,
                         tie_word_embeddings=False, use_cache=False)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def transformers_reformer(length, n_layers, n_hashes=N_HASHES):
    from transformers import ReformerConfig as TransformersReformerConfig
    from transformers import ReformerModelWithLMHead

    config = TransformersReformerConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
        feed_forward_size=D_FF, attn_layers=["local", "lsh"] * (n_layers // 2), num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, local_attn_chunk_length=CHUNK,
        lsh_num_chunks_after=0, local_num_chunks_after=0, is_decoder=True, axial_pos_shape=axial_shape(length),
        axial_pos_embds_dim=[D_MODEL // 2, D_MODEL // 2], max_position_embeddings=length, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, use_cache=False,
    )
    return ReformerModelWithLMHead(config)


def matmul_params(model):
    """Weights that take part in matrix products (every nn.Linear), i.e. not embedding tables."""
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def useful_flops(kind, model, length, n_layers, n_hashes=N_HASHES):
    """6 x matmul parameters x tokens + the attention products the architecture needs
    (forward 4 * d_head per query-key pair, backward twice that); recomputation not counted."""
    dense = 6 * matmul_params(model) * length
    if kind == "llama":
        pairs = n_layers * HEADS * length * (length + 1) / 2
    else:
        window = 2 * CHUNK  # own chunk + the one before, for local and for each LSH round
        pairs = (n_layers // 2) * HEADS * length * window * (1 + n_hashes)
    return dense + 3 * 4 * D_HEAD * pairs


def training_step(model, length, checkpointing=False, sdpa="default", compiled=False):
    """One forward + backward of the LM loss; SDPA held to backend `sdpa` (common.SDPA_BACKENDS, or
    "default"), the model's forward compiled (torch.compile, static shapes) with `compiled`."""
    model.to(DEVICE).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False) if compiled else model
    generator = torch.Generator().manual_seed(length)
    input_ids = torch.randint(0, VOCAB, (1, length), generator=generator).to(DEVICE)

    def step():
        model.zero_grad(set_to_none=True)
        with sdpa_backend(sdpa), torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = forward(input_ids=input_ids, labels=input_ids).loss
        loss.backward()

    return step


def run_case(log, kind, length, n_layers, checkpointing=False, budget_s=20.0, stored_layers=0, queued=False,
             sdpa="default", compiled=False):
    build = {"ours": our_model, "llama": llama_model, "transformers_reformer": transformers_reformer}[kind]
    flops = None
    problem = None if sdpa == "default" else sdpa_backend_problem(sdpa, DEVICE)
    if problem:
        result = {"status": f"unavailable: {problem}"}
    else:
        try:
            model = build(length, n_layers, stored_layers=stored_layers) if stored_layers else build(length, n_layers)
            flops = useful_flops(kind, model, length, n_layers)
            step = training_step(model, length, checkpointing, sdpa, compiled)
            result = measure(step, budget_s=budget_s)
            if queued and result["status"] == "ok":
                result["queued_ms"] = measure_queued(step, steps=5, repeats=3)["median_ms"]
        except torch.cuda.OutOfMemoryError:
            result, flops = {"status": "OOM"}, None
        except Exception as error:
            result, flops = {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}, None
    model = step = None
    free_memory()
    record = dict(kind=kind, length=length, n_layers=n_layers, checkpointing=checkpointing, stored_layers=stored_layers,
                  sdpa_backend=sdpa, compiled=compiled, useful_flops=flops, **result)
    if compiled:
        record["compile_backend"] = COMPILE_BACKEND
    if result["status"] == "ok":
        record["tokens_per_s"] = length / (result["median_ms"] / 1000)
        for key, ms_key in (("mfu", "median_ms"), ("queued_mfu", "queued_ms")):
            if ms_key in result:
                record[key] = {name: flops / (result[ms_key] / 1000) / (peak * 1e12) for name, peak in PEAK_TFLOPS.items()}
    log.write(section="model", **record)
    mfu = record.get("mfu", {}).get("H100 SXM datasheet", float("nan"))
    print(f"{kind:22s} ckpt={checkpointing!s:5s} sdpa={sdpa:7s} compiled={compiled!s:5s} L={length_label(length):>5} "
          f"layers={n_layers:2d} stored={stored_layers} "
          f"{record.get('median_ms', float('nan')):10.1f} ms {record.get('peak_gib', float('nan')):7.2f} GiB "
          f"MFU {mfu:6.1%} {'' if result['status'] == 'ok' else result['status']}", flush=True)
    return record


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


def run_layer_norm_check(log, length=2**16):
    """kernels.layer_norm against torch's layer norm under autocast, at full size."""
    from reformer_hf import kernels

    generator = torch.Generator(device=DEVICE).manual_seed(0)
    streams = torch.randn(1, length, D_MODEL, generator=generator, device=DEVICE).requires_grad_(True)
    weight = (1 + 0.1 * torch.randn(D_MODEL, generator=generator, device=DEVICE)).requires_grad_(True)
    bias = (0.1 * torch.randn(D_MODEL, generator=generator, device=DEVICE)).requires_grad_(True)
    grad_out = torch.randn(1, length, D_MODEL, generator=generator, device=DEVICE).to(torch.bfloat16)
    leaves = (streams, weight, bias)

    def fused():
        out = kernels.layer_norm(streams, weight, bias, 1e-12, torch.bfloat16)
        return out, torch.autograd.grad(out, leaves, grad_out)

    def autocast():  # what nn.LayerNorm + the next projection's cast do under autocast
        out = torch.nn.functional.layer_norm(streams, (D_MODEL,), weight, bias, 1e-12).to(torch.bfloat16)
        return out, torch.autograd.grad(out, leaves, grad_out)

    exact = [tensor.detach().double().requires_grad_(True) for tensor in leaves]
    reference = torch.nn.functional.layer_norm(exact[0], (D_MODEL,), exact[1], exact[2], 1e-12)
    reference_grads = torch.autograd.grad(reference, exact, grad_out.double())
    record = {}
    for name, step in (("fused", fused), ("torch", autocast)):
        out, grads = step()
        record[name] = {
            "same_bf16_as_autocast": (out == reference.float().to(torch.bfloat16)).float().mean().item(),
            "grad_errors": [((g.double() - r).norm() / r.norm()).item() for g, r in zip(grads, reference_grads)],
            **measure(step),
        }
    log.write(section="layer_norm_check", length=length, d_model=D_MODEL, **record)
    print("layer norm check", record, flush=True)


def run_fused_stack_check(log, length=2**14, n_layers=4):
    """The reversible stack with residual sums fused into the layer norms (fused_stack.py) against
    the half-by-half stack, both under bf16 autocast, and both against the float32 model without
    autocast: loss and every gradient of one step."""
    from reformer_hf import reversible

    torch.manual_seed(0)
    model = our_model(length, n_layers).to(DEVICE).train()
    input_ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length)).to(DEVICE)

    def gradients(autocast=True):
        torch.manual_seed(1)  # the layers' seeds (hash rotations) come from the global generator
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    fused_loss, fused = gradients()
    stack = model.reformer.encoder
    stack.stored_layers = 1  # the top layer keeps its graph (reversible_stored_layers=1)
    try:
        stored_loss, stored = gradients()
    finally:
        stack.stored_layers = 0
    split_halves = reversible.split_halves
    reversible.split_halves = lambda *args: None  # the half-by-half stack
    try:
        plain_loss, half_by_half = gradients()
        reference_loss, reference = gradients(autocast=False)
    finally:
        reversible.split_halves = split_halves

    def error(grads, name):
        return ((grads[name].double() - reference[name].double()).norm() / reference[name].double().norm()).item()

    errors = {name: (error(fused, name), error(half_by_half, name), error(stored, name)) for name in reference}
    worst = max(errors, key=lambda name: errors[name][0] / (errors[name][1] + 1e-6))
    record = dict(length=length, n_layers=n_layers, losses=dict(fused=fused_loss, half_by_half=plain_loss,
                                                                 stored=stored_loss, float32=reference_loss),
                  n_gradients=len(errors), bit_equal=sum(torch.equal(fused[n], half_by_half[n]) for n in reference),
                  max_error_fused=max(e[0] for e in errors.values()),
                  max_error_half_by_half=max(e[1] for e in errors.values()),
                  worst_ratio_gradient=worst, worst_ratio_errors=errors[worst][:2],
                  max_error_stored=max(e[2] for e in errors.values()),
                  passed=all(e[0] <= 2 * e[1] + 1e-6 for e in errors.values()),
                  stored_passed=all(e[2] <= 2 * e[1] + 1e-6 for e in errors.values()))
    log.write(section="fused_stack_check", **record)
    print("fused stack check", record, flush=True)
    model = None
    free_memory()


def run_million(log, length, steps=3):
    """A few optimizer steps on one long sequence: it fits and trains; time and peak memory per step."""
    model = our_model(length, 12).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (1, length), generator=generator).to(DEVICE)
    losses, seconds = [], []
    torch.cuda.reset_peak_memory_stats() if DEVICE == "cuda" else None
    try:
        for _ in range(steps):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seconds.append(time.perf_counter() - started)
        status = "ok"
    except torch.cuda.OutOfMemoryError:
        status = "OOM"
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    record = log.write(section="million", length=length, n_layers=12, losses=losses, step_seconds=seconds,
                       peak_gib=peak, status=status)
    print("1M-token training steps:", record, flush=True)
    model = optimizer = None
    free_memory()


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
            f"Byte vocabulary, d_model {D_MODEL}, d_ff {D_FF}, {HEADS} heads of {D_HEAD}, bf16 autocast over float32 "
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--depth", action="store_true")
    parser.add_argument("--stored", action="store_true")
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--anchors-only", action="store_true",
                        help="with --sweep: ours and the Llama anchor only (default lengths 4K, 16K, 64K)")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="default 4K..1M (4K, 16K, 64K with --anchors-only)")
    parser.add_argument("--baseline-limit", type=int, default=2**16, help="longest length for the baselines")
    parser.add_argument("--stem", default="model", help="file name stem of the .jsonl/.md/.png in --out")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test this script")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    global DEVICE, D_MODEL, D_FF, HEADS, COMPILE_BACKEND
    million, depth_length = 2**20, 2**16
    if args.lengths is None:
        args.lengths = ANCHOR_LENGTHS if args.anchors_only else [2**12, 2**14, 2**16, 2**18, 2**20]
    if args.smoke:
        DEVICE, D_MODEL, D_FF, HEADS = "cpu", 64, 128, 2
        COMPILE_BACKEND = SMOKE_COMPILE_BACKEND
        args.lengths, args.baseline_limit, million, depth_length = [256], 256, 512, 256
    # Each compiled model's graph is static (dynamic=False): one graph per length, more than dynamo's default of 8.
    torch._dynamo.config.recompile_limit = 64
    if args.sweep or args.depth or args.stored or args.million or args.profile or args.check:
        if not args.smoke:
            print(f"estimated GPU time on one H100: about {estimated_minutes(args, depth_length):.0f} min", flush=True)
        started = time.perf_counter()
        log = JsonLines(os.path.join(args.out, args.stem + ".jsonl"))
        log.write(section="environment", **environment())
        if args.check:
            run_layer_norm_check(log, 2**16 if not args.smoke else 256)
            run_fused_stack_check(log, 2**14 if not args.smoke else 256)
        if args.sweep:
            run_sweep(log, args.lengths, args.baseline_limit, args.anchors_only)
        if args.profile:
            run_profile(log, depth_length)
        if args.depth:
            run_depth(log, depth_length)
        if args.stored:
            run_stored(log, depth_length)
        if args.million:
            run_million(log, million)
        print(f"measured in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if args.report:
        write_report(args.out, args.stem)


if __name__ == "__main__":
    main()
