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
                reformer-graph        ours, "static" with CompileConfig(backend="cudagraphs", mode=None): the eager
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
import os
import sys

# As in bench/model.py: at long lengths the caching allocator's fixed-size segments fragment.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import JsonLines, environment  # noqa: E402
from generation_exactness import run_exactness  # noqa: E402
from generation_pipeline import run_pipeline  # noqa: E402
from generation_report import write_report  # noqa: E402
from generation_setup import DEFAULT_VARIANTS, RUN_ID, VARIANTS, Setup, count_list, token_count  # noqa: E402
from generation_sweep import run_decode  # noqa: E402


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
