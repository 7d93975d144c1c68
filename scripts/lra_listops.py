"""Long Range Arena ListOps: train ReformerForSequenceClassification with Trainer, test accuracy.

    # the LRA-size Reformer (6 layers, d_model 512, 8 heads, d_ff 2048), LRA's data (96K/2K/2K)
    python scripts/lra_listops.py --output_dir runs/listops --bf16 --per_device_train_batch_size 32 \\
        --learning_rate 1.6e-3 --lr_scheduler_type inverse_sqrt --warmup_steps 1000 --weight_decay 0.1 \\
        --max_steps 5000 --time-budget 420
    # the same-size dense model: the same model with every layer "full" (SDPA), same recipe
    python scripts/lra_listops.py --dense --output_dir runs/listops_dense ...

The data come from `reformer_hf.listops` (LRA's generator parameters), generated once and cached
under --data-dir as an Arrow data set keyed by the generator's parameters and seed
(--generator-workers processes; the data do not depend on their number).  The dense baseline is
this package's own model with every attention layer "full" (torch's SDPA): the same embeddings,
reversible layers, pooling, head and recipe, so the only difference is the attention.

--time-budget stops training after that many seconds of optimizer steps (evaluation and
checkpoint writing excluded), so two models can be given the same GPU time.  Every
TrainingArguments flag works.  Accuracy comes from `evaluate`, loaded from scripts/metrics/.  The
run writes OUTPUT_DIR/metrics.jsonl (every log row), OUTPUT_DIR/results.json (test and validation
accuracy, steps, training seconds, the model and data parameters), OUTPUT_DIR/test_predictions.json
and OUTPUT_DIR/final (the model).  --resume_from_checkpoint is read safely first, as in
scripts/train_classification.py; one run at a time uses an output folder.
"""

import contextlib
import dataclasses
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
METRICS_DIR = SCRIPTS_DIR / "metrics"
ATTENTION_KINDS = ("lsh", "local", "full")

# LRA's base model (Tay et al. 2021, appendix; lra_benchmarks/listops/configs/base_listops_config.py):
# 6 layers, d_model 512, 8 heads, d_ff 2048; lengths up to 2000 tokens, first-position pooling.
LRA_BASE = dict(
    hidden_size=512, num_attention_heads=8, attention_head_size=64, feed_forward_size=2048, hidden_act="relu",
    num_hashes=2, num_buckets=None, lsh_attn_chunk_length=64, local_attn_chunk_length=64,
    lsh_num_chunks_after=1, local_num_chunks_after=1, axial_pos_embds=False, max_position_embeddings=2048,
    hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.0, local_attention_probs_dropout=0.0,
    full_attention_probs_dropout=0.0, is_decoder=False,
)


@dataclass
class ListOpsArguments:
    attn_layers: str = field(default="lsh,lsh,lsh,lsh,lsh,lsh",
                             metadata={"help": "comma-separated attention kind per layer (lsh, local, full)"})
    dense: bool = field(default=False, metadata={"help": "the same-size dense model: every layer 'full' (SDPA)"})
    config_overrides: str = field(default="", metadata={"help": "ReformerConfig fields over the LRA base size"})
    time_budget: float = field(default=None, metadata={"help": "stop after this many seconds of training steps"})
    data_dir: str = field(default="data_cache/listops", metadata={"help": "cache folder of the generated data"})
    generator_workers: int = field(default=1, metadata={"help": "processes generating the data"})
    train_size: int = field(default=96_000)
    validation_size: int = field(default=2_000)
    test_size: int = field(default=2_000)
    min_length: int = field(default=500, metadata={"help": "lengths lie strictly between min and max"})
    max_length: int = field(default=2000)
    max_depth: int = field(default=10)
    max_args: int = field(default=10)
    listops_seed: int = field(default=0, metadata={"help": "seed of the ListOps generator"})


def build_parser():
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ListOpsArguments, TrainingArguments), description=__doc__)
    parser.formatter_class = __import__("argparse").RawDescriptionHelpFormatter
    return parser


def check_args(parser, script):
    layers = [kind.strip() for kind in script.attn_layers.split(",")]
    unknown = [kind for kind in layers if kind not in ATTENTION_KINDS]
    if unknown or not layers:
        parser.error(f"--attn-layers={script.attn_layers!r}: {unknown} not allowed; expected a comma-separated list "
                     f"of {ATTENTION_KINDS}")
    if script.time_budget is not None and script.time_budget <= 0:
        parser.error(f"--time-budget={script.time_budget} must be > 0 seconds")
    if script.generator_workers < 1:
        parser.error(f"--generator-workers={script.generator_workers} must be >= 1")
    for name in ("train_size", "validation_size", "test_size"):
        if getattr(script, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(script, name)} must be >= 1")


def listops_config(parser, script):
    from reformer_hf.listops import ListOpsConfig

    try:
        return ListOpsConfig(max_depth=script.max_depth, max_args=script.max_args, min_length=script.min_length,
                             max_length=script.max_length, train_size=script.train_size,
                             validation_size=script.validation_size, test_size=script.test_size,
                             seed=script.listops_seed)
    except ValueError as error:
        parser.error(str(error))


def model_config(parser, script, data_config):
    """The LRA-size ReformerConfig for ListOps, --attn-layers (or all 'full' with --dense) and overrides."""
    from reformer_hf import ReformerConfig
    from reformer_hf.listops import DIGITS, NUM_CLASSES, PAD_ID, VOCABULARY
    from reformer_hf.training import parse_overrides

    layers = [kind.strip() for kind in script.attn_layers.split(",")]
    if script.dense:
        layers = ["full"] * len(layers)
    try:
        fields = {**LRA_BASE, "attn_layers": layers, **parse_overrides(script.config_overrides)}
        config = ReformerConfig(vocab_size=len(VOCABULARY), pad_token_id=PAD_ID, bos_token_id=None,
                                eos_token_id=None, num_labels=NUM_CLASSES, id2label=dict(enumerate(DIGITS)),
                                label2id={digit: index for index, digit in enumerate(DIGITS)}, **fields)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if data_config.max_length - 1 > config.max_sequence_length:
        parser.error(f"--max-length={data_config.max_length}: sequences up to {data_config.max_length - 1} tokens "
                     f"exceed the model's maximum of {config.max_sequence_length} positions")
    return config


def safe_resume_checkpoint(parser, training_args):
    """scripts/train_classification.py's guard: the checkpoint Trainer resumes from, its files read safely first."""
    spec = importlib.util.spec_from_file_location("train_classification_guard", SCRIPTS_DIR / "train_classification.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    return guard.resume_checkpoint(parser, training_args)


def training_clock_callback(budget_seconds):
    """A TrainerCallback that sums the seconds of optimizer steps (not evaluation or saving) and stops
    training once they reach `budget_seconds` (every process stops at the same step)."""
    from transformers import TrainerCallback

    from reformer_hf.training import stop_on_every_process

    class TrainingClock(TrainerCallback):
        def __init__(self):
            self.seconds = 0.0
            self.step_started = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self.step_started
            if budget_seconds is None:
                return
            if stop_on_every_process(self.seconds >= budget_seconds, args.device):
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None:
                logs["training_seconds"] = round(self.seconds, 3)

    return TrainingClock()


def metrics_log_callback(path):
    """A TrainerCallback that appends every log row (with its step) to a JSON-lines file, flushed at once."""
    from transformers import TrainerCallback

    class MetricsLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and state.is_world_process_zero:
                with open(path, "a", encoding="utf-8") as file:
                    file.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsLines()


def main(argv=None):
    parser = build_parser()
    script, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_args(parser, script)
    from reformer_hf.output_lock import OutputDirLock, OutputDirLocked, check_output_dir

    try:
        check_output_dir(training_args.output_dir, "--output_dir")
    except (NotADirectoryError, OutputDirLocked) as error:
        parser.error(str(error))
    resume_from = safe_resume_checkpoint(parser, training_args)
    data_config = listops_config(parser, script)
    config = model_config(parser, script, data_config)

    from reformer_hf.listops import load_or_build

    started = time.perf_counter()
    data = load_or_build(script.data_dir, data_config, workers=script.generator_workers)
    print(f"ListOps data {data_config.cache_key()} ready in {time.perf_counter() - started:.1f}s: "
          + ", ".join(f"{name} {len(split)}" for name, split in data.items()), flush=True)

    main_process = training_args.process_index == 0
    lock = OutputDirLock(training_args.output_dir, "--output_dir") if main_process else contextlib.nullcontext()
    try:
        with lock:
            return train_and_test(script, training_args, config, data_config, data, resume_from)
    except OutputDirLocked as error:
        parser.error(str(error))


def train_and_test(script, training_args, config, data_config, data, resume_from):
    import evaluate
    import numpy as np
    import torch
    from transformers import Trainer

    from reformer_hf import ReformerForSequenceClassification
    from reformer_hf.listops import collate

    output = Path(training_args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model = ReformerForSequenceClassification(config)
    accuracy = evaluate.load(str(METRICS_DIR / "accuracy"))

    def compute_metrics(prediction):
        return accuracy.compute(predictions=np.argmax(prediction.predictions, axis=-1),
                                references=prediction.label_ids)

    clock = training_clock_callback(script.time_budget)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collate, compute_metrics=compute_metrics,
                      callbacks=[clock, metrics_log_callback(output / "metrics.jsonl")])
    trainer.train(resume_from_checkpoint=resume_from)
    validation = trainer.evaluate()
    test = trainer.predict(data["test"], metric_key_prefix="test")
    if not trainer.is_world_process_zero():
        return 0
    predicted = np.argmax(test.predictions, axis=-1)
    (output / "test_predictions.json").write_text(json.dumps(
        {"predictions": predicted.tolist(), "labels": test.label_ids.tolist()}), encoding="utf-8")
    results = {
        "test_accuracy": test.metrics["test_accuracy"],
        "validation_accuracy": validation["eval_accuracy"],
        "steps": trainer.state.global_step,
        "training_seconds": round(clock.seconds, 2),
        "examples_seen": trainer.state.global_step * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps * training_args.world_size,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "attn_layers": config.attn_layers,
        "dense": script.dense,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "data": {**dataclasses.asdict(data_config), "cache_key": data_config.cache_key()},
        "recipe": {"learning_rate": training_args.learning_rate, "scheduler": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
                   "warmup_steps": training_args.warmup_steps, "weight_decay": training_args.weight_decay,
                   "batch_size": training_args.per_device_train_batch_size, "bf16": training_args.bf16,
                   "max_steps": training_args.max_steps, "time_budget": script.time_budget},
        "command": " ".join(sys.argv),
    }
    (output / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))
    trainer.save_model(str(output / "final"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
