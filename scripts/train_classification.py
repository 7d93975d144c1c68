"""Fine-tune ReformerForSequenceClassification with transformers' Trainer on long documents.

Tasks that need no network (real text, real labels):

    # Python standard-library modules labelled by their top-level package
    python scripts/train_classification.py --task stdlib-packages --max-length 4096 --output_dir runs/stdlib
    # Python documentation pages labelled by section (library, reference, tutorial, howto, c-api, ...)
    python scripts/train_classification.py --task docs-sections --corpus DOCS/usr/share/doc/python3.11/html \
        --output_dir runs/docs
    # any `datasets` text-classification data set: a local folder (save_to_disk), a csv/json file, or a Hub name
    python scripts/train_classification.py --dataset data/reviews.jsonl --text-column text --label-column label \
        --output_dir runs/reviews

--resume_from_checkpoint (a checkpoint folder, or True for the newest under --output_dir) is read
safely before Trainer sees it: every pickle-format file Trainer loads goes through torch's
weights-only unpickler, JSON and safetensors files must parse, else the run stops naming the file (training_args.bin,
a full pickle that Trainer writes but never reads back, is left alone).  One run at a time uses
an output folder (OUTPUT_DIR/.reformer_hf.lock holds the running pid and host).

The model starts from --model-name-or-path (e.g. the `final` folder of scripts/train_lm.py) or from a
--preset.  Every TrainingArguments flag works (--learning_rate, --num_train_epochs, --bf16, ...).
Accuracy and macro F1 come from `evaluate`, loaded from scripts/metrics/ (the Hub's metric scripts
cannot be fetched offline).  The end writes OUTPUT_DIR/final (model, tokenizer, model card) and
OUTPUT_DIR/test_results.json.
"""

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TASKS = ("stdlib-packages", "docs-sections")
DEFAULT_PACKAGES = "asyncio,email,json,unittest,xml,http,multiprocessing,importlib,logging,concurrent"


@dataclass
class ScriptArguments:
    task: str = field(default=None, metadata={"help": f"built-in offline task: one of {TASKS}"})
    dataset: str = field(default=None, metadata={"help": "a datasets data set: save_to_disk folder, csv/json file, "
                                                        "or Hub name (instead of --task)"})
    dataset_config: str = field(default=None, metadata={"help": "config name of a Hub data set"})
    text_column: str = field(default="text", metadata={"help": "column with the document text (--dataset)"})
    label_column: str = field(default="label", metadata={"help": "column with the label (--dataset)"})
    packages: str = field(default=DEFAULT_PACKAGES, metadata={"help": "stdlib-packages: comma-separated packages"})
    corpus: str = field(default=None, metadata={"help": "docs-sections: the html folder of the Python docs"})
    min_bytes: int = field(default=256, metadata={"help": "built-in tasks: documents shorter than this are left out "
                                                         "(the count is printed)"})
    max_length: int = field(default=2048, metadata={"help": "bytes per document; longer ones keep their first "
                                                           "max_length bytes (the count is printed)"})
    model_name_or_path: str = field(default=None, metadata={"help": "start from this saved Reformer folder"})
    preset: str = field(default="tiny", metadata={"help": "otherwise a fresh model of this preset"})
    config_overrides: str = field(default="", metadata={"help": "ReformerConfig fields over the preset"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation/test split"})


def build_parser():
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ScriptArguments, TrainingArguments), description=__doc__)
    parser.formatter_class = __import__("argparse").RawDescriptionHelpFormatter
    return parser


def check_args(parser, script):
    if (script.task is None) == (script.dataset is None):
        parser.error("give exactly one of --task and --dataset")
    if script.task is not None and script.task not in TASKS:
        parser.error(f"--task={script.task!r}; expected one of {TASKS}")
    if script.task == "docs-sections":
        if script.corpus is None:
            parser.error("--task docs-sections needs --corpus, the html folder of the Python documentation")
        if not Path(script.corpus).is_dir():
            parser.error(f"--corpus={script.corpus!r} is not a directory")
    if script.max_length < 2:
        parser.error(f"--max-length={script.max_length} must be >= 2")
    if script.min_bytes < 1:
        parser.error(f"--min-bytes={script.min_bytes} must be >= 1")
    if script.model_name_or_path and not (Path(script.model_name_or_path) / "config.json").is_file():
        parser.error(f"--model-name-or-path={script.model_name_or_path!r} has no config.json (a save_pretrained folder "
                     "is expected; the Hub is not reachable here)")


def check_output_dir(parser, training_args):
    from reformer_hf.output_lock import OutputDirLocked, check_output_dir as check_folder

    try:
        check_folder(training_args.output_dir, "--output_dir")
    except (NotADirectoryError, OutputDirLocked) as error:
        parser.error(str(error))


def resume_checkpoint(parser, training_args):
    """The checkpoint folder Trainer will resume from (None: a fresh run), each of its files read
    the safe way first; a file that is not plain data stops the run here, named."""
    requested = training_args.resume_from_checkpoint
    if requested is None or requested.lower() == "false":
        return None
    if requested.lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        found = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if found is None:
            parser.error(f"--resume_from_checkpoint=True: no checkpoint-* folder under {training_args.output_dir!r}")
        folder = Path(found)
    else:
        folder = Path(requested)
        if not folder.is_dir():
            parser.error(f"--resume_from_checkpoint={requested!r} is not a checkpoint folder")
    for path in sorted(folder.iterdir()):
        problem = unsafe_file_problem(path)
        if problem:
            parser.error(f"--resume_from_checkpoint: {path} {problem}; refusing to resume from {str(folder)!r}")
    return str(folder)


def unsafe_file_problem(path):
    """Why Trainer should not read `path` (None when it is plain data)."""
    import numpy as np
    import torch

    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"is not valid JSON ({error})"
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError
            return f"is not a readable safetensors file ({error})"
    elif path.suffix in (".pt", ".pth", ".bin") and path.name != "training_args.bin":
        # The numpy types of Trainer's rng_state.pth, as transformers allows them for the same load.
        numpy_core = np._core if hasattr(np, "_core") else np.core
        numpy_types = [numpy_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        try:
            with torch.serialization.safe_globals(numpy_types):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for code, RuntimeError and others for damaged files
            return f"cannot be read as weights only ({type(error).__name__}: {str(error)[:300]})"
    return None


def split_of(key, seed):
    """'train' (80%), 'validation' (10%) or 'test' (10%), a stable function of a document's key."""
    bucket = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def labelled_files(script):
    """[(key, path, label name)] of the built-in tasks."""
    if script.task == "stdlib-packages":
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        rows = []
        for package in [name.strip() for name in script.packages.split(",") if name.strip()]:
            folder = stdlib / package
            if not folder.is_dir():
                raise ValueError(f"--packages: {package!r} is not a package folder of the standard library at {stdlib}")
            rows += [(str(path.relative_to(stdlib)), path, package) for path in sorted(folder.rglob("*.py"))]
        return rows
    root = Path(script.corpus)
    return [(str(path.relative_to(root)), path, path.relative_to(root).parts[0])
            for path in sorted(root.rglob("*.html")) if len(path.relative_to(root).parts) > 1]


def build_dataset(script):
    """A DatasetDict with train/validation/test splits of {"text", "label"} and the label names."""
    import datasets

    if script.task is not None:
        rows = {"train": [], "validation": [], "test": []}
        short = 0
        for key, path, label in labelled_files(script):
            text = path.read_bytes().decode("utf-8", errors="replace")
            if len(text.encode("utf-8")) < script.min_bytes:
                short += 1
                continue
            rows[split_of(key, script.split_seed)].append({"text": text, "label_name": label})
        print(f"{script.task}: left out {short} documents shorter than --min-bytes={script.min_bytes}")
        names = sorted({row["label_name"] for split in rows.values() for row in split})
        for split, split_rows in rows.items():
            if not split_rows:
                raise ValueError(f"the {split} split of --task {script.task} is empty; use more packages or files")
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict(
                {"text": [row["text"] for row in split_rows], "label": [names.index(row["label_name"]) for row in split_rows]},
                features=features)
            for split, split_rows in rows.items()
        }), names
    return load_named_dataset(script)


def load_named_dataset(script):
    import datasets

    path = Path(script.dataset)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file():
        kind = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"--dataset={script.dataset!r}: expected a .csv, .json, .jsonl or .parquet file")
        loaded = datasets.load_dataset(kind, data_files=str(path))
    else:
        loaded = datasets.load_dataset(script.dataset, script.dataset_config)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    for name, split in loaded.items():
        for column in (script.text_column, script.label_column):
            if column not in split.column_names:
                raise ValueError(f"--dataset split {name!r} has no column {column!r} (columns: {split.column_names}); "
                                 "set --text-column/--label-column")
    train = loaded["train"]
    if "validation" not in loaded or "test" not in loaded:
        held_out = train.train_test_split(test_size=0.2, seed=script.split_seed)
        halves = held_out["test"].train_test_split(test_size=0.5, seed=script.split_seed)
        loaded = datasets.DatasetDict({"train": held_out["train"], "validation": loaded.get("validation", halves["train"]),
                                       "test": loaded.get("test", halves["test"])})
    feature = loaded["train"].features[script.label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        to_id = None
    else:
        names = sorted({str(value) for split in loaded.values() for value in split[script.label_column]})
        to_id = {name: index for index, name in enumerate(names)}

    def standardise(row):
        label = row[script.label_column]
        return {"text": row[script.text_column], "label": to_id[str(label)] if to_id else label}

    columns = lambda split: split.column_names  # noqa: E731
    return datasets.DatasetDict({name: split.map(standardise, remove_columns=columns(split))
                                 for name, split in loaded.items() if name in ("train", "validation", "test")}), names


def build_model(parser, script, names):
    from reformer_hf import ReformerForSequenceClassification
    from reformer_hf.training import parse_overrides, preset_config

    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {name: index for index, name in enumerate(names)}}
    try:
        if script.model_name_or_path:
            model = ReformerForSequenceClassification.from_pretrained(script.model_name_or_path, **labels)
        else:
            # A classifier reads the whole document: bidirectional layers, each chunk seeing its neighbours.
            fields = {"is_decoder": False, "lsh_num_chunks_after": 1, "local_num_chunks_after": 1,
                      **parse_overrides(script.config_overrides)}
            model = ReformerForSequenceClassification(preset_config(script.preset, fields))
            model.config.update(labels)
    except ValueError as error:
        parser.error(str(error))
    if script.max_length > model.config.max_sequence_length:
        parser.error(f"--max-length={script.max_length} is larger than the model's maximum of "
                     f"{model.config.max_sequence_length} positions")
    return model


def main(argv=None):
    parser = build_parser()
    script, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_args(parser, script)
    check_output_dir(parser, training_args)
    resume_from = resume_checkpoint(parser, training_args)
    try:
        dataset, names = build_dataset(script)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if len(names) < 2:
        parser.error(f"the data have {len(names)} label(s) {names}; classification needs at least 2")
    model = build_model(parser, script, names)

    import evaluate
    import numpy as np
    from transformers import DataCollatorWithPadding, Trainer

    from reformer_hf.output_lock import OutputDirLock, OutputDirLocked
    from reformer_hf.tokenization import ReformerByteTokenizer

    tokenizer = ReformerByteTokenizer()
    longer = {name: sum(len(text.encode("utf-8")) > script.max_length for text in split["text"])
              for name, split in dataset.items()}
    print(f"documents longer than --max-length={script.max_length} bytes, cut to their first {script.max_length}: "
          f"{longer}")
    encoded = dataset.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=script.max_length),
                          batched=True, remove_columns=["text"])
    accuracy = evaluate.load(str(METRICS_DIR / "accuracy"))
    f1 = evaluate.load(str(METRICS_DIR / "f1"))

    def compute_metrics(prediction):
        predicted = np.argmax(prediction.predictions, axis=-1)
        return {**accuracy.compute(predictions=predicted, references=prediction.label_ids),
                "f1_macro": f1.compute(predictions=predicted, references=prediction.label_ids, average="macro")["f1"]}

    trainer = Trainer(model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=compute_metrics)
    main_process = training_args.process_index == 0
    lock = OutputDirLock(training_args.output_dir, "--output_dir") if main_process else contextlib.nullcontext()
    try:
        with lock:
            return train_and_save(trainer, training_args, script, model, tokenizer, encoded, names, resume_from)
    except OutputDirLocked as error:
        parser.error(str(error))


def train_and_save(trainer, training_args, script, model, tokenizer, encoded, names, resume_from):
    from reformer_hf.model_card import write_model_card
    from reformer_hf.tokenization import register_tokenizer_auto_class

    trainer.train(resume_from_checkpoint=resume_from)
    validation = trainer.evaluate()
    test = trainer.evaluate(encoded["test"], metric_key_prefix="test")
    print(json.dumps({"validation": validation, "test": test}, indent=2))
    if trainer.is_world_process_zero():
        output = Path(training_args.output_dir)
        (output / "test_results.json").write_text(json.dumps(test, indent=2), encoding="utf-8")
        final = output / "final"
        type(model).register_for_auto_class("AutoModelForSequenceClassification")
        model.config.register_for_auto_class()
        register_tokenizer_auto_class()
        trainer.save_model(str(final))
        tokenizer.save_pretrained(final)
        source = script.dataset or script.task
        write_model_card(
            final, [{"task": {"type": "text-classification", "name": "Text classification"},
                     "dataset": {"type": source.replace("/", "-"), "name": source, "split": "test"},
                     "metrics": [{"type": "accuracy", "value": round(test["test_accuracy"], 4)},
                                 {"type": "f1", "value": round(test["test_f1_macro"], 4), "name": "macro F1"}]}],
            model_name=output.resolve().name, pipeline_tag="text-classification",
            training_data=(f"{source}: {len(encoded['train'])} training documents, {len(names)} labels "
                           f"({', '.join(names)}), at most {script.max_length} bytes each."),
            training_hyperparameters={"learning rate": training_args.learning_rate,
                                      "batch size": training_args.per_device_train_batch_size,
                                      "steps": trainer.state.global_step, "max length": script.max_length},
        )
        print(f"saved {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
