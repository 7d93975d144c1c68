"""The models bench/model.py trains and one timed training-step case: the shared shape (byte
vocabulary, d_model 1024, d_ff 4096, 16 heads of 64; toy widths on the CPU with --smoke, set by
use_smoke_sizes), ours, the Llama anchor and transformers' Reformer built at a length and depth,
the useful FLOPs of a step, and run_case: one forward + backward of the LM loss timed, its memory,
tokens/s and MFU written as a JSON line.  The other modules read DEVICE, D_MODEL, D_FF, HEADS and
COMPILE_BACKEND from this module when they run (model_cases.DEVICE), never as copies."""

import math

import torch

from common import free_memory, length_label, lsh_buckets, measure, measure_queued, sdpa_backend, sdpa_backend_problem

from reformer_hf import ReformerConfig, ReformerForCausalLM

VOCAB, D_MODEL, D_FF, HEADS, D_HEAD, CHUNK = 256, 1024, 4096, 16, 64, 64
N_HASHES = 2
PEAK_TFLOPS = {"H100 SXM datasheet": 989.0, "measured bf16 matmul ceiling": 790.0}
DEVICE = "cuda"
COMPILE_BACKEND = "inductor"
SMOKE_COMPILE_BACKEND = "aot_eager"  # --smoke: dynamo and autograd tracing without code generation


def use_smoke_sizes():
    """--smoke: the CPU, toy widths, and compiled models traced without code generation."""
    global DEVICE, D_MODEL, D_FF, HEADS, COMPILE_BACKEND
    DEVICE, D_MODEL, D_FF, HEADS = "cpu", 64, 128, 2
    COMPILE_BACKEND = SMOKE_COMPILE_BACKEND


def axial_shape(length):
    power = int(math.log2(length))
    return [2 ** (power - power // 2), 2 ** (power // 2)]


# From this length on, the feed-forward blocks and the LM head run over 16K positions at a time
# (chunk_size_feed_forward, chunk_size_lm_head): without that, one 1M-token step peaked at 73 GiB
# and ran out of memory on the H100 (bench/results/model_h100.md).
CHUNKED_FROM = 2**19


def our_model(length, n_layers, n_hashes=N_HASHES, stored_layers=0):
    chunk = 2**14 if length >= CHUNKED_FROM else 0
    config = ReformerConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
        feed_forward_size=D_FF, attn_layers=["local", "lsh"] * (n_layers // 2), num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, local_attn_chunk_length=CHUNK,
        is_decoder=True, axial_pos_shape=axial_shape(length), axial_pos_embds_dim=[D_MODEL // 2, D_MODEL // 2],
        max_position_embeddings=length, hidden_dropout_prob=0.0, lsh_attention_probs_dropout=0.0,
        local_attention_probs_dropout=0.0, attn_backend="auto", chunk_size_feed_forward=chunk,
        chunk_size_lm_head=chunk, reversible_stored_layers=stored_layers,
    )
    return ReformerForCausalLM(config)


def llama_model(length, n_layers):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=n_layers,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=length,
                         tie_word_embeddings=False, use_cache=False)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def transformers_reformer(length, n_layers, n_hashes=N_HASHES):
    from transformers import ReformerConfig as TransformersReformerConfig
    from transformers import ReformerModelWithLMHead

    config = TransformersReformerConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
        feed_forward_size=D_FF, attn_layers=["local", "lsh"] * (n_layers // 2), num_hashes=n_hashes,
        num_buckets=lsh_buckets(length, CHUNK), lsh_attn_chunk_length=CHUNK, local_attn_chunk_length=CHUNK,
        lsh_num_chunks_after=0, local_num_chunks_after=0, is_decoder=True, axial_pos_shape=axial_shape(length),
        axial_pos_embds_dim=[D_MODEL // 2, D_MODEL // 2], max_position_embeddings=length, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, use_cache=False,
    )
    return ReformerModelWithLMHead(config)


def matmul_params(model):
    """Weights that take part in matrix products (every nn.Linear), i.e. not embedding tables."""
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def useful_flops(kind, model, length, n_layers, n_hashes=N_HASHES):
    """6 x matmul parameters x tokens + the attention products the architecture needs
    (forward 4 * d_head per query-key pair, backward twice that); recomputation not counted."""
    dense = 6 * matmul_params(model) * length
    if kind == "llama":
        pairs = n_layers * HEADS * length * (length + 1) / 2
    else:
        window = 2 * CHUNK  # own chunk + the one before, for local and for each LSH round
        pairs = (n_layers // 2) * HEADS * length * window * (1 + n_hashes)
    return dense + 3 * 4 * D_HEAD * pairs


def training_step(model, length, checkpointing=False, sdpa="default", compiled=False):
    """One forward + backward of the LM loss; SDPA held to backend `sdpa` (common.SDPA_BACKENDS, or
    "default"), the model's forward compiled (torch.compile, static shapes) with `compiled`."""
    model.to(DEVICE).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False) if compiled else model
    generator = torch.Generator().manual_seed(length)
    input_ids = torch.randint(0, VOCAB, (1, length), generator=generator).to(DEVICE)

    def step():
        model.zero_grad(set_to_none=True)
        with sdpa_backend(sdpa), torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = forward(input_ids=input_ids, labels=input_ids).loss
        loss.backward()

    return step


def run_case(log, kind, length, n_layers, checkpointing=False, budget_s=20.0, stored_layers=0, queued=False,
             sdpa="default", compiled=False):
    build = {"ours": our_model, "llama": llama_model, "transformers_reformer": transformers_reformer}[kind]
    flops = None
    problem = None if sdpa == "default" else sdpa_backend_problem(sdpa, DEVICE)
    if problem:
        result = {"status": f"unavailable: {problem}"}
    else:
        try:
            model = build(length, n_layers, stored_layers=stored_layers) if stored_layers else build(length, n_layers)
            flops = useful_flops(kind, model, length, n_layers)
            step = training_step(model, length, checkpointing, sdpa, compiled)
            result = measure(step, budget_s=budget_s)
            if queued and result["status"] == "ok":
                result["queued_ms"] = measure_queued(step, steps=5, repeats=3)["median_ms"]
        except torch.cuda.OutOfMemoryError:
            result, flops = {"status": "OOM"}, None
        except Exception as error:
            result, flops = {"status": f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}, None
    model = step = None
    free_memory()
    record = dict(kind=kind, length=length, n_layers=n_layers, checkpointing=checkpointing, stored_layers=stored_layers,
                  sdpa_backend=sdpa, compiled=compiled, useful_flops=flops, **result)
    if compiled:
        record["compile_backend"] = COMPILE_BACKEND
    if result["status"] == "ok":
        record["tokens_per_s"] = length / (result["median_ms"] / 1000)
        for key, ms_key in (("mfu", "median_ms"), ("queued_mfu", "queued_ms")):
            if ms_key in result:
                record[key] = {name: flops / (result[ms_key] / 1000) / (peak * 1e12) for name, peak in PEAK_TFLOPS.items()}
    log.write(section="model", **record)
    mfu = record.get("mfu", {}).get("H100 SXM datasheet", float("nan"))
    print(f"{kind:22s} ckpt={checkpointing!s:5s} sdpa={sdpa:7s} compiled={compiled!s:5s} L={length_label(length):>5} "
          f"layers={n_layers:2d} stored={stored_layers} "
          f"{record.get('median_ms', float('nan')):10.1f} ms {record.get('peak_gib', float('nan')):7.2f} GiB "
          f"MFU {mfu:6.1%} {'' if result['status'] == 'ok' else result['status']}", flush=True)
    return record
