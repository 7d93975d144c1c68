"""Running a sub-layer again exactly as it ran the first time: its seed and autocast's state.

The reversible stacks rebuild every layer's input in the backward pass by running its halves
again; dropout masks and hash rotations must be the ones drawn forward, and the products must
run in the dtype they ran in.
"""

import contextlib

import torch


@contextlib.contextmanager
def seeded(seed, device):
    """Run a block with the global generators of the CPU and `device` set from `seed`, then restore them."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def draw_seeds(n_layers):
    """Two seeds per layer (attention, feed-forward), drawn from the global generator."""
    return torch.randint(0, 2**62, (n_layers, 2)).tolist()


def autocast_state(device_type):
    return device_type, torch.get_autocast_dtype(device_type), torch.is_autocast_enabled(device_type)


def uncached_autocast(state):
    """Autocast as `state` (from `autocast_state`) with its weight cache off: a cached low-precision
    copy of every layer's weights would live until the region ends, memory that grows with depth,
    while a reversible layer uses each cast once per pass anyway."""
    device_type, dtype, enabled = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)
