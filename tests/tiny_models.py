"""Tiny configurations shared by the tests."""

from reformer_hf import ReformerConfig


def tiny_config(**overrides):
    """A 3-layer causal model (local, LSH, full) small enough for exact checks on the CPU."""
    fields = dict(
        vocab_size=40,
        hidden_size=16,
        num_attention_heads=2,
        attention_head_size=8,
        feed_forward_size=32,
        attn_layers=["local", "lsh", "full"],
        num_hashes=2,
        num_buckets=4,
        lsh_attn_chunk_length=4,
        local_attn_chunk_length=6,
        axial_pos_shape=[8, 16],
        axial_pos_embds_dim=[8, 8],
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        local_attention_probs_dropout=0.0,
        lsh_attention_probs_dropout=0.0,
        is_decoder=True,
        hash_seed=7,
    )
    fields.update(overrides)
    return ReformerConfig(**fields)
