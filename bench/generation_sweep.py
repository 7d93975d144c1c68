"""bench/generation_gpu.py --decode: which generate() cases run and in which order.  Per variant an
untimed warm-up, per prompt length a warm-up of ours (its prefill's Triton kernels), then each
prompt, batch and variant, a batch that does not fit halved, and a variant that fitted a larger
batch run again at a batch another one fell back to; every case written to the JSON lines."""

import time

import torch

from common import GIB, free_memory, length_label
from generation_cases import CompileWatch, decode_case, random_prompt, timed_generate
from generation_setup import RUN_ID, error_text, llama_like, reformer_config, reformer_model


def run_logged_case(log, model, watch, variant, config, prompt, batch, requested, args, setup, matched=False):
    """decode_case, written to the log and printed; `matched`: run at a batch another variant fell back to."""
    record = log.write(requested_batch=requested, matched=matched,
                       **decode_case(model, watch, variant, config, prompt, batch, args, setup))
    print(f"{variant:22s} prompt={length_label(prompt):>5} batch={batch:3d} "
          f"prefill {record.get('prefill_s') or float('nan'):8.2f} s  "
          f"{record.get('ms_per_token') or float('nan'):8.2f} ms/token  "
          f"peak {record.get('peak_gib') or float('nan'):6.2f} GiB  "
          f"cache {(record.get('cache_bytes') or 0) / GIB:6.2f} GiB  {record['status'][:160]}", flush=True)
    return record


def run_decode_case_with_fallback(log, model, watch, variant, config, prompt, batch, args, setup):
    """The case at `batch`; where it does not fit and batch > 2, again at half the batch (unless disabled)."""
    requested = batch
    while True:
        record = run_logged_case(log, model, watch, variant, config, prompt, batch, requested, args, setup)
        fits = not record["status"].startswith("does not fit")
        if fits or args.no_batch_fallback or batch <= 2:
            return record
        batch //= 2


def warm_up(log, model, watch, variant, prompt, new_tokens, setup, purpose):
    """One untimed generate() at batch 1: kernels compiled (Triton specialises on the prompt length and the
    bucket count it brings), the compiled call traced."""
    input_ids = random_prompt(1, prompt, model.config.vocab_size, setup, seed=1)
    started = time.perf_counter()
    try:
        compiled = timed_generate(model, variant, input_ids, new_tokens, setup, watch)[3]
        status = "ok"
    except Exception as error:  # recorded; the timed rows of this variant will say what fails
        status, compiled = f"error: {error_text(error)}", None
    seconds = time.perf_counter() - started
    log.write(section="warmup", run_id=RUN_ID, variant=variant, prompt=prompt, purpose=purpose, seconds=seconds,
              status=status, compiled=compiled)
    print(f"warm-up ({purpose}) {variant} prompt={length_label(prompt)}: {seconds:.1f} s {status[:200]}", flush=True)
    free_memory()


def run_decode(log, args, setup):
    longest = max(args.prompts) + args.new_tokens
    config = reformer_config(longest, setup, num_buckets=args.num_buckets)
    torch.manual_seed(0)
    models = {"reformer": reformer_model(config, setup), "llama": llama_like(config, setup)}
    for name, model in models.items():
        log.write(section="model", run_id=RUN_ID, model=name, parameters=sum(p.numel() for p in model.parameters()),
                  config=model.config.to_dict() if name == "reformer" else _llama_summary(model.config))

    watches = {name: CompileWatch(model) for name, model in models.items()}

    def model_of(variant):
        name = "llama" if variant.startswith("llama") else "reformer"
        return models[name], watches[name]

    for variant in args.variants:
        warm_up(log, *model_of(variant), variant, min(1024, min(args.prompts)), args.skip_steps + 2, setup, "start")
    for prompt in args.prompts:
        # Ours: the prefill's Triton kernels are compiled for each new prompt length, outside the timed runs.
        for variant in (variant for variant in args.variants if not variant.startswith("llama")):
            warm_up(log, *model_of(variant), variant, prompt, 2, setup, "prompt length")
        ran = set()  # (variant, batch) that ran at this prompt length
        for batch in args.batches:
            fitted = {}
            for variant in args.variants:
                record = run_decode_case_with_fallback(log, *model_of(variant), variant, config, prompt, batch, args,
                                                       setup)
                ran.add((variant, record["batch"]))
                if record["status"] == "ok":
                    fitted[variant] = record["batch"]
            # A variant that fitted a larger batch also runs at each smaller one another variant fell back to,
            # so that every pair is compared at one batch as well.
            for variant, own_batch in fitted.items():
                for smaller in sorted({other for other in fitted.values() if other < own_batch}):
                    if (variant, smaller) not in ran:
                        ran.add((variant, smaller))
                        run_logged_case(log, *model_of(variant), variant, config, prompt, smaller, batch, args, setup,
                                        matched=True)
    models = None
    free_memory()


def _llama_summary(config):
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "hidden_act")
    return {key: getattr(config, key, None) for key in keys}
