"""scripts/lra_listops.py: trains on generated ListOps, writes the test accuracy it measured."""

import json

import pytest
from script_runner import load_script

from reformer_hf.listops import ListOpsConfig, load_or_build

DATA = ["--train-size", "64", "--validation-size", "16", "--test-size", "24", "--min-length", "20",
        "--max-length", "60", "--max-depth", "5", "--max-args", "4", "--listops-seed", "2"]
TINY = ["--config-overrides", "hidden_size=32,num_attention_heads=2,attention_head_size=16,feed_forward_size=64,"
        "lsh_attn_chunk_length=8,local_attn_chunk_length=8,max_position_embeddings=64"]
TRAINER = ["--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
           "--logging_steps", "1", "--disable_tqdm", "true", "--learning_rate", "1e-3"]


def run(tmp_path, *args):
    return load_script("lra_listops.py").main([*DATA, *TINY, *TRAINER, "--data-dir", str(tmp_path / "data"), *args])


def test_trains_and_writes_the_test_accuracy_of_its_predictions(tmp_path):
    out = tmp_path / "out"
    assert run(tmp_path, "--attn-layers", "lsh,local", "--max_steps", "6", "--output_dir", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    predictions = json.loads((out / "test_predictions.json").read_text())
    data = load_or_build(tmp_path / "data", ListOpsConfig(max_depth=5, max_args=4, min_length=20, max_length=60,
                                                          train_size=64, validation_size=16, test_size=24, seed=2))
    assert predictions["labels"] == data["test"]["label"]
    hits = sum(p == label for p, label in zip(predictions["predictions"], predictions["labels"]))
    assert results["test_accuracy"] == pytest.approx(hits / 24)
    assert results["steps"] == 6 and results["attn_layers"] == ["lsh", "local"] and not results["dense"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 6 and all(0.0 < loss < 10.0 for loss in losses)
    assert len(json.loads((out / "final" / "config.json").read_text())["id2label"]) == 10


def test_dense_baseline_is_every_layer_full_and_the_time_budget_stops_it(tmp_path):
    out = tmp_path / "dense"
    assert run(tmp_path, "--dense", "--attn-layers", "lsh,local,lsh", "--max_steps", "100000", "--time-budget", "0.5",
               "--output_dir", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dense"] and results["attn_layers"] == ["full", "full", "full"]
    assert 1 <= results["steps"] < 100000 and results["training_seconds"] >= 0.5


@pytest.mark.parametrize("args, message", [
    (["--attn-layers", "lsh,dense"], "['dense'] not allowed"),
    (["--time-budget", "0"], "--time-budget=0.0 must be > 0"),
    (["--max-length", "100"], "sequences up to 99 tokens exceed the model's maximum of 64 positions"),
    (["--min-length", "50", "--max-length", "51"], "max_length=51 is invalid"),
    (["--config-overrides", "num_hashes=[1"], "num_hashes"),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, *args, "--output_dir", str(tmp_path / "out"))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before any generation
