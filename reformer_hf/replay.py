"""Running a sub-layer again exactly as it ran the first time: its seed and autocast's state.

The reversible stacks rebuild every layer's input in the backward pass by running its halves
again; dropout masks and hash rotations must be the ones drawn forward, and the products must
run in the dtype they ran in.

Eagerly, a sub-layer runs with the global generators reseeded from its seed.  Under
torch.compile that cannot work: dynamo ends the graph at `fork_rng` and `manual_seed`, and
inductor draws dropout masks from random numbers of its own.  There a sub-layer's draws go
through the custom operators below instead, which take a generator's state as a tensor, make the
eager draw (`F.dropout`, `torch.randn`) from it and return the state after it: the same numbers
as the eager path, with the state passed from draw to draw as data, so that the compiled graph
keeps their order and needs no graph break.  `seeded` switches between the two.
"""

import contextlib
import re
from collections.abc import Sequence

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

# One namespace per copy of the package: a model folder saved with its code imports these
# modules again under another name, and an operator can be defined only once.
OPERATOR_NAMESPACE = re.sub(r"\W", "_", __name__.rpartition(".")[0] or "reformer_hf")


def seeded(seed, device):
    """A context in which the random draws of a sub-layer on `device` come from `seed` (an int, or
    a 0-d int64 tensor as `draw_seeds` gives under torch.compile): every run with one seed draws
    the same dropout masks and rotations."""
    if torch.compiler.is_compiling():
        return ReplayedDraws(seed, device)
    return _reseeded_generators(int(seed), device)


@contextlib.contextmanager
def _reseeded_generators(seed, device):
    """Run a block with the global generators of the CPU and `device` set from `seed`, then restore them."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def draw_seeds(n_layers):
    """Two seeds per layer (attention, feed-forward), drawn from the global CPU generator: a list
    of [int, int] eagerly; under torch.compile the same numbers as an (n_layers, 2) int64 tensor,
    since turning them into Python ints there would end the graph."""
    if torch.compiler.is_compiling():
        return _operator("draw_seeds")(n_layers)
    return _draw_seeds(n_layers).tolist()


def _draw_seeds(n_layers: int) -> torch.Tensor:
    return torch.randint(0, 2**62, (n_layers, 2))


def randn(size, *, device, dtype):
    """torch.randn(size, device=device, dtype=dtype), for a sub-layer's draws (the hash rotations):
    under torch.compile a seeded sub-layer replays it.  Dynamo shows torch.randn itself to the
    replay's function mode in some versions only (2.13, not 2.11); this function reaches the mode
    as F.dropout does, through `handle_torch_function`, with an empty tensor as the argument that
    dynamo (2.11 too) checks for a mode."""
    anchor = torch.empty(0, device=device)
    if torch.overrides.has_torch_function((anchor,)):
        return torch.overrides.handle_torch_function(randn, (anchor,), size, device=device, dtype=dtype)
    return torch.randn(size, device=device, dtype=dtype)


def autocast_available(device_type):
    """Whether autocast exists for `device_type` (it does not for "meta"); under torch.compile, where
    torch 2.11 cannot trace the question, the traced devices (CPU, CUDA) always have it."""
    return torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type)


def autocast_state(device_type):
    return device_type, torch.get_autocast_dtype(device_type), torch.is_autocast_enabled(device_type)


def uncached_autocast(state):
    """Autocast as `state` (from `autocast_state`) with its weight cache off: a cached low-precision
    copy of every layer's weights would live until the region ends, memory that grows with depth,
    while a reversible layer uses each cast once per pass anyway."""
    device_type, dtype, enabled = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


# ----------------------------------------------------------------------------------------------
# Under torch.compile: the draws as operators on explicit generator states
# ----------------------------------------------------------------------------------------------

# Random functions that consume a global generator and are not replayed: inside a seeded
# sub-layer under torch.compile they would draw different numbers when the layer is rebuilt.
UNREPLAYED_DRAWS = frozenset({
    torch.rand, torch.rand_like, torch.randn_like, torch.randint, torch.randint_like, torch.randperm,
    torch.bernoulli, torch.normal, torch.multinomial, torch.poisson, torch.Tensor.bernoulli_,
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.exponential_,
    torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_, F.alpha_dropout,
    F.feature_alpha_dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.rrelu,
})


class ReplayedDraws(TorchFunctionMode):
    """`F.dropout` and `torch.randn` of a sub-layer drawn from the generators that `seed` gives
    (the CPU's and `device`'s), through the operators below; each draw passes the generator's
    state on to the next one on its device, as the global generator does eagerly."""

    def __init__(self, seed, device):
        super().__init__()
        self.seed = seed if isinstance(seed, torch.Tensor) else torch.tensor(seed, dtype=torch.int64)
        self.device = device
        self.states = {}  # device type -> the generator state the next draw starts from

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return self.dropout(*args, **kwargs)
        if func is randn or (func is torch.randn and kwargs.get("generator") is None and kwargs.get("out") is None):
            return self.randn(*args, **kwargs)
        if func in UNREPLAYED_DRAWS and kwargs.get("generator") is None:
            raise RuntimeError(f"{func.__name__} draws from the global generator inside a reversible layer under "
                               "torch.compile, where only F.dropout and torch.randn are replayed (reformer_hf.replay); "
                               "pass it a torch.Generator or compile without it")
        if isinstance(func, torch._ops.OpOverload):  # an operator, e.g. the kernels' (kernel_ops.py)
            return func(*args, **kwargs)
        if args and isinstance(args[0], torch.Tensor) and getattr(torch.Tensor, func.__name__, None) is func:
            # A tensor method by name: dynamo traces that as the method itself, where inlining the
            # Python body of some (Tensor.unflatten's `super()` call) ends the graph.
            return getattr(args[0], func.__name__)(*args[1:], **kwargs)
        return func(*args, **kwargs)

    def state(self, device):
        if device.type != "cpu" and device != self.device:
            raise RuntimeError(f"a random draw on {device} inside a sub-layer seeded for {self.device}: only that "
                               "device's and the CPU's generators are replayed")
        if device.type not in self.states:
            self.states[device.type] = _operator("generator_state")(self.seed, device)
        return self.states[device.type]

    def dropout(self, input, p=0.5, training=True, inplace=False):
        # Without randomness (not training, p 0 or 1, nothing to drop) F.dropout draws nothing.
        if not training or p in (0.0, 1.0) or input.numel() == 0:
            return F.dropout(input, p, training, inplace)
        out, self.states[input.device.type] = _operator("dropout")(input, p, self.state(input.device))
        return input.copy_(out) if inplace else out

    def randn(self, *size, dtype=None, device=None, layout=None, requires_grad=False, **others):
        if len(size) == 1 and isinstance(size[0], Sequence):
            size = size[0]
        device = torch.device(device) if device is not None else torch.empty(0).device  # the default device
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if layout not in (None, torch.strided) or requires_grad or any(others.values()):
            raise RuntimeError(f"torch.randn(layout={layout}, requires_grad={requires_grad}, {others}) inside a "
                               "reversible layer under torch.compile: only strided draws without gradient are "
                               "replayed")
        out, self.states[device.type] = _operator("randn")(list(size), dtype, device, self.state(device))
        return out


@contextlib.contextmanager
def _generator_at(state, device):
    """The global generator of `device` set to `state` for the block (yielded), then restored."""
    if device.type == "cuda":
        generator = torch.cuda.default_generators[device.index if device.index is not None
                                                  else torch.cuda.current_device()]
    elif device.type == "cpu":
        generator = torch.random.default_generator
    else:
        raise RuntimeError(f"random draws on {device} are not replayed under torch.compile (CPU and CUDA are)")
    saved = generator.get_state()
    generator.set_state(state)
    try:
        yield generator
    finally:
        generator.set_state(saved)


def _seeded_state(seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The state of `device`'s global generator right after `manual_seed(seed)`."""
    return torch.Generator(device=device).manual_seed(int(seed)).get_state()


def _seeded_state_fake(seed, device):
    return torch.empty(_state_bytes(device.type), dtype=torch.uint8)


def _state_bytes(device_type):
    return torch.Generator(device=device_type).get_state().numel()


def _dropout(input: torch.Tensor, p: float, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F.dropout(input, p) drawn from `state`, and the state after it."""
    with _generator_at(state, input.device) as generator:
        return F.dropout(input, p, training=True), generator.get_state()


def _dropout_fake(input, p, state):
    return torch.empty_like(input), torch.empty_like(state)


def _dropout_setup(ctx, inputs, output):
    input, ctx.p, state = inputs
    ctx.input_stride = input.stride()
    ctx.save_for_backward(state)


def _dropout_backward(ctx, grad_out, grad_state):
    (state,) = ctx.saved_tensors
    return _operator("dropout_backward")(grad_out, ctx.p, state, ctx.input_stride), None, None


def _dropout_grad(grad_out: torch.Tensor, p: float, state: torch.Tensor, input_stride: Sequence[int]) -> torch.Tensor:
    """The input gradient of `_dropout` from the same state.  Dropout scales each element by its
    mask's value, so the gradient is the output gradient dropped with the same mask: F.dropout
    again, on a copy laid out as the input was (the mask follows the layout, not the values),
    which computes what F.dropout's own backward does (grad * mask * scale)."""
    laid_out = _laid_out_like_input(grad_out, input_stride).copy_(grad_out)
    with _generator_at(state, grad_out.device):
        return F.dropout(laid_out, p, training=True)


def _laid_out_like_input(grad_out, input_stride):
    """An empty tensor laid out as F.dropout lays out its mask for an input of grad_out's shape
    and `input_stride` (empty_like's rule: that layout where it is dense, contiguous otherwise)."""
    return torch.empty_like(torch.empty_strided(grad_out.shape, input_stride, dtype=grad_out.dtype,
                                                device=grad_out.device))


def _dropout_grad_fake(grad_out, p, state, input_stride):
    return _laid_out_like_input(grad_out, input_stride)


def _randn(size: Sequence[int], dtype: torch.dtype, device: torch.device,
           state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.randn(size) on `device` drawn from `state`, and the state after it."""
    with _generator_at(state, device) as generator:
        return torch.randn(size, dtype=dtype, device=device), generator.get_state()


def _randn_fake(size, dtype, device, state):
    return torch.empty(size, dtype=dtype, device=device), torch.empty_like(state)


def _draw_seeds_fake(n_layers):
    return torch.empty(n_layers, 2, dtype=torch.int64)


def _define_operators():
    define = torch.library.custom_op
    draw_seeds_op = define(f"{OPERATOR_NAMESPACE}::draw_seeds", _draw_seeds, mutates_args=(),
                           tags=(torch.Tag.nondeterministic_seeded,))  # it advances the global generator
    draw_seeds_op.register_fake(_draw_seeds_fake)
    define(f"{OPERATOR_NAMESPACE}::generator_state", _seeded_state, mutates_args=()).register_fake(_seeded_state_fake)
    dropout_op = define(f"{OPERATOR_NAMESPACE}::dropout", _dropout, mutates_args=())
    dropout_op.register_fake(_dropout_fake)
    dropout_op.register_autograd(_dropout_backward, setup_context=_dropout_setup)
    define(f"{OPERATOR_NAMESPACE}::dropout_backward", _dropout_grad, mutates_args=()).register_fake(_dropout_grad_fake)
    define(f"{OPERATOR_NAMESPACE}::randn", _randn, mutates_args=()).register_fake(_randn_fake)


def _operator(name):
    return getattr(getattr(torch.ops, OPERATOR_NAMESPACE), name).default


_define_operators()
