"""Whether and how the Triton kernels run: Triton imported if present, the interpreter flag, the
check that names why a kernel cannot run on some tensors, the kernels' decorators, each kernel's
launch settings, and the cache of compiled kernels that launches them without Triton's binding.

Nothing here runs on the device.  `_launch` keys a compiled kernel on the device, the launch
settings, the constants, each tensor's dtype and 16-byte alignment and every other argument's
type and value, and relaunches it straight through its runner (`_Launcher`).  Triton is
imported in a `try` block so that every kernels module imports (and is copied into saved model
folders) on machines without it; the torch path in attention_functions.py needs nothing from them.
"""

import functools
import inspect
import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path in attention_functions.py needs nothing from this module
    triton = None
    tl = SimpleNamespace(constexpr=None)  # lets the kernel signatures below be defined


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_D_HEAD = 256


def _jit(fn=None, *, do_not_specialize=()):
    if fn is None:
        return functools.partial(_jit, do_not_specialize=do_not_specialize)
    return triton.jit(fn, do_not_specialize=list(do_not_specialize)) if triton is not None else fn


def _jit_helper(fn):
    """A device function called by the kernels.  Under TRITON_INTERPRET=1 it stays a plain Python
    function: the interpreter runs kernels as Python anyway, and it re-patches the whole language
    module on every call of a jitted helper, which made the CPU tests ten times slower."""
    return fn if _interpreting() else _jit(fn)


def triton_unusable_reason(*tensors, max_width=MAX_D_HEAD, width_name="d_head"):
    """Why the kernels cannot run on these tensors (the last dimension of the first one at most
    `max_width`), or None when they can."""
    if triton is None:
        return "triton is not installed"
    for tensor in tensors:
        if tensor.device.type != "cuda" and not _interpreting():
            return f"tensors on {tensor.device.type} (the kernels need CUDA, or TRITON_INTERPRET=1 on the CPU)"
        if tensor.dtype not in SUPPORTED_DTYPES:
            return f"dtype {tensor.dtype} (the kernels support float16, bfloat16 and float32)"
    if tensors and tensors[0].shape[-1] > max_width:
        return f"{width_name}={tensors[0].shape[-1]} (the kernel supports {width_name} <= {max_width})"
    return None


def _interpreting():
    """Whether Triton runs kernels in its interpreter: read once, at import, as Triton reads it
    when the kernels below are decorated (a constant: torch 2.11's dynamo ends the graph at a
    functools.cache)."""
    return _INTERPRETING


_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _require_kernels(name, *tensors, **limits):
    reason = triton_unusable_reason(*tensors, **limits)
    if reason is not None:
        raise RuntimeError(f"kernels.{name}: the Triton kernel cannot run here: {reason}.")


def _refuse_dropout(name, dropout_p, training):
    if dropout_p > 0.0 and training:
        raise ValueError(
            f"kernels.{name}: dropout_p={dropout_p} in training is not implemented by the Triton kernel; "
            "use the torch path (attention_dispatch.lsh_attention_dispatch does so automatically)."
        )


def _launch(kernel, grid, args, constexprs, num_warps=4, num_stages=3):
    """kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs) (Triton's
    defaults: 4 warps, 3 stages).

    A launch through Triton binds and specialises every argument again, which took 50-70 us of
    the H100 host's CPU per launch, and an 8K-token LSH step launches nine kernels while the GPU
    waits for them.  So the compiled kernel is kept, keyed on the device, the launch settings,
    the constants, each tensor's dtype and 16-byte alignment and every other argument's type and
    value (which determines all Triton specialises on: an integer being 1, a multiple of 16, its
    range), and a later launch with the same key goes straight to the compiled kernel's runner
    (`_Launcher`).  Returns that launcher, which a caller relaunching the kernel with only
    integer arguments changed may call itself without building the key again.  Under
    TRITON_INTERPRET=1 there is no compiled kernel (None) and every launch goes through Triton."""
    if _interpreting():
        kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
        return None
    device = torch.cuda.current_device()
    key = (kernel, device, num_warps, num_stages, *constexprs.values(),
           *[arg if type(arg) is int else (arg.dtype, arg.data_ptr() % 16 == 0) if isinstance(arg, torch.Tensor)
             else (type(arg), arg) for arg in args])
    launcher = _COMPILED.get(key)
    if launcher is None:
        if len(_COMPILED) >= MAX_KEPT_LAUNCHERS:  # e.g. a run over many different lengths
            _COMPILED.clear()
        compiled = kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
        constants = tuple(constexprs[name] for name in _parameter_names(kernel)[len(args):])
        launcher = _COMPILED[key] = _Launcher(compiled, constants)
        return launcher
    launcher(grid, args, device)
    return launcher


class _Launcher:
    """A compiled kernel launched straight through its runner: the arguments it was compiled for
    (changed only where Triton does not specialise), then the constants, cached here."""

    __slots__ = ("compiled", "constants")

    def __init__(self, compiled, constants):
        self.compiled, self.constants = compiled, constants

    def __call__(self, grid, args, device=None):
        """Launch on the current stream of `device` (the current CUDA device if None)."""
        compiled = self.compiled
        device = torch.cuda.current_device() if device is None else device
        stream = triton.runtime.driver.active.get_current_stream(device)
        hooks = triton.knobs.runtime
        enter_hook = hooks.launch_enter_hook
        values = (*args, *self.constants)
        grid = (*grid, 1, 1)[:3]
        # Triton's launch metadata is only read by a launch hook (profilers set one).
        metadata = None if enter_hook is None else compiled.launch_metadata(grid, stream, *values)
        compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, metadata, enter_hook,
                     hooks.launch_exit_hook, *values)


_COMPILED = {}
MAX_KEPT_LAUNCHERS = 4096


@functools.cache
def _parameter_names(kernel):
    return tuple(inspect.signature(kernel.fn).parameters)


def _pow2(value, floor=16):
    return max(floor, _next_pow2(value))


def _next_pow2(value):
    """The smallest power of two >= value (value >= 1); `triton.next_power_of_2` without its
    constexpr wrapper, which costs more than the arithmetic on every launch."""
    return 1 << (value - 1).bit_length()


def _cdiv(numerator, denominator):
    return -(-numerator // denominator)


def _rows_contiguous(tensor):
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


# Launch settings per kernel: warps per program, rows per block (block_m, at most 64), key
# columns per tile (block_n, at most block_m) and positions per hashing program (block_l).
# `bench/attention.py --tune` times the alternatives at 64K tokens, n_hashes 4, on one H100
# (bench/results/attention_h100_tune.jsonl): forward 0.99 ms with 4 warps and 32-key tiles
# against 1.79 / 2.23 / 1.88 ms for the other three; forward + backward 3.88 ms with 4 warps and
# 64-key tiles (the fused own-chunk tile) against 4.23 / 5.97 / 6.73 ms; hashing 0.49 ms with 128
# positions per program against 0.53 (64) and 1.27 (32) (bf16x3 hashing: 0.27-0.30 ms against
# 0.33 (64) and 0.29 (256)).  With compile-time chunk and d_head, 32-row blocks and 8-warp
# backward programs were slower again (4.07 and 4.24 ms against 2.74 ms, forward + backward):
# more programs per multiprocessor hide the row gathers better.
LAUNCH = {
    "forward": {"num_warps": 4, "block_m": 64, "block_n": 32},
    "backward": {"num_warps": 4, "block_m": 64, "block_n": 64},
    "hash": {"num_warps": 4, "block_l": 128},
}


# float32 rows take twice the registers of 16-bit ones: compiled for sm_90 with the 16-bit
# settings and "ieee" products, the float32 backward spilled 17 KB per thread to local memory and
# took 55 ms per round at batch 64 x 4 heads x 1024 on the H100 (the torch path's whole training
# step of that model took 40 ms).  With tf32x3 products and 32-key tiles the op (forward +
# backward, 4 rounds) takes 8.7 ms there, against 11.5 ms with 64-key tiles or 8 warps, 20.6 ms
# with "ieee" products, and 19.9 ms for the torch path.
LAUNCH_FLOAT32 = {
    "forward": {"num_warps": 4, "block_m": 64, "block_n": 32},
    "backward": {"num_warps": 4, "block_m": 64, "block_n": 32},
}


def _launch_settings(phase, dtype):
    return LAUNCH_FLOAT32[phase] if dtype == torch.float32 else LAUNCH[phase]

