"""What one timed generate() case of bench/generation_gpu.py measures: a greedy generate() of a variant
(eager, or with a static cache and a CompileConfig) with a streamer noting each token's time, and the
record of its prefill, decoding steps, peak memory and cache bytes, or why it did not run."""

import statistics
import time

import torch

from common import GIB, free_memory
from generation_cache_bytes import cache_bytes, dense_layer_kv_bytes, estimated_cache_bytes, per_layer_cache_bytes
from generation_setup import RUN_ID, error_text, error_trace

from reformer_hf import ReformerCache, compat


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
    # transformers passes its CompileConfig's mode on to torch.compile, and the cudagraphs backend takes no
    # mode: CompileConfig(backend="cudagraphs") failed with "unexpected keyword argument 'mode'".
    return CompileConfig(backend="cudagraphs", mode=None) if variant == "reformer-graph" else CompileConfig()


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
