"""Byte-level tokenizer and BPE training: exact round trips, id layout, save/load, errors."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AddedToken, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from reformer_hf.tokenization import (
    BYTE_ID_OFFSET,
    BYTE_VOCAB_SIZE,
    ReformerByteTokenizer,
    bytes_to_ids,
    ids_to_bytes,
    register_tokenizer_auto_class,
    train_bpe_tokenizer,
)


def reference_byte_ids(text: str) -> list[int]:
    """Independent statement of the layout: 4 specials, then byte b at id 4 + b."""
    return [4 + byte for byte in text.encode("utf-8")]


@pytest.fixture(scope="module")
def byte_tokenizer():
    return ReformerByteTokenizer()


# --------------------------------------------------------------------------- byte tokenizer


def test_byte_vocabulary_layout_is_specials_then_256_bytes(byte_tokenizer):
    assert (byte_tokenizer.pad_token_id, byte_tokenizer.bos_token_id) == (0, 1)
    assert (byte_tokenizer.eos_token_id, byte_tokenizer.unk_token_id) == (2, 3)
    assert BYTE_ID_OFFSET == 4 and BYTE_VOCAB_SIZE == 260
    assert byte_tokenizer.vocab_size == 260 and len(byte_tokenizer) == 260
    vocab = byte_tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(260))
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 3 and vocab["\x00"] == 4 and vocab["\xff"] == 259


def test_byte_ids_are_utf8_bytes_shifted_by_the_specials(byte_tokenizer):
    text = "Grüße, 世界! 🎉"
    assert byte_tokenizer(text)["input_ids"] == reference_byte_ids(text)
    assert bytes_to_ids(text.encode("utf-8")).tolist() == reference_byte_ids(text)
    assert ids_to_bytes([0, 1, *reference_byte_ids(text), 2]) == text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_byte_round_trip_is_exact_for_any_text(text):
    tokenizer = ReformerByteTokenizer()
    ids = tokenizer(text)["input_ids"]
    assert ids == reference_byte_ids(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "👨‍👩‍👧‍👦 family emoji with zero-width joiners, 🇩🇪 flag",
        "中文，日本語のテキスト，한국어 텍스트",
        "שלום עולם — مرحبا بالعالم (right-to-left)",
        "NUL\x00in\x00the middle\x00",
        "controls \x01\x07\x1b[31m\x7f\u0085 and \r\n\t line ends",
        "e\u0301 combining accent vs é precomposed",
        "literal specials <pad><bos><eos><unk> stay text",
        "  leading and trailing spaces ,  . ",
    ],
)
def test_byte_round_trip_explicit_cases(byte_tokenizer, text):
    ids = byte_tokenizer(text)["input_ids"]
    assert ids == reference_byte_ids(text)
    assert byte_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_invalid_utf8_from_generation_decodes_with_replacement(byte_tokenizer):
    emoji_bytes = "😀".encode("utf-8")
    generated_bytes = b"ok " + emoji_bytes[:2] + b"\xff" + b" end"
    ids = [4 + byte for byte in generated_bytes]
    expected = generated_bytes.decode("utf-8", errors="replace")
    assert byte_tokenizer.decode(ids) == expected
    assert "\ufffd" in expected


def test_bos_and_eos_are_added_when_asked():
    tokenizer = ReformerByteTokenizer(add_bos_token=True, add_eos_token=True)
    encoded = tokenizer("ab", return_special_tokens_mask=True)
    assert encoded["input_ids"] == [1, 4 + ord("a"), 4 + ord("b"), 2]
    assert encoded["special_tokens_mask"] == [1, 0, 0, 1]
    assert tokenizer.decode(encoded["input_ids"]) == "<bos>ab<eos>"
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "ab"


def test_defaults_add_no_special_tokens(byte_tokenizer):
    assert byte_tokenizer.add_bos_token is False and byte_tokenizer.add_eos_token is False
    assert byte_tokenizer("a")["input_ids"] == [4 + ord("a")]


def test_left_padding_pads_the_front_of_a_batch():
    tokenizer = ReformerByteTokenizer(padding_side="left", add_bos_token=True)
    batch = tokenizer(["a", "abc"], padding=True, return_tensors="pt")
    a, b, c = (4 + ord(char) for char in "abc")
    assert torch.equal(batch["input_ids"], torch.tensor([[0, 0, 1, a], [1, a, b, c]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    assert set(batch.keys()) == {"input_ids", "attention_mask"}
    assert tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["a", "abc"]


def test_right_padding_is_the_default_and_padding_side_is_per_call(byte_tokenizer):
    right = byte_tokenizer(["a", "ab"], padding=True)["input_ids"]
    left = byte_tokenizer(["a", "ab"], padding=True, padding_side="left")["input_ids"]
    a, b = 4 + ord("a"), 4 + ord("b")
    assert right == [[a, 0], [a, b]]
    assert left == [[0, a], [a, b]]


def test_save_and_load_round_trip_keeps_every_option(tmp_path):
    tokenizer = ReformerByteTokenizer(add_bos_token=True, add_eos_token=True, padding_side="left")
    tokenizer.save_pretrained(tmp_path)
    reloaded = ReformerByteTokenizer.from_pretrained(tmp_path)
    assert reloaded.add_bos_token is True and reloaded.add_eos_token is True
    assert reloaded.padding_side == "left"
    text = "Grüße 🎉"
    assert reloaded(text)["input_ids"] == [1, *reference_byte_ids(text), 2]
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_auto_class_registration_makes_the_folder_load_with_remote_code(tmp_path):
    register_tokenizer_auto_class()
    ReformerByteTokenizer(add_eos_token=True).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"] == ["tokenization.ReformerByteTokenizer", None]
    assert (tmp_path / "tokenization.py").is_file()
    # With reformer_hf imported, AutoTokenizer prefers the registered package class; the class
    # that the folder's auto_map names must come from the copied file and work on its own.
    remote_class = get_class_from_dynamic_module("tokenization.ReformerByteTokenizer", tmp_path)
    assert remote_class.__name__ == "ReformerByteTokenizer" and remote_class is not ReformerByteTokenizer
    loaded = remote_class.from_pretrained(tmp_path)
    assert loaded("hé")["input_ids"] == [*reference_byte_ids("hé"), 2]
    assert AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)("hé")["input_ids"] == loaded("hé")["input_ids"]
    assert loaded.decode(loaded("hé 🎉")["input_ids"], skip_special_tokens=True) == "hé 🎉"


@pytest.mark.parametrize("name", ["pad_token", "bos_token", "eos_token", "unk_token"])
def test_error_single_character_special_token(name):
    with pytest.raises(ValueError, match=f"{name}='x'"):
        ReformerByteTokenizer(**{name: "x"})


def test_error_missing_special_token():
    with pytest.raises(ValueError, match="pad_token=None"):
        ReformerByteTokenizer(pad_token=None)


def test_error_duplicate_special_tokens():
    with pytest.raises(ValueError, match="distinct"):
        ReformerByteTokenizer(bos_token="<s>", eos_token="<s>")


@pytest.mark.parametrize("name", ["add_bos_token", "add_eos_token"])
def test_error_non_boolean_add_flag(name):
    with pytest.raises(ValueError, match=f"{name}='yes'"):
        ReformerByteTokenizer(**{name: "yes"})


def test_error_decoding_an_id_outside_the_vocabulary(byte_tokenizer):
    with pytest.raises(ValueError, match="token id 260 is not a byte id"):
        byte_tokenizer.decode([4 + 65, 260])


# --------------------------------------------------------------------------- added tokens


def test_added_token_is_one_id_in_text_and_decodes_back():
    tokenizer = ReformerByteTokenizer()
    assert tokenizer.add_tokens(["hello"]) == 1
    assert len(tokenizer) == 261 and tokenizer.vocab_size == 260
    text = "say hello, hellos! <eos>"
    expected = [*reference_byte_ids("say "), 260, *reference_byte_ids(", "), 260, *reference_byte_ids("s! <eos>")]
    ids = tokenizer(text)["input_ids"]
    assert ids == expected
    assert tokenizer.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(260) == "hello" and tokenizer.get_vocab()["hello"] == 260


def test_longest_added_token_wins_and_added_tokens_never_move_byte_ids():
    tokenizer = ReformerByteTokenizer()
    assert tokenizer.add_tokens(["hell", "hello", "lo w"]) == 3
    assert tokenizer("hello world hell")["input_ids"] == [
        261, *reference_byte_ids(" world "), 260]
    assert tokenizer("hel")["input_ids"] == reference_byte_ids("hel")


def test_added_special_token_stays_text_unless_special_tokens_are_not_split():
    tokenizer = ReformerByteTokenizer()
    assert tokenizer.add_special_tokens({"additional_special_tokens": ["<sep>"]}) == 1
    assert tokenizer.convert_tokens_to_ids("<sep>") == 260
    assert tokenizer("a<sep>b")["input_ids"] == reference_byte_ids("a<sep>b")
    ids = tokenizer("a<sep>b", split_special_tokens=False)["input_ids"]
    assert ids == [4 + ord("a"), 260, 4 + ord("b")]
    assert tokenizer.decode(ids) == "a<sep>b" and tokenizer.decode(ids, skip_special_tokens=True) == "ab"


def test_added_tokens_survive_save_and_load(tmp_path):
    register_tokenizer_auto_class()
    tokenizer = ReformerByteTokenizer(add_eos_token=True)
    tokenizer.add_tokens(["hello", "Reformer"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<sep>"]})
    tokenizer.save_pretrained(tmp_path)
    text = "hello Reformer <sep> 🎉"
    for loaded in (ReformerByteTokenizer.from_pretrained(tmp_path),
                   AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)):
        assert len(loaded) == 263 and loaded.get_vocab() == tokenizer.get_vocab()
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"] == [
            260, *reference_byte_ids(" "), 261, *reference_byte_ids(" <sep> 🎉"), 2]
        assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text


def test_model_embeddings_grow_with_added_tokens():
    from tiny_models import tiny_config

    from reformer_hf import ReformerForCausalLM

    tokenizer = ReformerByteTokenizer()
    tokenizer.add_tokens(["hello"])
    torch.manual_seed(0)
    model = ReformerForCausalLM(tiny_config(vocab_size=260)).eval()
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(len(tokenizer))
    assert model.config.vocab_size == 261
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == 261
    assert torch.equal(model.get_input_embeddings().weight[:260], old_embeddings)
    input_ids = torch.tensor([tokenizer("say hello")["input_ids"]])
    assert input_ids[0, -1] == 260
    with torch.no_grad():
        logits = model(input_ids, use_cache=False).logits
    assert logits.shape == (1, input_ids.shape[1], 261) and torch.isfinite(logits).all()


@pytest.mark.parametrize("token", ["é", "a", AddedToken("é", special=True)])
def test_error_one_character_added_token(token):
    tokenizer = ReformerByteTokenizer()
    with pytest.raises(ValueError, match="one-character"):
        tokenizer.add_tokens([token])
    assert len(tokenizer) == 260 and tokenizer("é")["input_ids"] == reference_byte_ids("é")


@pytest.mark.parametrize("flag", ["lstrip", "rstrip", "single_word"])
def test_error_added_token_that_would_drop_or_move_text(flag):
    tokenizer = ReformerByteTokenizer()
    with pytest.raises(ValueError, match=f"{flag}=True"):
        tokenizer.add_tokens([AddedToken("hello", **{flag: True})])
    assert len(tokenizer) == 260


def test_error_saved_added_token_on_a_byte_id(tmp_path):
    ReformerByteTokenizer().save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["added_tokens_decoder"]["100"] = {"content": "hello", "lstrip": False, "normalized": False,
                                              "rstrip": False, "single_word": False, "special": False}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'hello'.*100.*byte"):
        ReformerByteTokenizer.from_pretrained(tmp_path)


def test_error_tokenizer_config_that_is_not_json_is_named(tmp_path):
    ReformerByteTokenizer().save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": tru')
    with pytest.raises(OSError) as excinfo:
        ReformerByteTokenizer.from_pretrained(tmp_path)
    assert str(tmp_path / "tokenizer_config.json") in str(excinfo.value) and "not a valid JSON" in str(excinfo.value)


# --------------------------------------------------------------------------- BPE


@pytest.fixture(scope="module")
def bpe_tokenizer(en_de_pairs):
    texts = [sentence for pair in en_de_pairs for sentence in pair]
    return train_bpe_tokenizer(texts, vocab_size=400, min_frequency=2)


def test_bpe_shares_one_vocabulary_with_specials_first(bpe_tokenizer):
    assert [bpe_tokenizer.pad_token, bpe_tokenizer.bos_token, bpe_tokenizer.eos_token, bpe_tokenizer.unk_token] == [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    ]
    assert [bpe_tokenizer.pad_token_id, bpe_tokenizer.bos_token_id] == [0, 1]
    assert [bpe_tokenizer.eos_token_id, bpe_tokenizer.unk_token_id] == [2, 3]
    assert 260 < len(bpe_tokenizer) <= 400
    # Frequent words of both languages became merges in the one vocabulary: fewer tokens than bytes.
    for word in ("Datei", "selected", "ausgewählten"):
        assert len(bpe_tokenizer(word, add_special_tokens=False)["input_ids"]) < len(word.encode("utf-8"))


def test_bpe_appends_eos_to_sources_and_labels(bpe_tokenizer):
    batch = bpe_tokenizer(["Page size", "Font color"], text_target=["Seitengröße", "Schriftfarbe"])
    assert all(ids[-1] == 2 for ids in batch["input_ids"] + batch["labels"])
    assert all(2 not in ids[:-1] for ids in batch["input_ids"] + batch["labels"])
    assert set(batch.keys()) == {"input_ids", "attention_mask", "labels"}


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_bpe_round_trip_is_exact_for_any_text(bpe_tokenizer, text):
    ids = bpe_tokenizer(text)["input_ids"]
    assert bpe_tokenizer.unk_token_id not in ids
    assert bpe_tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize(
    "text",
    ["  Größe\tdes Bildes \n", "literal </s> and <pad> stay text", "日本語 😀 שלום", "\x00NUL", ""],
)
def test_bpe_round_trip_explicit_cases(bpe_tokenizer, text):
    ids = bpe_tokenizer(text)["input_ids"]
    assert ids.count(2) == 1  # only the appended eos, never a literal "</s>"
    assert bpe_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_bpe_folder_loads_with_auto_tokenizer_and_no_custom_code(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.py"))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Die Datei konnte nicht gespeichert werden. </s> 🎉"
    assert loaded(text)["input_ids"] == bpe_tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert loaded.model_input_names == ["input_ids", "attention_mask"]
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 2)


def test_bpe_without_eos(en_de_pairs):
    tokenizer = train_bpe_tokenizer([en for en, _ in en_de_pairs], vocab_size=300, add_eos_token=False)
    assert 2 not in tokenizer("Page size")["input_ids"]


def test_bpe_trains_on_real_gettext_pairs(real_gettext_de_dir):
    from reformer_hf.data import load_gettext_pairs, translation_texts

    pairs = load_gettext_pairs(real_gettext_de_dir)
    tokenizer = train_bpe_tokenizer(translation_texts(pairs), vocab_size=2000)
    assert len(tokenizer) == 2000
    for row in pairs.select(range(50))["translation"]:
        for text in row.values():
            assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("vocab_size", [0, 259, 2.5])
def test_error_bpe_vocab_size(vocab_size):
    with pytest.raises(ValueError, match=f"vocab_size={vocab_size}"):
        train_bpe_tokenizer(["a b c"], vocab_size=vocab_size)


def test_error_bpe_min_frequency():
    with pytest.raises(ValueError, match="min_frequency=0"):
        train_bpe_tokenizer(["a b c"], vocab_size=300, min_frequency=0)


def test_error_bpe_texts_is_a_single_string():
    with pytest.raises(ValueError, match="texts must be an iterable of strings"):
        train_bpe_tokenizer("a b c", vocab_size=300)


def test_error_bpe_texts_is_empty():
    with pytest.raises(ValueError, match="texts is empty"):
        train_bpe_tokenizer(iter([]), vocab_size=300)


def test_error_bpe_texts_holds_a_non_string():
    with pytest.raises(ValueError, match=r"texts\[1\] has type bytes"):
        train_bpe_tokenizer(["ok", b"bytes"], vocab_size=300)


def test_error_bpe_duplicate_special_tokens():
    with pytest.raises(ValueError, match="distinct"):
        train_bpe_tokenizer(["a"], vocab_size=300, bos_token="</s>")


def test_error_bpe_empty_special_token():
    with pytest.raises(ValueError, match="unk_token=''"):
        train_bpe_tokenizer(["a"], vocab_size=300, unk_token="")


def test_error_bpe_non_boolean_add_eos_token():
    with pytest.raises(ValueError, match="add_eos_token=1"):
        train_bpe_tokenizer(["a"], vocab_size=300, add_eos_token=1)


# --------------------------------------------------------------------------- scripts/train_tokenizer.py


@pytest.fixture(scope="module")
def train_tokenizer_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_tokenizer_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wmt_jsonl(tmp_path, en_de_pairs):
    path = tmp_path / "train.jsonl"
    rows = [{"translation": {"de": de, "en": en}} for en, de in en_de_pairs]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), encoding="utf-8")
    return path


def test_script_trains_a_folder_that_auto_tokenizer_loads(train_tokenizer_script, wmt_jsonl, tmp_path):
    output_dir = tmp_path / "bpe"
    argv = ["--dataset", str(wmt_jsonl), "--vocab-size", "320", "--output-dir", str(output_dir)]
    assert train_tokenizer_script.main(argv) == 0
    loaded = AutoTokenizer.from_pretrained(output_dir)
    assert len(loaded) == 320
    text = "Die Datei konnte nicht gespeichert werden."
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text


def test_script_error_non_empty_output_dir(train_tokenizer_script, wmt_jsonl, tmp_path, capsys):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        train_tokenizer_script.main(["--dataset", str(wmt_jsonl), "--output-dir", str(tmp_path / "occupied")])
    assert exit_info.value.code == 2
    assert "--output-dir" in capsys.readouterr().err


def test_script_error_vocab_size_too_small(train_tokenizer_script, wmt_jsonl, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_tokenizer_script.main(
            ["--dataset", str(wmt_jsonl), "--vocab-size", "100", "--output-dir", str(tmp_path / "out")]
        )
    assert "--vocab-size 100 is not allowed" in capsys.readouterr().err


def test_script_error_missing_dataset(train_tokenizer_script, tmp_path, capsys):
    assert train_tokenizer_script.main(["--dataset", "./absent.jsonl", "--output-dir", str(tmp_path / "out")]) == 2
    assert "path_or_name='./absent.jsonl' does not exist" in capsys.readouterr().err
