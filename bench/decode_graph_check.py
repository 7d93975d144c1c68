"""Decoding through a compiled, CUDA-graph-captured step (issue 24): exactness, no host synchronisation,
and ms per token of ours eager / ours in CUDA graphs / Llama with its static cache + compile.

    PYTHONPATH=. python bench/decode_graph_check.py --out DIR            # one GPU; prints its time estimate
    PYTHONPATH=. python bench/decode_graph_check.py --out DIR --smoke    # the CPU, tiny sizes: tests the script

generate() compiles the model's forward for the steps after the prefill when the cache says
`is_compileable`, which the fixed-capacity ReformerCache that generate() makes does when asked for
(`cache_implementation="static"` or a `compile_config`, as for transformers' own models); on a GPU
transformers' default CompileConfig is torch.compile, inductor, mode "reduce-overhead" (CUDA
graphs).  This script checks and times that path.

1. Exactness (bench/generation_gpu.py's small model: local / LSH / local / full layers, hash_seed 0,
   fixed buckets): greedy generate() with the compiled step against cache-free decoding
   (use_cache=False): batch 1 through CUDA graphs (the cudagraphs backend) and a left-padded batch
   of 4 through transformers' default CompileConfig (inductor + CUDA graphs), float32 (tokens
   equal, logits within 1e-4 of a cache-free pass) and bf16 (cached error against the float32
   cache-free pass at most 2 x the bf16 cache-free pass's own + 0.01; token agreement reported).
   Then the same left-padded batch decoded as generate() decodes it (prepare_inputs_for_generation
   told it feeds one position, then the compiled forward, the same shapes: no new compilation),
   every step after the first 3 (which compile and capture the graph) under
   torch.cuda.set_sync_debug_mode("error"); its tokens against cache-free greedy decoding.
2. Speed: bench/generation_cases.py's decode_case (greedy generate() of --new-tokens tokens, eos off,
   random-byte prompts; ms/token the median of the streamer-timed steps after --skip-steps) for
     reformer           ours, eager (disable_compile=True)
     reformer-graph     ours, CompileConfig(backend="cudagraphs", mode=None): the eager step's kernels in CUDA graphs
     reformer-compile   ours, transformers' default CompileConfig (inductor + CUDA graphs): what
                        generate() does on a GPU unless told otherwise
     llama-static-compile  LlamaForCausalLM (same sizes, SDPA), static cache + CompileConfig
                        (mode "reduce-overhead")
   at every --prompts length (in that order: the budget cuts the last), batches --batches up to
   --long-from tokens and --long-batches above; reformer-compile only at --compile-prompts (each
   new shape costs inductor a compilation), Llama only up to --llama-max-prompt (its KV cache and
   prefill do not fit one H100 beyond 512K).
   No batch halving: a case that does not fit is recorded.  Each compiled variant compiles on its
   first case and again, once, for changed shapes (CompileConfig's dynamic=None): those steps are
   in the skipped ones or in an untimed warm-up.  `torch._dynamo` counts graphs and CUDA-graph
   skips per case (JSON lines: `dynamo`).
3. DIR/<stem>.md: the tables.  Every record goes to DIR/<stem>.jsonl as soon as it is measured.

Time: the run prints its estimate before it starts and skips the cases that would end past
--budget-s (recorded as skipped); the defaults aim at about 7 minutes on an H100.
"""

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    JsonLines,
    environment,
    environment_markdown,
    fmt_ms,
    free_memory,
    length_label,
    markdown_table,
    read_json_lines,
)
from generation_cases import CompileWatch, decode_case, reformer_compile_config  # noqa: E402
from generation_exactness import exactness_config, greedy_check, left_padded_batch  # noqa: E402
from generation_report import ratio  # noqa: E402
from generation_setup import (  # noqa: E402
    RUN_ID,
    Setup,
    count_list,
    error_text,
    error_trace,
    llama_like,
    reformer_config,
    reformer_model,
    token_count,
)
from generation_sweep import warm_up  # noqa: E402

from reformer_hf import ReformerCache, ReformerForCausalLM  # noqa: E402

VARIANTS = ("reformer", "reformer-graph", "reformer-compile", "llama-static-compile")
# Rough costs on one H100 (bench/results/generation_h100.md and compile times seen there), for the estimate.
# Compilations: the first shapes, then dynamic ones (and a batch of 1 is specialised apart).
COMPILE_S = {"reformer-graph": 20.0, "reformer-compile": 60.0, "llama-static-compile": 30.0}
COMPILATIONS = {"reformer-graph": 3, "reformer-compile": 2, "llama-static-compile": 2}
STEP_S = {"reformer": 0.025, "reformer-graph": 0.012, "reformer-compile": 0.01, "llama-static-compile": 0.012}


def estimated_case_s(variant, prompt, batch, new_tokens):
    """Seconds of one generate() (prefill and steps), from the H100 figures; compilation counted apart."""
    positions = prompt * batch
    if variant.startswith("llama"):
        prefill = 0.1 + 5.5e-11 * prompt * prompt * batch  # dense attention: quadratic in the prompt
    else:
        prefill = 0.3 + 1.5e-6 * positions
    return prefill + new_tokens * STEP_S[variant] * max(1.0, batch / 8)


def plan(args):
    """(variant, prompt, batch) in the order they run."""
    cases = []
    for prompt in args.prompts:
        batches = args.batches if prompt <= args.long_from else args.long_batches
        for batch in batches:
            for variant in args.variants:
                if variant.startswith("llama") and prompt > args.llama_max_prompt:
                    continue
                if variant == "reformer-compile" and prompt not in args.compile_prompts:
                    continue
                cases.append((variant, prompt, batch))
    return cases


def estimate_s(args, cases):
    """The whole run: exactness, warm-ups (ours: the prefill's Triton kernels per prompt length), compilation
    (twice per compiled variant: static shapes, then dynamic ones) and every case."""
    total = 0.0 if args.no_exactness else 90.0
    total += sum(3.0 + estimated_case_s("reformer", prompt, 1, 2) for prompt in args.prompts)
    total += sum(COMPILATIONS.get(variant, 0) * COMPILE_S.get(variant, 0.0) for variant in args.variants)
    return total + sum(estimated_case_s(variant, prompt, batch, args.new_tokens) for variant, prompt, batch in cases)


def dynamo_counts():
    counters = torch._dynamo.utils.counters
    return dict(graphs=counters["stats"].get("unique_graphs", 0),
                cudagraph_skips=counters["inductor"].get("cudagraph_skips", 0),
                graph_breaks=sum(counters["graph_break"].values()))


def allow_recompiles():
    """Each case brings new shapes (batch, cache capacity, bucket count): let dynamo compile again instead of
    falling back to eager after its default limit of 8 graphs per function."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 512


# ------------------------------------------------------------------------------------ exactness


def sync_free_compiled_steps(model, input_ids, attention_mask, setup, new_tokens, warm_steps=3):
    """Greedy decoding of `new_tokens` tokens by hand as generate() does it (a cache for the positions it
    feeds, prepare_inputs_for_generation, then the compiled forward of transformers' default
    CompileConfig), the steps after `warm_steps` under torch.cuda.set_sync_debug_mode("error").
    Returns (the error, or None without host synchronisation; the generated tokens (batch, new_tokens))."""
    step = model.get_compiled_call(reformer_compile_config("reformer-compile", setup))
    total = new_tokens
    cache = ReformerCache(model.config, input_ids.shape[1] + total - 1, compileable=True)
    outcome = None
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache).logits
        sequence = torch.cat([input_ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.nn.functional.pad(attention_mask, (0, 1), value=1)
        try:
            for index in range(total - 1):
                if index == warm_steps and setup.device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                inputs = model.prepare_inputs_for_generation(sequence, past_key_values=cache, attention_mask=mask,
                                                             use_cache=True, next_sequence_length=1)
                logits = step(**inputs, return_dict=True).logits
                sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
                mask = torch.nn.functional.pad(mask, (0, 1), value=1)
        except RuntimeError as error:
            outcome = error_text(error)
        finally:
            if setup.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    setup.sync()
    return outcome, sequence[:, input_ids.shape[1]:]


def run_exactness(log, setup):
    config = exactness_config(setup)
    torch.manual_seed(0)
    base = ReformerForCausalLM(config).eval()
    models = {name: copy.deepcopy(base).to(setup.device, dtype) for name, dtype in
              (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    log.write(section="exactness_model", run_id=RUN_ID, config=config.to_dict())
    longest = 128 if setup.smoke else 2048
    new_tokens = 8 if setup.smoke else 32
    padded = [longest, longest * 3 // 4 - 3, longest // 2 + 5, longest // 8]
    cases = (("greedy, batch 1, CUDA graphs", [longest], "reformer-graph"),
             ("greedy, left-padded batch of 4, inductor + CUDA graphs", padded, "reformer-compile"))
    for name, lengths, variant in cases:
        options = dict(compile_config=reformer_compile_config(variant, setup))
        input_ids, attention_mask = left_padded_batch(lengths, config.vocab_size, setup, seed=len(lengths))
        for dtype_name, model in models.items():
            watch = CompileWatch(model)
            started = time.perf_counter()
            try:
                result = greedy_check(models, dtype_name, input_ids, attention_mask, new_tokens, options)
                status = "ok" if watch.calls else "error: generate() did not compile the decoding step"
            except Exception as error:  # a failed check is a result to report
                result = {"passed": False, "traceback": error_trace(error)}
                status = f"error: {error_text(error)}"
            record = log.write(section="exactness", run_id=RUN_ID, case=name, dtype=dtype_name,
                               prompt_lengths=lengths, status=status, seconds=time.perf_counter() - started,
                               **result)
            print(f"exactness (compiled step) {name} {dtype_name}: {status} passed={record.get('passed')} "
                  f"tokens_equal={record.get('tokens_equal')} agreement={record.get('token_agreement')}", flush=True)
    for dtype_name in ("float32", "bfloat16"):
        model = models[dtype_name]
        # The shapes of the batch-of-4 case above: its compiled graph serves these steps as well.
        input_ids, attention_mask = left_padded_batch(padded, config.vocab_size, setup, seed=len(padded))
        try:
            outcome, tokens = sync_free_compiled_steps(model, input_ids, attention_mask, setup, new_tokens)
            reference = model.generate(input_ids, attention_mask=attention_mask, use_cache=False, do_sample=False,
                                       max_new_tokens=tokens.shape[1])[:, input_ids.shape[1]:]
            agreement = (tokens == reference).float().mean().item()
        except Exception as error:  # the prefill or the compilation failed
            outcome, agreement = f"error before the checked steps: {error_text(error)}", None
        checked = setup.device.type == "cuda"
        record = log.write(section="sync_free_compiled_steps", run_id=RUN_ID, dtype=dtype_name, batch=4,
                           left_padded=True, error=outcome, token_agreement_vs_cache_free=agreement,
                           passed=(outcome is None and (agreement == 1.0 or dtype_name != "float32")) if checked
                           else None)
        print(f"compiled steps without host synchronisation ({dtype_name}): {outcome or 'ok'}; tokens agree with "
              f"cache-free decoding: {agreement}; passed={record['passed']}", flush=True)
    models = base = None
    free_memory()


# ------------------------------------------------------------------------------------ speed


def run_speed(log, args, setup):
    allow_recompiles()
    cases = plan(args)
    started = time.perf_counter()
    longest = max(args.prompts) + args.new_tokens
    config = reformer_config(longest, setup)
    torch.manual_seed(0)
    models = {"reformer": reformer_model(config, setup)}
    if any(variant.startswith("llama") for variant in args.variants):
        models["llama"] = llama_like(config, setup)
    watches = {name: CompileWatch(model) for name, model in models.items()}
    case_args = argparse.Namespace(new_tokens=args.new_tokens, skip_steps=args.skip_steps)
    warmed, compiled = set(), set()
    for variant, prompt, batch in cases:
        name = "llama" if variant.startswith("llama") else "reformer"
        elapsed = time.perf_counter() - started
        needed = estimated_case_s(variant, prompt, batch, args.new_tokens)
        if variant not in compiled:
            needed += COMPILE_S.get(variant, 0.0)  # its first case compiles
        if elapsed + needed > args.budget_s:
            log.write(section="decode", run_id=RUN_ID, model=name, variant=variant, prompt=prompt, batch=batch,
                      status=f"skipped: {elapsed:.0f} s spent, about {needed:.0f} s more would pass --budget-s="
                             f"{args.budget_s:.0f}")
            print(f"skipped {variant} {length_label(prompt)} batch {batch} (budget)", flush=True)
            continue
        if name == "reformer" and prompt not in warmed:
            # The prefill's Triton kernels compile per prompt length (and bucket count): not in the timed runs.
            warm_up(log, models[name], watches[name], "reformer", prompt, 2, setup, "prompt length")
            warmed.add(prompt)
        before = dynamo_counts()
        record = decode_case(models[name], watches[name], variant, config, prompt, batch, case_args, setup)
        compiled.add(variant)
        after = dynamo_counts()
        record = log.write(dynamo={key: after[key] - before[key] for key in after}, **record)
        print(f"{variant:21s} prompt={length_label(prompt):>5} batch={batch:3d} "
              f"{record.get('ms_per_token') or float('nan'):8.2f} ms/token  compiled={record.get('compiled')}  "
              f"dynamo {record['dynamo']}  {record['status'][:120]}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    models = None
    free_memory()


# ------------------------------------------------------------------------------------ report


LABELS = {"reformer": "ours eager", "reformer-graph": "ours CUDA graphs (cudagraphs backend)",
          "reformer-compile": "ours compiled (inductor + CUDA graphs)",
          "llama-static-compile": "Llama static cache + compile"}


def write_report(out_dir, stem, inputs):
    rows = read_json_lines(*inputs)
    text = ["# Decoding through CUDA graphs: ours eager, ours compiled, Llama static cache + compile", ""]
    for env in (row for row in rows if row.get("section") == "environment"):
        text += [f"Run `{env.get('run_id')}`:", "", environment_markdown(env), ""]
    text += ["Command: `PYTHONPATH=. python bench/decode_graph_check.py --out DIR` (the script's docstring says what "
             "each part measures). ms/token: the median of streamer-timed greedy decoding steps after the first "
             "few; speed-ups: the other row's ms/token over this one's, in the same run.", ""]
    decode = [row for row in rows if row.get("section") == "decode"]
    ok = {(row["run_id"], row["prompt"], row["batch"], row["variant"]): row for row in decode
          if row.get("status") == "ok"}
    table = []
    for run_id, prompt, batch in sorted({key[:3] for key in ok}, key=lambda key: (key[1], key[2], key[0])):
        cell = {variant: ok.get((run_id, prompt, batch, variant)) for variant in VARIANTS}
        ms = {variant: row["ms_per_token"] if row else None for variant, row in cell.items()}
        fastest_ours = min((value for variant, value in ms.items() if variant != "llama-static-compile" and value),
                           default=None)
        graphs = "; ".join(f"{variant}: {row['dynamo']['graphs']} graph(s), {row['dynamo']['cudagraph_skips']} "
                           "CUDA-graph skip(s)" for variant, row in cell.items()
                           if row and row.get("dynamo") and variant != "reformer")
        times = [fmt_ms(ms[variant]) if ms[variant] else "–" for variant in VARIANTS]
        table.append([length_label(prompt), batch, *times, ratio(ms["reformer"], ms["reformer-graph"]),
                      ratio(ms["reformer"], ms["reformer-compile"]),
                      ratio(ms["llama-static-compile"], fastest_ours), graphs or "–"])
    text += ["## ms per new token", "",
             markdown_table(["prompt", "batch", *(LABELS[variant] for variant in VARIANTS), "graphs vs eager",
                             "compiled vs eager", "fastest ours vs Llama static + compile", "compiled in this case"],
                            table), ""]
    skipped = [row for row in decode if row.get("status") != "ok"]
    if skipped:
        text += ["Cases that did not run or failed:", ""]
        text += [f"- {row['variant']} {length_label(row['prompt'])} batch {row['batch']}: {row['status']}"
                 for row in skipped]
        text.append("")
    exact = [row for row in rows if row.get("section") == "exactness"]
    if exact:
        result = {True: "PASS", False: "FAIL", None: "reported"}
        text += ["## Exactness of the compiled step against cache-free decoding", "",
                 markdown_table(["case", "dtype", "tokens equal", "token agreement", "logits vs cache-free / cached "
                                 "err / cache-free err", "tolerance", "result"],
                                [[row["case"], row["dtype"], row.get("tokens_equal", "–"),
                                  f"{row['token_agreement']:.1%}" if "token_agreement" in row else "–",
                                  (f"{row['max_logit_diff_vs_cache_free']:.2e} / {row['cached_error_vs_float32']:.2e}"
                                   f" / {row['cache_free_error_vs_float32']:.2e}")
                                  if "max_logit_diff_vs_cache_free" in row else "–",
                                  row.get("tolerance", "–"),
                                  result[row.get("passed")] if row.get("status") == "ok" else row["status"]]
                                 for row in exact]), ""]
    for row in (row for row in rows if row.get("section") == "sync_free_compiled_steps"):
        if row.get("error"):
            outcome = f"FAILED: `{row['error']}`"
        else:
            outcome = "no host synchronisation" if row.get("passed") is not None else "not checked (CPU)"
        text += [f"Compiled decoding steps ({row['dtype']}, left-padded batch of {row['batch']}) under "
                 f"`torch.cuda.set_sync_debug_mode(\"error\")`: {outcome}; tokens agree with cache-free decoding: "
                 f"{row.get('token_agreement_vs_cache_free')}.", ""]
    path = os.path.join(out_dir, stem + ".md")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(text))
    print("wrote", path, flush=True)


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the .jsonl and .md")
    parser.add_argument("--stem", default="decode_graph_h100")
    parser.add_argument("--prompts", type=count_list, default=count_list("128K,4K,1M,32K,512K"),
                        help="prompt lengths in the order they run (a --budget-s cut drops the last)")
    parser.add_argument("--compile-prompts", type=count_list, default=count_list("128K"),
                        help="the prompts reformer-compile (inductor) runs at")
    parser.add_argument("--batches", type=count_list, default=[1, 16])
    parser.add_argument("--long-from", type=token_count, default=token_count("128K"),
                        help="prompts longer than this run at --long-batches")
    parser.add_argument("--long-batches", type=count_list, default=[1])
    parser.add_argument("--llama-max-prompt", type=token_count, default=token_count("512K"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-steps", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="the speed part skips the cases that would end past it")
    parser.add_argument("--no-exactness", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="render DIR/<stem>.jsonl (or --inputs) only")
    parser.add_argument("--inputs", nargs="+")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, float32: tests this script")
    args = parser.parse_args(argv)
    args.variants = [variant.strip() for variant in args.variants.split(",") if variant.strip()]
    unknown = [variant for variant in args.variants if variant not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: {unknown or 'none given'}; choose from {VARIANTS}")
    if args.new_tokens < args.skip_steps + 3:
        parser.error(f"--new-tokens={args.new_tokens}: give at least --skip-steps + 3 = {args.skip_steps + 3}")
    if args.smoke:  # tiny defaults; what was given stays
        defaults = parser.parse_args(["--out", args.out])
        smoke = dict(prompts=[64, 128], batches=[1, 2], long_from=64, long_batches=[1], llama_max_prompt=64,
                     compile_prompts=[64], new_tokens=8, skip_steps=2)
        for name, value in smoke.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    elif not args.report_only and not torch.cuda.is_available():
        parser.error("no CUDA device: this check runs on a GPU (use --smoke to test it on the CPU)")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, args.stem + ".jsonl")
    if not args.report_only:
        setup = Setup(args.smoke)
        cases = plan(args)
        print(f"{len(cases)} timed cases; estimated {estimate_s(args, cases) / 60:.1f} min on an H100 "
              f"(the speed part stops at --budget-s={args.budget_s:.0f} s)", flush=True)
        log = JsonLines(log_path)
        log.write(section="environment", run_id=RUN_ID, smoke=args.smoke, **environment())
        if not args.no_exactness:
            run_exactness(log, setup)
        run_speed(log, args, setup)
    write_report(args.out, args.stem, args.inputs or [log_path])


if __name__ == "__main__":
    main()
