"""scripts/convert_from_transformers.py and scripts/generate.py against a planted pytorch_model.bin:
transformers reads pickled weights with torch's weights-only unpickler, so the payload never runs."""

import pickle

import pytest
import transformers
from script_runner import load_script


class PlantedPayload:
    """Unpickling this object creates `marker` (the stand-in for running a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def planted_source(tmp_path):
    """A transformers Reformer folder whose only weights file is a planted pickle."""
    config = transformers.ReformerConfig(
        vocab_size=40, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=16,
        attn_layers=["local", "lsh"], axial_pos_shape=[4, 4], axial_pos_embds_dim=[8, 8], max_position_embeddings=16,
        is_decoder=True, architectures=["ReformerModelWithLMHead"])
    source = tmp_path / "source"
    config.save_pretrained(source)
    marker = tmp_path / "marker"
    (source / "pytorch_model.bin").write_bytes(pickle.dumps(PlantedPayload(marker)))
    pickle.loads((source / "pytorch_model.bin").read_bytes()).close()  # the payload is real ...
    marker.unlink()  # ... and starts from scratch
    return source, marker


def test_conversion_refuses_a_planted_pytorch_model_bin_naming_it(planted_source, tmp_path, capsys):
    source, marker = planted_source
    assert load_script("convert_from_transformers.py").main([str(source), str(tmp_path / "out"), "--no-verify"]) == 1
    error = capsys.readouterr().err
    assert f"error: {str(source)!r}: a pickled weights file (pytorch_model.bin) holds more than tensors" in error
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_from_pretrained_refuses_a_planted_pytorch_model_bin(planted_source):
    source, marker = planted_source
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        transformers.ReformerModelWithLMHead.from_pretrained(source)
    assert not marker.exists()
