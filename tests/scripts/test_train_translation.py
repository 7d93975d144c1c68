"""scripts/train_translation.py as a user runs it, on a small local data set in WMT14's format,
and the offline SacreBLEU metric it scores with."""

import importlib.util
import json
import math

import datasets
import evaluate
import pytest
import sacrebleu
import torch
from script_runner import SCRIPTS, check, run_script
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from reformer_hf.training import read_metrics

SACREBLEU_METRIC = SCRIPTS / "metrics" / "sacrebleu"


def load_script_module():
    spec = importlib.util.spec_from_file_location("train_translation_script", SCRIPTS / "train_translation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wmt14_rows(pairs):
    return [{"translation": {"de": de, "en": en}} for en, de in pairs]


@pytest.fixture(scope="module")
def wmt14_folder(tmp_path_factory, en_de_pairs):
    """A save_to_disk DatasetDict with WMT14's splits and row format."""
    folder = tmp_path_factory.mktemp("wmt14_local")
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(wmt14_rows(en_de_pairs[:14])),
        "validation": datasets.Dataset.from_list(wmt14_rows(en_de_pairs[14:17])),
        "test": datasets.Dataset.from_list(wmt14_rows(en_de_pairs[17:])),
    })
    splits.save_to_disk(str(folder))
    return folder


def test_sacrebleu_metric_loads_offline_and_matches_a_hand_computed_score():
    metric = evaluate.load(str(SACREBLEU_METRIC))
    result = metric.compute(predictions=["the cat sat on the mat", "hello"],
                            references=[["the cat sat on a mat"], ["hello there"]])
    # Clipped n-gram matches over totals: 6/7, 3/5, 2/4, 1/3; 7 hypothesis words against 8 reference words.
    precisions = [6 / 7, 3 / 5, 2 / 4, 1 / 3]
    brevity_penalty = math.exp(1 - 8 / 7)
    expected = 100 * brevity_penalty * math.exp(sum(map(math.log, precisions)) / 4)
    assert result["score"] == pytest.approx(expected, abs=1e-9)
    assert (result["counts"], result["totals"], result["sys_len"], result["ref_len"]) == ([6, 3, 2, 1], [7, 5, 4, 3], 7, 8)

    # Two references per prediction: the metric's rows are transposed into sacreBLEU's streams.
    hypotheses, references = ["a b c d e", "x y z w"], [["a b c d f", "a b c d e"], ["x y z", "x y z v"]]
    direct = sacrebleu.corpus_bleu(hypotheses, [[refs[0] for refs in references], [refs[1] for refs in references]])
    assert metric.compute(predictions=hypotheses, references=references)["score"] == pytest.approx(direct.score)
    with pytest.raises(ValueError, match=r"the same number of references, got \[1, 2\]"):
        metric.compute(predictions=hypotheses, references=[["a"], ["b", "c"]])


@pytest.mark.parametrize("argv, message", [
    (["--output-dir", "{tmp}/a"], "give exactly one of --dataset PATH_OR_NAME and --gettext-dir DIR"),
    (["--dataset", "{data}", "--gettext-dir", "{tmp}", "--output-dir", "{tmp}/a"], "give exactly one of"),
    (["--dataset", "/nonexistent/pairs.jsonl", "--output-dir", "{tmp}/a"], "'/nonexistent/pairs.jsonl' does not exist"),
    (["--dataset", "{data}", "--vocab-size", "100", "--output-dir", "{tmp}/a"], "--vocab-size=100 must be >= 260"),
    (["--dataset", "{data}", "--max-tokens", "64", "--output-dir", "{tmp}/a"],
     "--max-tokens=64 must be >= --max-length=128"),
    (["--dataset", "{data}", "--test-size", "1.5", "--output-dir", "{tmp}/a"],
     "--test-size=1.5 must be a fraction in (0, 1) or a row count >= 1"),
    (["--dataset", "{data}", "--tokenizer", "{tmp}", "--output-dir", "{tmp}/a"], "is not a saved tokenizer folder"),
    (["--dataset", "{data}", "--output-dir", "{data}"], "is not empty; choose a new folder"),
    (["--dataset", "{data}", "--output-dir", "{data}/dataset_dict.json"], "dataset_dict.json' exists and is not a folder"),
    (["--dataset", "{data}", "--preset", "tiny", "--max-new-tokens", "400", "--vocab-size", "300",
      "--output-dir", "{tmp}/a"], "--max-length/--max-new-tokens need 401 positions but preset 'tiny' has 256"),
    (["--dataset", "{data}", "--config-overrides", "hidden_sise=8", "--vocab-size", "300", "--output-dir", "{tmp}/a"],
     "overrides ['hidden_sise'] are not ReformerConfig fields"),
])
def test_bad_arguments_fail_before_any_training_with_a_clear_message(tmp_path, capsys, wmt14_folder, argv, message):
    argv = [arg.format(tmp=tmp_path, data=wmt14_folder) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_script_module().main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_data_set_without_held_out_splits_is_split_by_source_sentence(tmp_path, en_de_pairs):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in wmt14_rows(en_de_pairs)),
                    encoding="utf-8")
    module = load_script_module()
    parser = module.build_parser()
    args = parser.parse_args(["--dataset", str(path), "--validation-size", "3", "--test-size", "0.1",
                              "--output-dir", str(tmp_path / "out")])
    splits = module.load_splits(parser, args)
    assert (len(splits["validation"]), len(splits["test"]), len(splits["train"])) == (3, 2, 15)
    sources = {name: {row["en"] for row in split["translation"]} for name, split in splits.items()}
    assert not sources["train"] & (sources["validation"] | sources["test"])


def test_length_batches_respect_the_token_budget_and_cover_every_pair_once():
    module = load_script_module()
    generator = torch.Generator().manual_seed(0)
    pairs = [([1] * int(torch.randint(1, 30, (), generator=generator)), [1] * int(torch.randint(1, 30, (), generator=generator)))
             for _ in range(200)]
    batches = module.length_batches(pairs, max_tokens=64, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    for batch in batches:
        assert len(batch) * max(max(len(pairs[i][0]), len(pairs[i][1])) for i in batch) <= 64
    assert batches == module.length_batches(pairs, max_tokens=64, seed=3)
    assert batches != module.length_batches(pairs, max_tokens=64, seed=4)


def test_smoke_run_reports_bleu_and_saves_a_translation_folder(tmp_path, wmt14_folder):
    output = tmp_path / "run"
    check(run_script(
        "train_translation.py", "--dataset", wmt14_folder, "--preset", "tiny", "--vocab-size", "300",
        "--max-tokens", "256", "--max-length", "32", "--max-steps", "8", "--eval-steps", "4", "--log-steps", "2",
        "--warmup-steps", "2", "--lr", "3e-3", "--num-beams", "2", "--max-new-tokens", "12",
        "--output-dir", output, timeout=180,
    ))
    results = json.loads((output / "results.json").read_text())
    assert results["steps"] == 8 and results["reversible"] is True and results["test_pairs"] == 3
    rows = [json.loads(line) for line in (output / "test_translations.jsonl").read_text().splitlines()]
    hypotheses, references = [row["hypothesis"] for row in rows], [row["reference"] for row in rows]
    assert results["test_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    copy_baseline = sacrebleu.corpus_bleu([row["source"] for row in rows], [references]).score
    assert results["copy_source_test_bleu"] == pytest.approx(copy_baseline)
    logged = read_metrics(output / "metrics.jsonl")
    assert [row["step"] for row in logged if "validation_loss" in row] == [4, 8]
    assert any("test_bleu" in row for row in logged)

    final = output / "final"
    assert "pipeline_tag: translation" in (final / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForSeq2SeqLM.from_pretrained(final).eval()
    assert model.generation_config.num_beams == 2 and model.generation_config.max_new_tokens == 12
    source = rows[0]["source"]
    generated = model.generate(**tokenizer(source, return_tensors="pt"))
    assert tokenizer.decode(generated[0], skip_special_tokens=True) == rows[0]["hypothesis"]
    translator = pipeline("translation", model=str(final), trust_remote_code=True)
    assert translator(source) == [{"translation_text": rows[0]["hypothesis"]}]
