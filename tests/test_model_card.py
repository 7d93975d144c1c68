import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard
from module_imports import absolute_import_roots
from safetensors.torch import save_file

from reformer_hf import model_card
from reformer_hf.configuration import ReformerConfig
from reformer_hf.model_card import (
    BASE_TAGS,
    CARD_TEMPLATE,
    count_safetensors_parameters,
    make_model_card,
    write_model_card,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

EVAL_RESULTS = {
    "task": {"type": "text-generation", "name": "Byte-level language modeling"},
    "dataset": {"type": "enwik8", "name": "enwik8", "split": "test"},
    "metrics": [
        {"type": "bpb", "value": 1.0537, "name": "bits per byte"},
        {"type": "accuracy", "value": 0.7712},
    ],
}
HYPERPARAMETERS = {"learning_rate": 0.0003, "train_batch_size": 8, "optimizer": "adamw", "adam_betas": [0.9, 0.98]}


def reformer_config(**overrides):
    fields = dict(attn_layers=["local", "lsh", "local", "lsh"], hidden_size=64, num_attention_heads=2,
                  attention_head_size=32, feed_forward_size=128, num_hashes=4, num_buckets=[4, 8],
                  lsh_attn_chunk_length=32, local_attn_chunk_length=16, axial_pos_shape=[32, 64], axial_pos_embds_dim=[16, 48],
                  max_position_embeddings=2048, vocab_size=258, is_decoder=True)
    fields.update(overrides)
    return ReformerConfig(**fields)


def enwik8_card(**overrides):
    arguments = dict(model_name="reformer-enwik8", datasets=["enwik8"], language="en",
                     training_hyperparameters=HYPERPARAMETERS, num_parameters=3_145_728,
                     repo_id="someone/reformer-enwik8")
    arguments.update(overrides)
    return make_model_card(reformer_config(), EVAL_RESULTS, **arguments)


def test_template_file_is_the_canonical_template():
    text = (REPO_ROOT / "model_cards" / "reformer_template.md").read_text(encoding="utf-8")
    assert text == CARD_TEMPLATE, (
        "model_cards/reformer_template.md differs from reformer_hf.model_card.CARD_TEMPLATE; regenerate it with "
        "`python -m reformer_hf.model_card > model_cards/reformer_template.md`")


def test_module_imports_only_stdlib_and_huggingface_hub():
    # model_card.py may be copied next to a checkpoint, so it must not need torch or transformers.
    for root in absolute_import_roots(model_card):
        assert root in sys.stdlib_module_names or root == "huggingface_hub", root


def test_metadata_round_trips_through_huggingface_hub():
    card = enwik8_card()
    parsed = ModelCard(str(card))  # a fresh parse of the text, as the Hub reads README.md
    data = parsed.data
    assert data.license == "apache-2.0"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert data.datasets == ["enwik8"]
    assert data.language == ["en"]
    assert set(BASE_TAGS) <= set(data.tags)
    assert data.metrics == ["bpb", "accuracy"]
    assert data.eval_results == [
        EvalResult(task_type="text-generation", task_name="Byte-level language modeling", dataset_type="enwik8",
                   dataset_name="enwik8", dataset_split="test", metric_type="bpb", metric_name="bits per byte",
                   metric_value=1.0537),
        EvalResult(task_type="text-generation", task_name="Byte-level language modeling", dataset_type="enwik8",
                   dataset_name="enwik8", dataset_split="test", metric_type="accuracy", metric_name="accuracy",
                   metric_value=0.7712),
    ]
    assert "model-index" in parsed.data.to_dict()


def test_card_text_names_the_evaluation_numbers():
    text = enwik8_card().text
    assert "| bits per byte | 1.0537 | enwik8 | test |" in text
    assert "| accuracy | 0.7712 | enwik8 | test |" in text


def test_hyperparameter_table_contains_the_given_values():
    text = enwik8_card().text
    assert "| learning_rate | 0.0003 |" in text
    assert "| train_batch_size | 8 |" in text
    assert "| optimizer | adamw |" in text
    assert "| adam_betas | 0.9, 0.98 |" in text


def test_architecture_table_is_filled_from_a_reformer_config():
    text = enwik8_card().text
    assert "| Layers (attention kind of each) | 4 (2 local, 2 lsh): local, lsh, local, lsh |" in text
    assert "| Hidden size | 64 |" in text
    assert "| Attention heads | 2 (head size 32) |" in text
    assert "| LSH hash rounds | 4 |" in text
    assert "| LSH buckets | 4 x 8 = 32 (factorised) |" in text
    assert "| LSH chunk length | 32 " in text
    assert "| Local attention chunk length | 16 " in text
    assert "| Axial position embeddings | shape 32 x 64, dimensions 16 + 48 |" in text
    assert "| Maximum length | 2048 |" in text
    assert "| Parameters | 3,145,728 (3.1M) |" in text
    assert "AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)" in text
    assert 'repo_id = "someone/reformer-enwik8"' in text
    assert "Kitaev, Nikita and Kaiser, {\\L}ukasz and Levskaya, Anselm" in text


def test_reformer_config_reports_window_modes_and_reversibility():
    config = ReformerConfig(attn_layers=["local", "lsh"], lsh_window_mode="chunk", reversible=False,
                            local_attn_wrap_around=True, is_decoder=True, hash_seed=7)
    text = make_model_card(config, model_name="tiny").text
    assert "| LSH window mode | chunk |" in text
    assert "| Reversible residual layers | no |" in text
    assert "| LSH hash rotations | fixed (hash_seed=7) |" in text
    assert "chunks wrap around as a ring |" in text
    assert "This model uses `chunk` mode and it is causal." in text
    assert "| Model type | reformer_hf |" in text
    stored = ReformerConfig(attn_layers=["local", "lsh"], reversible_stored_layers=1)
    assert ("| Reversible residual layers | yes, but the top 1 (reversible_stored_layers=1) |"
            in make_model_card(stored, model_name="tiny").text)


def test_transformers_reformer_config_is_described_as_chunk_mode():
    config = transformers.ReformerConfig(attn_layers=["lsh"], is_decoder=True)
    text = make_model_card(config, model_name="converted").text
    assert "This model uses `chunk` mode and it is causal." in text
    assert "| Model type | reformer |" in text


def test_plain_dict_config_without_lsh_layers():
    card = make_model_card({"attn_layers": ["local", "local"], "hidden_size": 32, "num_attention_heads": 4,
                            "model_type": "reformer_hf"}, model_name="local-only", pipeline_tag="fill-mask")
    assert "| Hidden size | 32 |" in card.text
    assert "| Attention heads | 4 (head size 8) |" in card.text
    assert "LSH hash rounds" not in card.text
    assert "This model has no LSH layers" in card.text
    assert "AutoModelForMaskedLM" in card.text
    assert card.data.eval_results is None
    assert "model-index" not in str(card)
    assert "No evaluation results were reported" in card.text


def test_eval_results_read_from_a_json_file_with_several_splits(tmp_path):
    blocks = [
        {"dataset": {"type": "enwik8", "split": "validation"}, "metrics": [{"type": "bpb", "value": 1.1}]},
        {"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb", "value": 1.2}]},
    ]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(blocks))
    card = make_model_card({"attn_layers": ["lsh"]}, path, model_name="m")
    parsed = ModelCard(str(card))
    assert [(r.dataset_split, r.metric_value) for r in parsed.data.eval_results] == [("validation", 1.1), ("test", 1.2)]
    assert "| bpb | 1.1 | enwik8 | validation |" in card.text


def test_write_model_card_counts_parameters_from_safetensors(tmp_path):
    reformer_config().save_pretrained(tmp_path)
    save_file({"embed": torch.zeros(258, 64), "bias": torch.zeros(64)}, tmp_path / "model.safetensors")
    readme = write_model_card(tmp_path, EVAL_RESULTS, model_name="saved")
    assert readme == tmp_path / "README.md"
    card = ModelCard.load(readme)
    assert f"| Parameters | {258 * 64 + 64:,} (16.6K) |" in card.text
    assert card.data.eval_results[0].metric_value == 1.0537
    assert count_safetensors_parameters(tmp_path) == 258 * 64 + 64


def test_sharded_safetensors_parameters_are_summed(tmp_path):
    save_file({"a": torch.zeros(3, 4)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(5)}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert count_safetensors_parameters(tmp_path) == 17


# ---------------------------------------------------------------- bad arguments, one case each

BAD_ARGUMENTS = {
    "pipeline_tag": ({"pipeline_tag": "text-generaton"}, "pipeline_tag='text-generaton' is invalid: expected one of"),
    "license": ({"license": "Apache 2.0"}, "license='Apache 2.0' is invalid: expected a Hub license id"),
    "language": ({"language": ["en", "English"]}, "every entry must be an ISO 639 code"),
    "datasets": ({"datasets": "my data set"}, "datasets='my data set' is invalid"),
    "extra_tags_string": ({"extra_tags": "long-context"}, "extra_tags='long-context' is invalid: expected a list of tags"),
    "model_name": ({"model_name": " "}, "model_name=' ' is invalid: expected a non-empty, single-line string"),
    "hyperparameters_not_dict": ({"training_hyperparameters": [("lr", 1)]}, "training_hyperparameters=[('lr', 1)] is invalid"),
    "hyperparameter_nested": ({"training_hyperparameters": {"optimizer": {"name": "adam"}}},
                              "training_hyperparameters['optimizer']={'name': 'adam'} is invalid"),
    "num_parameters_negative": ({"num_parameters": -1}, "num_parameters=-1 is invalid: expected a non-negative integer"),
    "num_parameters_float": ({"num_parameters": 1.5e6}, "num_parameters=1500000.0 is invalid"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_arguments_raise_a_clear_error(case):
    overrides, message = BAD_ARGUMENTS[case]
    arguments = {"model_name": "m", **overrides}
    with pytest.raises(ValueError) as error:
        make_model_card({"attn_layers": ["lsh"]}, EVAL_RESULTS, **arguments)
    assert message in str(error.value)


def test_config_of_the_wrong_type_raises():
    with pytest.raises(ValueError, match=r"config=\['lsh'\] is invalid: expected a transformers PreTrainedConfig or a dict"):
        make_model_card(["lsh"], model_name="m")


def test_bad_arguments_write_nothing(tmp_path):
    reformer_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pipeline_tag"):
        write_model_card(tmp_path, pipeline_tag="summarisation")
    assert not (tmp_path / "README.md").exists()


def test_write_model_card_needs_a_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        write_model_card(tmp_path)
