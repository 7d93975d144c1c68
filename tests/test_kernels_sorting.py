"""Sorting the hash rounds by (bucket, position) (kernels_sorting.py): the kernel and torch.sort."""

import pytest
import torch
from kernel_helpers import DEVICE

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import kernels_sorting  # noqa: E402


# Rows up to SORT_KERNEL_MAX_LENGTH go to the sorting kernel, longer ones to torch.sort (int16
# keys for 6 buckets; int32 ones for 2**15, whose padding sentinel exceeds int16).
@pytest.mark.parametrize("sort_kernel_max_length", [kernels_sorting.SORT_KERNEL_MAX_LENGTH, 16])
@pytest.mark.parametrize("n_buckets", [6, 2**15])
def test_sort_by_bucket_is_the_references_round_bucket_position_order(n_buckets, sort_kernel_max_length, monkeypatch):
    monkeypatch.setattr(kernels_sorting, "SORT_KERNEL_MAX_LENGTH", sort_kernel_max_length)
    generator = torch.Generator().manual_seed(11)
    bucket_ids = (torch.randint(0, 6, (2, 3, 3, 20), generator=generator) * (n_buckets // 6)).to(DEVICE)
    pad_mask = torch.zeros(2, 20, dtype=torch.bool, device=DEVICE)
    pad_mask[1, 15:] = True
    assert kernels_sorting._sorts_in_kernel(bucket_ids, n_buckets) == (sort_kernel_max_length >= 20)
    assert not kernels_sorting._sorts_in_kernel(bucket_ids, 2**26)  # bucket * 32 + position would pass int32's range
    positions, buckets = kernels_sorting.sort_by_bucket(bucket_ids, n_buckets, pad_mask)
    assert torch.equal(kernels_sorting.sort_by_bucket(bucket_ids, n_buckets, pad_mask.to(torch.int8))[0], positions)
    assert positions.dtype == buckets.dtype == torch.int32
    without_buckets = kernels_sorting.sort_by_bucket(bucket_ids, n_buckets, pad_mask, with_buckets=False)
    assert torch.equal(without_buckets[0], positions)
    for b in range(2):
        for h in range(3):
            slots = [(r, n_buckets if pad_mask[b, i] else int(bucket_ids[b, h, r, i]), i)
                     for r in range(3) for i in range(20)]
            slots.sort()
            assert positions[b, h].tolist() == [i for _, _, i in slots]
            assert buckets[b, h].tolist() == [r * (n_buckets + 1) + bucket for r, bucket, _ in slots]

