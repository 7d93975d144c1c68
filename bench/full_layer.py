"""The "full" attention layer on SDPA: a dense model of ours against LlamaForCausalLM (SDPA) of the same size.

    PYTHONPATH=. python bench/full_layer.py --out DIR             # on the GPU: 4K and 16K tokens
    PYTHONPATH=. python bench/full_layer.py --out DIR --smoke     # toy sizes on the CPU (tests this script)

One step = forward + backward of the language-model loss on one batch of random bytes (optimizer
excluded), bf16 autocast over float32 weights, dropout off.  Both models: 6 layers, d_model 1024,
16 heads of 64, byte vocabulary; ours has every layer "full" (FullSelfAttention through
torch's scaled_dot_product_attention) and a ReLU feed-forward of 4096, Llama a SwiGLU MLP of 2752
(three matrices instead of two: the same matrix parameters within 1%), rotary positions.  Ours
runs reversible (the default: each layer's input is rebuilt in the backward pass) and plain
(`reversible=False`, activations stored as in Llama).  Each case is timed one step at a time
(`measure`) and queued back to back as a training loop runs (`measure_queued`); the attention
kernels that ran are named from torch.profiler, to show which SDPA backend was taken.
Writes DIR/full_layer.jsonl and DIR/full_layer.md.
"""

import argparse
import os
import sys

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    JsonLines,
    environment,
    environment_markdown,
    fmt_ms,
    kernel_times,
    length_label,
    markdown_table,
    measure,
    measure_queued,
    read_json_lines,
)

from reformer_hf import ReformerConfig, ReformerForCausalLM  # noqa: E402

SIZES = {
    "gpu": dict(vocab=256, d_model=1024, d_ff=4096, llama_ff=2752, heads=16, d_head=64, layers=6, lengths=(4096, 16384),
                batch={4096: 4, 16384: 1}),
    "smoke": dict(vocab=256, d_model=64, d_ff=128, llama_ff=86, heads=4, d_head=16, layers=2, lengths=(128, 256),
                  batch={128: 2, 256: 1}),
}
ATTENTION_KERNEL_WORDS = ("flash", "fmha", "cudnn", "efficient_attention", "scaled_dot_product", "attention")


def our_dense_model(size, length, reversible):
    config = ReformerConfig(
        vocab_size=size["vocab"], hidden_size=size["d_model"], num_attention_heads=size["heads"],
        attention_head_size=size["d_head"], feed_forward_size=size["d_ff"], attn_layers=["full"] * size["layers"],
        is_decoder=True, axial_pos_embds=False, max_position_embeddings=length, hidden_dropout_prob=0.0,
        full_attention_probs_dropout=0.0, reversible=reversible, pad_token_id=0, bos_token_id=None,
        eos_token_id=None,
    )
    return ReformerForCausalLM(config)


def llama_model(size, length):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["d_model"], intermediate_size=size["llama_ff"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], head_dim=size["d_head"], max_position_embeddings=length,
                         tie_word_embeddings=False, use_cache=False)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def matrix_parameters(model):
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def training_step(model, input_ids, device):
    model.to(device).train()
    input_ids = input_ids.to(device)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()

    return step


def attention_kernels(step):
    """The profiled kernels (or CPU operators) whose names say attention, with their ms per step."""
    times = kernel_times(step, steps=1)
    return {name: round(ms, 3) for name, ms in times.items() if any(word in name.lower() for word in ATTENTION_KERNEL_WORDS)}


def run_case(log, size, kind, length, device):
    batch = size["batch"][length]
    input_ids = torch.randint(0, size["vocab"], (batch, length), generator=torch.Generator().manual_seed(length))
    builders = {"ours_reversible": lambda: our_dense_model(size, length, True),
                "ours_plain": lambda: our_dense_model(size, length, False),
                "llama_sdpa": lambda: llama_model(size, length)}
    model = step = None
    try:
        torch.manual_seed(0)
        model = builders[kind]()
        parameters = matrix_parameters(model)
        step = training_step(model, input_ids, device)
        result = measure(step)
        if result["status"] == "ok":
            result["queued_ms"] = measure_queued(step, steps=5, repeats=3)["median_ms"]
            result["attention_kernels"] = attention_kernels(step)
    except Exception as error:  # a failed case is a result to report, not a reason to stop the sweep
        result, parameters = {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}, None
    model = step = None
    if result["status"] == "ok":
        result["tokens_per_s"] = batch * length / (result["queued_ms"] / 1000)
    record = log.write(kind=kind, length=length, batch=batch, layers=size["layers"], matrix_parameters=parameters,
                       **result)
    print(f"{kind:16s} L={length_label(length):>4} batch={batch} {result.get('median_ms', float('nan')):9.1f} ms "
          f"queued {result.get('queued_ms', float('nan')):9.1f} ms {result.get('peak_gib', float('nan')):6.2f} GiB "
          f"{result['status']} {result.get('attention_kernels', '')}", flush=True)
    return record


def write_report(out_dir, size):
    rows = [row for row in read_json_lines(os.path.join(out_dir, "full_layer.jsonl")) if "kind" in row]
    info = next((row for row in read_json_lines(os.path.join(out_dir, "full_layer.jsonl")) if "environment" in row), {})
    table = []
    for length in size["lengths"]:
        cases = {row["kind"]: row for row in rows if row["length"] == length}
        llama = cases.get("llama_sdpa", {}).get("queued_ms")
        for kind in ("llama_sdpa", "ours_plain", "ours_reversible"):
            row = cases.get(kind, {})
            queued = row.get("queued_ms")
            ratio = f"{queued / llama:.2f}" if queued and llama else "–"
            table.append([length_label(length), row.get("batch", "–"), kind, fmt_ms(row.get("median_ms")),
                          fmt_ms(queued), ratio, f"{row['peak_gib']:.2f}" if "peak_gib" in row else "–",
                          f"{row['matrix_parameters'] / 1e6:.1f}M" if row.get("matrix_parameters") else "–",
                          ", ".join(f"{name} {ms}" for name, ms in list(row.get("attention_kernels", {}).items())[:2])
                          or row.get("status", "not run")])
    header = ["length", "batch", "model", "step ms", "queued step ms", "vs Llama (queued)", "peak GiB",
              "matrix params", "attention kernels (ms per step)"]
    text = ["# The full layer on SDPA against LlamaForCausalLM (SDPA)", "", __doc__.split("\n\n", 2)[2].strip(), "",
            environment_markdown(info.get("environment", {})), "", markdown_table(header, table), ""]
    with open(os.path.join(out_dir, "full_layer.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(text))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for full_layer.jsonl and full_layer.md")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test this script")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU: pass --smoke for a toy run on the CPU")
    size = SIZES["smoke" if args.smoke else "gpu"]
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    log = JsonLines(os.path.join(args.out, "full_layer.jsonl"))
    log.write(environment=environment())
    for length in size["lengths"]:
        for kind in ("llama_sdpa", "ours_plain", "ours_reversible"):
            run_case(log, size, kind, length, device)
    write_report(args.out, size)
    print(open(os.path.join(args.out, "full_layer.md"), encoding="utf-8").read())


if __name__ == "__main__":
    main()
