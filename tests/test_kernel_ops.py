"""The Triton kernels as custom operators (kernel_ops.py): torch.library's own checks, and a
compiled model whose graph calls them, against the eager model.

On a machine without a GPU the kernels run under Triton's interpreter at tiny sizes (see
test_kernels.py); the compiled runs use the "aot_eager" backend (dynamo and AOT autograd, the
operators run as they are), bench/compile_check.py runs inductor on the GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import ReformerForCausalLM, attention_functions, kernel_ops, layer_norm  # noqa: E402
from reformer_hf.replay import OPERATOR_NAMESPACE  # noqa: E402
from test_replay import OWN_FILES  # noqa: E402
from tiny_models import tiny_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = getattr(torch.ops, OPERATOR_NAMESPACE)


def randn(*shape, seed, dtype=torch.float32, requires_grad=False):
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(DEVICE)
    return tensor.requires_grad_(requires_grad)


def lsh_operands(window_mode, n_pad):
    """A packed projection (1, 16, 2 * 2 heads * 16), bucket ids of 2 rounds, padding, sorted."""
    query_key_value = randn(1, 16, 64, seed=1, requires_grad=True)
    bucket_ids = torch.randint(0, 4, (1, 2, 2, 16), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    pad = torch.zeros(1, 16, dtype=torch.int8, device=DEVICE)
    pad[0, 16 - n_pad:] = 1
    positions, buckets = OPS.sort_by_bucket(bucket_ids, 4, pad, window_mode == "bucket_window")
    return query_key_value, bucket_ids, pad, positions, buckets if window_mode == "bucket_window" else None


@pytest.mark.parametrize("window_mode", ["bucket_window", "chunk"])
def test_lsh_operators_pass_opcheck(window_mode):
    query_key_value, bucket_ids, pad, positions, buckets = lsh_operands(window_mode, n_pad=3)
    torch.library.opcheck(OPS.sort_by_bucket, (bucket_ids, 4, pad, window_mode == "bucket_window"))
    options = (2, 4, 1, 0, True, window_mode)  # n_heads, chunk, before, after, causal, mode
    torch.library.opcheck(OPS.lsh_forward, (query_key_value, positions, buckets, pad, *options))
    out, lse = OPS.lsh_forward(query_key_value, positions, buckets, pad, *options)
    grad_out, grad_lse = randn(*out.shape, seed=3), randn(*lse.shape, seed=4)
    torch.library.opcheck(OPS.lsh_backward, (grad_out, grad_lse, query_key_value.detach(), positions, buckets, pad,
                                             out.detach(), lse.detach(), *options))


def test_local_hashing_and_block_operators_pass_opcheck():
    query_key_value = randn(1, 16, 96, seed=5, requires_grad=True)
    pad = torch.zeros(1, 16, dtype=torch.int8, device=DEVICE)
    options = (2, 4, 1, 1, False, True)  # n_heads, chunk, before, after, causal, wrap_around
    torch.library.opcheck(OPS.local_forward, (query_key_value, pad, *options))
    torch.library.opcheck(OPS.hash_vectors, (randn(1, 2, 16, 16, seed=6), randn(2, 16, 3, 6, seed=7), [4, 8]))
    x = randn(2, 8, 32, seed=8, requires_grad=True)
    weight, bias = randn(32, seed=9, requires_grad=True), randn(32, seed=10, requires_grad=True)
    torch.library.opcheck(OPS.layer_norm, (x, weight, bias, 1e-5, torch.bfloat16))
    out = torch.relu(randn(64, 48, seed=11))
    torch.library.opcheck(OPS.relu_bias_grad, (randn(64, 48, seed=12), out))


def test_lsh_operator_gradient_is_the_torch_paths():
    """The operators' forward and backward against the torch reference path (float32)."""
    query_key_value, bucket_ids, pad, _, _ = lsh_operands("bucket_window", n_pad=0)
    options = dict(n_heads=2, n_buckets=4, chunk_length=4, causal=True)
    grad_out = randn(1, 2, 16, 16, seed=13)
    results = []
    for function in (kernel_ops.lsh_attention_packed, attention_functions.lsh_attention_packed):
        inputs = query_key_value.detach().requires_grad_(True)
        out, lse = function(inputs, bucket_ids, **options)
        (grad,) = torch.autograd.grad([out, lse], inputs, [grad_out, torch.ones_like(lse)])
        results.append((out, lse, grad))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4)


class GraphTargets:
    """A torch.compile backend that records the operators of every graph dynamo captures and
    runs them through AOT autograd, as inductor would receive them."""

    def __init__(self):
        self.targets = set()
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        self.targets |= {node.target for node in graph_module.graph.nodes if node.op == "call_function"}
        return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)


def test_compiled_model_runs_the_operators_without_graph_breaks_and_matches_eager(monkeypatch):
    """Plain layers (LSH, local) in bfloat16 autocast with the layer norm kernel on: no graph
    break inside the layers, and the graph calls the attention, hashing, layer norm and ReLU-gradient operators, and whose loss
    and gradients are the eager model's (the same kernels, run eagerly)."""
    monkeypatch.setattr(layer_norm, "FUSED_FROM_ROWS", 1)
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = tiny_config(attn_layers=["lsh", "local"], attn_backend="triton", reversible=False, hash_seed=None,
                         hidden_size=32, attention_head_size=16, axial_pos_shape=[4, 4], axial_pos_embds_dim=[16, 16],
                         max_position_embeddings=16, local_attn_chunk_length=4, hidden_dropout_prob=0.1)
    model = ReformerForCausalLM(config).to(DEVICE).train()
    # The dropout after the final layer norm (written in bfloat16 by the kernel) is outside the
    # layers, so not replayed: AOT autograd decomposes it into a mask times the float32 scale,
    # where eager dropout on the CPU multiplies by the scale rounded to bfloat16 (1.109 for 1.111).
    model.reformer.dropout.p = 0.0
    input_ids = torch.randint(0, 40, (1, 16), generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def step(module):
        torch.manual_seed(5)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = module(input_ids=input_ids, labels=input_ids).loss
        module.zero_grad()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected_loss, expected_grads = step(model)
    backend = GraphTargets()
    loss, grads = step(torch.compile(model, backend=backend))
    torch._dynamo.reset()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(input_ids=input_ids, labels=input_ids)
    for reason in explanation.break_reasons:
        files = {frame.filename.rsplit("/", 1)[-1] for frame in reason.user_stack}
        assert not files & set(OWN_FILES), (reason.reason, files)
    for name in ("lsh_forward", "local_forward", "sort_by_bucket", "hash_vectors", "layer_norm"):
        assert getattr(OPS, name).default in backend.targets, name
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=0)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=0, msg=name)
