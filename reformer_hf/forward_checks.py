"""What a head's forward refuses before any work: keywords it does not take, and labels whose
shape does not match the inputs."""

import inspect

from . import compat


def refuse_unknown_keywords(model, keywords):
    """A forward's **kwargs may hold only what transformers' generate() passes besides the named
    parameters (compat.GENERATION_ONLY_ARGUMENTS); any other keyword, misspelt or meant for another
    model, would be ignored without a word: ValueError naming it and what the forward takes."""
    unknown = sorted(set(keywords) - compat.GENERATION_ONLY_ARGUMENTS)
    if unknown:
        named = [name for name in inspect.signature(model.forward).parameters if name != "kwargs"]
        raise ValueError(
            f"{type(model).__name__}.forward got unexpected keyword argument(s) {unknown}; it takes {named}, and "
            f"the generation keywords {sorted(compat.GENERATION_ONLY_ARGUMENTS)}."
        )


def check_labels_batch(model, labels, input_ids, inputs_embeds, per_position):
    """Before any work: labels hold one row per example (and, per_position, one entry per input
    position: (batch, length)); ValueError naming their shape and the expected one."""
    inputs = input_ids if input_ids is not None else inputs_embeds
    if labels is None or inputs is None:
        return
    batch, length = inputs.shape[:2]
    if per_position and tuple(labels.shape) != (batch, length):
        raise ValueError(f"{type(model).__name__}: labels has shape {tuple(labels.shape)}; expected {(batch, length)}, "
                         "one token id (or -100) per input position.")
    if not per_position and (labels.dim() == 0 or labels.shape[0] != batch):
        raise ValueError(f"{type(model).__name__}: labels has shape {tuple(labels.shape)}; expected {batch} rows, one "
                         f"per example: class ids ({batch},) or targets ({batch}, num_labels).")
