"""Generation on one GPU: reformer_hf's ReformerForCausalLM beside a dense LlamaForCausalLM (issue 24).

    PYTHONPATH=. python bench/generation_gpu.py --out DIR --exactness --decode --pipeline --report

Both models are random-init, bf16 weights, the sizes of bench/model.py's default model through the
`enwik8-paper` preset: d_model 1024, d_ff 4096, 12 layers, 8 heads of 128, byte vocabulary (260).
Ours keeps the preset's layers (local-local-LSH-local x 3, LSH chunks of 256, 2 hashes, local
chunks of 128), `num_buckets=None` (the bucket count follows the prompt), attn_backend "auto"
(Triton kernels serve the prefill), feed-forward over 16K positions at a time.  Llama: the same
width, depth, heads, d_ff and vocabulary, `attn_implementation="sdpa"`.

--decode      greedy `generate()` of --new-tokens tokens (eos off) after prompts of random bytes of
              each --prompts length, at each of --batches, for each of --variants:
                reformer              ours, with its own cache (ReformerCache), decoding eagerly
                                      (generate()'s default; `disable_compile=True` to be sure)
                llama-dynamic         Llama, transformers' default dynamic cache
                llama-static-compile  Llama, `cache_implementation="static"` and a CompileConfig
                                      (torch.compile, mode "reduce-overhead", of each decoding step)
                reformer-compile      ours with `cache_implementation="static"` and transformers'
                                      default CompileConfig (inductor, mode "reduce-overhead": fused
                                      kernels in CUDA graphs), as Llama's static variant (not run by
                                      default here; bench/decode_graph_check.py runs it)
                reformer-graph        ours, "static" with CompileConfig(backend="cudagraphs"): the eager
                                      step's kernels replayed from CUDA graphs, no inductor
                                      (compiles in seconds; not run by default)
              Timing: a streamer notes the time of every token generate() hands it, after a
              torch.cuda.synchronize (generate() already waits for each token on a GPU: its stop
              check reads the token on the host).  The first interval is the prefill (and the first
              token); each later interval is one decoding step as a user sees it (the model's
              forward, the token choice, generate()'s bookkeeping).  ms per token is the median of
              the steps after the first --skip-steps, which hold compilation and CUDA-graph capture
              for the compiled variant (all step times are kept in the JSON lines).  tokens/s =
              batch x 1000 / (ms per token).  Peak memory: max_memory_allocated over the generate()
              call after reset_peak_memory_stats.  Cache bytes are measured on the returned cache:
              ours `ReformerCache.nbytes()`, Llama the storage of every tensor its cache layers hold.
              A batch that runs out of memory is halved (down to 2) unless --no-batch-fallback; a case
              whose cache alone cannot fit on the GPU is recorded as not fitting without a try; a variant
              that fitted a larger batch also runs at the batch another one fell back to, so that each
              pair is compared at one batch too.  Untimed warm-ups (batch 1): one short generate() per
              variant first (compilation), and for ours one per prompt length (the Triton kernels of the
              prefill are compiled per length and bucket count).
--exactness   on a small model (hash_seed 0, fixed num_buckets, local/LSH/full layers), on the GPU:
              cached greedy decoding against cache-free decoding (use_cache=False) token for token,
              batch 1 and a left-padded batch, and beam search (4 beams, 2 returned), float32 and
              bf16; the logits of every step against a cache-free pass over the generated
              sequence; which attention paths ran (the package's log); one decoding step of the
              bf16 model under torch.cuda.set_sync_debug_mode("error") (no host synchronisation).
              Pass: float32 tokens equal and logits within 1e-4 of the cache-free pass; bf16 cached
              logits' largest error against the float32 cache-free pass at most 2 x the bf16
              cache-free pass's own + 0.01 (bf16 greedy tokens may part at near ties: their agreement
              is reported, not required).
--pipeline    saves a random-init model of the bench size with the byte tokenizer to a folder and runs
              `pipeline("text-generation", model=folder, device=0, dtype=torch.bfloat16)` on a
              --pipeline-prompt-tokens prompt, generating --pipeline-new-tokens tokens.
--report      renders every --inputs JSON-lines file (default DIR/<stem>.jsonl) as DIR/<stem>.md and
              DIR/<stem>.png (ms per token and cache GiB against the prompt length).  Ratios against
              Llama are taken between rows of the same run only.
--smoke       the whole script on the CPU with a tiny model: prompts 64 and 128, batches 1 and 2,
              float32, nothing compiled; to test this script.

Every case is written to DIR/<stem>.jsonl as soon as it ends, so a run stopped at a time limit
keeps what it measured; split a long sweep by --prompts and render all parts with --report --inputs.
"""

import argparse
import copy
import datetime
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback

# As in bench/model.py: at long lengths the caching allocator's fixed-size segments fragment.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    GIB,
    JsonLines,
    environment,
    environment_markdown,
    fmt_ms,
    fmt_ratio,
    free_memory,
    length_label,
    markdown_table,
    plot_against_length,
    read_json_lines,
)

from reformer_hf import ReformerByteTokenizer, ReformerCache, ReformerForCausalLM, compat  # noqa: E402
from reformer_hf.training import preset_config  # noqa: E402

PRESET = "enwik8-paper"
NO_DROPOUT = dict(hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0, local_attention_probs_dropout=0.0,
                  full_attention_probs_dropout=0.0)
# The smoke model: one period of the preset's layer pattern, tiny widths.
SMOKE_SIZES = dict(hidden_size=64, num_attention_heads=2, attention_head_size=32, feed_forward_size=128,
                   attn_layers=["local", "local", "lsh", "local"], lsh_attn_chunk_length=16,
                   local_attn_chunk_length=16, axial_pos_embds_dim=[16, 48])
FEED_FORWARD_CHUNK = 2**14
VARIANTS = ("reformer", "llama-dynamic", "llama-static-compile", "reformer-compile", "reformer-graph")
DEFAULT_VARIANTS = VARIANTS[:3]
RUN_ID = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
# bf16 logits: a cached step's largest error against the float32 cache-free reference may be at most
# this many times the bf16 cache-free pass's own, plus BF16_SLACK (logits of this model are O(1)).
BF16_ERROR_RATIO, BF16_SLACK = 2.0, 1e-2
FLOAT32_LOGIT_TOLERANCE = 1e-4


class Setup:
    """Where and in which precision the run happens: the GPU in bf16, or the CPU in float32 (--smoke)."""

    def __init__(self, smoke):
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.dtype = torch.float32 if smoke else torch.bfloat16

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return torch.cuda.max_memory_allocated() / GIB if self.device.type == "cuda" else None

    def memory_bytes(self):
        return torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else None


# ------------------------------------------------------------------------------------ models


def axial_grid(positions):
    """The smallest power-of-two axial grid [rows, columns] covering `positions`."""
    power = max(2, math.ceil(math.log2(positions)))
    return [2 ** (power // 2), 2 ** (power - power // 2)]


def reformer_config(positions, setup, num_buckets=None, **overrides):
    """The bench model: the preset's layers, heads and widths (tiny ones with --smoke), dropout off, eos off."""
    grid = axial_grid(positions)
    fields = dict(axial_pos_shape=grid, max_position_embeddings=math.prod(grid), num_buckets=num_buckets,
                  attn_backend="auto", chunk_size_feed_forward=FEED_FORWARD_CHUNK, eos_token_id=None,
                  pad_token_id=0, **NO_DROPOUT)
    if setup.smoke:
        fields.update(SMOKE_SIZES)
    fields.update(overrides)
    return preset_config(PRESET, fields)


def llama_like(config, setup):
    """LlamaForCausalLM of the Reformer config's width, depth, heads, d_ff and vocabulary (SDPA, eos off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.feed_forward_size,
        num_hidden_layers=len(config.attn_layers), num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, head_dim=config.attention_head_size,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    model = LlamaForCausalLM._from_config(llama_config, attn_implementation="sdpa")
    return model.to(setup.device, setup.dtype).eval()


def reformer_model(config, setup, dtype=None):
    return ReformerForCausalLM(config).to(setup.device, dtype or setup.dtype).eval()


# ------------------------------------------------------------------------------------ measuring


class TokenClock:
    """A generate() streamer noting when each put arrives (the prompt, then every new token), after
    waiting for the device so a time is when the work before it ended."""

    def __init__(self, setup):
        self.setup = setup
        self.times = []

    def put(self, value):
        self.setup.sync()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def tensor_storage_bytes(tensors):
    """Bytes of the storages under `tensors`, each storage counted once (as allocated)."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def transformers_cache_layers(cache):
    """The layer objects of a transformers Cache: `.layers` in 5.17-5.25 (DynamicCache, StaticCache, ...);
    an EncoderDecoderCache's self- and cross-attention caches in turn."""
    if hasattr(cache, "self_attention_cache"):
        return transformers_cache_layers(cache.self_attention_cache) + transformers_cache_layers(
            cache.cross_attention_cache)
    return list(cache.layers)


def layer_tensors(layer):
    """Every tensor a cache layer holds as an attribute (keys, values and whatever a layer kind adds)."""
    held = []
    for value in vars(layer).values():
        if torch.is_tensor(value):
            held.append(value)
        elif isinstance(value, (list, tuple)):
            held += [item for item in value if torch.is_tensor(item)]
    return held


def cache_bytes(cache):
    """Whole-cache bytes as allocated: ReformerCache.nbytes(), or the storages of a transformers cache's layers."""
    if cache is None:
        return None
    if isinstance(cache, ReformerCache):
        return cache.nbytes()
    layers = transformers_cache_layers(cache)
    return tensor_storage_bytes([tensor for layer in layers for tensor in layer_tensors(layer)])


def per_layer_cache_bytes(cache, attn_layers=None):
    """{kind: bytes of the first layer of that kind}: ours "lsh" / "local" / "full"; a transformers cache "dense"."""
    if cache is None:
        return {}
    if isinstance(cache, ReformerCache):
        return {kind: cache.layers[attn_layers.index(kind)].nbytes() for kind in ("lsh", "local", "full")
                if kind in attn_layers and cache.layers[attn_layers.index(kind)] is not None}
    return {"dense": tensor_storage_bytes(layer_tensors(transformers_cache_layers(cache)[0]))}


def dense_layer_kv_bytes(batch, positions, heads, head_size, element_size):
    """A dense layer's KV cache (keys and values of every head and position) for this context."""
    return 2 * batch * heads * positions * head_size * element_size


def estimated_cache_bytes(variant, config, batch, positions, element_size):
    """A lower bound of the cache (keys and values only): a case whose estimate exceeds the GPU is not tried."""
    per_layer = dense_layer_kv_bytes(batch, positions, config.num_attention_heads, config.attention_head_size,
                                     element_size)
    if variant.startswith("llama"):
        return len(config.attn_layers) * per_layer
    return sum(1 for kind in config.attn_layers if kind in ("lsh", "full")) * per_layer


class CompileWatch:
    """Counts the calls generate() makes to a model's `get_compiled_call` (transformers 5.17-5.25 ask for
    the compiled decoding call there, once per generate(), only where they will use it)."""

    def __init__(self, model):
        self.calls = 0
        original = model.get_compiled_call

        def get_compiled_call(compile_config):
            self.calls += 1
            return original(compile_config)

        model.get_compiled_call = get_compiled_call


def forget_static_cache_length(model):
    """transformers 5.17-5.25 size a static cache at least as long as the last one generate() made on
    this model (`_previous_max_cache_length`): forget it, so every case gets a cache of its own length."""
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length


def reformer_compile_config(variant, setup):
    """The CompileConfig of a compiled variant of ours: "reformer-compile" transformers' default (inductor,
    mode "reduce-overhead"), "reformer-graph" the cudagraphs backend (no inductor).  On the CPU (--smoke)
    both trace with "aot_eager" (no CUDA graphs there), made to compile on the CPU (compat)."""
    from transformers import CompileConfig

    if setup.device.type != "cuda":
        return compat.compile_on_every_device(CompileConfig(backend="aot_eager"))
    return CompileConfig(backend="cudagraphs") if variant == "reformer-graph" else CompileConfig()


def generate_arguments(variant, setup):
    from transformers import CompileConfig

    if variant == "llama-static-compile":
        compile_config = CompileConfig(mode="reduce-overhead")
        if setup.device.type != "cuda":
            compile_config = compat.compile_on_every_device(CompileConfig(backend="aot_eager"))
        return dict(cache_implementation="static", compile_config=compile_config)
    if variant in ("reformer-compile", "reformer-graph"):
        return dict(cache_implementation="static", compile_config=reformer_compile_config(variant, setup))
    if variant == "reformer":
        return dict(disable_compile=True)
    return {}


def random_prompt(batch, length, vocab_size, setup, seed=0):
    generator = torch.Generator().manual_seed(seed + length)
    return torch.randint(4, vocab_size, (batch, length), generator=generator).to(setup.device)


def timed_generate(model, variant, input_ids, new_tokens, setup, watch):
    """One greedy generate() with a TokenClock: (output, token times, wall seconds of the call, whether
    its decoding steps ran compiled)."""
    if variant.startswith("llama"):
        forget_static_cache_length(model)
    clock = TokenClock(setup)
    compiled_calls = watch.calls
    setup.sync()
    started = time.perf_counter()
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                            do_sample=False, streamer=clock, return_dict_in_generate=True,
                            **generate_arguments(variant, setup))
    setup.sync()
    return output, clock.times, time.perf_counter() - started, watch.calls > compiled_calls


def error_text(error, limit=600):
    """The error in one line: its type, its message's first lines (a BackendCompilerFailed says only which
    backend raised on its first line) and the innermost cause, within `limit` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {' | '.join(lines[:4])}"
    cause = error
    while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
        cause = cause.__cause__ if cause.__cause__ is not None else cause.__context__
    if cause is not error:
        cause_lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        text += f" <- {type(cause).__name__}: {' | '.join(cause_lines[:2])}"
    return text[:limit]


def error_trace(error, limit=4000):
    """The end of the error's formatted traceback (its causes included), for the JSON lines."""
    return "".join(traceback.format_exception(error))[-limit:]


def decode_case(model, watch, variant, config, prompt, batch, args, setup):
    """One generate() run: the record of its prefill, decoding steps, memory and cache (or why it failed)."""
    record = dict(section="decode", run_id=RUN_ID, model="llama" if variant.startswith("llama") else "reformer",
                  variant=variant, prompt=prompt, batch=batch, new_tokens=args.new_tokens, skip_steps=args.skip_steps,
                  dtype=str(setup.dtype).replace("torch.", ""))
    element_size = torch.finfo(setup.dtype).bits // 8
    estimate = estimated_cache_bytes(variant, config, batch, prompt + args.new_tokens, element_size)
    memory = setup.memory_bytes()
    if memory is not None and estimate > memory:
        return dict(record, status=f"does not fit: the keys and values alone take {estimate / GIB:.1f} GiB, "
                                   f"the GPU has {memory / GIB:.1f} GiB", estimated_cache_gib=estimate / GIB)
    input_ids = random_prompt(batch, prompt, config.vocab_size, setup)
    free_memory()
    setup.reset_peak()
    output = None
    try:
        output, times, wall_s, compiled = timed_generate(model, variant, input_ids, args.new_tokens, setup, watch)
        failure = None
    except torch.OutOfMemoryError as error:
        failure = f"does not fit (OOM): {error_text(error)[:200]}"
    except Exception as error:  # a failed case is a result to report, not a reason to stop the sweep
        failure = f"error: {error_text(error)}"
        record["traceback"] = error_trace(error)
    if failure is not None:
        output = None
        free_memory()
        return dict(record, status=failure)
    peak = setup.peak_gib()
    cache = compat.output_cache(output)
    positions = int(cache.get_seq_length()) if cache is not None else None  # a tensor from a StaticCache
    generated = output.sequences.shape[1] - prompt
    intervals = [later - earlier for earlier, later in zip(times, times[1:])]
    steps_ms = [interval * 1000 for interval in intervals[1:]]
    timed = steps_ms[args.skip_steps:]
    record.update(
        status="ok" if generated == args.new_tokens and timed else f"error: generated {generated} tokens, "
        f"{len(timed)} timed steps",
        prefill_s=intervals[0] if intervals else None,
        ms_per_token=statistics.median(timed) if timed else None,
        mean_ms_per_token=statistics.fmean(timed) if timed else None,
        steps_ms=steps_ms,
        generate_s=wall_s,
        peak_gib=peak,
        cache_bytes=cache_bytes(cache),
        cache_positions=positions,
        layer_cache_bytes=per_layer_cache_bytes(cache, config.attn_layers),
        dense_layer_kv_bytes=dense_layer_kv_bytes(batch, positions or prompt,
                                                  config.num_attention_heads, config.attention_head_size,
                                                  element_size),
        compiled=compiled,
    )
    if record["ms_per_token"]:
        record["tokens_per_s"] = batch * 1000 / record["ms_per_token"]
    if isinstance(cache, ReformerCache) and "lsh" in config.attn_layers:
        lsh_layer = cache.layers[config.attn_layers.index("lsh")]
        record["lsh_buckets"] = lsh_layer.n_buckets
        record["lsh_index_bytes"] = lsh_layer.nbytes() - lsh_layer.store.nbytes()  # ring, counts, rotations
    output = cache = None
    free_memory()
    return record


def run_logged_case(log, model, watch, variant, config, prompt, batch, requested, args, setup, matched=False):
    """decode_case, written to the log and printed; `matched`: run at a batch another variant fell back to."""
    record = log.write(requested_batch=requested, matched=matched,
                       **decode_case(model, watch, variant, config, prompt, batch, args, setup))
    print(f"{variant:22s} prompt={length_label(prompt):>5} batch={batch:3d} "
          f"prefill {record.get('prefill_s') or float('nan'):8.2f} s  "
          f"{record.get('ms_per_token') or float('nan'):8.2f} ms/token  "
          f"peak {record.get('peak_gib') or float('nan'):6.2f} GiB  "
          f"cache {(record.get('cache_bytes') or 0) / GIB:6.2f} GiB  {record['status'][:160]}", flush=True)
    return record


def run_decode_case_with_fallback(log, model, watch, variant, config, prompt, batch, args, setup):
    """The case at `batch`; where it does not fit and batch > 2, again at half the batch (unless disabled)."""
    requested = batch
    while True:
        record = run_logged_case(log, model, watch, variant, config, prompt, batch, requested, args, setup)
        fits = not record["status"].startswith("does not fit")
        if fits or args.no_batch_fallback or batch <= 2:
            return record
        batch //= 2


def warm_up(log, model, watch, variant, prompt, new_tokens, setup, purpose):
    """One untimed generate() at batch 1: kernels compiled (Triton specialises on the prompt length and the
    bucket count it brings), the compiled call traced."""
    input_ids = random_prompt(1, prompt, model.config.vocab_size, setup, seed=1)
    started = time.perf_counter()
    try:
        compiled = timed_generate(model, variant, input_ids, new_tokens, setup, watch)[3]
        status = "ok"
    except Exception as error:  # recorded; the timed rows of this variant will say what fails
        status, compiled = f"error: {error_text(error)}", None
    seconds = time.perf_counter() - started
    log.write(section="warmup", run_id=RUN_ID, variant=variant, prompt=prompt, purpose=purpose, seconds=seconds,
              status=status, compiled=compiled)
    print(f"warm-up ({purpose}) {variant} prompt={length_label(prompt)}: {seconds:.1f} s {status[:200]}", flush=True)
    free_memory()


def run_decode(log, args, setup):
    longest = max(args.prompts) + args.new_tokens
    config = reformer_config(longest, setup, num_buckets=args.num_buckets)
    torch.manual_seed(0)
    models = {"reformer": reformer_model(config, setup), "llama": llama_like(config, setup)}
    for name, model in models.items():
        log.write(section="model", run_id=RUN_ID, model=name, parameters=sum(p.numel() for p in model.parameters()),
                  config=model.config.to_dict() if name == "reformer" else _llama_summary(model.config))

    watches = {name: CompileWatch(model) for name, model in models.items()}

    def model_of(variant):
        name = "llama" if variant.startswith("llama") else "reformer"
        return models[name], watches[name]

    for variant in args.variants:
        warm_up(log, *model_of(variant), variant, min(1024, min(args.prompts)), args.skip_steps + 2, setup, "start")
    for prompt in args.prompts:
        # Ours: the prefill's Triton kernels are compiled for each new prompt length, outside the timed runs.
        for variant in (variant for variant in args.variants if not variant.startswith("llama")):
            warm_up(log, *model_of(variant), variant, prompt, 2, setup, "prompt length")
        ran = set()  # (variant, batch) that ran at this prompt length
        for batch in args.batches:
            fitted = {}
            for variant in args.variants:
                record = run_decode_case_with_fallback(log, *model_of(variant), variant, config, prompt, batch, args,
                                                       setup)
                ran.add((variant, record["batch"]))
                if record["status"] == "ok":
                    fitted[variant] = record["batch"]
            # A variant that fitted a larger batch also runs at each smaller one another variant fell back to,
            # so that every pair is compared at one batch as well.
            for variant, own_batch in fitted.items():
                for smaller in sorted({other for other in fitted.values() if other < own_batch}):
                    if (variant, smaller) not in ran:
                        ran.add((variant, smaller))
                        run_logged_case(log, *model_of(variant), variant, config, prompt, smaller, batch, args, setup,
                                        matched=True)
    models = None
    free_memory()


def _llama_summary(config):
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "hidden_act")
    return {key: getattr(config, key, None) for key in keys}


# ------------------------------------------------------------------------------------ exactness


class BackendLog(logging.Handler):
    """Collects the package's attention-path decisions (logged once per process by
    reformer_hf.attention_dispatch)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def exactness_config(setup):
    """A small causal model with every layer kind, fixed buckets and hashing, covering the exactness prompts."""
    if setup.smoke:
        sizes = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                     lsh_attn_chunk_length=16, local_attn_chunk_length=16, num_buckets=8,
                     axial_pos_embds_dim=[16, 16])
        positions = 256
    else:
        sizes = dict(hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=1024,
                     lsh_attn_chunk_length=64, local_attn_chunk_length=64, num_buckets=64,
                     axial_pos_embds_dim=[128, 128])
        positions = 4096
    grid = axial_grid(positions)
    return preset_config(PRESET, dict(sizes, attn_layers=["local", "lsh", "local", "full"], hash_seed=0,
                                      axial_pos_shape=grid, max_position_embeddings=math.prod(grid),
                                      attn_backend="auto", eos_token_id=None, pad_token_id=0, **NO_DROPOUT))


def left_padded_batch(lengths, vocab_size, setup, seed):
    """Prompts of the given lengths, left-padded with id 0 to the longest, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    input_ids = torch.randint(4, vocab_size, (len(lengths), total), generator=generator)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, total - length:] = 1
    return input_ids.masked_fill(mask == 0, 0).to(setup.device), mask.to(setup.device)


def cache_free_step_logits(model, sequences, attention_mask, prompt_width):
    """Logits of every generated position's prediction from one cache-free pass over the whole
    sequence: (new tokens, batch, vocab), float32."""
    full_mask = torch.nn.functional.pad(attention_mask, (0, sequences.shape[1] - attention_mask.shape[1]), value=1)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=full_mask, use_cache=False).logits
    return logits[:, prompt_width - 1:-1].float().transpose(0, 1)


def generate_pair(model, input_ids, attention_mask, cached_options=None, **kwargs):
    """generate() with the cache (and `cached_options`: how to decode, e.g. eagerly or compiled) and without."""
    outputs = []
    for use_cache, options in ((True, cached_options or dict(disable_compile=True)), (False, {})):
        outputs.append(model.generate(input_ids, attention_mask=attention_mask, use_cache=use_cache, do_sample=False,
                                      return_dict_in_generate=True, **options, **kwargs))
    return outputs


def greedy_check(models, dtype_name, input_ids, attention_mask, new_tokens, cached_options=None):
    """Cached vs cache-free greedy decoding of models[dtype_name]; logits against float32's cache-free pass.
    cached_options: generate() options of the cached run (default: eager decoding)."""
    model, reference = models[dtype_name], models["float32"]
    cached, uncached = generate_pair(model, input_ids, attention_mask, cached_options, max_new_tokens=new_tokens,
                                     output_logits=True)
    width = input_ids.shape[1]
    agree = (cached.sequences[:, width:] == uncached.sequences[:, width:]).float().mean().item()
    cached_logits = torch.stack(cached.logits).float()  # (new tokens, batch, vocab)
    reference_logits = cache_free_step_logits(reference, cached.sequences, attention_mask, width)
    same_dtype_logits = cache_free_step_logits(model, cached.sequences, attention_mask, width)
    result = dict(tokens_equal=torch.equal(cached.sequences, uncached.sequences), token_agreement=agree,
                  max_logit_diff_vs_cache_free=(cached_logits - same_dtype_logits).abs().max().item(),
                  cached_error_vs_float32=(cached_logits - reference_logits).abs().max().item(),
                  cache_free_error_vs_float32=(same_dtype_logits - reference_logits).abs().max().item(),
                  max_abs_logit=reference_logits.abs().max().item())
    if dtype_name == "float32":
        result["tolerance"] = f"tokens equal; logits within {FLOAT32_LOGIT_TOLERANCE} of the cache-free pass"
        result["passed"] = result["tokens_equal"] and result["max_logit_diff_vs_cache_free"] <= FLOAT32_LOGIT_TOLERANCE
    else:
        bound = BF16_ERROR_RATIO * result["cache_free_error_vs_float32"] + BF16_SLACK
        result["tolerance"] = (f"cached error vs float32 <= {BF16_ERROR_RATIO} x cache-free bf16 error "
                               f"+ {BF16_SLACK} = {bound:.4f}; token agreement reported")
        result["passed"] = result["cached_error_vs_float32"] <= bound
    return result


def beam_check(models, dtype_name, input_ids, attention_mask, new_tokens):
    cached, uncached = generate_pair(models[dtype_name], input_ids, attention_mask, max_new_tokens=new_tokens,
                                     num_beams=4, num_return_sequences=2, output_scores=True)
    width = input_ids.shape[1]
    agree = (cached.sequences[:, width:] == uncached.sequences[:, width:]).float().mean().item()
    score_diff = (cached.sequences_scores - uncached.sequences_scores).abs().max().item()
    equal = torch.equal(cached.sequences, uncached.sequences)
    tolerance = FLOAT32_LOGIT_TOLERANCE if dtype_name == "float32" else None
    return dict(tokens_equal=equal, token_agreement=agree, max_sequence_score_diff=score_diff,
                tolerance=(f"sequences equal; scores within {tolerance}" if tolerance
                           else "reported (bf16): sequences and scores"),
                passed=equal and score_diff <= tolerance if tolerance else None)


def sync_free_step(model, input_ids, attention_mask, setup):
    """One decoding step after a prefill, under torch.cuda.set_sync_debug_mode("error"): None if no
    host synchronisation happened, else the error it raised."""
    if setup.device.type != "cuda":
        return "not checked (CPU)"
    cache = ReformerCache(model.config, input_ids.shape[1] + 2)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits
        sequence = torch.cat([input_ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.nn.functional.pad(attention_mask, (0, 1), value=1)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            # As generate() does it: told that the step feeds one position, the step asks the device nothing.
            inputs = model.prepare_inputs_for_generation(sequence, past_key_values=cache, attention_mask=mask,
                                                         use_cache=True, next_sequence_length=1)
            model(**inputs)
            outcome = None
        except RuntimeError as error:
            outcome = error_text(error)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return outcome


def run_exactness(log, setup):
    handler = BackendLog()
    attention_logger = logging.getLogger("reformer_hf.attention_dispatch")
    attention_logger.addHandler(handler)
    attention_logger.setLevel(logging.INFO)
    config = exactness_config(setup)
    torch.manual_seed(0)
    base = ReformerForCausalLM(config).eval()
    log.write(section="exactness_model", run_id=RUN_ID, summary=(
        f"hidden {config.hidden_size}, {config.num_attention_heads} heads of {config.attention_head_size}, layers "
        f"{' / '.join(config.attn_layers)}, {config.num_hashes} hashes, {config.num_buckets} buckets, hash_seed "
        f"{config.hash_seed}, chunks of {config.lsh_attn_chunk_length} (LSH) and {config.local_attn_chunk_length} "
        "(local)"), config=config.to_dict())
    models = {name: copy.deepcopy(base).to(setup.device, dtype) for name, dtype in
              (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    longest = 128 if setup.smoke else 2048
    new_tokens, beam_tokens = (8, 6) if setup.smoke else (32, 16)
    cases = (
        ("greedy, batch 1", "greedy", [longest]),
        ("greedy, left-padded batch of 4", "greedy", [longest, longest * 3 // 4 - 3, longest // 2 + 5, longest // 8]),
        ("beam search (4 beams, 2 returned), left-padded batch of 2", "beam", [longest, longest // 2 - 7]),
    )
    for name, kind, lengths in cases:
        input_ids, attention_mask = left_padded_batch(lengths, config.vocab_size, setup, seed=len(lengths))
        for dtype_name in models:
            started = time.perf_counter()
            try:
                check = greedy_check if kind == "greedy" else beam_check
                result = check(models, dtype_name, input_ids, attention_mask, new_tokens if kind == "greedy"
                               else beam_tokens)
                status = "ok"
            except Exception as error:  # a failed check is a result to report
                result, status = {"passed": False}, f"error: {error_text(error)}"
            record = log.write(section="exactness", run_id=RUN_ID, case=name, dtype=dtype_name, prompt_lengths=lengths,
                               status=status, seconds=time.perf_counter() - started, **result)
            print(f"exactness {name} {dtype_name}: {status} passed={record.get('passed')} "
                  f"tokens_equal={record.get('tokens_equal')} agreement={record.get('token_agreement')}", flush=True)
    if "bfloat16" in models:
        input_ids, attention_mask = left_padded_batch([longest, longest // 2], config.vocab_size, setup, seed=5)
        try:
            outcome = sync_free_step(models["bfloat16"], input_ids, attention_mask, setup)
        except Exception as error:  # the prefill itself failed
            outcome = f"error before the step: {error_text(error)}"
        log.write(section="sync_free_step", run_id=RUN_ID, batch=2, left_padded=True,
                  passed=None if outcome == "not checked (CPU)" else outcome is None, error=outcome)
        print(f"decoding step without host synchronisation: {outcome or 'ok'}", flush=True)
    log.write(section="attention_paths", run_id=RUN_ID, messages=handler.messages)
    print("attention paths:", handler.messages, flush=True)
    attention_logger.removeHandler(handler)
    models = base = None
    free_memory()


# ------------------------------------------------------------------------------------ pipeline


def run_pipeline(log, args, setup):
    from transformers import pipeline

    prompt_tokens, new_tokens = args.pipeline_prompt_tokens, args.pipeline_new_tokens
    tokenizer = ReformerByteTokenizer()
    config = reformer_config(prompt_tokens + new_tokens, setup, vocab_size=len(tokenizer))
    record = dict(section="pipeline", run_id=RUN_ID, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                  dtype=str(setup.dtype).replace("torch.", ""))
    generator = random_text = None
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        ReformerForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # ASCII letters and spaces: one byte, so one token, per character.
        alphabet = "abcdefghijklmnopqrstuvwxyz     "
        picks = torch.randint(len(alphabet), (prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
        random_text = "".join(alphabet[pick] for pick in picks)
        record["prompt_tokens_encoded"] = len(tokenizer(random_text)["input_ids"])
        try:
            started = time.perf_counter()
            generator = pipeline("text-generation", model=folder, device=0 if setup.device.type == "cuda" else "cpu",
                                 dtype=setup.dtype)
            record["load_s"] = time.perf_counter() - started
            setup.reset_peak()
            setup.sync()
            started = time.perf_counter()
            result = generator(random_text, max_new_tokens=new_tokens, do_sample=False, return_tensors=True)
            setup.sync()
            new_ids = list(result[0]["generated_token_ids"])[record["prompt_tokens_encoded"]:]
            record.update(generate_s=time.perf_counter() - started, peak_gib=setup.peak_gib(),
                          model_class=type(generator.model).__name__, model_dtype=str(generator.model.dtype),
                          generated_ids=new_ids, generated_tokens=len(new_ids))
            record["status"] = "ok" if record["generated_tokens"] == new_tokens else (
                f"error: generated {record['generated_tokens']} tokens, asked for {new_tokens}")
        except torch.OutOfMemoryError as error:
            record["status"] = f"does not fit (OOM): {error_text(error)[:200]}"
        except Exception as error:  # recorded: the pipeline's failure is the result
            record["status"] = f"error: {error_text(error)}"
    generator = None
    free_memory()
    log.write(**record)
    print("pipeline:", record, flush=True)


# ------------------------------------------------------------------------------------ report


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


# ------------------------------------------------------------------------------------ main


def token_count(text):
    """'4K' -> 4096, '1M' -> 1048576, '300' -> 300."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive token count such as 4096, 4K or 1M")
    return int(number) * scale


def count_list(text):
    return [token_count(item) for item in text.split(",") if item.strip()]


def variant_list(text):
    variants = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"--variants={text!r}: {unknown or 'none given'}; choose from {VARIANTS}")
    return variants


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the .jsonl / .md / .png")
    parser.add_argument("--stem", default="generation_h100", help="file name stem in --out")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--exactness", action="store_true")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--inputs", nargs="+", help="JSON-lines files for --report (default: --out/<stem>.jsonl)")
    parser.add_argument("--prompts", type=count_list, default=count_list("4K,32K,128K,512K,1M"),
                        help="prompt lengths, comma-separated (4K, 1M, 300 ...)")
    parser.add_argument("--batches", type=count_list, default=[1, 16])
    parser.add_argument("--variants", type=variant_list, default=list(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-steps", type=int, default=3,
                        help="decoding steps left out of the median (compilation and graph capture)")
    parser.add_argument("--no-batch-fallback", action="store_true", help="do not halve a batch that does not fit")
    parser.add_argument("--num-buckets", type=int, default=None, help="ours: fixed LSH bucket count (default: "
                        "None, chosen from the prompt length)")
    parser.add_argument("--pipeline-prompt-tokens", type=token_count, default=token_count("128K"))
    parser.add_argument("--pipeline-new-tokens", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, float32: tests this script")
    args = parser.parse_args(argv)
    if args.new_tokens < args.skip_steps + 3:
        parser.error(f"--new-tokens={args.new_tokens} leaves fewer than 2 timed steps after --skip-steps="
                     f"{args.skip_steps}; give at least {args.skip_steps + 3}")
    if args.smoke:
        if args.prompts == count_list("4K,32K,128K,512K,1M"):
            args.prompts = [64, 128]
        if args.batches == [1, 16]:
            args.batches = [1, 2]
        if args.pipeline_prompt_tokens == token_count("128K"):
            args.pipeline_prompt_tokens = 128
    elif not torch.cuda.is_available() and (args.decode or args.exactness or args.pipeline):
        parser.error("no CUDA device: this benchmark runs on a GPU (use --smoke to test it on the CPU)")
    if not (args.decode or args.exactness or args.pipeline or args.report):
        parser.error("choose at least one of --decode, --exactness, --pipeline, --report")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    setup = Setup(args.smoke)
    log_path = os.path.join(args.out, args.stem + ".jsonl")
    if args.decode or args.exactness or args.pipeline:
        log = JsonLines(log_path)
        log.write(section="environment", run_id=RUN_ID, smoke=args.smoke, **environment())
        if args.exactness:
            run_exactness(log, setup)
        if args.decode:
            run_decode(log, args, setup)
        if args.pipeline:
            run_pipeline(log, args, setup)
    if args.report:
        write_report(args.out, args.stem, args.inputs or [log_path])


if __name__ == "__main__":
    main()
