"""Running the stack over padded sequences (stack_running.py): the order that puts real positions first."""

import torch

from reformer_hf.stack_running import real_positions_first, restore_order


def test_real_positions_first_moves_padding_behind_and_restore_order_undoes_it():
    pad_mask = torch.tensor([[True, True, False, False, False], [False, True, False, True, False],
                             [False, False, False, True, True]])
    order = real_positions_first(pad_mask)
    assert order.tolist() == [[2, 3, 4, 0, 1], [0, 2, 4, 1, 3], [0, 1, 2, 3, 4]]
    values = torch.arange(15.0).view(3, 5, 1)
    moved = values.gather(1, order[..., None])
    assert torch.equal(restore_order(moved, order), values)
    assert real_positions_first(pad_mask[2:]) is None  # right padding stays where it is
    assert real_positions_first(None) is None
