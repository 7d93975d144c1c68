"""Train a byte-level Reformer language model with accelerate, on enwik8 or any local text corpus.

    # one process (CPU or one GPU)
    python scripts/train_lm.py --corpus DOCS/usr/share/doc/python3.11/html --corpus-pattern '*.html' \
        --preset lm-6layer-16k --seq-len 16384 --mixed-precision bf16 --output-dir runs/docs16k
    # the paper's enwik8 model on 64K-byte sequences
    python scripts/train_lm.py --enwik8 enwik8.zip --preset enwik8-paper --seq-len 65536 \
        --lr 0.03125 --lr-scheduler inverse_sqrt --warmup-steps 2000 --output-dir runs/enwik8
    # several processes: the same command under accelerate launch
    accelerate launch --config_file scripts/accelerate_configs/ddp_2gpu.yaml scripts/train_lm.py ...
    # continue a run that was stopped or killed, from its newest complete checkpoint
    python scripts/train_lm.py ... --output-dir runs/docs16k --resume

Batches are random windows of --seq-len bytes drawn as a pure function of (--seed, step), every
--save-steps steps a checkpoint (model, optimizer, scheduler, RNG states of every process) is
written atomically under OUTPUT_DIR/checkpoints, and --resume continues the loss curve exactly from
the newest checkpoint that passes validation (an older one when the newest is damaged; nothing in
a checkpoint is unpickled).  One run at a time uses an output folder: OUTPUT_DIR/.reformer_hf.lock
holds the running pid and host.
Evaluation reports bits per byte on the validation split; the end of training writes
OUTPUT_DIR/final (save_pretrained model, tokenizer, model card with the test bits per byte).
Metrics go to OUTPUT_DIR/metrics.jsonl and TensorBoard (OUTPUT_DIR/tensorboard).
"""

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

PRESET_NAMES = ("tiny", "enwik8-paper", "enwik8-paper-d768", "lm-6layer-16k")
SCHEDULERS = ("constant_with_warmup", "linear", "cosine", "inverse_sqrt")
PRECISIONS = ("no", "bf16", "fp16")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (exactly one of --enwik8 and --corpus)")
    data.add_argument("--enwik8", help="local enwik8 or enwik8.zip (100M bytes, split 90M/5M/5M)")
    data.add_argument("--corpus", nargs="+", help="local text/HTML files or folders (read recursively as bytes)")
    data.add_argument("--corpus-pattern", action="append", dest="corpus_patterns",
                      help="glob of corpus files to read under the folders (repeatable; default: every file)")
    data.add_argument("--valid-fraction", type=float, default=0.05,
                      help="share of a --corpus held out for validation, and again for test (default 0.05)")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="named model configuration")
    model.add_argument("--config-overrides", default="",
                       help='ReformerConfig fields, e.g. "num_hashes=4,attn_layers=[\\"lsh\\",\\"local\\"]"')
    model.add_argument("--attn-layers", help="every layer of this kind instead (lsh, local or full): "
                       "'full' gives the dense model of the same size")
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", required=True, help="checkpoints, metrics, TensorBoard logs, final model")
    train.add_argument("--seq-len", type=int, default=256, help="bytes per training window (up to the model's maximum)")
    train.add_argument("--batch-size", type=int, default=8, help="windows per process per micro-batch")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--max-steps", type=int, default=1000, help="optimizer steps in all")
    train.add_argument("--time-budget", type=float, default=None,
                       help="stop after this many seconds of training in this invocation, saving a checkpoint")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lr-scheduler", default="cosine", choices=SCHEDULERS)
    train.add_argument("--warmup-steps", type=int, default=100)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--adam-epsilon", type=float, default=1e-8, help="AdamW epsilon (the paper's trax setup: 1e-9)")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument("--mixed-precision", default="no", choices=PRECISIONS,
                       help="accelerate's mixed precision (bf16 autocast on GPU)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    logs = parser.add_argument_group("evaluation, checkpoints and logs")
    logs.add_argument("--eval-steps", type=int, default=200, help="evaluate every N steps (0: only at the end)")
    logs.add_argument("--eval-windows", type=int, default=16, help="validation windows of --seq-len per evaluation")
    logs.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    logs.add_argument("--keep-checkpoints", type=int, default=2)
    logs.add_argument("--log-steps", type=int, default=1, help="log the training loss every N steps")
    logs.add_argument("--no-progress", action="store_true", help="no progress bar")
    logs.add_argument("--no-tensorboard", action="store_true", help="metrics.jsonl only")
    logs.add_argument("--no-final-model", action="store_true", help="skip the save_pretrained folder at the end")
    return parser


def check_args(parser, args):
    """Every argument error, raised through the parser before anything is loaded."""
    from reformer_hf.training import run_folder_error

    if (args.enwik8 is None) == (args.corpus is None):
        parser.error("give exactly one of --enwik8 PATH and --corpus PATH [PATH ...]")
    paths = [args.enwik8] if args.enwik8 else args.corpus
    for path in paths:
        if not Path(path).exists():
            parser.error(f"corpus path {path!r} does not exist")
    if args.enwik8 and not Path(args.enwik8).is_file():
        parser.error(f"--enwik8={args.enwik8!r} is not a file; expected the enwik8 file or enwik8.zip")
    positive = ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_windows", "keep_checkpoints", "log_steps")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for name in ("warmup_steps", "eval_steps", "save_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    if args.seq_len < 2:
        parser.error(f"--seq-len={args.seq_len} must be >= 2 (a window predicts its bytes after the first)")
    if not 0.0 < args.valid_fraction < 0.5:
        parser.error(f"--valid-fraction={args.valid_fraction} must lie in (0, 0.5)")
    if args.lr <= 0:
        parser.error(f"--lr={args.lr} must be > 0")
    if args.max_grad_norm < 0 or args.weight_decay < 0:
        parser.error("--max-grad-norm and --weight-decay must be >= 0")
    if args.adam_epsilon <= 0:
        parser.error(f"--adam-epsilon={args.adam_epsilon} must be > 0")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget={args.time_budget} must be > 0 seconds")
    if args.attn_layers not in (None, "lsh", "local", "full"):
        parser.error(f"--attn-layers={args.attn_layers!r}; expected lsh, local or full")
    folder_error = run_folder_error(args.output_dir, args.resume)
    if folder_error:
        parser.error(folder_error)


def build_config(parser, args):
    from reformer_hf.training import parse_overrides, preset_config

    try:
        overrides = parse_overrides(args.config_overrides)
        if args.attn_layers:
            from reformer_hf.training import PRESETS

            depth = len(overrides.get("attn_layers", PRESETS[args.preset]["attn_layers"]))
            overrides["attn_layers"] = [args.attn_layers] * depth
        config = preset_config(args.preset, overrides)
    except ValueError as error:
        parser.error(str(error))
    if not config.is_decoder:
        parser.error("a language model needs is_decoder=True; do not override it")
    if args.seq_len > config.max_sequence_length:
        parser.error(f"--seq-len={args.seq_len} is larger than the model's maximum of {config.max_sequence_length} "
                     f"positions (preset {args.preset!r}); raise max_position_embeddings/axial_pos_shape with "
                     "--config-overrides or choose a shorter --seq-len")
    return config


def load_splits(parser, args):
    """{"train", "validation", "test"} -> bytes, each long enough for one window."""
    from reformer_hf.data import load_enwik8, load_text_corpus, split_byte_stream

    try:
        if args.enwik8:
            splits = load_enwik8(args.enwik8)
        else:
            data = load_text_corpus(args.corpus, args.corpus_patterns or ("*",))
            held_out = int(len(data) * args.valid_fraction)
            splits = split_byte_stream(data, (len(data) - 2 * held_out, held_out, held_out)) if held_out else None
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if splits is None or min(len(part) for part in splits.values()) < args.seq_len:
        sizes = {name: len(part) for name, part in (splits or {}).items()}
        parser.error(f"the corpus is too small for --seq-len={args.seq_len}: every split needs at least one window "
                     f"(split sizes in bytes: {sizes or 'corpus too small to split'})")
    return splits


class Batches:
    """Training windows as a pure function of (seed, step, micro-batch, process): resumable without a sampler."""

    def __init__(self, train_bytes, seq_len, per_process, grad_accum, world_size, rank, seed, max_steps):
        from reformer_hf.data import RandomByteWindows

        self.per_process, self.grad_accum, self.world, self.rank = per_process, grad_accum, world_size, rank
        total = max_steps * grad_accum * per_process * world_size
        self.windows = RandomByteWindows(train_bytes, seq_len, num_samples=total, seed=seed)

    def micro_batch(self, step, micro):
        import torch

        first = ((step * self.grad_accum + micro) * self.world + self.rank) * self.per_process
        rows = [self.windows[first + k]["input_ids"] for k in range(self.per_process)]
        return torch.stack(rows)


def evaluate_bpb(accelerator, model, split_bytes, seq_len, n_windows, seed):
    """Bits per byte over up to `n_windows` evenly spaced windows of a split (deterministic hashing)."""
    import numpy as np
    import torch

    from reformer_hf.tokenization import BYTE_ID_OFFSET
    from reformer_hf.training import bits_per_byte, evaluating

    byte_values = np.frombuffer(split_bytes, dtype=np.uint8)
    n_available = len(byte_values) // seq_len
    starts = np.linspace(0, n_available - 1, num=min(n_windows, n_available)).astype(np.int64) * seq_len
    mine = starts[accelerator.process_index :: accelerator.num_processes]
    nll = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    with evaluating(accelerator, model, seed) as unwrapped:
        for start in mine:
            window = byte_values[start : start + seq_len].astype(np.int64) + BYTE_ID_OFFSET
            input_ids = torch.from_numpy(window)[None].to(accelerator.device)
            with accelerator.autocast():
                out = unwrapped(input_ids=input_ids, labels=input_ids)
            nll += out.loss.double() * (seq_len - 1)
            count += seq_len - 1
    nll, count = accelerator.reduce(nll, "sum"), accelerator.reduce(count, "sum")
    return bits_per_byte(nll.item(), count.item())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    config = build_config(parser, args)
    splits = load_splits(parser, args)

    import torch

    from reformer_hf.checkpointing import CheckpointError
    from reformer_hf.output_lock import OutputDirLocked
    from reformer_hf.training import make_accelerator, output_dir_lock

    # cpu=True on a machine without CUDA is what makes accelerate pick gloo DDP under a multi-process launch.
    accelerator = make_accelerator(args.mixed_precision, cpu=args.cpu or not torch.cuda.is_available())
    try:
        with output_dir_lock(accelerator, args.output_dir):
            return train(args, accelerator, config, splits)
    except (OutputDirLocked, CheckpointError) as error:
        parser.error(str(error))


def train(args, accelerator, config, splits):
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from reformer_hf import ReformerForCausalLM
    from reformer_hf.checkpointing import CheckpointManager
    from reformer_hf.training import MetricsLog, optimizer_step, stop_on_every_process, tensorboard_available

    torch.backends.cuda.matmul.allow_tf32 = True
    output_dir = Path(args.output_dir)

    set_seed(args.seed)
    model = ReformerForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=args.adam_epsilon,
                                  weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps)
    # The scheduler is not prepared: a prepared scheduler steps once per process per step.
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = CheckpointManager(accelerator, output_dir / "checkpoints", model, optimizer, scheduler,
                                    keep=args.keep_checkpoints)
    resumed = checkpoints.resume() if args.resume else None
    start_step, elapsed = (resumed["step"], resumed["elapsed_seconds"]) if resumed else (0, 0.0)
    use_tensorboard = tensorboard_available() and not args.no_tensorboard
    metrics = MetricsLog(output_dir, resume_step=start_step, enabled=accelerator.is_main_process,
                         tensorboard=use_tensorboard)
    if accelerator.is_main_process:
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2), encoding="utf-8")

    batches = Batches(splits["train"], args.seq_len, args.batch_size, args.grad_accum, accelerator.num_processes,
                      accelerator.process_index, args.seed, args.max_steps)
    # Every micro-batch's loss is divided by the targets of the whole step on this process, so the
    # accumulated gradient is the mean over the step; DDP's average over processes keeps it so.
    targets_per_step = args.grad_accum * args.batch_size * (args.seq_len - 1)
    tokens_per_step = args.grad_accum * args.batch_size * args.seq_len * accelerator.num_processes
    progress = tqdm(total=args.max_steps, initial=start_step, disable=args.no_progress or not accelerator.is_main_process,
                    desc="train", dynamic_ncols=True)

    def checkpoint_info(step):
        return {"elapsed_seconds": elapsed, "tokens": step * tokens_per_step, "args": vars(args)}

    model.train()
    step = start_step
    session_start = time.perf_counter()
    last_saved = start_step
    stopped_early = False
    while step < args.max_steps:
        step_start = time.perf_counter()
        loss_total = torch.zeros((), device=accelerator.device)
        for micro in range(args.grad_accum):
            input_ids = batches.micro_batch(step, micro).to(accelerator.device)
            sync = contextlib.nullcontext() if micro == args.grad_accum - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss = model(input_ids=input_ids, labels=input_ids, num_items_in_batch=targets_per_step).loss
                accelerator.backward(loss)
            loss_total += loss.detach()
        optimizer_step(accelerator, model, optimizer, scheduler, args.max_grad_norm)
        step += 1
        step_loss = accelerator.reduce(loss_total, "mean").item()
        elapsed += time.perf_counter() - step_start
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}", bpb=f"{step_loss / math.log(2):.3f}")

        values = {}
        if step % args.log_steps == 0 or step == args.max_steps:
            values.update(loss=step_loss, train_bpb=step_loss / math.log(2), lr=scheduler.get_last_lr()[0],
                          tokens=step * tokens_per_step, elapsed_seconds=elapsed)
        out_of_time = args.time_budget is not None and stop_on_every_process(
            time.perf_counter() - session_start >= args.time_budget, accelerator.device)
        # A run stopped by its time budget is evaluated where it stops, so equal-time comparisons have a point.
        if args.eval_steps and (step % args.eval_steps == 0 or (out_of_time and step < args.max_steps)):
            eval_start = time.perf_counter()
            values["eval_bpb"] = evaluate_bpb(accelerator, model, splits["validation"], args.seq_len,
                                              args.eval_windows, args.seed)
            values["eval_seconds"] = time.perf_counter() - eval_start
            values["elapsed_seconds"] = elapsed
            accelerator.print(f"step {step}: validation {values['eval_bpb']:.4f} bits per byte")
        if values:
            metrics.log(step, values)
        if (args.save_steps and step % args.save_steps == 0) or (out_of_time and step < args.max_steps):
            checkpoints.save(step, checkpoint_info(step))
            last_saved = step
        if out_of_time and step < args.max_steps:
            accelerator.print(f"time budget of {args.time_budget:.0f}s spent at step {step}; resume with --resume")
            stopped_early = True
            break
    progress.close()

    if not stopped_early:
        if last_saved != step:
            checkpoints.save(step, checkpoint_info(step))
        finish(args, accelerator, model, config, splits, metrics, step, elapsed)
    metrics.close()
    # Every process reaches the process group's teardown together: a rank that destroys it while
    # another is still finishing can leave the launch waiting at exit (pytorch/pytorch#75097).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def finish(args, accelerator, model, config, splits, metrics, step, elapsed):
    """Final validation and test bits per byte, then the save_pretrained folder with tokenizer and card."""
    valid_bpb = evaluate_bpb(accelerator, model, splits["validation"], args.seq_len, args.eval_windows, args.seed)
    test_bpb = evaluate_bpb(accelerator, model, splits["test"], args.seq_len, args.eval_windows, args.seed)
    metrics.log(step, {"final_valid_bpb": valid_bpb, "final_test_bpb": test_bpb, "elapsed_seconds": elapsed})
    accelerator.print(f"final: validation {valid_bpb:.4f}, test {test_bpb:.4f} bits per byte")
    from reformer_hf.training import gather_state_dict

    state_dict = None if args.no_final_model else gather_state_dict(accelerator, model)
    if args.no_final_model or not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    from reformer_hf import ReformerConfig, ReformerForCausalLM
    from reformer_hf.model_card import write_model_card
    from reformer_hf.tokenization import ReformerByteTokenizer, register_tokenizer_auto_class

    final_dir = Path(args.output_dir) / "final"
    ReformerConfig.register_for_auto_class()
    ReformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    register_tokenizer_auto_class()
    accelerator.unwrap_model(model).save_pretrained(final_dir, state_dict=state_dict, safe_serialization=True)
    ReformerByteTokenizer().save_pretrained(final_dir)
    dataset = {"type": "enwik8", "name": "enwik8"} if args.enwik8 else {"type": "text", "name": "local text corpus"}
    eval_results = [
        {"task": {"type": "text-generation", "name": "Language modeling"}, "dataset": {**dataset, "split": split},
         "metrics": [{"type": "bpb", "value": round(value, 4), "name": "bits per byte"}]}
        for split, value in (("validation", valid_bpb), ("test", test_bpb))
    ]
    (final_dir / "eval_results.json").write_text(json.dumps(eval_results, indent=2), encoding="utf-8")
    source = f"enwik8 ({args.enwik8})" if args.enwik8 else "local files: " + ", ".join(args.corpus)
    write_model_card(
        final_dir, eval_results, model_name=final_dir.parent.resolve().name,
        datasets=["enwik8"] if args.enwik8 else None, language=["en"],
        training_data=(f"Byte-level language modelling on {source}; windows of {args.seq_len} bytes; "
                       f"bits per byte over {args.eval_windows} held-out windows per split."),
        training_hyperparameters={
            "preset": args.preset, "steps": step, "sequence length": args.seq_len,
            "batch size (global)": args.batch_size * args.grad_accum * accelerator.num_processes,
            "learning rate": args.lr, "scheduler": args.lr_scheduler, "warmup steps": args.warmup_steps,
            "mixed precision": args.mixed_precision, "processes": accelerator.num_processes,
            "training seconds": round(elapsed, 1),
        },
    )
    accelerator.print(f"saved {final_dir}")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(main())
