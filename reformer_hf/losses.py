"""The heads' losses as sums with their item counts (float32), and the mean over the items that
Trainer counts under gradient accumulation (`mean_over_items`)."""

import torch
from torch import nn


def shifted_token_losses(logits, labels):
    """Summed next-token cross-entropy (float32) and the number of counted targets.

    logits (batch, length, vocab) predict labels (batch, length) shifted by one; -100 is ignored.
    """
    targets = labels[:, 1:]
    loss_sum = nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, (targets != -100).sum()


def mean_over_items(loss_sum, count, num_items_in_batch=None):
    """A summed loss over its number of items: `count`, this batch's, or `num_items_in_batch`, which
    transformers' Trainer counts over every micro-batch of a step under gradient accumulation (the
    labels that are not -100), so that the micro-batches' gradients add up to the step's mean.
    No item gives NaN (0 / 0), as transformers' own heads do with every label -100."""
    denominator = num_items_in_batch if num_items_in_batch is not None else count
    return loss_sum / torch.as_tensor(denominator, device=loss_sum.device)


def chunked_lm_loss(head, inputs, labels, chunk_size):
    """Summed shifted cross-entropy over position chunks without keeping any chunk's logits.

    head maps chunks of `inputs` (tensors of shape (batch, length, ...)) to logits.  Each chunk's
    head and logits are recomputed in the backward pass (activation checkpointing), so the peak
    holds one chunk's head activations and (chunk_size, vocab) logits instead of the sequence's.
    The inputs are split (not sliced chunk by chunk), so their gradient is assembled once.
    """
    targets = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)

    def chunk_loss(target_chunk, *input_chunks):
        logits = head(*input_chunks).float()
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target_chunk.reshape(-1), ignore_index=-100, reduction="sum"
        )

    loss_sum = inputs[0].new_zeros((), dtype=torch.float32)
    input_chunks = [tensor.split(chunk_size, dim=1) for tensor in inputs]
    for target_chunk, *chunks in zip(targets.split(chunk_size, dim=1), *input_chunks):
        loss_sum = loss_sum + torch.utils.checkpoint.checkpoint(chunk_loss, target_chunk, *chunks, use_reentrant=False)
    return loss_sum, (targets != -100).sum()
