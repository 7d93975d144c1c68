"""The window attention forward kernel (kernels_window_forward.py): its PTX for an H100.  What it
computes is tested through the LSH and local entry points (test_kernels_lsh.py, test_kernels_local.py)."""

import pytest
from kernel_helpers import sm90_prefetches

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")


@pytest.mark.parametrize("prefetch, expected", [(False, 0), (True, 1)])
def test_forward_kernel_compiles_for_sm90_with_and_without_its_prefetches(tmp_path, prefetch, expected):
    """The prefetches are inline PTX, which the interpreter never runs: the kernel is compiled for
    an H100 (sm_90, Triton's bundled ptxas; no GPU needed).  With PREFETCH_ROUNDS the combining
    forward asks for each earlier round's output row, one line, in its loop over those rounds."""
    assert sm90_prefetches(tmp_path, "forward", prefetch) == expected
