import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reformer_hf import (
    ReformerByteTokenizer,
    ReformerConfig,
    ReformerForCausalLM,
    ReformerForConditionalGeneration,
    ReformerForSequenceClassification,
    ReformerModel,
)
from reformer_hf.configuration import ARCHITECTURE_FIELDS


def small(**overrides):
    fields = dict(hidden_size=16, num_attention_heads=2, axial_pos_shape=[4, 8], axial_pos_embds_dim=[8, 8],
                  max_position_embeddings=32)
    fields.update(overrides)
    return fields


def assert_names(excinfo, *words):
    message = str(excinfo.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_defaults_are_valid_and_layers_counted():
    config = ReformerConfig()
    assert config.num_hidden_layers == len(config.attn_layers) == 6
    assert config.head_size == 64 and config.lsh_window_mode == "bucket_window"


def test_round_trip_through_json(tmp_path):
    config = ReformerConfig(**small(num_buckets=[2, 4], attn_layers=["lsh", "full"], is_decoder=True,
                                    chunk_size_feed_forward=7, chunk_size_lm_head=9, hash_seed=3))
    config.save_pretrained(tmp_path)
    loaded = ReformerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert (loaded.chunk_size_feed_forward, loaded.chunk_size_lm_head, loaded.hash_seed) == (7, 9, 3)
    assert loaded.num_buckets == [2, 4] and loaded.n_buckets_total == 8 and loaded.is_decoder


def test_odd_num_buckets():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(num_buckets=5))
    assert_names(excinfo, "num_buckets", "5", "even")


def test_odd_bucket_factor():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(num_buckets=[4, 3]))
    assert_names(excinfo, "num_buckets", "[4, 3]", "even")


def test_num_hashes_below_one():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(num_hashes=0))
    assert_names(excinfo, "num_hashes", "0", ">= 1")


def test_unknown_attention_kind():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(attn_layers=["lsh", "sparse"]))
    assert_names(excinfo, "attn_layers", "'sparse'", "lsh", "local", "full")


def test_axial_dims_must_sum_to_hidden_size():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(axial_pos_embds_dim=[8, 4]))
    assert_names(excinfo, "axial_pos_embds_dim", "[8, 4]", "hidden_size=16")


def test_hidden_size_not_divisible_by_heads():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(num_attention_heads=3, attention_head_size=None))
    assert_names(excinfo, "hidden_size=16", "num_attention_heads=3", "attention_head_size")


def test_explicit_head_size_lifts_divisibility():
    assert ReformerConfig(**small(num_attention_heads=3, attention_head_size=8)).head_size == 8


def test_unknown_window_mode():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(lsh_window_mode="sliding"))
    assert_names(excinfo, "lsh_window_mode", "'sliding'", "bucket_window", "chunk")


def test_unknown_backend():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(attn_backend="cuda"))
    assert_names(excinfo, "attn_backend", "'cuda'", "triton")


def test_dropout_out_of_range():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(hidden_dropout_prob=1.5))
    assert_names(excinfo, "hidden_dropout_prob", "1.5", "[0, 1)")


def test_max_positions_beyond_axial_grid():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(max_position_embeddings=64))
    assert_names(excinfo, "max_position_embeddings", "64", "32")


def test_causal_model_cannot_look_ahead():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(is_decoder=True, lsh_num_chunks_after=1))
    assert_names(excinfo, "lsh_num_chunks_after", "1", "is_decoder")


def test_tied_embeddings_rejected():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(tie_word_embeddings=True))
    assert_names(excinfo, "tie_word_embeddings", "2 * hidden_size")


def test_negative_chunk_length():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(lsh_attn_chunk_length=0))
    assert_names(excinfo, "lsh_attn_chunk_length", "0", ">= 1")


def test_unknown_activation():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(hidden_act="mish"))
    assert_names(excinfo, "hidden_act", "'mish'")


@pytest.mark.parametrize("value, allowed", [(-1, ">= 0"), (True, ">= 0"), (1.5, ">= 0"), (5, "at most the number of "
                                                                                           "layers (4)")])
def test_reversible_stored_layers_between_zero_and_the_depth(value, allowed):
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(attn_layers=["local", "lsh"] * 2, reversible_stored_layers=value))
    assert_names(excinfo, "reversible_stored_layers", repr(value), allowed)
    assert ReformerConfig(**small(attn_layers=["local", "lsh"] * 2, reversible_stored_layers=4)).reversible_stored_layers == 4


# --------------------------------------------------------------------------- damaged config.json files

def saved_config_folder(tmp_path, config=None, drop=(), **replace):
    """A folder whose config.json is `config` saved by this package, less the `drop` fields."""
    (config or ReformerConfig(**small())).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    fields = json.loads(path.read_text())
    for name in drop:
        del fields[name]
    fields.update(replace)
    path.write_text(json.dumps(fields))
    return tmp_path


def config_loaders():
    return {
        "ReformerConfig.from_pretrained": ReformerConfig.from_pretrained,
        "AutoConfig.from_pretrained": AutoConfig.from_pretrained,
        "ReformerConfig.from_json_file": lambda folder: ReformerConfig.from_json_file(folder / "config.json"),
        "AutoModelForCausalLM.from_pretrained": AutoModelForCausalLM.from_pretrained,
    }


@pytest.mark.parametrize("loader", sorted(config_loaders()))
@pytest.mark.parametrize("missing", [("attn_layers",), ("hidden_size",), ("axial_pos_shape",), ("is_decoder",),
                                     ("vocab_size", "reversible")])
def test_config_file_lacking_an_architecture_field_is_refused_naming_file_and_fields(tmp_path, loader, missing):
    folder = saved_config_folder(tmp_path, drop=missing)
    with pytest.raises(ValueError) as excinfo:
        config_loaders()[loader](folder)
    assert_names(excinfo, str(folder / "config.json"), "damaged", *missing)


def test_every_architecture_field_is_required_of_a_file_and_written_by_save(tmp_path):
    written = set(json.loads((saved_config_folder(tmp_path) / "config.json").read_text()))
    assert set(ARCHITECTURE_FIELDS) <= written
    assert {"attn_layers", "hidden_size", "vocab_size", "axial_pos_shape", "is_decoder", "reversible", "num_hashes",
            "num_buckets", "lsh_attn_chunk_length", "local_attn_chunk_length", "hidden_act"} <= set(ARCHITECTURE_FIELDS)
    for name in ARCHITECTURE_FIELDS:
        fields = ReformerConfig(**small()).to_dict()
        del fields[name]
        with pytest.raises(ValueError, match=f"lacks.*{name}"):
            ReformerConfig.from_dict(fields)


def test_encoder_decoder_file_lacking_its_decoder_layers_is_refused(tmp_path):
    config = ReformerConfig(**small(is_encoder_decoder=True, decoder_attn_layers=["full"], tie_word_embeddings=True))
    folder = saved_config_folder(tmp_path, config, drop=("decoder_attn_layers",))
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig.from_pretrained(folder)
    assert_names(excinfo, "config.json", "decoder_attn_layers")


@pytest.mark.parametrize("fields", [{}, dict(is_decoder=True, attn_layers=["lsh", "local"], hash_seed=2**64 - 1),
                                    dict(is_encoder_decoder=True, decoder_attn_layers=["full", "lsh"],
                                         tie_word_embeddings=True, bos_token_id=None, num_labels=5)])
def test_saved_config_always_round_trips(tmp_path, fields):
    config = ReformerConfig(**small(**fields))
    config.save_pretrained(tmp_path)
    for loaded in (ReformerConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path),
                   ReformerConfig.from_json_file(tmp_path / "config.json")):
        assert type(loaded) is ReformerConfig and loaded.to_diff_dict() == config.to_diff_dict()


def test_default_config_round_trips_and_a_missing_field_may_come_as_a_keyword(tmp_path):
    config = ReformerConfig()
    config.save_pretrained(tmp_path)
    assert ReformerConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    folder = saved_config_folder(tmp_path / "partial", drop=("attn_layers",))
    assert ReformerConfig.from_pretrained(folder, attn_layers=["full"]).attn_layers == ["full"]


@pytest.mark.parametrize("loader", sorted(config_loaders()))
def test_config_file_that_is_not_json_is_refused_naming_the_file(tmp_path, loader):
    ReformerConfig(**small()).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 16,')
    with pytest.raises((OSError, ValueError)) as excinfo:
        config_loaders()[loader](tmp_path)
    assert_names(excinfo, str(tmp_path / "config.json"), "JSON")


# --------------------------------------------------------------------------- field types and ranges

BAD_FIELD_VALUES = [
    ("reversible", "no"), ("is_decoder", "False"), ("axial_pos_embds", "false"), ("use_cache", "maybe"),
    ("local_attn_wrap_around", 1), ("tie_word_embeddings", "false"), ("is_encoder_decoder", "yes"),
    ("output_hidden_states", "yes"), ("return_dict", 0),
    ("hidden_size", "16"), ("num_hashes", 2.0), ("vocab_size", True), ("hash_seed", 1.5),
    ("layer_norm_eps", True), ("hidden_dropout_prob", "0.1"), ("initializer_range", "0.02"),
    ("axial_norm_std", None), ("classifier_dropout", "0.1"),
    ("attn_layers", "lsh"), ("axial_pos_shape", "4,8"), ("axial_pos_embds_dim", 16), ("num_buckets", "4"),
    ("problem_type", "ranking"),
]


@pytest.mark.parametrize("field, value", BAD_FIELD_VALUES)
def test_field_of_the_wrong_type_is_refused_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(**{field: value}))
    assert_names(excinfo, field, repr(value))


def test_axial_fields_are_typed_even_with_axial_embeddings_off():
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(axial_pos_embds=False, axial_pos_shape="4,8"))
    assert_names(excinfo, "axial_pos_shape", "'4,8'")


@pytest.mark.parametrize("field, value", [("reversible", "no"), ("is_decoder", "False"), ("num_buckets", 5)])
def test_wrong_field_after_loading_is_refused(tmp_path, field, value):
    """A keyword to from_pretrained is set on the config after __init__; a wrong value in config.json goes
    through __init__: both are refused."""
    ReformerConfig(**small()).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig.from_pretrained(tmp_path, **{field: value})
    assert_names(excinfo, field, repr(value))
    folder = saved_config_folder(tmp_path / "edited", **{field: value})
    with pytest.raises(ValueError) as excinfo:
        AutoConfig.from_pretrained(folder)
    assert_names(excinfo, field, repr(value))


BAD_FIELD_RANGES = [
    ("pad_token_id", -1), ("pad_token_id", 260), ("eos_token_id", 999), ("bos_token_id", -1),
    ("eos_token_id", [2, 260]), ("eos_token_id", []), ("decoder_start_token_id", -1),
    ("layer_norm_eps", float("nan")), ("layer_norm_eps", 0.0), ("layer_norm_eps", -1e-5),
    ("layer_norm_eps", float("inf")),
    ("initializer_range", -0.02), ("initializer_range", float("nan")), ("initializer_range", float("inf")),
    ("axial_norm_std", -1.0), ("axial_norm_std", float("nan")), ("axial_norm_std", float("inf")),
    ("hash_seed", -1), ("hash_seed", 2**64), ("num_labels", 0),
    ("classifier_dropout", 1.0), ("classifier_dropout", float("nan")),
]


@pytest.mark.parametrize("field, value", BAD_FIELD_RANGES)
def test_field_out_of_range_is_refused_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as excinfo:
        ReformerConfig(**small(vocab_size=260, **{field: value}))
    assert_names(excinfo, field, repr(value))


def test_edge_values_in_range_are_accepted():
    config = ReformerConfig(**small(vocab_size=260, pad_token_id=259, eos_token_id=[2, 259], bos_token_id=None,
                                    hash_seed=2**64 - 1, initializer_range=0.0, axial_norm_std=0.0, num_labels=1,
                                    layer_norm_eps=1e-30, classifier_dropout=0.0))
    assert (config.pad_token_id, config.eos_token_id, config.hash_seed) == (259, [2, 259], 2**64 - 1)


# --------------------------------------------------------------------------- configs edited after construction

MODEL_CLASSES = {
    "ReformerModel": (ReformerModel, {}),
    "ReformerForCausalLM": (ReformerForCausalLM, dict(is_decoder=True)),
    "ReformerForSequenceClassification": (ReformerForSequenceClassification, {}),
    "ReformerForConditionalGeneration": (ReformerForConditionalGeneration,
                                         dict(is_encoder_decoder=True, tie_word_embeddings=True)),
}


@pytest.mark.parametrize("head", sorted(MODEL_CLASSES))
@pytest.mark.parametrize("field, value", [("num_buckets", 5), ("lsh_attn_chunk_length", 0),
                                          ("local_attn_chunk_length", 0), ("reversible", "no"),
                                          ("attn_layers", ["lsh", "sparse"]), ("eos_token_id", 10**6)])
def test_config_edited_after_construction_is_validated_when_a_model_is_built(head, field, value):
    model_class, fields = MODEL_CLASSES[head]
    config = ReformerConfig(**small(attn_layers=["local", "lsh"], **fields))
    setattr(config, field, value)
    with pytest.raises(ValueError) as excinfo:
        model_class(config)
    assert_names(excinfo, field, repr(value))


# --------------------------------------------------------------------------- defaults match the byte tokenizer

def test_default_vocabulary_and_special_ids_are_the_byte_tokenizer_s():
    config, tokenizer = ReformerConfig(), ReformerByteTokenizer()
    assert config.vocab_size == len(tokenizer) == 260
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_random_default_model_generates_decodable_bytes_until_max_new_tokens():
    """A random-init model of the default config: every generated id is one the byte tokenizer decodes, and
    generation runs for max_new_tokens unless the real <eos> comes."""
    tokenizer = ReformerByteTokenizer()
    prompt = tokenizer("The Reformer", return_tensors="pt")
    max_new_tokens = 24
    for seed in range(2):
        torch.manual_seed(seed)
        model = ReformerForCausalLM(ReformerConfig(is_decoder=True, hash_seed=seed)).eval()
        generated = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=True)[0, prompt.input_ids.shape[1]:]
        assert generated.max().item() < len(tokenizer)
        ids = generated.tolist()
        stopped_at_eos = tokenizer.eos_token_id in ids
        assert len(ids) == max_new_tokens or (stopped_at_eos and ids.index(tokenizer.eos_token_id) == len(ids) - 1)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        expected_bytes = bytes(i - 4 for i in ids if i >= 4)
        assert text == expected_bytes.decode("utf-8", errors="replace")
