"""Time per generated token with and without the generation cache, against the prompt length.

Greedy `generate()` on a small causal Reformer (local + LSH layers) with prompts of the given
lengths.  A streamer records when each token comes out: the first interval holds the prefill, the
others one decoding step each, whose median is the time per token.  With the cache a step on local
and LSH layers costs the same whatever the prompt length; without it every step reruns the whole
sequence.  Writes a markdown table with the machine, versions, command and date.

    python bench/generation.py --out bench/results/generation_cpu.md
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import transformers

from reformer_hf import ReformerConfig, ReformerForCausalLM


def bench_config(max_length, attn_layers):
    side = 1 << ((max_length - 1).bit_length() + 1) // 2  # axial grid side x side >= max_length
    return ReformerConfig(
        vocab_size=260,
        hidden_size=128,
        num_attention_heads=2,
        attention_head_size=64,
        feed_forward_size=256,
        attn_layers=attn_layers,
        num_hashes=2,
        num_buckets=None,
        lsh_attn_chunk_length=64,
        local_attn_chunk_length=64,
        axial_pos_shape=[side, side],
        axial_pos_embds_dim=[64, 64],
        max_position_embeddings=side * side,
        hidden_dropout_prob=0.0,
        local_attention_probs_dropout=0.0,
        is_decoder=True,
        eos_token_id=None,
        pad_token_id=0,
    )


class TokenClock:
    """A generate() streamer that only notes the time of every put (the prompt, then each token)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def step_seconds(self):
        """Seconds of each decoding step after the first token (whose interval holds the prefill)."""
        intervals = [later - earlier for earlier, later in zip(self.times, self.times[1:])]
        return intervals[0], intervals[1:]


def dense_kv_mib(config, positions):
    """A dense KV cache of the same model's width for `positions` (every layer a key and a value per
    head and position, float32, batch 1): what a dense transformer of this size would hold."""
    layers = len(config.attn_layers)
    return 2 * layers * config.num_attention_heads * config.head_size * positions * 4 / 2**20


def time_generation(model, prompt_length, new_tokens, use_cache):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, model.config.vocab_size, (1, prompt_length), generator=generator)
    clock = TokenClock()
    with torch.no_grad():
        output = model.generate(
            input_ids, max_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, streamer=clock,
            return_dict_in_generate=True,
        )
    first, steps = clock.step_seconds()
    cache = output.past_key_values
    return {
        "first": first,
        "median": statistics.median(steps),
        "mean": statistics.fmean(steps),
        "steps": len(steps),
        "cache_mib": cache.nbytes() / 2**20 if cache is not None else None,
        "dense_kv_mib": dense_kv_mib(model.config, cache.get_seq_length()) if cache is not None else None,
        "n_buckets": cache.layers[model.config.attn_layers.index("lsh")].n_buckets
        if cache is not None and "lsh" in model.config.attn_layers else None,
    }


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens generated with the cache per length")
    parser.add_argument("--uncached-lengths", type=int, nargs="*", default=[1024, 4096],
                        help="prompt lengths also timed without the cache (each step reruns the sequence)")
    parser.add_argument("--uncached-new-tokens", type=int, default=5)
    parser.add_argument("--attn-layers", nargs="+", default=["local", "lsh", "local", "lsh"])
    parser.add_argument("--repeats", type=int, default=3,
                        help="cached runs per length, interleaved across lengths; the fastest median is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="markdown file to write (printed either way)")
    args = parser.parse_args()
    for name in ("new_tokens", "uncached_new_tokens"):
        if getattr(args, name) < 3:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag}={getattr(args, name)}: need at least 3 (the first interval holds the prefill)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    longest = max(args.prompt_lengths + args.uncached_lengths)
    max_length = longest + max(args.new_tokens, args.uncached_new_tokens)
    model = ReformerForCausalLM(bench_config(max_length, args.attn_layers)).eval()
    load_before = os.getloadavg()

    lengths = sorted(set(args.prompt_lengths + args.uncached_lengths))
    # On a shared machine other jobs slow some runs down; interleaving the lengths and keeping
    # each length's fastest run compares the lengths under the same conditions.
    cached_runs = {length: [] for length in lengths}
    for _ in range(args.repeats):
        for prompt_length in lengths:
            cached_runs[prompt_length].append(time_generation(model, prompt_length, args.new_tokens, use_cache=True))
            print(prompt_length, cached_runs[prompt_length][-1], file=sys.stderr, flush=True)
    rows = []
    for prompt_length in lengths:
        cached = min(cached_runs[prompt_length], key=lambda run: run["median"])
        uncached = None
        if prompt_length in args.uncached_lengths:
            uncached = time_generation(model, prompt_length, args.uncached_new_tokens, use_cache=False)
            print(prompt_length, "uncached", uncached, file=sys.stderr, flush=True)
        rows.append((prompt_length, cached, uncached))

    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        "# Generation: time per token with and without the cache (CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}; "
        f"load average before the run {load_before[0]:.2f} (a shared machine: other jobs ran beside this one)",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- command: `python bench/generation.py {' '.join(sys.argv[1:])}`",
        f"- model: {args.attn_layers} layers, hidden 128, 2 heads x 64, feed-forward 256, "
        f"{parameters / 1e6:.2f}M parameters, num_hashes 2, num_buckets None (chosen from the prompt length), "
        "chunk length 64 (local and LSH), lsh_window_mode bucket_window, reversible, fp32, batch 1, greedy",
        f"- per token: median over {args.new_tokens - 1} cached decoding steps (fastest of {args.repeats} runs, "
        f"interleaved across lengths) / {args.uncached_new_tokens - 1} uncached steps (one run); the first token's "
        "interval holds the prefill and is reported apart",
        "",
        "| prompt length | LSH buckets | prefill + 1st token, cached (s) | ms / token, cached | ms / token, no cache "
        "| speed-up | cache size (MiB) | dense KV cache, same positions (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prompt_length, cached, uncached in rows:
        no_cache = f"{uncached['median'] * 1e3:.1f}" if uncached else "not run"
        speedup = f"{uncached['median'] / cached['median']:.1f}x" if uncached else ""
        lines.append(
            f"| {prompt_length} | {cached['n_buckets']} | {cached['first']:.2f} | {cached['median'] * 1e3:.2f} "
            f"| {no_cache} | {speedup} | {cached['cache_mib']:.1f} | {cached['dense_kv_mib']:.1f} |"
        )
    lines += [
        "",
        "The cache keeps each local layer's last `(local_num_chunks_before + 1) * local_attn_chunk_length` "
        "keys and values (a window) and each LSH layer's keys and values once per position, as a dense KV "
        "cache does, with an int32 index per hash round and bucket of the last "
        "`lsh_num_chunks_before * lsh_attn_chunk_length` positions that fell in it: a step reads one bucket "
        "per round, so the time per token does not grow with the prompt.  Cache size is measured "
        "(`ReformerCache.nbytes()`: every tensor it holds, as allocated); the dense column is what a dense "
        "model of the same width and depth holds for the same positions.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
