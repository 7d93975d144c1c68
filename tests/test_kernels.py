"""The fused Triton kernels against the torch reference path in attention.py.

On a machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set
here before the kernels are compiled) at tiny sizes; `bench/attention.py --check` runs the same
comparisons at full size on the GPU (bench/results/attention_h100.md).  Tolerances follow flash-attention's tests: in half
precision the kernel's error against a float64 reference may be at most twice the torch path's
own error in that precision; in float32 both compute the same formula and differ only by the
order of additions.
"""

import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import attention, kernels  # noqa: E402
from reformer_hf.configuration import ReformerConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def lsh_inputs(batch, heads, length, d_head, n_hashes, n_buckets, n_pad, seed):
    generator = torch.Generator().manual_seed(seed)
    query_key = torch.randn(batch, heads, length, d_head, generator=generator, dtype=torch.float64)
    value = torch.randn(batch, heads, length, d_head, generator=generator, dtype=torch.float64)
    bucket_ids = torch.randint(0, n_buckets, (batch, heads, n_hashes, length), generator=generator)
    pad_mask = None
    if n_pad:
        pad_mask = torch.zeros(batch, length, dtype=torch.bool)
        pad_mask[0, length - n_pad:] = True  # the first sequence is padded, the others are not
    to_device = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return [to_device(t) for t in (query_key, value, bucket_ids, pad_mask)]


def forward_backward(function, inputs, grad_out, grad_lse, *args, **kwargs):
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out, lse = function(*inputs, *args, **kwargs)
    grads = torch.autograd.grad([out, lse], inputs, [grad_out.to(out.dtype), grad_lse])
    return [out, lse, *grads]


def upstream_grads(shape, pad_mask, seed):
    """Random output and lse gradients, zero at padding positions (which the model strips)."""
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(shape, generator=generator, dtype=torch.float64).to(DEVICE)
    grad_lse = torch.randn(shape[:3], generator=generator, dtype=torch.float64).to(DEVICE)
    if pad_mask is not None:
        grad_out = grad_out.masked_fill(pad_mask[:, None, :, None], 0.0)
        grad_lse = grad_lse.masked_fill(pad_mask[:, None, :], 0.0)
    return grad_out, grad_lse.float()


LSH_CASES = [
    # (window_mode, causal, n_chunks_before, n_chunks_after, n_hashes, batch, heads, length, chunk, n_pad, d_head)
    ("bucket_window", True, 1, 0, 1, 1, 2, 16, 8, 0, 64),
    ("bucket_window", True, 1, 0, 4, 2, 1, 8, 4, 3, 128),
    ("bucket_window", False, 1, 1, 2, 1, 1, 8, 4, 3, 64),
    ("chunk", True, 1, 0, 8, 1, 1, 8, 4, 0, 64),
    ("chunk", True, 1, 0, 2, 1, 1, 8, 4, 3, 128),
    ("chunk", False, 1, 1, 3, 1, 1, 12, 6, 2, 32),
    # chunks of 128 span two blocks of 64 rows: the path without the fused own-chunk tile
    ("bucket_window", True, 1, 0, 2, 1, 1, 256, 128, 5, 16),
    ("chunk", False, 1, 1, 2, 1, 1, 256, 128, 0, 16),
]


@pytest.mark.parametrize("mode, causal, before, after, n_hashes, batch, heads, length, chunk, n_pad, d_head", LSH_CASES)
def test_lsh_kernel_equals_torch_path_in_float32(mode, causal, before, after, n_hashes, batch, heads, length, chunk,
                                                 n_pad, d_head):
    """Outputs, lse and both gradients at every position, padding included."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(batch, heads, length, d_head, n_hashes, 4, n_pad, seed=n_hashes)
    options = dict(n_buckets=4, chunk_length=chunk, n_chunks_before=before, n_chunks_after=after, causal=causal,
                   window_mode=mode, pad_mask=pad_mask)
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.randn(query_key.shape, generator=generator).to(DEVICE)
    grad_lse = torch.randn(query_key.shape[:3], generator=generator).to(DEVICE)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name


@pytest.mark.parametrize("n_pad", [0, 3])
def test_lsh_kernel_keeps_a_bucket_of_one_round_apart_from_the_same_bucket_of_the_round_before(n_pad):
    """Every position in one bucket in every round: the first chunk of round 1 looks back at the
    last chunk of round 0, whose keys have the same bucket id there but must stay hidden."""
    query_key, value, _, pad_mask = lsh_inputs(1, 2, 16, 32, 3, 4, n_pad, seed=9)
    bucket_ids = torch.full((1, 2, 3, 16), 2, dtype=torch.long, device=DEVICE)
    options = dict(n_buckets=4, chunk_length=4, causal=False, window_mode="bucket_window", pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=10)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name


@pytest.mark.parametrize("dtype, mode, n_hashes", [
    (torch.bfloat16, "bucket_window", 2),
    (torch.bfloat16, "chunk", 2),
    (torch.float16, "bucket_window", 2),
])
def test_lsh_kernel_half_precision_error_is_within_twice_the_torch_paths(dtype, mode, n_hashes):
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 1, 16, 64, n_hashes, 4, n_pad=3, seed=3)
    options = dict(n_buckets=4, chunk_length=4, causal=True, window_mode=mode, pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=4)
    low = [query_key.to(dtype), value.to(dtype)]
    exact = forward_backward(attention.lsh_attention, [t.double() for t in low], grad_out, grad_lse.double(),
                             bucket_ids, **options)
    torch_low = forward_backward(attention.lsh_attention, low, grad_out, grad_lse, bucket_ids, **options)
    kernel_low = forward_backward(kernels.lsh_attention, low, grad_out, grad_lse, bucket_ids, **options)
    real = (~pad_mask)[:, None, :].expand(query_key.shape[:3])  # the model strips padding queries' outputs
    for index, name in enumerate(("out", "lse", "d query_key", "d value")):
        pick = (lambda t: t[real]) if index < 2 else (lambda t: t)  # noqa: E731
        kernel_error = relative_error(pick(kernel_low[index]), pick(exact[index]))
        torch_error = relative_error(pick(torch_low[index]), pick(exact[index]))
        assert kernel_error <= 2 * torch_error + 1e-6, (name, kernel_error, torch_error)


def test_lsh_kernel_single_chunk_is_dense_like_the_reference():
    """In 'chunk' mode a sequence of one chunk attends densely and adds log(n_hashes) to the lse."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 1, 16, 32, 3, 4, n_pad=3, seed=5)
    options = dict(n_buckets=4, chunk_length=16, causal=True, window_mode="chunk", pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=6)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for got, want in zip(actual, expected):
        assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize("mode", ["bucket_window", "chunk"])
def test_narrower_key_tiles_give_the_same_results(monkeypatch, mode):
    """kernels.LAUNCH block_n 32 (what --tune may choose): key tiles of half a chunk, no fused
    own-chunk tile; LSH and local attention still equal the torch path."""
    for phase in ("forward", "backward"):
        monkeypatch.setitem(kernels.LAUNCH, phase, {**kernels.LAUNCH[phase], "block_n": 32})
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 2, 128, 16, 2, 4, n_pad=5, seed=8)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=9)
    options = dict(n_buckets=4, chunk_length=64, causal=True, window_mode=mode, pad_mask=pad_mask)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name
    local_inputs = [query_key.float(), value.float(), grad_out.float()]
    local_options = dict(chunk_length=64, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention.local_attention, local_inputs, grad_out, grad_lse, **local_options)
    actual = forward_backward(kernels.local_attention, local_inputs, grad_out, grad_lse, **local_options)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), actual, expected):
        assert relative_error(got, want) < 1e-5, name


@pytest.mark.parametrize("causal, wrap_around, before, after, n_pad", [
    (True, False, 1, 0, 5),
    (False, False, 1, 1, 5),
    (False, True, 2, 1, 0),
])
def test_local_kernel_equals_torch_path(causal, wrap_around, before, after, n_pad):
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 1, 18, 32, generator=generator).to(DEVICE) for _ in range(3))
    pad_mask = None
    if n_pad:
        pad_mask = torch.zeros(2, 18, dtype=torch.bool, device=DEVICE)
        pad_mask[1, -n_pad:] = True
    options = dict(chunk_length=6, n_chunks_before=before, n_chunks_after=after, causal=causal,
                   wrap_around=wrap_around, pad_mask=pad_mask)
    grad_out = torch.randn(q.shape, generator=generator).to(DEVICE)
    grad_lse = torch.randn(q.shape[:3], generator=generator).to(DEVICE)
    expected = forward_backward(attention.local_attention, [q, k, v], grad_out, grad_lse, **options)
    actual = forward_backward(kernels.local_attention, [q, k, v], grad_out, grad_lse, **options)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), actual, expected):
        assert relative_error(got, want) < 1e-5, name


def test_local_kernel_bfloat16_error_is_within_twice_the_torch_paths():
    generator = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 1, 32, 64, generator=generator).bfloat16().to(DEVICE) for _ in range(3))
    options = dict(chunk_length=8, causal=True)
    grad_out, grad_lse = upstream_grads(q.shape, None, seed=9)
    exact = forward_backward(attention.local_attention, [q.double(), k.double(), v.double()], grad_out,
                             grad_lse.double(), **options)
    torch_low = forward_backward(attention.local_attention, [q, k, v], grad_out, grad_lse, **options)
    kernel_low = forward_backward(kernels.local_attention, [q, k, v], grad_out, grad_lse, **options)
    for name, got, ref, want in zip(("out", "lse", "dq", "dk", "dv"), kernel_low, torch_low, exact):
        assert relative_error(got, want) <= 2 * relative_error(ref, want) + 1e-6, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_buckets", [8, [4, 16], 2])
def test_hash_kernel_equals_reference_buckets(num_buckets, dtype):
    """float32 rows take tf32x3 products, bfloat16 rows three bfloat16 products against the
    rotation's split (HASH_PRECISION "bf16x3"); both against the reference's float32 hashing."""
    generator = torch.Generator().manual_seed(10)
    vectors = torch.randn(2, 3, 40, 16, generator=generator).to(dtype).float()
    rotations = torch.randn(3, 16, 2, attention.rotation_size(num_buckets), generator=generator)
    expected = attention.hash_vectors(vectors, rotations, num_buckets)
    actual = kernels.hash_vectors(vectors.to(DEVICE, dtype), rotations.to(DEVICE), num_buckets)
    assert actual.dtype == torch.long
    # float32 sums in another order can only flip an argmax that is a near tie
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors, rotations)
    factors = attention.bucket_factors(num_buckets)
    margins = []
    column = 0
    for factor in factors:
        both = torch.cat([rotated[..., column:column + factor // 2], -rotated[..., column:column + factor // 2]], -1)
        top2 = both.topk(2, dim=-1).values
        margins.append(top2[..., 0] - top2[..., 1])
        column += factor // 2
    clear = torch.stack(margins).amin(0) > 1e-4
    assert torch.equal(actual.cpu()[clear], expected[clear])
    assert clear.float().mean() > 0.99


# Rows up to SORT_KERNEL_MAX_LENGTH go to the sorting kernel, longer ones to torch.sort (int16
# keys for 6 buckets; int32 ones for 2**15, whose padding sentinel exceeds int16).
@pytest.mark.parametrize("sort_kernel_max_length", [kernels.SORT_KERNEL_MAX_LENGTH, 16])
@pytest.mark.parametrize("n_buckets", [6, 2**15])
def test_sort_by_bucket_is_the_references_round_bucket_position_order(n_buckets, sort_kernel_max_length, monkeypatch):
    monkeypatch.setattr(kernels, "SORT_KERNEL_MAX_LENGTH", sort_kernel_max_length)
    generator = torch.Generator().manual_seed(11)
    bucket_ids = (torch.randint(0, 6, (2, 3, 3, 20), generator=generator) * (n_buckets // 6)).to(DEVICE)
    pad_mask = torch.zeros(2, 20, dtype=torch.bool, device=DEVICE)
    pad_mask[1, 15:] = True
    assert kernels._sorts_in_kernel(bucket_ids, n_buckets) == (sort_kernel_max_length >= 20)
    assert not kernels._sorts_in_kernel(bucket_ids, 2**26)  # bucket * 32 + position would pass int32's range
    positions, buckets = kernels.sort_by_bucket(bucket_ids, n_buckets, pad_mask)
    assert torch.equal(kernels.sort_by_bucket(bucket_ids, n_buckets, pad_mask.to(torch.int8))[0], positions)
    assert positions.dtype == buckets.dtype == torch.int32
    assert torch.equal(kernels.sort_by_bucket(bucket_ids, n_buckets, pad_mask, with_buckets=False)[0], positions)
    for b in range(2):
        for h in range(3):
            slots = [(r, n_buckets if pad_mask[b, i] else int(bucket_ids[b, h, r, i]), i)
                     for r in range(3) for i in range(20)]
            slots.sort()
            assert positions[b, h].tolist() == [i for _, _, i in slots]
            assert buckets[b, h].tolist() == [r * (n_buckets + 1) + bucket for r, bucket, _ in slots]


def lsh_layer_config(backend, **overrides):
    fields = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, num_hashes=2, num_buckets=4,
                  lsh_attn_chunk_length=8, local_attn_chunk_length=8, is_decoder=True, attn_backend=backend,
                  attn_layers=["lsh"], axial_pos_embds=False, max_position_embeddings=64)
    fields.update(overrides)
    return ReformerConfig(**fields)


def test_triton_backend_layer_equals_torch_backend_layer():
    """The whole layer: hashing and attention through the dispatcher, outputs and weight gradients."""
    outputs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(12)
        layer = attention.LSHSelfAttention(lsh_layer_config(backend)).to(DEVICE)
        hidden = torch.randn(1, 16, 32, device=DEVICE)
        rotations = torch.randn(2, 16, 2, 2, device=DEVICE)
        out = layer(hidden, rotations=rotations)
        out.square().sum().backward()
        outputs[backend] = [out, layer.query_key.weight.grad, layer.value.weight.grad]
    for got, want in zip(outputs["triton"], outputs["torch"]):
        assert relative_error(got, want) < 1e-5


def test_dispatcher_uses_the_torch_path_for_dropout_in_training(caplog):
    function = attention.lsh_attention_dispatch("triton")
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 2, 4, 0, seed=13)
    options = dict(n_buckets=4, chunk_length=8, causal=True, dropout_p=0.5, training=True)
    with caplog.at_level(logging.INFO, logger="reformer_hf.attention"):
        torch.manual_seed(14)
        got, _ = function(query_key.float(), value.float(), bucket_ids, **options)
    torch.manual_seed(14)
    want, _ = attention.lsh_attention(query_key.float(), value.float(), bucket_ids, **options)
    assert torch.equal(got, want)
    assert "dropout" in caplog.text


def test_dispatcher_refuses_an_unsupported_input_for_the_triton_backend():
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 1, 4, 0, seed=15)
    function = attention.lsh_attention_dispatch("triton")
    with pytest.raises(RuntimeError, match="float64"):
        function(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)


def test_dispatcher_auto_takes_the_kernel_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "lsh_attention", lambda *args, **kwargs: calls.append(args) or (None, None))
    query_key, value, bucket_ids, _ = lsh_inputs(1, 1, 16, 16, 1, 4, 0, seed=16)
    query_key, value = query_key.float(), value.float()
    got, _ = attention.lsh_attention_dispatch("auto")(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)
    if DEVICE == "cuda":
        assert len(calls) == 1
    else:
        want, _ = attention.lsh_attention(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)
        assert not calls and torch.equal(got, want)


def test_dispatcher_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="attn_backend='cuda'"):
        attention.lsh_attention_dispatch("cuda")


def test_kernels_module_imports_without_triton(monkeypatch):
    """Saved model folders carry kernels.py; it must import where triton is missing."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("reformer_hf._kernels_without_triton", kernels.__file__,
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "reformer_hf"
    spec.loader.exec_module(module)
    assert module.triton is None
    assert "not installed" in module.triton_unusable_reason(torch.zeros(1))
    with pytest.raises(RuntimeError, match="triton is not installed"):
        module.lsh_attention(torch.zeros(1, 1, 8, 4), torch.zeros(1, 1, 8, 4), torch.zeros(1, 1, 1, 8, dtype=torch.long),
                             n_buckets=2, chunk_length=8)


SM90_PTX_PREFETCHES = """
import inspect, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reformer_hf import kernels

window = kernels._Window(chunk_length=64, n_before=1, n_after=0, causal=True, circular=True, bucket_window=False,
                         self_mask=True, norm_keys=True, sorted_slots=True, scale=1.0)
phase, prefetch = sys.argv[1], sys.argv[2] == "1"
pointers = dict(Q="*bf16", K="*bf16", V="*bf16", DO="*bf16", POS="*i32", BKT="*i32", PAD="*i8", LSE="*fp32",
                DELTA="*fp32", DQ="*bf16", DK="*bf16", DV="*bf16", OUT="*bf16",
                ROUND_OUT="*bf16", ROUND_LSE="*fp32")
if phase == "backward":
    fn = kernels._window_bwd_kernel
    consts = {**window.constexprs(torch.bfloat16, 64, phase, has_pad=False, accumulate=True), "PREFETCH_GRAD": prefetch}
else:
    fn = kernels._window_fwd_kernel
    consts = {**window.constexprs(torch.bfloat16, 64, phase, has_pad=False), "COMBINE": True,
              "PREFETCH_ROUNDS": prefetch}
names = list(inspect.signature(fn.fn).parameters)
signature = {name: "constexpr" if name in consts else pointers.get(name, "i32") for name in names}
source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
print(compiled.asm["ptx"].count("prefetch.global.L2"))
"""


@pytest.mark.parametrize("phase, prefetch, expected", [("backward", False, 0), ("backward", True, 2),
                                                       ("forward", False, 0), ("forward", True, 1)])
def test_kernels_compile_for_sm90_with_and_without_their_prefetches(tmp_path, phase, prefetch, expected):
    """The prefetches are inline PTX, which the interpreter never runs: the kernels are compiled
    for an H100 (sm_90, Triton's bundled ptxas; no GPU needed).  With PREFETCH_GRAD the backward's
    PTX asks for each row's 128-byte line of dq and of dv (bfloat16, d_head 64); with
    PREFETCH_ROUNDS the combining forward asks for each earlier round's output row, one line, in
    its loop over those rounds."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", SM90_PTX_PREFETCHES, phase, "1" if prefetch else "0"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == expected


def test_gradients_when_only_one_output_is_used():
    """The autograd functions do not materialise zero gradients: an unused lse (the model's case)
    or an unused output must give the gradients of a zero upstream gradient for it."""
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 2, 4, n_pad=0, seed=12)
    options = dict(n_buckets=4, chunk_length=4, causal=True)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=13)
    inputs = [query_key.float().requires_grad_(), value.float().requires_grad_()]
    for use_out in (True, False):
        out, lse = kernels.lsh_attention(*inputs, bucket_ids, **options)
        used, upstream = (out, grad_out.float()) if use_out else (lse, grad_lse)
        got = torch.autograd.grad(used, inputs, upstream)
        zeros = (grad_out, torch.zeros_like(grad_lse)) if use_out else (torch.zeros_like(grad_out), grad_lse)
        want = forward_backward(attention.lsh_attention, [t.detach() for t in inputs], *zeros, bucket_ids, **options)
        for actual, expected in zip(got, want[2:]):  # d value is exactly zero when only lse is used
            torch.testing.assert_close(actual, expected.to(actual.dtype), atol=1e-6, rtol=1e-5)


def test_operands_in_different_memory_layouts():
    """Heads split off a projection are (batch, length, heads, d_head) in memory; the kernels take
    one set of strides for the operands, so operands in another layout are copied into the first
    one's, and the output gradient is read in its own.  Results equal those of contiguous operands."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 2, 16, 16, 2, 4, n_pad=2, seed=14)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=15)
    options = dict(n_buckets=4, chunk_length=4, causal=True, pad_mask=pad_mask)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(kernels.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    heads_last = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs]  # same values, other layout
    mixed = forward_backward(kernels.lsh_attention, [heads_last[0], inputs[1]], grad_out.transpose(1, 2).contiguous()
                             .transpose(1, 2), grad_lse, bucket_ids, **options)
    for got, want in zip(mixed, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    local = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (inputs[0], inputs[1], grad_out.float())]
    local_options = dict(chunk_length=4, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention.local_attention, [inputs[0], inputs[1], grad_out.float()], grad_out,
                                grad_lse, **local_options)
    actual = forward_backward(kernels.local_attention, [local[0], inputs[1], local[2]], grad_out, grad_lse,
                              **local_options)
    for got, want in zip(actual, expected):
        assert relative_error(got, want) < 1e-5


def packed_inputs(n_parts, batch, heads, length, d_head, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, n_parts * heads * d_head, generator=generator).to(DEVICE)


@pytest.mark.parametrize("mode, causal, n_hashes, n_pad", [
    ("bucket_window", True, 2, 3),
    ("chunk", False, 3, 0),
    ("chunk", True, 1, 2),
])
def test_packed_lsh_kernel_gradient_is_the_torch_paths_through_the_views(mode, causal, n_hashes, n_pad):
    """One (batch, length, 2 * heads * d_head) projection output: the kernel writes its gradient
    as one tensor; the torch path differentiates through `unpack_heads`' views.  The output
    gradient comes in the (batch, length, heads, d_head) layout that merging heads gives."""
    heads, length, d_head = 2, 16, 16
    packed = packed_inputs(2, 2, heads, length, d_head, seed=20)
    _, _, bucket_ids, pad_mask = lsh_inputs(2, heads, length, d_head, n_hashes, 4, n_pad, seed=21)
    grad_out, grad_lse = upstream_grads((2, heads, length, d_head), pad_mask, seed=22)
    grad_out = grad_out.transpose(1, 2).contiguous().transpose(1, 2)
    options = dict(n_heads=heads, n_buckets=4, chunk_length=4, causal=causal, window_mode=mode, pad_mask=pad_mask)
    expected = forward_backward(attention.lsh_attention_packed, [packed], grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels.lsh_attention_packed, [packed], grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key_value"), actual, expected):
        assert got.shape == want.shape, name
        assert relative_error(got, want) < 1e-5, name


def test_packed_local_kernel_gradient_is_the_torch_paths_through_the_views():
    heads, length, d_head = 2, 18, 32
    packed = packed_inputs(3, 2, heads, length, d_head, seed=23)
    pad_mask = torch.zeros(2, length, dtype=torch.bool, device=DEVICE)
    pad_mask[1, -4:] = True
    grad_out, grad_lse = upstream_grads((2, heads, length, d_head), pad_mask, seed=24)
    options = dict(n_heads=heads, chunk_length=6, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention.local_attention_packed, [packed], grad_out, grad_lse, **options)
    actual = forward_backward(kernels.local_attention_packed, [packed], grad_out, grad_lse, **options)
    for name, got, want in zip(("out", "lse", "d query_key_value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name


def test_packed_dispatcher_checks_the_heads_not_the_packed_width():
    """d_head is what the kernels limit: a packed width of 2 * 2 * 128 = 512 is within it."""
    heads, length, d_head = 2, 8, 128
    packed = packed_inputs(2, 1, heads, length, d_head, seed=25)
    _, _, bucket_ids, _ = lsh_inputs(1, heads, length, d_head, 1, 2, 0, seed=26)
    options = dict(n_heads=heads, n_buckets=2, chunk_length=4, causal=True)
    got, _ = attention.lsh_attention_dispatch("triton", packed=True)(packed, bucket_ids, **options)
    want, _ = attention.lsh_attention_packed(packed, bucket_ids, **options)
    assert relative_error(got, want) < 1e-5
    with pytest.raises(ValueError, match=r"packed projections have shape \(1, 8, 498\)"):
        attention.lsh_attention_dispatch("triton", packed=True)(packed[..., :498], bucket_ids, **options)
