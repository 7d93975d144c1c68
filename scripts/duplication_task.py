"""The Reformer paper's duplication task (section 5, Table 2): copy a random string with LSH attention.

Each sequence is `0 w 0 w`, |w| = length/2 - 1 symbols drawn from 1..127 (length 1024 by default);
the loss and the accuracy count only the second copy of w.  A one-layer LSH model is trained with
--train-hashes rounds and then evaluated with every count in --eval-hashes and with full attention
(dense shared-QK attention, the paper's "Full Attention" column):

    python scripts/duplication_task.py --output-dir runs/dup --train-hashes 4 --time-budget 500 --mixed-precision bf16
    python scripts/duplication_task.py --output-dir runs/dup --resume --time-budget 500   # a later invocation
    python scripts/duplication_task.py --output-dir runs/dup --resume --eval-only         # the table only

Batches are a pure function of (--seed, step), and checkpoints (model, optimizer, scheduler, RNG)
are written atomically every --save-steps steps and when --time-budget runs out, so invocations
chain into one run (--resume takes the newest checkpoint that passes validation and unpickles
nothing; one run at a time holds OUTPUT_DIR/.reformer_hf.lock).  Outputs: metrics.jsonl (learning
curve), table.md and results.json (the Table-2 row), TensorBoard logs, and final/ (save_pretrained).
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

PRECISIONS = ("no", "bf16", "fp16")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task = parser.add_argument_group("task")
    task.add_argument("--length", type=int, default=1024, help="sequence length, even (paper: 1024)")
    task.add_argument("--vocab-high", type=int, default=127, help="symbols are 1..VOCAB_HIGH (paper: 127)")
    model = parser.add_argument_group("model")
    model.add_argument("--train-hashes", type=int, default=4, help="LSH rounds while training")
    model.add_argument("--eval-hashes", default="1,2,4,8", help="comma-separated LSH rounds to evaluate with")
    model.add_argument("--config-overrides", default="",
                       help='ReformerConfig fields over the "duplication" preset, e.g. "lsh_window_mode=chunk"')
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--batch-size", type=int, default=32, help="sequences per process per step")
    train.add_argument("--max-steps", type=int, default=20000)
    train.add_argument("--time-budget", type=float, default=None,
                       help="stop after this many seconds of training in this invocation, saving a checkpoint")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--warmup-steps", type=int, default=200)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument("--mixed-precision", default="no", choices=PRECISIONS)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    train.add_argument("--eval-only", action="store_true",
                       help="with --resume: evaluate the newest checkpoint and write the table, no training")
    logs = parser.add_argument_group("evaluation, checkpoints and logs")
    logs.add_argument("--eval-steps", type=int, default=500, help="evaluate (train hashes) every N steps; 0: never")
    logs.add_argument("--eval-size", type=int, default=256, help="held-out sequences per evaluation")
    logs.add_argument("--save-steps", type=int, default=1000, help="checkpoint every N steps (0: only at the end)")
    logs.add_argument("--log-steps", type=int, default=10)
    logs.add_argument("--no-progress", action="store_true")
    logs.add_argument("--no-tensorboard", action="store_true")
    return parser


def parse_hash_counts(parser, text):
    try:
        counts = [int(piece) for piece in text.split(",") if piece.strip()]
    except ValueError:
        parser.error(f"--eval-hashes={text!r} must be comma-separated integers, e.g. 1,2,4,8")
    if not counts or min(counts) < 1:
        parser.error(f"--eval-hashes={text!r} must list hash counts >= 1")
    return counts


def check_args(parser, args):
    from reformer_hf.training import run_folder_error

    if args.length < 4 or args.length % 2:
        parser.error(f"--length={args.length} must be an even number >= 4 (sequences are 0 w 0 w)")
    if not 1 <= args.vocab_high:
        parser.error(f"--vocab-high={args.vocab_high} must be >= 1 (0 is the separator)")
    for name in ("train_hashes", "batch_size", "max_steps", "eval_size", "log_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for name in ("warmup_steps", "eval_steps", "save_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    if args.lr <= 0 or args.max_grad_norm < 0:
        parser.error("--lr must be > 0 and --max-grad-norm >= 0")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget={args.time_budget} must be > 0 seconds")
    if args.eval_only and not args.resume:
        parser.error("--eval-only evaluates a trained run: pass --resume with its --output-dir")
    folder_error = run_folder_error(args.output_dir, args.resume)
    if folder_error:
        parser.error(folder_error)
    args.eval_hash_counts = parse_hash_counts(parser, args.eval_hashes)


def build_config(parser, args):
    from reformer_hf.training import parse_overrides, preset_config

    try:
        overrides = {"num_hashes": args.train_hashes, **parse_overrides(args.config_overrides)}
        config = preset_config("duplication", overrides)
    except ValueError as error:
        parser.error(str(error))
    if config.attn_layers != ["lsh"] * len(config.attn_layers):
        parser.error(f"attn_layers={config.attn_layers}: the duplication study trains LSH layers only")
    if args.vocab_high >= config.vocab_size:
        parser.error(f"--vocab-high={args.vocab_high} needs vocab_size > {args.vocab_high}; "
                     f"the model has {config.vocab_size}")
    if args.length > config.max_sequence_length:
        parser.error(f"--length={args.length} is larger than the model's maximum of {config.max_sequence_length} "
                     "positions; raise max_position_embeddings/axial_pos_shape with --config-overrides")
    return config


def task_batch(args, seed, *indices, batch_size):
    from reformer_hf.data import duplication_batch
    from reformer_hf.training import step_generator

    return duplication_batch(batch_size, args.length, 1, args.vocab_high, generator=step_generator(seed, *indices))


def second_copy_metrics(logits, labels):
    """(summed cross-entropy, correct predictions, counted targets) over the labelled positions."""
    import torch

    predictions, targets = logits[:, :-1], labels[:, 1:]
    counted = targets != -100
    loss_sum = torch.nn.functional.cross_entropy(predictions.float().reshape(-1, predictions.shape[-1]),
                                                 targets.reshape(-1), ignore_index=-100, reduction="sum")
    correct = ((predictions.argmax(-1) == targets) & counted).sum()
    return loss_sum, correct, counted.sum()


@contextlib.contextmanager
def attention_setting(config, setting, length):
    """Evaluate with `setting` hash rounds (an int) or with dense shared-QK attention ("full")."""
    from reformer_hf.training import dense_shared_qk_overrides

    fields = dense_shared_qk_overrides(length) if setting == "full" else {"num_hashes": setting}
    saved = {name: getattr(config, name) for name in fields}
    for name, value in fields.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def evaluate(accelerator, model, args, setting):
    """Loss and accuracy on the second copy over the fixed held-out set, with hashing from a fixed seed."""
    import torch

    from reformer_hf.training import evaluating

    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    eval_batch = min(args.batch_size, args.eval_size)
    n_batches = -(-args.eval_size // eval_batch)
    with evaluating(accelerator, model, args.seed + 1) as unwrapped, \
            attention_setting(unwrapped.config, setting, args.length):
        for index in range(accelerator.process_index, n_batches, accelerator.num_processes):
            rows = min(eval_batch, args.eval_size - index * eval_batch)
            # Held-out sequences come from another seed than any training batch.
            batch = task_batch(args, args.seed + 1_000_003, index, batch_size=rows)
            input_ids, labels = batch["input_ids"].to(accelerator.device), batch["labels"].to(accelerator.device)
            with accelerator.autocast():
                logits = unwrapped(input_ids=input_ids).logits
            totals += torch.stack([value.double() for value in second_copy_metrics(logits, labels)])
    loss_sum, correct, count = accelerator.reduce(totals, "sum").tolist()
    return {"loss": loss_sum / count, "accuracy": correct / count}


def write_table(output_dir, args, step, results):
    """results: {setting: {"loss", "accuracy"}} -> table.md and results.json (the Table-2 row)."""
    settings = ["full", *args.eval_hash_counts]
    header = "| trained with | " + " | ".join("Full attention" if s == "full" else f"LSH-{s}" for s in settings) + " |"
    rule = "|" + "---|" * (len(settings) + 1)
    row = f"| LSH-{args.train_hashes} | " + " | ".join(f"{100 * results[s]['accuracy']:.1f}%" for s in settings) + " |"
    text = (f"Duplication task, length {args.length}, symbols 1..{args.vocab_high}: accuracy on the second copy "
            f"of {args.eval_size} held-out sequences after {step} steps, evaluated with each attention setting.\n\n"
            f"{header}\n{rule}\n{row}\n")
    (output_dir / "table.md").write_text(text, encoding="utf-8")
    payload = {"step": step, "train_hashes": args.train_hashes, "length": args.length, "vocab_high": args.vocab_high,
               "eval_size": args.eval_size, "results": {str(s): results[s] for s in settings}}
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return text


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    config = build_config(parser, args)

    import torch

    from reformer_hf.checkpointing import CheckpointError
    from reformer_hf.output_lock import OutputDirLocked
    from reformer_hf.training import make_accelerator, output_dir_lock

    accelerator = make_accelerator(args.mixed_precision, cpu=args.cpu or not torch.cuda.is_available())
    try:
        with output_dir_lock(accelerator, args.output_dir):
            return train(args, accelerator, config)
    except (OutputDirLocked, CheckpointError) as error:
        parser.error(str(error))


def train(args, accelerator, config):
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from reformer_hf import ReformerForCausalLM
    from reformer_hf.checkpointing import CheckpointManager
    from reformer_hf.training import (MetricsLog, gather_state_dict, optimizer_step, stop_on_every_process,
                                      tensorboard_available)

    torch.backends.cuda.matmul.allow_tf32 = True
    output_dir = Path(args.output_dir)

    set_seed(args.seed)
    model = ReformerForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=args.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = CheckpointManager(accelerator, output_dir / "checkpoints", model, optimizer, scheduler, keep=2)
    resumed = checkpoints.resume() if args.resume else None
    step, elapsed = (resumed["step"], resumed["elapsed_seconds"]) if resumed else (0, 0.0)
    metrics = MetricsLog(output_dir, resume_step=step, enabled=accelerator.is_main_process and not args.eval_only,
                         tensorboard=tensorboard_available() and not args.no_tensorboard)

    def checkpoint_info():
        return {"elapsed_seconds": elapsed, "args": {k: v for k, v in vars(args).items() if k != "eval_hash_counts"}}

    if not args.eval_only:
        progress = tqdm(total=args.max_steps, initial=step, desc="train", dynamic_ncols=True,
                        disable=args.no_progress or not accelerator.is_main_process)
        model.train()
        session_start = time.perf_counter()
        last_saved = step
        while step < args.max_steps:
            step_start = time.perf_counter()
            batch = task_batch(args, args.seed, step, accelerator.process_index, batch_size=args.batch_size)
            input_ids, labels = batch["input_ids"].to(accelerator.device), batch["labels"].to(accelerator.device)
            with accelerator.autocast():
                logits = model(input_ids=input_ids).logits
            loss_sum, correct, count = second_copy_metrics(logits, labels)
            accelerator.backward(loss_sum / count)
            optimizer_step(accelerator, model, optimizer, scheduler, args.max_grad_norm)
            step += 1
            elapsed += time.perf_counter() - step_start
            progress.update(1)
            values = {}
            if step % args.log_steps == 0:
                totals = accelerator.reduce(torch.stack([loss_sum.detach(), correct.float(), count.float()]), "sum")
                values.update(loss=(totals[0] / totals[2]).item(), accuracy=(totals[1] / totals[2]).item(),
                              lr=scheduler.get_last_lr()[0], elapsed_seconds=elapsed)
                progress.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['accuracy']:.3f}")
            if args.eval_steps and step % args.eval_steps == 0:
                result = evaluate(accelerator, model, args, args.train_hashes)
                values.update(eval_loss=result["loss"], eval_accuracy=result["accuracy"], elapsed_seconds=elapsed)
                accelerator.print(f"step {step}: held-out accuracy {result['accuracy']:.4f} "
                                  f"with {args.train_hashes} hashes")
            if values:
                metrics.log(step, values)
            out_of_time = args.time_budget is not None and stop_on_every_process(
                time.perf_counter() - session_start >= args.time_budget, accelerator.device)
            if (args.save_steps and step % args.save_steps == 0) or out_of_time or step == args.max_steps:
                checkpoints.save(step, checkpoint_info())
                last_saved = step
            if out_of_time and step < args.max_steps:
                accelerator.print(f"time budget of {args.time_budget:.0f}s spent at step {step}; resume with --resume")
                break
        progress.close()
        if last_saved != step:
            checkpoints.save(step, checkpoint_info())

    results = {setting: evaluate(accelerator, model, args, setting) for setting in ["full", *args.eval_hash_counts]}
    save_final = step >= args.max_steps or args.eval_only
    state_dict = gather_state_dict(accelerator, model) if save_final else None
    if accelerator.is_main_process:
        table = write_table(output_dir, args, step, results)
        accelerator.print(table)
        if save_final:
            accelerator.unwrap_model(model).save_pretrained(output_dir / "final", state_dict=state_dict,
                                                            safe_serialization=True)
    metrics.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
