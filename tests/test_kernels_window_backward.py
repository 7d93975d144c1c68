"""The window attention backward kernels (kernels_window_backward.py): the main kernel's PTX for an
H100.  What they compute is tested through the LSH and local entry points (test_kernels_lsh.py,
test_kernels_local.py)."""

import pytest
from kernel_helpers import sm90_prefetches

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")


@pytest.mark.parametrize("prefetch, expected", [(False, 0), (True, 2)])
def test_backward_kernel_compiles_for_sm90_with_and_without_its_prefetches(tmp_path, prefetch, expected):
    """The prefetches are inline PTX, which the interpreter never runs: the kernel is compiled for
    an H100 (sm_90, Triton's bundled ptxas; no GPU needed).  With PREFETCH_GRAD the backward's PTX
    asks for each row's 128-byte line of dq and of dv (bfloat16, d_head 64)."""
    assert sm90_prefetches(tmp_path, "backward", prefetch) == expected
