"""Tokens/s of scripts/train_lm.py on one GPU and under `accelerate launch` on two, in one run.

    PYTHONPATH=. python bench/ddp_scaling.py --corpus DOCS --out DIR [--seconds 45]

Both runs train the same model on the same corpus with the same per-process batch; throughput is
measured from the metrics log between `--skip-steps` and the last step, so start-up and the first
(compiling, allocating) steps are left out.  Writes DIR/ddp_scaling.md and the two metrics logs.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_two_gpu_args, two_gpu_environment, two_gpu_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = two_gpu_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=45.0, help="training time budget of each run")
    parser.add_argument("--skip-steps", type=int, default=10)
    return parse_two_gpu_args(parser, argv)


def train_command(args, output_dir):
    return [
        "scripts/train_lm.py", "--corpus", str(args.corpus), "--preset", args.preset, "--seq-len", str(args.seq_len),
        "--batch-size", "1", "--max-steps", "100000", "--time-budget", str(args.seconds), "--eval-steps", "0",
        "--save-steps", "0", "--lr", "1e-3", "--warmup-steps", "10", "--lr-scheduler", "constant_with_warmup",
        "--mixed-precision", "bf16", "--no-progress", "--no-final-model", "--no-tensorboard",
        "--config-overrides", "attn_backend=torch", "--output-dir", str(output_dir),
    ]


def throughput(metrics_path, skip_steps):
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row and "tokens" in row]
    first = next(row for row in rows if row["step"] >= skip_steps)
    last = rows[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_seconds"] - first["elapsed_seconds"]), last["step"]


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = two_gpu_environment(ROOT)
    runs = {
        "1 GPU": [sys.executable, *train_command(args, args.out / "one")],
        "2 GPUs (accelerate launch, DDP)": [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            "scripts/accelerate_configs/ddp_2gpu.yaml", *train_command(args, args.out / "two"),
        ],
    }
    results = {}
    for name, command in runs.items():
        started = time.time()
        subprocess.run(command, cwd=ROOT, env=dict(env, CUDA_VISIBLE_DEVICES="0" if name == "1 GPU" else "0,1"),
                       check=True)
        folder = args.out / ("one" if name == "1 GPU" else "two")
        results[name] = (*throughput(folder / "metrics.jsonl", args.skip_steps), time.time() - started)
    single = results["1 GPU"][0]
    lines = [
        "# Data-parallel scaling of train_lm.py",
        "",
        f"- device: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}",
        f"- torch {torch.__version__}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `PYTHONPATH=. python bench/ddp_scaling.py --corpus CORPUS --out DIR --seconds {args.seconds}`",
        f"- model: preset `{args.preset}`, {args.seq_len} bytes per sequence, batch 1 per process, bf16 autocast,"
        f" torch attention path; tokens/s from step {args.skip_steps} to the last step",
        "",
        "| run | tokens/s | steps | wall s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, (tokens_per_second, steps, wall) in results.items():
        lines.append(f"| {name} | {tokens_per_second:,.0f} | {steps} | {wall:.0f} | {tokens_per_second / single:.2f}x |")
    report = "\n".join(lines) + "\n"
    (args.out / "ddp_scaling.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
