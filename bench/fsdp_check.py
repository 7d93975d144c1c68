"""scripts/train_lm.py under the FSDP accelerate config against the DDP config, on 2 GPUs.

    PYTHONPATH=. python bench/fsdp_check.py --corpus CORPUS --out DIR

Both runs train the same model on the same windows for the same steps (seed 0), Triton kernels,
bf16, then save their final model.  The report compares the training losses step by step, the
final validation bits per byte, and the two saved models (loaded back with AutoModelForCausalLM):
parameter differences and the loss each gives on one held-out window.  Writes DIR/fsdp_check.md.
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

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"DDP": "scripts/accelerate_configs/ddp_2gpu.yaml", "FSDP": "scripts/accelerate_configs/fsdp_2gpu.yaml"}


def parse_args(argv=None):
    parser = two_gpu_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30)
    return parse_two_gpu_args(parser, argv)


def train_command(args, config, output_dir):
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "scripts/train_lm.py",
        "--corpus", str(args.corpus), "--preset", args.preset, "--seq-len", str(args.seq_len), "--batch-size", "1",
        "--max-steps", str(args.steps), "--eval-steps", "0", "--eval-windows", "2", "--save-steps", "0",
        "--lr", "1e-3", "--warmup-steps", "5", "--mixed-precision", "bf16", "--no-progress", "--no-tensorboard",
        "--output-dir", str(output_dir),
    ]


def losses(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {row["step"]: row["loss"] for row in rows if "loss" in row}
    final = next(row for row in reversed(rows) if "final_valid_bpb" in row)
    return by_step, final["final_valid_bpb"]


def compare_models(folders, corpus, seq_len):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from reformer_hf.tokenization import BYTE_ID_OFFSET

    tensors = [load_file(folder / "final" / "model.safetensors") for folder in folders]
    squared_difference = sum((a.double() - tensors[1][name].double()).pow(2).sum() for name, a in tensors[0].items())
    squared_norm = sum(a.double().pow(2).sum() for a in tensors[0].values())
    relative = [(((a.double() - tensors[1][name].double()).norm() / a.double().norm().clamp(min=1e-12)).item(), name)
                for name, a in tensors[0].items()]
    worst = ((squared_difference / squared_norm).sqrt().item(), *max(relative))
    text = b"".join(path.read_bytes() for path in sorted(Path(corpus).rglob("*.html"))[-3:])
    window = torch.tensor(list(text[:seq_len]), dtype=torch.long)[None].cuda() + BYTE_ID_OFFSET
    window_losses = []
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder / "final", trust_remote_code=True).cuda().eval()
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            window_losses.append(model(input_ids=window, labels=window).loss.item())
    return sorted(tensors[0]) == sorted(tensors[1]), worst, window_losses


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(two_gpu_environment(ROOT), CUDA_VISIBLE_DEVICES="0,1")
    folders, walls = {}, {}
    for name, config in CONFIGS.items():
        folders[name] = args.out / name.lower()
        started = time.time()
        subprocess.run(train_command(args, config, folders[name]), cwd=ROOT, env=env, check=True)
        walls[name] = time.time() - started
    (ddp_losses, ddp_bpb), (fsdp_losses, fsdp_bpb) = losses(folders["DDP"]), losses(folders["FSDP"])
    steps = sorted(set(ddp_losses) & set(fsdp_losses))
    differences = [abs(ddp_losses[step] - fsdp_losses[step]) for step in steps]
    same_names, worst, window_losses = compare_models([folders["DDP"], folders["FSDP"]], args.corpus, args.seq_len)
    lines = [
        "# FSDP against DDP: scripts/train_lm.py on 2 GPUs",
        "",
        f"- device: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}; torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `PYTHONPATH=. python bench/fsdp_check.py --corpus CORPUS --out DIR --steps {args.steps}`",
        f"- configs: {', '.join(f'{name} `{config}`' for name, config in CONFIGS.items())}; preset `{args.preset}`, "
        f"{args.seq_len} bytes per sequence, batch 1 per process, bf16, attn_backend auto (Triton kernels)",
        "",
        "| step | DDP loss | FSDP loss |",
        "|---|---|---|",
    ]
    shown = steps[:: max(1, len(steps) // 6)]
    lines += [f"| {step} | {ddp_losses[step]:.4f} | {fsdp_losses[step]:.4f} |" for step in shown]
    lines += [
        "",
        f"- largest loss difference over {len(steps)} steps: {max(differences):.4f} (first step: {differences[0]:.2e})",
        f"- final validation bits per byte: DDP {ddp_bpb:.4f}, FSDP {fsdp_bpb:.4f}",
        f"- saved models: same tensor names {same_names}; parameters differ by {worst[0]:.2e} of their norm "
        f"(the most: `{worst[2]}`, {worst[1]:.2e} of its norm); loss on one window after loading with "
        f"AutoModelForCausalLM: "
        f"DDP {window_losses[0]:.4f}, FSDP {window_losses[1]:.4f}",
        f"- wall seconds (launch to exit): DDP {walls['DDP']:.0f}, FSDP {walls['FSDP']:.0f}",
    ]
    report = "\n".join(lines) + "\n"
    (args.out / "fsdp_check.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
