"""bench/generation_gpu.py --exactness: on a small model with every layer kind, cached greedy decoding
and beam search against cache-free decoding (float32 and bf16), every step's logits against a
cache-free pass, the attention paths taken, and one bf16 decoding step checked free of host
synchronisation."""

import copy
import logging
import math
import time

import torch

from common import free_memory
from generation_setup import NO_DROPOUT, PRESET, RUN_ID, axial_grid, error_text

from reformer_hf import ReformerCache, ReformerForCausalLM
from reformer_hf.training import preset_config

# bf16 logits: a cached step's largest error against the float32 cache-free reference may be at most
# this many times the bf16 cache-free pass's own, plus BF16_SLACK (logits of this model are O(1)).
BF16_ERROR_RATIO, BF16_SLACK = 2.0, 1e-2
FLOAT32_LOGIT_TOLERANCE = 1e-4


class BackendLog(logging.Handler):
    """Collects the package's attention-path decisions (logged once per process by
    reformer_hf.attention_dispatch)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def exactness_config(setup):
    """A small causal model with every layer kind, fixed buckets and hashing, covering the exactness prompts."""
    if setup.smoke:
        sizes = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                     lsh_attn_chunk_length=16, local_attn_chunk_length=16, num_buckets=8,
                     axial_pos_embds_dim=[16, 16])
        positions = 256
    else:
        sizes = dict(hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=1024,
                     lsh_attn_chunk_length=64, local_attn_chunk_length=64, num_buckets=64,
                     axial_pos_embds_dim=[128, 128])
        positions = 4096
    grid = axial_grid(positions)
    return preset_config(PRESET, dict(sizes, attn_layers=["local", "lsh", "local", "full"], hash_seed=0,
                                      axial_pos_shape=grid, max_position_embeddings=math.prod(grid),
                                      attn_backend="auto", eos_token_id=None, pad_token_id=0, **NO_DROPOUT))


def left_padded_batch(lengths, vocab_size, setup, seed):
    """Prompts of the given lengths, left-padded with id 0 to the longest, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    input_ids = torch.randint(4, vocab_size, (len(lengths), total), generator=generator)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, total - length:] = 1
    return input_ids.masked_fill(mask == 0, 0).to(setup.device), mask.to(setup.device)


def cache_free_step_logits(model, sequences, attention_mask, prompt_width):
    """Logits of every generated position's prediction from one cache-free pass over the whole
    sequence: (new tokens, batch, vocab), float32."""
    full_mask = torch.nn.functional.pad(attention_mask, (0, sequences.shape[1] - attention_mask.shape[1]), value=1)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=full_mask, use_cache=False).logits
    return logits[:, prompt_width - 1:-1].float().transpose(0, 1)


def generate_pair(model, input_ids, attention_mask, cached_options=None, **kwargs):
    """generate() with the cache (and `cached_options`: how to decode, e.g. eagerly or compiled) and without."""
    outputs = []
    for use_cache, options in ((True, cached_options or dict(disable_compile=True)), (False, {})):
        outputs.append(model.generate(input_ids, attention_mask=attention_mask, use_cache=use_cache, do_sample=False,
                                      return_dict_in_generate=True, **options, **kwargs))
    return outputs


def greedy_check(models, dtype_name, input_ids, attention_mask, new_tokens, cached_options=None):
    """Cached vs cache-free greedy decoding of models[dtype_name]; logits against float32's cache-free pass.
    cached_options: generate() options of the cached run (default: eager decoding)."""
    model, reference = models[dtype_name], models["float32"]
    cached, uncached = generate_pair(model, input_ids, attention_mask, cached_options, max_new_tokens=new_tokens,
                                     output_logits=True)
    width = input_ids.shape[1]
    agree = (cached.sequences[:, width:] == uncached.sequences[:, width:]).float().mean().item()
    cached_logits = torch.stack(cached.logits).float()  # (new tokens, batch, vocab)
    reference_logits = cache_free_step_logits(reference, cached.sequences, attention_mask, width)
    same_dtype_logits = cache_free_step_logits(model, cached.sequences, attention_mask, width)
    result = dict(tokens_equal=torch.equal(cached.sequences, uncached.sequences), token_agreement=agree,
                  max_logit_diff_vs_cache_free=(cached_logits - same_dtype_logits).abs().max().item(),
                  cached_error_vs_float32=(cached_logits - reference_logits).abs().max().item(),
                  cache_free_error_vs_float32=(same_dtype_logits - reference_logits).abs().max().item(),
                  max_abs_logit=reference_logits.abs().max().item())
    if dtype_name == "float32":
        result["tolerance"] = f"tokens equal; logits within {FLOAT32_LOGIT_TOLERANCE} of the cache-free pass"
        result["passed"] = result["tokens_equal"] and result["max_logit_diff_vs_cache_free"] <= FLOAT32_LOGIT_TOLERANCE
    else:
        bound = BF16_ERROR_RATIO * result["cache_free_error_vs_float32"] + BF16_SLACK
        result["tolerance"] = (f"cached error vs float32 <= {BF16_ERROR_RATIO} x cache-free bf16 error "
                               f"+ {BF16_SLACK} = {bound:.4f}; token agreement reported")
        result["passed"] = result["cached_error_vs_float32"] <= bound
    return result


def beam_check(models, dtype_name, input_ids, attention_mask, new_tokens):
    cached, uncached = generate_pair(models[dtype_name], input_ids, attention_mask, max_new_tokens=new_tokens,
                                     num_beams=4, num_return_sequences=2, output_scores=True)
    width = input_ids.shape[1]
    agree = (cached.sequences[:, width:] == uncached.sequences[:, width:]).float().mean().item()
    score_diff = (cached.sequences_scores - uncached.sequences_scores).abs().max().item()
    equal = torch.equal(cached.sequences, uncached.sequences)
    tolerance = FLOAT32_LOGIT_TOLERANCE if dtype_name == "float32" else None
    return dict(tokens_equal=equal, token_agreement=agree, max_sequence_score_diff=score_diff,
                tolerance=(f"sequences equal; scores within {tolerance}" if tolerance
                           else "reported (bf16): sequences and scores"),
                passed=equal and score_diff <= tolerance if tolerance else None)


def sync_free_step(model, input_ids, attention_mask, setup):
    """One decoding step after a prefill, under torch.cuda.set_sync_debug_mode("error"): None if no
    host synchronisation happened, else the error it raised."""
    if setup.device.type != "cuda":
        return "not checked (CPU)"
    cache = ReformerCache(model.config, input_ids.shape[1] + 2)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits
        sequence = torch.cat([input_ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.nn.functional.pad(attention_mask, (0, 1), value=1)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            # As generate() does it: told that the step feeds one position, the step asks the device nothing.
            inputs = model.prepare_inputs_for_generation(sequence, past_key_values=cache, attention_mask=mask,
                                                         use_cache=True, next_sequence_length=1)
            model(**inputs)
            outcome = None
        except RuntimeError as error:
            outcome = error_text(error)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return outcome


def run_exactness(log, setup):
    handler = BackendLog()
    attention_logger = logging.getLogger("reformer_hf.attention_dispatch")
    attention_logger.addHandler(handler)
    attention_logger.setLevel(logging.INFO)
    config = exactness_config(setup)
    torch.manual_seed(0)
    base = ReformerForCausalLM(config).eval()
    log.write(section="exactness_model", run_id=RUN_ID, summary=(
        f"hidden {config.hidden_size}, {config.num_attention_heads} heads of {config.attention_head_size}, layers "
        f"{' / '.join(config.attn_layers)}, {config.num_hashes} hashes, {config.num_buckets} buckets, hash_seed "
        f"{config.hash_seed}, chunks of {config.lsh_attn_chunk_length} (LSH) and {config.local_attn_chunk_length} "
        "(local)"), config=config.to_dict())
    models = {name: copy.deepcopy(base).to(setup.device, dtype) for name, dtype in
              (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    longest = 128 if setup.smoke else 2048
    new_tokens, beam_tokens = (8, 6) if setup.smoke else (32, 16)
    cases = (
        ("greedy, batch 1", "greedy", [longest]),
        ("greedy, left-padded batch of 4", "greedy", [longest, longest * 3 // 4 - 3, longest // 2 + 5, longest // 8]),
        ("beam search (4 beams, 2 returned), left-padded batch of 2", "beam", [longest, longest // 2 - 7]),
    )
    for name, kind, lengths in cases:
        input_ids, attention_mask = left_padded_batch(lengths, config.vocab_size, setup, seed=len(lengths))
        for dtype_name in models:
            started = time.perf_counter()
            try:
                check = greedy_check if kind == "greedy" else beam_check
                result = check(models, dtype_name, input_ids, attention_mask, new_tokens if kind == "greedy"
                               else beam_tokens)
                status = "ok"
            except Exception as error:  # a failed check is a result to report
                result, status = {"passed": False}, f"error: {error_text(error)}"
            record = log.write(section="exactness", run_id=RUN_ID, case=name, dtype=dtype_name, prompt_lengths=lengths,
                               status=status, seconds=time.perf_counter() - started, **result)
            print(f"exactness {name} {dtype_name}: {status} passed={record.get('passed')} "
                  f"tokens_equal={record.get('tokens_equal')} agreement={record.get('token_agreement')}", flush=True)
    if "bfloat16" in models:
        input_ids, attention_mask = left_padded_batch([longest, longest // 2], config.vocab_size, setup, seed=5)
        try:
            outcome = sync_free_step(models["bfloat16"], input_ids, attention_mask, setup)
        except Exception as error:  # the prefill itself failed
            outcome = f"error before the step: {error_text(error)}"
        log.write(section="sync_free_step", run_id=RUN_ID, batch=2, left_padded=True,
                  passed=None if outcome == "not checked (CPU)" else outcome is None, error=outcome)
        print(f"decoding step without host synchronisation: {outcome or 'ok'}", flush=True)
    log.write(section="attention_paths", run_id=RUN_ID, messages=handler.messages)
    print("attention paths:", handler.messages, flush=True)
    attention_logger.removeHandler(handler)
    models = base = None
    free_memory()
