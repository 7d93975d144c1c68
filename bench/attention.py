"""Attention layer on the GPU: full-size kernel checks, launch tuning, and the speed/memory sweep.

    PYTHONPATH=. python bench/attention.py --out DIR --check --profile --sweep --graphs --report

--check   fused kernels against the torch path at full sizes (causal / non-causal, padding,
          n_hashes 1/2/4/8, d_head 64/128, both window modes, local attention, float32): the
          kernel's error against a float64 reference must be at most twice the torch path's
          own bfloat16 error (flash-attention's rule).
--tune    times each kernel's launch choices (warps per program, key tile, hashing block) at 64K
          tokens and keeps the fastest: one LSH step by part (hashing, sorting, forward,
          forward + backward).
--profile device time per kernel of one LSH op step at 16K..1M (torch.profiler); the same
          attention kernels over the identity order (contiguous windows) against the hashed
          order; the hashing dot in float32 "ieee" against "tf32x3".
--sweep   forward+backward, batch 1, 8 heads, d_head 64, causal, bf16, chunk 64, lengths 1K..1M:
          dense SDPA on the flash and the cuDNN backend (the faster is the dense anchor), our LSH
          attention (n_hashes 1/2/4/8; "bucket_window" and "chunk"), our torch path, our local
          attention beside FlexAttention (compiled) with the local layers' window, our LSH
          attention beside FlexAttention over the bucket-sorted sequence (at 8K, 64K, 256K;
          bench/anchors.py), and the whole layer (projections + hashing + attention) against
          transformers' LSHSelfAttention in bf16.
--anchors-only  with --sweep: only the anchors (dense, FlexAttention local and LSH) and our
          kernels they are compared with (n_hashes 4), at 8K, 16K, 64K, 256K unless --lengths.
--graphs  SDPA and the LSH op with each step captured in a CUDA graph, at short lengths
          (1K..64K): the GPU time of both sides without the CPU's launch work; then the op
          and the whole layers (ours, transformers') with 10 steps queued back to back, as a
          training loop runs them.
--report  renders DIR/attention.jsonl as DIR/attention.md and DIR/attention.png.
"""

import argparse
import os
import sys
import time

if "--smoke" in sys.argv:  # the whole script at toy sizes on the CPU, kernels under Triton's interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_cases import set_device  # noqa: E402
from attention_checks import CHECKS, run_checks  # noqa: E402
from attention_report import write_report  # noqa: E402
from attention_timing import (  # noqa: E402
    LSH_ANCHOR_LENGTHS,
    estimated_minutes,
    run_graphs,
    run_profile,
    run_sweep,
    run_tune,
)
from common import JsonLines, environment  # noqa: E402

LENGTHS = [2**10, 2**12, 2**13, 2**14, 2**15, 2**16, 2**18, 2**20]
ANCHOR_LENGTHS = [2**13, 2**14, 2**16, 2**18]  # --anchors-only


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for attention.jsonl, .md and .png")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2**14, 2**16, 2**18, 2**20])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--graphs", action="store_true")
    parser.add_argument("--graph-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2**10, 2**12, 2**13, 2**14, 2**16])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--anchors-only", action="store_true",
                        help="with --sweep: the anchors and our kernels beside them only (default lengths 8K..256K)")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="default 1K..1M (8K, 16K, 64K, 256K with --anchors-only)")
    parser.add_argument("--lsh-anchor-lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=LSH_ANCHOR_LENGTHS, help="lengths of --sweep that time FlexAttention over the sorted sequence")
    parser.add_argument("--hashes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--stem", default="attention", help="file name stem of the .jsonl/.md/.png in --out")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test this script")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.lengths is None:
        args.lengths = ANCHOR_LENGTHS if args.anchors_only else LENGTHS
    set_device(args.smoke)
    checks = CHECKS
    if args.smoke:
        checks = [case[:9] + (1, 2, 256) for case in CHECKS[::3]]
        args.lengths = [128, 256]
        args.lsh_anchor_lengths = [256]
        args.profile_lengths = [256]
        args.graph_lengths = [256]
    if args.check or args.tune or args.profile or args.sweep or args.graphs:
        if not torch.cuda.is_available() and not args.smoke:
            raise SystemExit("bench/attention.py measures on a CUDA GPU; none is available here.")
        if not args.smoke:
            print(f"estimated GPU time on one H100: about {estimated_minutes(args):.0f} min", flush=True)
        started = time.perf_counter()
        log = JsonLines(os.path.join(args.out, args.stem + ".jsonl"))
        log.write(section="environment", **environment())
        if args.check:
            run_checks(log, checks)
        if args.tune:
            run_tune(log)
        if args.profile:
            run_profile(log, args.profile_lengths)
        if args.sweep:
            run_sweep(log, args.lengths, args.hashes, args.anchors_only, args.lsh_anchor_lengths)
        if args.graphs:
            run_graphs(log, args.graph_lengths)
        print(f"measured in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if args.report:
        write_report(args.out, args.stem)


if __name__ == "__main__":
    main()
