import pytest

from reformer_hf import ReformerConfig


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
