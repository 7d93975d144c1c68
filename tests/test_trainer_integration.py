"""Every head under transformers' Trainer: gradient accumulation gives the update of one large
batch (the loss is normalised by Trainer's `num_items_in_batch`), and gradient checkpointing
trains with the losses of a run without it."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from reformer_hf import (
    ReformerConfig,
    ReformerForCausalLM,
    ReformerForConditionalGeneration,
    ReformerForSequenceClassification,
)
from reformer_hf.reversible import ReformerStack
from tiny_models import tiny_config


def seq2seq_config(**overrides):
    fields = dict(
        vocab_size=40, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=32,
        attn_layers=["local", "lsh"], decoder_attn_layers=["full", "local"], num_hashes=2, num_buckets=4,
        lsh_attn_chunk_length=4, local_attn_chunk_length=6, axial_pos_embds=False, max_position_embeddings=64,
        is_encoder_decoder=True, hidden_dropout_prob=0.0, local_attention_probs_dropout=0.0,
        lsh_attention_probs_dropout=0.0, full_attention_probs_dropout=0.0, pad_token_id=0, eos_token_id=2,
        decoder_start_token_id=0, hash_seed=7,
    )
    return ReformerConfig(**{**fields, **overrides})


def rows_of(head, count=8, length=12):
    """`count` training rows whose numbers of counted labels differ from row to row, so that a mean
    of per-batch means is not the mean over the step."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(count):
        input_ids = torch.randint(3, 40, (length,), generator=generator)
        if head == "classification":
            label = torch.tensor(-100 if index % 3 == 0 else index % 3)
            rows.append({"input_ids": input_ids, "labels": label})
            continue
        labels = torch.randint(3, 40, (length,), generator=generator) if head == "seq2seq" else input_ids.clone()
        labels[length - 1 - index:] = -100  # from 1 to `count` ignored positions
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


def build(head, **overrides):
    torch.manual_seed(0)
    if head == "causal_lm":
        return ReformerForCausalLM(tiny_config(**overrides))
    if head == "causal_lm_chunked_loss":
        return ReformerForCausalLM(tiny_config(chunk_size_lm_head=5, **overrides))
    if head == "classification":
        return ReformerForSequenceClassification(tiny_config(is_decoder=False, num_labels=3, **overrides))
    return ReformerForConditionalGeneration(seq2seq_config(**overrides))


def arguments(tmp_path, batch, accumulation, steps, learning_rate=0.5, **extra):
    """Plain SGD at a fixed rate, no weight decay, no clipping: an update is -lr times the step's gradient."""
    return TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=learning_rate, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, log_level="error", seed=0, **extra,
    )


def parameter_update(head, tmp_path, batch, accumulation):
    model = build(head).double()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    Trainer(model=model, args=arguments(tmp_path, batch, accumulation, steps=1), train_dataset=rows_of(head)).train()
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


@pytest.mark.parametrize("head", ["causal_lm", "causal_lm_chunked_loss", "classification", "seq2seq"])
def test_gradient_accumulation_gives_the_update_of_one_large_batch(head, tmp_path):
    """Trainer's own loop: 4 micro-batches of 2 rows give the update of one batch of 8 (float64)."""
    whole = parameter_update(head, tmp_path / "whole", batch=8, accumulation=1)
    accumulated = parameter_update(head, tmp_path / "accumulated", batch=2, accumulation=4)
    assert sum(update.abs().sum() for update in whole.values()) > 0
    for name, update in whole.items():
        torch.testing.assert_close(accumulated[name], update, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("reversible", [True, False])
@pytest.mark.parametrize("head", ["causal_lm", "classification", "seq2seq"])
def test_trainer_with_gradient_checkpointing_trains_with_the_losses_of_a_run_without(head, reversible, tmp_path):
    """TrainingArguments(gradient_checkpointing=True), dropout on: the same losses step by step as
    without it (the recomputed layers replay their seeds; a reversible stack ignores the switch),
    and the loss goes down."""
    dropout = dict(hidden_dropout_prob=0.1, local_attention_probs_dropout=0.1, lsh_attention_probs_dropout=0.1,
                   reversible=reversible)
    losses = []
    for checkpointing in (True, False):
        model = build(head, **dropout).double()
        args = arguments(tmp_path / str(checkpointing), batch=4, accumulation=1, steps=12,
                         learning_rate=0.1 if head == "classification" else 0.5, gradient_checkpointing=checkpointing)
        trainer = Trainer(model=model, args=args, train_dataset=rows_of(head) * 3)
        trainer.train()
        stacks = [module for module in model.modules() if isinstance(module, ReformerStack)]
        assert stacks and all(stack.gradient_checkpointing == checkpointing for stack in stacks)
        losses.append([row["loss"] for row in trainer.state.log_history if "loss" in row])
    assert len(losses[0]) == 12
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-9, atol=0)
    assert sum(losses[0][-4:]) < sum(losses[0][:4])
