"""What the kernels' tests share: inputs, one forward and backward pass, errors, and the sm_90
compilation of a window kernel.

On a machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py before the kernels are compiled) at tiny sizes; `bench/attention.py --check` runs the
same comparisons at full size on the GPU (bench/results/attention_h100.md).  Tolerances follow
flash-attention's tests: in half precision the kernel's error against a float64 reference may be
at most twice the torch path's own error in that precision; in float32 both compute the same
formula and differ only by the order of additions.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

import reformer_hf

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


def packed_inputs(n_parts, batch, heads, length, d_head, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, n_parts * heads * d_head, generator=generator).to(DEVICE)



SM90_PTX_PREFETCHES = """
import inspect, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reformer_hf import kernels_window, kernels_window_backward, kernels_window_forward

window = kernels_window._Window(chunk_length=64, n_before=1, n_after=0, causal=True, circular=True,
                                bucket_window=False, self_mask=True, norm_keys=True, sorted_slots=True, scale=1.0)
phase, prefetch = sys.argv[1], sys.argv[2] == "1"
pointers = dict(Q="*bf16", K="*bf16", V="*bf16", DO="*bf16", POS="*i32", BKT="*i32", PAD="*i8", LSE="*fp32",
                DELTA="*fp32", DQ="*bf16", DK="*bf16", DV="*bf16", OUT="*bf16",
                ROUND_OUT="*bf16", ROUND_LSE="*fp32")
if phase == "backward":
    fn = kernels_window_backward._window_bwd_kernel
    consts = {**window.constexprs(torch.bfloat16, 64, phase, has_pad=False, accumulate=True), "PREFETCH_GRAD": prefetch}
else:
    fn = kernels_window_forward._window_fwd_kernel
    consts = {**window.constexprs(torch.bfloat16, 64, phase, has_pad=False), "COMBINE": True,
              "PREFETCH_ROUNDS": prefetch}
names = list(inspect.signature(fn.fn).parameters)
signature = {name: "constexpr" if name in consts else pointers.get(name, "i32") for name in names}
source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
print(compiled.asm["ptx"].count("prefetch.global.L2"))
"""



def sm90_prefetches(tmp_path, phase, prefetch):
    """The number of L2 prefetches in the PTX of the `phase` window kernel compiled for an H100
    (sm_90, Triton's bundled ptxas; no GPU needed), with its prefetch flag on or off."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", SM90_PTX_PREFETCHES, phase, "1" if prefetch else "0"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1])


def kernel_module_names():
    """The package's kernels modules: kernels.py, kernels_*.py and kernel_ops.py, by module name."""
    package = Path(reformer_hf.__file__).parent
    names = [path.stem for path in package.glob("kernels*.py")] + ["kernel_ops"]
    return sorted(names)
