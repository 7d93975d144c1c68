"""Where a decoding step's time goes: ours, eager, at one prompt length, batch 1 (issue 24).

    PYTHONPATH=. python bench/decode_profile.py --out DIR [--prompt 4096] [--steps 30] [--compiled]

The bench model of bench/generation_gpu.py (bf16), a prompt of random bytes, a fixed-capacity
ReformerCache; the decoding steps are run as generate() runs them (prepare_inputs_for_generation,
then the forward: eager, or with --compiled the forward generate() compiles for
`cache_implementation="static"`, transformers' default CompileConfig).  Prints and writes DIR/decode_profile.txt: ms per step (host wall clock around a
synchronised step, and CUDA events), kernels launched per step, and torch.profiler's tables of the
profiled steps sorted by device time and by host time.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generation_cases import random_prompt, reformer_compile_config  # noqa: E402
from generation_setup import Setup, reformer_config, reformer_model  # noqa: E402

from reformer_hf import ReformerCache  # noqa: E402


def decode_steps(model, cache, sequence, mask, steps, on_step=None, forward=None):
    for index in range(steps):
        inputs = model.prepare_inputs_for_generation(sequence, past_key_values=cache, attention_mask=mask,
                                                     use_cache=True, next_sequence_length=1)
        logits = (forward or model)(**inputs).logits
        next_token = logits[:, -1:].argmax(-1)
        sequence = torch.cat([sequence, next_token], dim=1)
        mask = torch.nn.functional.pad(mask, (0, 1), value=1)
        if on_step is not None:
            on_step(index)
    return sequence, mask


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profiled-steps", type=int, default=5)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    setup = Setup(args.smoke)
    total = args.steps + args.profiled_steps + 8
    config = reformer_config(args.prompt + total, setup)
    model = reformer_model(config, setup)
    prompt = random_prompt(1, args.prompt, config.vocab_size, setup)
    lines = [f"prompt {args.prompt}, batch 1, {config.attn_layers}, device {setup.device}, compiled {args.compiled}"]
    forward = None
    if args.compiled:
        compile_config = reformer_compile_config("reformer-compile", setup)
        forward = model.get_compiled_call(compile_config)
    with torch.no_grad():
        cache = ReformerCache(config, args.prompt + total, compileable=args.compiled)
        logits = model(input_ids=prompt, past_key_values=cache).logits
        sequence = torch.cat([prompt, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.ones_like(sequence)
        sequence, mask = decode_steps(model, cache, sequence, mask, 3, forward=forward)
        setup.sync()
        wall = []

        def note(index):
            setup.sync()
            wall.append(time.perf_counter())

        note(-1)
        sequence, mask = decode_steps(model, cache, sequence, mask, args.steps, note, forward)
        steps_ms = sorted(1e3 * (b - a) for a, b in zip(wall, wall[1:]))
        lines.append(f"host wall per synchronised step: median {steps_ms[len(steps_ms) // 2]:.2f} ms, "
                     f"min {steps_ms[0]:.2f}, max {steps_ms[-1]:.2f}")
        start = time.perf_counter()
        sequence, mask = decode_steps(model, cache, sequence, mask, 4, forward=forward)
        host_queue = 1e3 * (time.perf_counter() - start) / 4
        setup.sync()
        lines.append(f"host time per step without synchronising: {host_queue:.2f} ms")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if setup.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            decode_steps(model, cache, sequence, mask, args.profiled_steps, forward=forward)
            setup.sync()
    events = profile.key_averages()
    kernels = sum(event.count for event in events if event.device_type == torch.autograd.DeviceType.CUDA)
    lines.append(f"device kernels per step: {kernels / args.profiled_steps:.0f}")
    device_key = "self_cuda_time_total" if setup.device.type == "cuda" else "self_cpu_time_total"
    lines.append(events.table(sort_by=device_key, row_limit=25, max_name_column_width=70))
    lines.append(events.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(args.out, "decode_profile.txt"), "w") as handle:
        handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
