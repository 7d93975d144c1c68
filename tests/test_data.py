"""Data loaders on small files in their real formats, built here in tmp dirs."""

import json
import logging
import struct
import zipfile

import datasets
import pytest
import torch

from reformer_hf.data import (
    ENWIK8_SPLIT_SIZES,
    DuplicationDataset,
    RandomByteWindows,
    chunk_byte_stream,
    duplication_batch,
    find_corpus_files,
    load_enwik8,
    load_gettext_pairs,
    load_text_corpus,
    load_translation_dataset,
    split_translation_dataset,
    strip_accelerator_marks,
    translation_texts,
)
from reformer_hf.tokenization import ReformerByteTokenizer

WIKI_XML = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.3/" version="0.3" xml:lang="en">\n'
    "  <page>\n    <title>Anarchism</title>\n    <id>12</id>\n    <revision>\n"
    "      <text xml:space=\"preserve\">'''Anarchism''' originated as a term of abuse &amp; "
    "[[Pierre-Joseph Proudhon]] — Zürich, 東京 [[Category:Political ideologies]]</text>\n"
    "    </revision>\n  </page>\n</mediawiki>\n"
).encode("utf-8")


# --------------------------------------------------------------------------- enwik8


def make_enwik8_zip(path, data: bytes, member: str = "enwik8"):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return path


def test_enwik8_zip_splits_consecutive_bytes(tmp_path):
    data = WIKI_XML * 3
    n = len(data)
    sizes = (n - 100, 60, 40)
    splits = load_enwik8(make_enwik8_zip(tmp_path / "enwik8.zip", data), split_sizes=sizes)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["train"] == data[: n - 100]
    assert splits["validation"] == data[n - 100 : n - 40]
    assert splits["test"] == data[n - 40 :]


def test_enwik8_plain_file_with_the_standard_100m_split(tmp_path):
    # A 10^8-byte file whose byte at offset i is i % 251, so each split's first byte tells its offset.
    data = (bytes(range(251)) * (100_000_000 // 251 + 1))[:100_000_000]
    path = tmp_path / "enwik8"
    path.write_bytes(data)
    splits = load_enwik8(path)
    assert ENWIK8_SPLIT_SIZES == (90_000_000, 5_000_000, 5_000_000)
    assert [len(part) for part in splits.values()] == [90_000_000, 5_000_000, 5_000_000]
    assert splits["validation"][:3] == bytes([90_000_000 % 251, 90_000_001 % 251, 90_000_002 % 251])
    assert splits["test"][:1] == bytes([95_000_000 % 251]) and splits["test"][-1:] == bytes([99_999_999 % 251])
    assert b"".join(splits.values()) == data


def test_error_enwik8_file_shorter_than_the_standard_split(tmp_path):
    path = make_enwik8_zip(tmp_path / "enwik8.zip", WIKI_XML)
    with pytest.raises(ValueError, match=r"shorter than split_sizes=\(90000000, 5000000, 5000000\)"):
        load_enwik8(path)


def test_error_enwik8_file_longer_than_split_sizes(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(WIKI_XML)
    with pytest.raises(ValueError, match=f"longer than split_sizes.*pass split_sizes that sum to {len(WIKI_XML)}"):
        load_enwik8(path, split_sizes=(10, 10, 10))


def test_error_enwik8_zip_without_the_enwik8_member(tmp_path):
    path = make_enwik8_zip(tmp_path / "enwik8.zip", WIKI_XML, member="enwik9")
    with pytest.raises(ValueError, match=r"zip without a member named 'enwik8'.*'enwik9'"):
        load_enwik8(path, split_sizes=(len(WIKI_XML) - 2, 1, 1))


def test_error_enwik8_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="path=.*missing.zip"):
        load_enwik8(tmp_path / "missing.zip")


@pytest.mark.parametrize("split_sizes", [(10, 10), (10, 0, 10), (10, 2.5, 10), "90M"])
def test_error_enwik8_bad_split_sizes(tmp_path, split_sizes):
    path = tmp_path / "enwik8"
    path.write_bytes(WIKI_XML)
    with pytest.raises(ValueError, match="split_sizes"):
        load_enwik8(path, split_sizes=split_sizes)


# --------------------------------------------------------------------------- local text corpora


@pytest.fixture
def doc_tree(tmp_path):
    """A miniature of python3.11-doc: html pages, rst sources, and files that must be skipped."""
    root = tmp_path / "doc"
    (root / "library").mkdir(parents=True)
    (root / "_sources" / "library").mkdir(parents=True)
    files = {
        "index.html": "<!DOCTYPE html>\n<html><body><h1>Python 3.11 documentation</h1></body></html>\n",
        "library/os.html": "<html><body><p>os — Miscellaneous operating system interfaces</p></body></html>\n",
        "_sources/library/os.rst.txt": ":mod:`os` --- Miscellaneous operating system interfaces\n=====\n",
        "_static/pygments.css": ".highlight { background: #f8f8f8; }\n",
        "objects.inv": "# Sphinx inventory version 2\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root, files


def test_text_corpus_reads_matching_files_in_sorted_order(doc_tree):
    root, files = doc_tree
    corpus = load_text_corpus(root, patterns=["*.html", "*.txt"])
    expected_order = ["_sources/library/os.rst.txt", "index.html", "library/os.html"]
    assert corpus == b"\n".join(files[name].encode("utf-8") for name in expected_order)


def test_text_corpus_takes_named_files_whatever_their_suffix(doc_tree):
    root, files = doc_tree
    corpus = load_text_corpus([root / "objects.inv", root / "index.html"], patterns=["*.html"], separator=b"")
    assert corpus == (files["index.html"] + files["objects.inv"]).encode("utf-8")


def test_error_text_corpus_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="paths contains .*nowhere"):
        load_text_corpus(tmp_path / "nowhere")


def test_error_text_corpus_no_file_matches_the_patterns(doc_tree):
    root, _ = doc_tree
    with pytest.raises(FileNotFoundError, match=r"patterns=\['\*.rst'\]"):
        find_corpus_files(root, patterns=["*.rst"])


def test_error_text_corpus_patterns_is_a_string(doc_tree):
    root, _ = doc_tree
    with pytest.raises(ValueError, match="patterns='.html'"):
        load_text_corpus(root, patterns="*.html".lstrip("*"))


def test_error_text_corpus_separator_is_not_bytes(doc_tree):
    root, _ = doc_tree
    with pytest.raises(ValueError, match="separator='\\\\n'"):
        load_text_corpus(root, separator="\n")


def test_error_text_corpus_empty_paths():
    with pytest.raises(ValueError, match=r"paths=\[\]"):
        load_text_corpus([])


# --------------------------------------------------------------------------- fixed-length byte examples


def test_chunks_use_the_byte_tokenizer_ids_and_pad_the_tail():
    text = "Grüße aus Zürich 🎉!"  # 25 UTF-8 bytes
    data = text.encode("utf-8")
    chunks = chunk_byte_stream(data, seq_len=8)
    tokenizer_ids = ReformerByteTokenizer()(text)["input_ids"]
    assert len(chunks) == 4
    assert sum(chunks["input_ids"], []) == tokenizer_ids + [0] * 7
    assert chunks["attention_mask"][3] == [1] + [0] * 7
    assert chunks["labels"][3] == [tokenizer_ids[-1]] + [-100] * 7
    assert chunks["labels"][:3] == chunks["input_ids"][:3]


def test_chunks_drop_or_reject_the_tail_only_when_asked():
    data = bytes(range(20))
    dropped = chunk_byte_stream(data, seq_len=8, remainder="drop")
    assert dropped["input_ids"] == [[4 + b for b in range(8)], [4 + b for b in range(8, 16)]]
    with pytest.raises(ValueError, match="remainder='pad' or 'drop'"):
        chunk_byte_stream(data, seq_len=8, remainder="error")
    exact = chunk_byte_stream(data[:16], seq_len=8, remainder="error")
    assert exact["input_ids"] == dropped["input_ids"]


def test_chunks_come_out_as_int64_tensors_for_the_model():
    chunks = chunk_byte_stream(WIKI_XML, seq_len=64).with_format("torch")
    batch = chunks[:2]
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].dtype == torch.int64
    assert batch["input_ids"].shape == (2, 64)


@pytest.mark.parametrize("seq_len", [0, -3, 8.0])
def test_error_chunks_bad_seq_len(seq_len):
    with pytest.raises(ValueError, match=f"seq_len={seq_len}"):
        chunk_byte_stream(WIKI_XML, seq_len=seq_len)


def test_error_chunks_unknown_remainder():
    with pytest.raises(ValueError, match="remainder='truncate'"):
        chunk_byte_stream(WIKI_XML, seq_len=8, remainder="truncate")


def test_error_chunks_empty_data():
    with pytest.raises(ValueError, match="data is empty"):
        chunk_byte_stream(b"", seq_len=8)


def test_error_chunks_text_instead_of_bytes():
    with pytest.raises(ValueError, match="data is a str"):
        chunk_byte_stream("text", seq_len=8)


def test_error_chunks_drop_leaves_nothing():
    with pytest.raises(ValueError, match="fewer than seq_len=8"):
        chunk_byte_stream(b"short", seq_len=8, remainder="drop")


# --------------------------------------------------------------------------- random windows


def test_random_windows_are_seeded_slices_of_the_stream():
    windows = RandomByteWindows(WIKI_XML, seq_len=32, num_samples=50, seed=7)
    same = RandomByteWindows(WIKI_XML, seq_len=32, num_samples=50, seed=7)
    other = RandomByteWindows(WIKI_XML, seq_len=32, num_samples=50, seed=8)
    offsets = [windows.window_offset(i) for i in range(50)]
    assert offsets == [same.window_offset(i) for i in range(50)]
    assert offsets != [other.window_offset(i) for i in range(50)]
    for index in (0, 17, 49):
        item = windows[index]
        start = offsets[index]
        assert item["input_ids"].tolist() == [4 + b for b in WIKI_XML[start : start + 32]]
        assert torch.equal(item["labels"], item["input_ids"]) and item["input_ids"].dtype == torch.int64


def test_random_windows_reach_both_ends_of_the_stream():
    windows = RandomByteWindows(bytes(range(10)), seq_len=8, num_samples=200, seed=0)
    assert {windows.window_offset(i) for i in range(200)} == {0, 1, 2}


def test_error_random_windows_longer_than_data():
    with pytest.raises(ValueError, match="seq_len=64 is longer than the data"):
        RandomByteWindows(b"short", seq_len=64, num_samples=1)


def test_error_random_windows_num_samples():
    with pytest.raises(ValueError, match="num_samples=0"):
        RandomByteWindows(WIKI_XML, seq_len=8, num_samples=0)


def test_error_random_windows_index_out_of_range():
    with pytest.raises(IndexError, match="index 3"):
        RandomByteWindows(WIKI_XML, seq_len=8, num_samples=3)[3]


# --------------------------------------------------------------------------- gettext pairs


def write_mo(path, messages: dict[str, str]):
    """Write a GNU .mo catalog (little endian, revision 0, no hash table).

    Keys are msgids as gettext stores them: "context\\x04msgid" for msgctxt entries and
    "singular\\x00plural" for plural entries, whose value joins the forms with \\x00.
    Layout (gettext manual, "The Format of GNU MO Files"): a 28-byte header, the table
    of (length, offset) of the original strings sorted by msgid, the same table for the
    translations, then the NUL-terminated strings.
    """
    entries = {"": "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"}
    entries.update(messages)
    keys = sorted(entries, key=lambda key: key.encode("utf-8"))
    originals = [key.encode("utf-8") for key in keys]
    translations = [entries[key].encode("utf-8") for key in keys]
    n = len(keys)
    originals_table = 28
    translations_table = originals_table + 8 * n
    offset = translations_table + 8 * n
    tables, blob = [], b""
    for strings in (originals, translations):
        table = []
        for string in strings:
            table.append((len(string), offset + len(blob)))
            blob += string + b"\x00"
        tables.append(table)
    header = struct.pack("<7I", 0x950412DE, 0, n, originals_table, translations_table, 0, offset)
    body = b"".join(struct.pack("<2I", *entry) for table in tables for entry in table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body + blob)


@pytest.fixture
def catalog_dir(tmp_path):
    root = tmp_path / "resource" / "de" / "LC_MESSAGES"
    write_mo(
        root / "sw.mo",
        {
            "STR_SAVE\x04~Save Document": "Dokument ~speichern",
            "STR_INSERT\x04Insert _Row Above": "Zeile _oberhalb einfügen",
            "STR_PDF\x04PDF": "PDF",  # identical: a name, not a translation
            "STR_TODO\x04Untranslated": "",  # empty: not translated yet
            "%1 page\x00%1 pages": "%1 Seite\x00%1 Seiten",  # plural: keep the singular
            "&Open": "Ö&ffnen",
            "  Font color  ": "Schriftfarbe",
        },
    )
    write_mo(
        root / "nested" / "sc.mo",
        {
            "STR_SAVE_AGAIN\x04Save Document": "Dokument speichern",  # duplicate after stripping
            "STR_SHEET\x04Insert Sheet": "Tabelle einfügen",
        },
    )
    return tmp_path


def test_gettext_pairs_from_real_mo_files(catalog_dir):
    pairs = load_gettext_pairs(catalog_dir)
    assert pairs.features["translation"] == datasets.Translation(languages=["de", "en"])
    # Files in sorted path order (nested/sc.mo < sw.mo); entries in the catalog's msgid byte order,
    # which for context entries is the context's order.
    assert list(pairs["translation"]) == [
        {"en": "Save Document", "de": "Dokument speichern"},
        {"en": "Insert Sheet", "de": "Tabelle einfügen"},
        {"en": "Font color", "de": "Schriftfarbe"},
        {"en": "%1 page", "de": "%1 Seite"},
        {"en": "Open", "de": "Öffnen"},
        {"en": "Insert Row Above", "de": "Zeile oberhalb einfügen"},
    ]


def test_gettext_pairs_on_the_real_libreoffice_catalogs(real_gettext_de_dir):
    pairs = load_gettext_pairs(real_gettext_de_dir)
    assert len(pairs) > 10_000
    rows = pairs["translation"]
    assert all(row["en"] and row["de"] and row["en"] != row["de"] for row in rows)
    assert len({(row["en"], row["de"]) for row in rows}) == len(rows)


@pytest.mark.parametrize(
    "label, stripped",
    [
        ("~Save", "Save"),
        ("Sa~ve As...", "Save As..."),
        ("_Name:", "Name:"),
        ("Colu_mn", "Column"),
        ("&Open", "Open"),
        ("E~xit _Now", "Exit Now"),
        ("%FILE_NAME and %DOWNLOAD_PATH", "%FILE_NAME and %DOWNLOAD_PATH"),  # several candidates: identifiers
        ("__init__", "__init__"),  # doubled marks are literal
        ("Ignore ~~ at line end", "Ignore ~~ at line end"),
        ("Drag & Drop", "Drag & Drop"),
        ("Fish &amp; Chips", "Fish &amp; Chips"),  # an entity, not a mnemonic
        ("a tilde (~) before the letter", "a tilde (~) before the letter"),
    ],
)
def test_strip_accelerator_marks(label, stripped):
    assert strip_accelerator_marks(label) == stripped


def test_error_gettext_missing_root_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="root_dir=.*absent"):
        load_gettext_pairs(tmp_path / "absent")


def test_error_gettext_root_dir_without_mo_files(tmp_path):
    (tmp_path / "readme.po").write_text('msgid "a"\nmsgstr "b"\n')
    with pytest.raises(FileNotFoundError, match="contains no .mo files"):
        load_gettext_pairs(tmp_path)


def test_error_gettext_corrupt_mo_file(tmp_path):
    (tmp_path / "broken.mo").write_bytes(b"not a catalog at all")
    with pytest.raises(ValueError, match="broken.mo.*not a readable gettext .mo catalog"):
        load_gettext_pairs(tmp_path)


def test_error_gettext_same_source_and_target_language(catalog_dir):
    with pytest.raises(ValueError, match="source_lang and target_lang are both 'de'"):
        load_gettext_pairs(catalog_dir, source_lang="de", target_lang="de")


# --------------------------------------------------------------------------- deterministic split


@pytest.fixture
def pair_dataset(en_de_pairs):
    # Two translations of one source sentence, as UI catalogs have in different contexts.
    rows = [{"en": en, "de": de} for en, de in en_de_pairs] + [{"en": "Page size", "de": "Papiergröße"}]
    return datasets.Dataset.from_dict({"translation": rows})


def test_split_is_deterministic_and_keeps_each_source_in_one_split(pair_dataset):
    splits = split_translation_dataset(pair_dataset, validation_size=3, test_size=0.2, seed=1)
    again = split_translation_dataset(pair_dataset, validation_size=3, test_size=0.2, seed=1)
    other = split_translation_dataset(pair_dataset, validation_size=3, test_size=0.2, seed=2)
    assert list(splits) == ["train", "validation", "test"]
    assert {name: split["translation"] for name, split in splits.items()} == {
        name: split["translation"] for name, split in again.items()
    }
    assert splits["test"]["translation"] != other["test"]["translation"]
    sources = {name: {row["en"] for row in split["translation"]} for name, split in splits.items()}
    assert not (sources["train"] & sources["test"] or sources["train"] & sources["validation"])
    assert not sources["validation"] & sources["test"]
    all_rows = sorted(json.dumps(row, sort_keys=True) for row in pair_dataset["translation"])
    split_rows = sorted(json.dumps(row, sort_keys=True) for s in splits.values() for row in s["translation"])
    assert split_rows == all_rows
    # ceil(0.2 * 21) = 5 test rows and 3 validation rows, plus at most one extra row from a group of 2.
    assert 5 <= len(splits["test"]) <= 6 and 3 <= len(splits["validation"]) <= 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_size": 0}, "test_size=0"),
        ({"validation_size": 1.5}, "validation_size=1.5"),
        ({"validation_size": 10, "test_size": 11}, "leaving nothing to train on"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_error_split_sizes(pair_dataset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_translation_dataset(pair_dataset, **kwargs)


def test_error_split_of_a_dataset_dict(pair_dataset):
    with pytest.raises(ValueError, match="dataset is a DatasetDict"):
        split_translation_dataset(datasets.DatasetDict({"train": pair_dataset}))


# --------------------------------------------------------------------------- WMT14-format loader


def wmt_rows(en_de_pairs):
    return [{"translation": {"de": de, "en": en}} for en, de in en_de_pairs]


def test_translation_loader_reads_a_save_to_disk_dataset_dict(tmp_path, en_de_pairs):
    rows = wmt_rows(en_de_pairs)
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    saved = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:15], features=features),
            "validation": datasets.Dataset.from_list(rows[15:], features=features),
        }
    )
    saved.save_to_disk(tmp_path / "wmt14")
    loaded = load_translation_dataset(tmp_path / "wmt14")
    assert list(loaded) == ["train", "validation"]
    assert loaded["validation"]["translation"] == [row["translation"] for row in rows[15:]]
    validation = load_translation_dataset(str(tmp_path / "wmt14"), split="validation")
    assert isinstance(validation, datasets.Dataset) and len(validation) == 5


def test_translation_loader_reads_a_single_saved_dataset_as_train(tmp_path, en_de_pairs):
    datasets.Dataset.from_list(wmt_rows(en_de_pairs)).save_to_disk(tmp_path / "pairs")
    loaded = load_translation_dataset(tmp_path / "pairs", source_lang="de", target_lang="en")
    assert list(loaded) == ["train"] and len(loaded["train"]) == len(en_de_pairs)


def test_translation_loader_reads_jsonl_and_json(tmp_path, en_de_pairs):
    rows = wmt_rows(en_de_pairs)
    rows[0]["translation"]["fr"] = "Le fichier n'a pas pu être enregistré."  # other languages are left out
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n\n", encoding="utf-8")
    array = tmp_path / "train.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    expected = [{"de": de, "en": en} for en, de in en_de_pairs]
    assert load_translation_dataset(jsonl, split="train")["translation"] == expected
    assert load_translation_dataset(array, split="train")["translation"] == expected


def test_translation_texts_yields_both_languages_row_by_row(en_de_pairs):
    dataset = datasets.Dataset.from_list(wmt_rows(en_de_pairs[:2]))
    assert list(translation_texts(dataset, ["en", "de"])) == [text for pair in en_de_pairs[:2] for text in pair]


def test_error_translation_jsonl_row_without_target_language(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"translation": {"en": "a", "de": "b"}}\n{"translation": {"en": "only English"}}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'translation' has no 'de' string"):
        load_translation_dataset(path)


def test_error_translation_jsonl_invalid_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"translation": {"en": "a", "de": "b"}}\n{"translation": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        load_translation_dataset(path)


def test_error_translation_row_without_translation_object(tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text('{"en": "a", "de": "b"}\n')
    with pytest.raises(ValueError, match="flat.jsonl:1: expected an object with a 'translation' object"):
        load_translation_dataset(path)


def test_error_translation_saved_dataset_without_a_language(tmp_path):
    datasets.Dataset.from_list([{"translation": {"en": "a", "fr": "b"}}]).save_to_disk(tmp_path / "enfr")
    with pytest.raises(ValueError, match="'translation' has no 'de'"):
        load_translation_dataset(tmp_path / "enfr")


def test_error_translation_saved_dataset_with_missing_text(tmp_path):
    rows = [{"translation": {"en": "a", "de": "b"}}, {"translation": {"en": "c", "de": None}}]
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "holes")
    with pytest.raises(ValueError, match="1 rows have no 'de' text"):
        load_translation_dataset(tmp_path / "holes")


def test_error_translation_saved_dataset_without_translation_column(tmp_path):
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"no 'translation' column \(columns: \['text'\]\)"):
        load_translation_dataset(tmp_path / "lm")


def test_error_translation_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_name=.*absent.jsonl.*does not exist"):
        load_translation_dataset(str(tmp_path / "absent.jsonl"))


def test_error_translation_unsupported_file_type(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tb\n")
    with pytest.raises(ValueError, match="path_or_name=.*pairs.tsv.*expected a .json or .jsonl file"):
        load_translation_dataset(path)


def test_error_translation_unknown_split(tmp_path, en_de_pairs):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in wmt_rows(en_de_pairs)))
    with pytest.raises(ValueError, match=r"split='test' is not in .*available splits: \['train'\]"):
        load_translation_dataset(path, split="test")


def test_error_translation_same_languages(tmp_path):
    with pytest.raises(ValueError, match="source_lang and target_lang are both 'en'"):
        load_translation_dataset(tmp_path, source_lang="en", target_lang="en")


def test_error_translation_hub_pair_without_english_needs_config_name():
    # Raised before any network access.
    with pytest.raises(ValueError, match="pass config_name"):
        load_translation_dataset("wmt14", source_lang="fr", target_lang="de")


# --------------------------------------------------------------------------- duplication task


def test_duplication_batch_is_zero_w_zero_w_with_labels_on_the_second_copy():
    batch = duplication_batch(3, length=10, generator=torch.Generator().manual_seed(0))
    input_ids, labels = batch["input_ids"], batch["labels"]
    assert input_ids.shape == labels.shape == batch["attention_mask"].shape == (3, 10)
    assert input_ids.dtype == labels.dtype == torch.int64
    assert (input_ids[:, 0] == 0).all() and (input_ids[:, 5] == 0).all()
    assert torch.equal(input_ids[:, 1:5], input_ids[:, 6:10])
    assert ((input_ids[:, 1:5] >= 1) & (input_ids[:, 1:5] <= 127)).all()
    assert (labels[:, :6] == -100).all()
    assert torch.equal(labels[:, 6:], input_ids[:, 6:])
    assert (batch["attention_mask"] == 1).all()


def test_duplication_labels_are_aligned_for_a_model_that_shifts_internally():
    batch = duplication_batch(4, length=1024, generator=torch.Generator().manual_seed(3))
    input_ids, labels = batch["input_ids"], batch["labels"]
    counted = labels != -100
    assert counted.sum(dim=1).tolist() == [511] * 4
    # Every counted target labels[t] is the token at t and can be copied from t - 512, which
    # a causal model sees when it predicts position t from positions < t.
    positions = counted[0].nonzero().flatten()
    assert positions.tolist() == list(range(513, 1024))
    assert torch.equal(labels[:, positions], input_ids[:, positions - 512])


def test_duplication_symbols_cover_the_inclusive_range():
    batch = duplication_batch(16, length=64, vocab_low=1, vocab_high=2, generator=torch.Generator().manual_seed(0))
    assert set(batch["input_ids"][:, 1:32].unique().tolist()) == {1, 2}


def test_duplication_dataset_rows_are_seeded_and_collate():
    rows = DuplicationDataset(num_samples=6, length=16, seed=5)
    assert len(rows) == 6
    assert torch.equal(rows[2]["input_ids"], DuplicationDataset(6, length=16, seed=5)[2]["input_ids"])
    assert not torch.equal(rows[2]["input_ids"], rows[3]["input_ids"])
    batch = next(iter(torch.utils.data.DataLoader(rows, batch_size=4)))
    assert batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["input_ids"][:, 1:8], batch["input_ids"][:, 9:16])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"length": 7}, "length=7 .* even"),
        ({"length": 2}, "length=2"),
        ({"vocab_low": 0}, "vocab_low=0"),
        ({"vocab_low": 5, "vocab_high": 4}, "vocab_high=4"),
    ],
)
def test_error_duplication_batch_arguments(kwargs, match):
    arguments = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        duplication_batch(**arguments)


def test_error_duplication_dataset_num_samples():
    with pytest.raises(ValueError, match="num_samples=0"):
        DuplicationDataset(num_samples=0)


def test_error_duplication_dataset_index_out_of_range():
    with pytest.raises(IndexError, match="index 2"):
        DuplicationDataset(num_samples=2, length=8)[2]


def test_gettext_pairs_log_what_they_drop(catalog_dir, caplog):
    """Nothing is dropped silently: the counts of empty, untranslated and duplicate entries are logged."""
    with caplog.at_level(logging.INFO, logger="reformer_hf.data"):
        load_gettext_pairs(catalog_dir)
    assert "6 pairs from 2 catalogs" in caplog.text
    assert "'untranslated': 1" in caplog.text and "'duplicate': 1" in caplog.text
