"""torch.compile on the GPU: graph breaks, eager against compiled step time, and agreement.

    PYTHONPATH=. python bench/compile_check.py --out DIR [--lengths 4096 16384] [--layers 4]

One step = forward + backward of the language-model loss on one sequence of random bytes, bf16
autocast over float32 weights, d_model 1024 (bench/model.py's shape), local/LSH layers with the
kernels on ("auto") and hidden dropout 0.1, so that the replayed dropout of replay.py runs.
Per case (plain layers at each length; the reversible stack at the longest):
- graphs and graph breaks from `torch._dynamo.explain`, with each break's reason and place;
- median step time eager and compiled (inductor), and the compiled model's first call (compiling);
- agreement: the compiled step's loss and gradients against the eager step's under one seed,
  as relative errors (||compiled - eager|| / ||eager||, the largest over the parameters), beside
  the eager bf16 step's own error against the float32 eager step.  The dropouts outside the
  layers (embeddings, final) are set to 0 there: they are not replayed, and inductor draws their
  masks from its own random numbers.
Writes DIR/compile_check.jsonl and DIR/compile_check.md.  --smoke runs toy sizes on the CPU
(Triton's interpreter, the "aot_eager" backend).
"""

import argparse
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import JsonLines, environment, environment_markdown, fmt_ms, markdown_table, measure  # noqa: E402

from reformer_hf import ReformerConfig, ReformerForCausalLM  # noqa: E402

VOCAB, D_MODEL, D_FF, HEADS, D_HEAD, CHUNK = 256, 1024, 4096, 16, 64, 64
SMOKE_SHAPE = dict(hidden_size=32, feed_forward_size=64, num_attention_heads=2, attention_head_size=16)


def model_for(length, n_layers, reversible, smoke):
    shape = SMOKE_SHAPE if smoke else dict(hidden_size=D_MODEL, feed_forward_size=D_FF, num_attention_heads=HEADS,
                                           attention_head_size=D_HEAD)
    chunk = 4 if smoke else CHUNK
    half = shape["hidden_size"] // 2
    first_axis = 2 ** (length.bit_length() // 2)
    config = ReformerConfig(
        vocab_size=VOCAB, attn_layers=["local", "lsh"] * (n_layers // 2), num_hashes=2,
        num_buckets=max(2, 2 * length // chunk), lsh_attn_chunk_length=chunk, local_attn_chunk_length=chunk,
        is_decoder=True, axial_pos_shape=[first_axis, length // first_axis], axial_pos_embds_dim=[half, half],
        max_position_embeddings=length, hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.0,
        local_attention_probs_dropout=0.0, attn_backend="triton" if smoke else "auto", reversible=reversible,
        **shape,
    )
    return ReformerForCausalLM(config)


def breaks(model, input_ids, device):
    torch._dynamo.reset()
    with torch.autocast(device, dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(input_ids=input_ids, labels=input_ids)
    places = []
    for reason in explanation.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame is not None else "?"
        places.append(f"{reason.reason.splitlines()[0][:120]} ({where})")
    return explanation.graph_count, explanation.graph_break_count, sorted(set(places))


def step_function(model, input_ids, device, autocast=True):
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss.detach()

    return step


def gradients(model, step, seed):
    torch.manual_seed(seed)
    loss = step()
    return loss.float(), {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}


def largest_relative_error(actual, expected):
    return max(((actual[name] - grad).norm() / grad.norm().clamp_min(1e-30)).item()
               for name, grad in expected.items())


def run_case(log, length, n_layers, reversible, smoke, device, backend):
    torch.manual_seed(0)
    model = model_for(length, n_layers, reversible, smoke).to(device).train()
    model.reformer.embeddings.dropout.p = model.reformer.dropout.p = 0.0  # not replayed (see the docstring)
    input_ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length)).to(device)
    graph_count, break_count, break_places = breaks(model, input_ids, device)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    eager_step, compiled_step = step_function(model, input_ids, device), step_function(compiled, input_ids, device)
    started = time.perf_counter()
    compiled_step()
    if device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - started

    eager_loss, eager_grads = gradients(model, eager_step, seed=1)
    compiled_loss, compiled_grads = gradients(model, compiled_step, seed=1)
    float32_loss, float32_grads = gradients(model, step_function(model, input_ids, device, autocast=False), seed=1)
    eager_time, compiled_time = measure(eager_step), measure(compiled_step)
    return log.write(
        section="case", length=length, n_layers=n_layers, reversible=reversible, graphs=graph_count,
        graph_breaks=break_count, break_places=break_places, first_compiled_call_s=first_call_s,
        eager=eager_time, compiled=compiled_time,
        loss_eager=eager_loss.item(), loss_compiled=compiled_loss.item(), loss_float32=float32_loss.item(),
        grad_error_compiled_vs_eager=largest_relative_error(compiled_grads, eager_grads),
        grad_error_eager_bf16_vs_float32=largest_relative_error(eager_grads, float32_grads),
    )


def time_ms(measured):
    """A `measure` result as its median in ms, or its status (OOM, error)."""
    return fmt_ms(measured["median_ms"]) if measured["status"] == "ok" else measured["status"]


def write_report(out_dir, rows, env):
    header = ["layers", "length", "graphs / breaks", "eager ms", "compiled ms", "first compiled call s",
              "loss eager / compiled", "grad error compiled vs eager", "eager bf16 vs float32"]
    table = []
    for row in rows:
        table.append([
            "reversible" if row["reversible"] else "plain", str(row["length"]),
            f"{row['graphs']} / {row['graph_breaks']}", time_ms(row["eager"]), time_ms(row["compiled"]),
            f"{row['first_compiled_call_s']:.1f}", f"{row['loss_eager']:.5f} / {row['loss_compiled']:.5f}",
            f"{row['grad_error_compiled_vs_eager']:.2e}", f"{row['grad_error_eager_bf16_vs_float32']:.2e}",
        ])
    places = [f"- {'reversible' if row['reversible'] else 'plain'} {row['length']}: {place}"
              for row in rows for place in row["break_places"]]
    text = "\n".join([
        "# torch.compile check", "", environment_markdown(env), "",
        markdown_table(header, table), "", "## Graph breaks", "", *(places or ["none"]), "",
    ])
    (out_dir / "compile_check.md").write_text(text, encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for compile_check.jsonl and compile_check.md")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--layers", type=int, default=4, help="an even number of layers (local, LSH alternating)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (interpreter, aot_eager)")
    args = parser.parse_args()
    if args.layers < 2 or args.layers % 2:
        parser.error(f"--layers={args.layers}: expected an even number >= 2 (local and LSH layers alternate)")
    if any(length < 16 or length & (length - 1) for length in args.lengths):
        parser.error(f"--lengths={args.lengths}: expected powers of two >= 16")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on the GPU, or with --smoke on the CPU")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, backend = ("cpu", "aot_eager") if args.smoke else ("cuda", "inductor")
    env = environment()
    log = JsonLines(out_dir / "compile_check.jsonl")
    log.write(section="environment", **env)
    lengths = sorted(args.lengths)
    cases = [(length, False) for length in lengths] + [(lengths[-1], True)]
    rows = []
    for length, reversible in cases:
        row = run_case(log, length, args.layers, reversible, args.smoke, device, backend)
        print(f"{'reversible' if reversible else 'plain'} {length}: graphs {row['graphs']}, breaks "
              f"{row['graph_breaks']}, eager {time_ms(row['eager'])} ms, compiled {time_ms(row['compiled'])} ms, "
              f"grad error {row['grad_error_compiled_vs_eager']:.2e} (bf16 vs float32 "
              f"{row['grad_error_eager_bf16_vs_float32']:.2e})", flush=True)
        rows.append(row)
    write_report(out_dir, rows, env)


if __name__ == "__main__":
    main()
