"""bench/generation_gpu.py --pipeline: a random-init model of the bench size saved with the byte
tokenizer, loaded by `pipeline("text-generation", ...)` and run on a long prompt; the load and
generation times and the peak memory, or why it failed."""

import tempfile
import time

import torch

from common import free_memory
from generation_setup import RUN_ID, error_text, reformer_config

from reformer_hf import ReformerByteTokenizer, ReformerForCausalLM


def run_pipeline(log, args, setup):
    from transformers import pipeline

    prompt_tokens, new_tokens = args.pipeline_prompt_tokens, args.pipeline_new_tokens
    tokenizer = ReformerByteTokenizer()
    config = reformer_config(prompt_tokens + new_tokens, setup, vocab_size=len(tokenizer))
    record = dict(section="pipeline", run_id=RUN_ID, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                  dtype=str(setup.dtype).replace("torch.", ""))
    generator = random_text = None
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        ReformerForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # ASCII letters and spaces: one byte, so one token, per character.
        alphabet = "abcdefghijklmnopqrstuvwxyz     "
        picks = torch.randint(len(alphabet), (prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
        random_text = "".join(alphabet[pick] for pick in picks)
        record["prompt_tokens_encoded"] = len(tokenizer(random_text)["input_ids"])
        try:
            started = time.perf_counter()
            generator = pipeline("text-generation", model=folder, device=0 if setup.device.type == "cuda" else "cpu",
                                 dtype=setup.dtype)
            record["load_s"] = time.perf_counter() - started
            setup.reset_peak()
            setup.sync()
            started = time.perf_counter()
            result = generator(random_text, max_new_tokens=new_tokens, do_sample=False, return_tensors=True)
            setup.sync()
            new_ids = list(result[0]["generated_token_ids"])[record["prompt_tokens_encoded"]:]
            record.update(generate_s=time.perf_counter() - started, peak_gib=setup.peak_gib(),
                          model_class=type(generator.model).__name__, model_dtype=str(generator.model.dtype),
                          generated_ids=new_ids, generated_tokens=len(new_ids))
            record["status"] = "ok" if record["generated_tokens"] == new_tokens else (
                f"error: generated {record['generated_tokens']} tokens, asked for {new_tokens}")
        except torch.OutOfMemoryError as error:
            record["status"] = f"does not fit (OOM): {error_text(error)[:200]}"
        except Exception as error:  # recorded: the pipeline's failure is the result
            record["status"] = f"error: {error_text(error)}"
    generator = None
    free_memory()
    log.write(**record)
    print("pipeline:", record, flush=True)
