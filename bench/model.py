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
from common import JsonLines, environment  # noqa: E402
from model_cases import use_smoke_sizes  # noqa: E402
from model_checks import run_fused_stack_check, run_layer_norm_check  # noqa: E402
from model_report import write_report  # noqa: E402
from model_timing import (  # noqa: E402
    estimated_minutes,
    run_depth,
    run_million,
    run_profile,
    run_stored,
    run_sweep,
)

ANCHOR_LENGTHS = [2**12, 2**14, 2**16]


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
    million, depth_length = 2**20, 2**16
    if args.lengths is None:
        args.lengths = ANCHOR_LENGTHS if args.anchors_only else [2**12, 2**14, 2**16, 2**18, 2**20]
    if args.smoke:
        use_smoke_sizes()
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
