"""The hashing kernel (kernels_hashing.py) against the reference's buckets, attention_functions.hash_vectors."""

import pytest
import torch
from kernel_helpers import DEVICE

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import attention_functions, attention_rules, kernels_hashing  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_buckets", [8, [4, 16], 2])
def test_hash_kernel_equals_reference_buckets(num_buckets, dtype):
    """float32 rows take tf32x3 products, bfloat16 rows three bfloat16 products against the
    rotation's split (HASH_PRECISION "bf16x3"); both against the reference's float32 hashing."""
    generator = torch.Generator().manual_seed(10)
    vectors = torch.randn(2, 3, 40, 16, generator=generator).to(dtype).float()
    rotations = torch.randn(3, 16, 2, attention_functions.rotation_size(num_buckets), generator=generator)
    expected = attention_functions.hash_vectors(vectors, rotations, num_buckets)
    actual = kernels_hashing.hash_vectors(vectors.to(DEVICE, dtype), rotations.to(DEVICE), num_buckets)
    assert actual.dtype == torch.long
    # float32 sums in another order can only flip an argmax that is a near tie
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors, rotations)
    factors = attention_rules.bucket_factors(num_buckets)
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

