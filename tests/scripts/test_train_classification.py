"""scripts/train_classification.py and the offline evaluate metrics it loads from scripts/metrics/."""

import importlib.util
import json
import pickle

import evaluate
import pytest
from script_runner import SCRIPTS, check, run_script


def load_script_module():
    spec = importlib.util.spec_from_file_location("train_classification_script", SCRIPTS / "train_classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_metrics_load_through_evaluate_and_match_hand_computed_values():
    accuracy = evaluate.load(str(SCRIPTS / "metrics" / "accuracy"))
    f1 = evaluate.load(str(SCRIPTS / "metrics" / "f1"))
    predictions, references = [0, 1, 2, 2, 1], [0, 1, 1, 2, 2]
    assert accuracy.compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(3 / 5)
    # per class: 0 -> 2*1/(1+1) = 1; 1 -> 2*1/(2+2) = 0.5; 2 -> 2*1/(2+2) = 0.5
    assert f1.compute(predictions=predictions, references=references, average=None)["f1"] == pytest.approx([1, 0.5, 0.5])
    assert f1.compute(predictions=predictions, references=references, average="macro")["f1"] == pytest.approx(2 / 3)
    assert f1.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(3 / 5)
    # binary, positive class 1: tp 1, predicted 2, actual 2
    assert f1.compute(predictions=[1, 1, 0, 0], references=[1, 0, 1, 0])["f1"] == pytest.approx(0.5)


def test_stdlib_package_task_trains_evaluates_and_saves_a_card(tmp_path):
    completed = check(run_script(
        "train_classification.py", "--task", "stdlib-packages", "--packages", "json,email", "--max-length", "128",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--output_dir", tmp_path, "--report_to", "none",
        "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no"))
    assert "cut to their first 128" in completed.stdout
    results = json.loads((tmp_path / "test_results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.0 <= results["test_f1_macro"] <= 1.0
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "email", "1": "json"}
    assert "text-classification" in (tmp_path / "final" / "README.md").read_text()


def test_a_local_datasets_file_with_string_labels_trains(tmp_path):
    rows = [{"review": text, "stars": label} for text, label in [
        ("The parser returns a dict for every JSON object.", "docs"), ("def loads(s): return decode(s)", "code"),
        ("Encoding errors raise UnicodeDecodeError.", "docs"), ("class Encoder: pass", "code")] * 5]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    module = load_script_module()
    assert module.main(["--dataset", str(data), "--text-column", "review", "--label-column", "stars",
                        "--max-length", "64", "--max_steps", "2", "--per_device_train_batch_size", "4",
                        "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu",
                        "--disable_tqdm", "true", "--save_strategy", "no"]) == 0
    config = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert config["label2id"] == {"code": 0, "docs": 1}


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --task and --dataset"),
    (["--task", "news"], "--task='news'; expected one of"),
    (["--task", "docs-sections"], "--task docs-sections needs --corpus"),
    (["--task", "stdlib-packages", "--packages", "json,nosuchpackage"], "'nosuchpackage' is not a package folder"),
    (["--task", "stdlib-packages", "--packages", "json,email", "--max-length", "4096"],
     "--max-length=4096 is larger than the model's maximum of 256"),
    (["--dataset", "{tmp}/missing.jsonl"], "missing.jsonl"),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main([*argv, "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_docs_sections_label_each_page_by_its_top_level_folder(tmp_path):
    """The layout of the Python docs (html/<section>/<page>.html); page text is real stdlib source."""
    from script_runner import stdlib_package

    sources = sorted(stdlib_package("json").glob("*.py")) + sorted(stdlib_package("email").glob("*.py"))[:15]
    for index, source in enumerate(sources):
        section = ("library", "tutorial")[index % 2]
        page = tmp_path / "html" / section / f"page{index}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"<html><body><pre>{source.read_text()}</pre></body></html>")
    (tmp_path / "html" / "index.html").write_text("<html>top-level pages have no section</html>")
    module = load_script_module()
    parser = module.build_parser()
    script, _ = parser.parse_args_into_dataclasses(
        args=["--task", "docs-sections", "--corpus", str(tmp_path / "html"), "--output_dir", str(tmp_path / "o")])
    dataset, names = module.build_dataset(script)
    assert names == ["library", "tutorial"]
    assert sum(len(split) for split in dataset.values()) == len(sources)
    for split in dataset.values():
        for row in split:
            assert row["text"].startswith("<html><body><pre>")


class PlantedPayload:
    """Unpickling this object creates `marker` (the stand-in for running a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


TRAINER_RUN = ["--task", "stdlib-packages", "--packages", "json,email", "--max-length", "64",
               "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
               "--save_strategy", "steps", "--save_steps", "2"]


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory):
    """A Trainer checkpoint (checkpoint-2) written by the script, and the files Trainer may read."""
    output = tmp_path_factory.mktemp("classification")
    check(run_script("train_classification.py", *TRAINER_RUN, "--max_steps", "2", "--output_dir", output))
    folder = output / "checkpoint-2"
    data_files = sorted(path.name for path in folder.iterdir() if path.suffix != ".py")
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "training_args.bin"} <= set(data_files)
    return folder, data_files


def planted_copy(folder, name, destination, marker):
    import shutil

    shutil.copytree(folder, destination)
    (destination / name).write_bytes(pickle.dumps(PlantedPayload(marker)))
    return destination


def test_transformers_trainer_itself_never_runs_a_pickle_planted_in_its_checkpoint(tmp_path, trainer_checkpoint):
    """What Trainer's resume reads it reads as weights only or as JSON/safetensors: no payload runs,
    whether Trainer then fails (a raw error) or never opens the file (training_args.bin)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from reformer_hf import ReformerForSequenceClassification
    from reformer_hf.tokenization import ReformerByteTokenizer

    folder, data_files = trainer_checkpoint
    tokenizer = ReformerByteTokenizer()
    rows = [{"input_ids": tokenizer(text).input_ids, "labels": label}
            for label, text in enumerate(["import json", "from email import message"])] * 8
    outcomes = {}
    for name in data_files:
        marker = tmp_path / f"marker-{name}"
        planted = planted_copy(folder, name, tmp_path / f"planted-{name}", marker)
        model = ReformerForSequenceClassification.from_pretrained(folder)
        args = TrainingArguments(output_dir=str(tmp_path / f"out-{name}"), max_steps=3, per_device_train_batch_size=4,
                                 report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
        try:
            trainer.train(resume_from_checkpoint=str(planted))
            outcomes[name] = "resumed"
        except Exception as error:  # noqa: BLE001 - any refusal will do; what matters is the marker
            outcomes[name] = type(error).__name__
        assert not marker.exists(), name
    assert outcomes["training_args.bin"] == "resumed"  # never read on resume
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert outcomes[name] != "resumed", (name, outcomes)


def test_the_script_refuses_a_trainer_checkpoint_with_a_planted_pickle_naming_the_file(tmp_path, capsys,
                                                                                      trainer_checkpoint):
    folder, data_files = trainer_checkpoint
    module = load_script_module()
    for name in data_files:
        marker = tmp_path / f"marker-{name}"
        planted = planted_copy(folder, name, tmp_path / f"planted-{name}", marker)
        argv = [*TRAINER_RUN, "--max_steps", "3", "--output_dir", str(tmp_path / f"out-{name}"),
                "--resume_from_checkpoint", str(planted)]
        if name == "training_args.bin":  # Trainer never reads it back: the run resumes and finishes
            assert module.main(argv) == 0
        else:
            with pytest.raises(SystemExit) as exit_info:
                module.main(argv)
            assert exit_info.value.code == 2
            assert f"--resume_from_checkpoint: {planted / name} " in capsys.readouterr().err
        assert not marker.exists(), name


def test_resume_from_checkpoint_true_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main([*TRAINER_RUN, "--max_steps", "3", "--output_dir", str(tmp_path / "empty"),
                                   "--resume_from_checkpoint", "True"])
    assert exit_info.value.code == 2
    assert "no checkpoint-* folder under" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main([*TRAINER_RUN, "--max_steps", "3", "--output_dir", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    assert f"--output_dir={str(tmp_path / 'taken')!r} exists and is not a folder" in capsys.readouterr().err
