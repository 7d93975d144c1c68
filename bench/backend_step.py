"""One training step (forward, backward, AdamW) of the duplication-task model on each attention backend.

    PYTHONPATH=. python bench/backend_step.py --out DIR

The preset "duplication" model (1 LSH layer, d_model 256, 4 heads of 64, 4 hash rounds), float32,
batch 64 x 1024 random symbols, on the torch path and on the Triton kernels: seconds for the first
3 steps (kernel compilation included) and per step over the next 10.  Writes DIR/backend_step.jsonl.
"""

import argparse
import os
import sys
import time

if "--smoke" in sys.argv:  # toy sizes on the CPU, kernels under Triton's interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import JsonLines, environment  # noqa: E402

from reformer_hf import ReformerForCausalLM  # noqa: E402
from reformer_hf.training import preset_config  # noqa: E402


def time_backend(backend, batch, length, device):
    torch.manual_seed(0)
    model = ReformerForCausalLM(preset_config("duplication", {"attn_backend": backend})).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 128, (batch, length), generator=generator).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()

    def seconds(n_steps):
        started = time.perf_counter()
        for _ in range(n_steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return {"first_3_steps_s": seconds(3), "step_s": seconds(10) / 10}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for backend_step.jsonl")
    parser.add_argument("--smoke", action="store_true", help="batch 2 x 128 on the CPU, kernels interpreted")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench/backend_step.py measures on a CUDA GPU; none is available here.")
    batch, length, device = (2, 128, "cpu") if args.smoke else (64, 1024, "cuda")
    os.makedirs(args.out, exist_ok=True)
    log = JsonLines(os.path.join(args.out, "backend_step.jsonl"))
    log.write(section="environment", **environment())
    for backend in ("torch", "triton"):
        record = log.write(section="step", backend=backend, batch=batch, length=length, **time_backend(
            backend, batch, length, device))
        print(record, flush=True)


if __name__ == "__main__":
    main()
