"""Data sets for the Reformer's tasks, read from local files in their real formats.

Three families, in the order of the paper's experiments:

- byte corpora (enwik8, or any local text such as the Python documentation):
  raw bytes -> byte ids that match `ReformerByteTokenizer` -> fixed-length
  examples or random training windows;
- English-German sentence pairs (WMT14 format `{"translation": {"en", "de"}}`):
  a local dataset or JSON-lines file, the Hub's `wmt14`, or gettext catalogs;
- the synthetic duplication task `0 w 0 w`.

Every example carries `labels` in the Hugging Face causal-LM convention:
`labels[t]` is the token at position t (the model shifts internally), and -100
marks positions that do not count in the loss.
"""

from __future__ import annotations

import gettext
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch

from .tokenization import BYTE_ID_OFFSET, PAD_ID
from .training import step_generator

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SPLIT_NAMES = ("train", "validation", "test")

# --------------------------------------------------------------------------- validation


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}.")


# --------------------------------------------------------------------------- byte corpora

ENWIK8_MEMBER = "enwik8"
# The paper's (and every enwik8 paper's) split: first 90M bytes train, next 5M valid, last 5M test.
ENWIK8_SPLIT_SIZES = (90_000_000, 5_000_000, 5_000_000)


def _check_split_sizes(split_sizes) -> tuple[int, int, int]:
    if not isinstance(split_sizes, (tuple, list)) or len(split_sizes) != len(SPLIT_NAMES):
        raise ValueError(
            f"split_sizes={split_sizes!r} is not allowed; expected three byte counts (train, validation, test)."
        )
    for name, size in zip(SPLIT_NAMES, split_sizes):
        _check_int(f"split_sizes[{name}]", size, minimum=1)
    return tuple(int(size) for size in split_sizes)


def _enwik8_size(path: Path) -> int:
    if not zipfile.is_zipfile(path):
        return path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
        if ENWIK8_MEMBER not in members:
            raise ValueError(
                f"path={str(path)!r} is a zip without a member named {ENWIK8_MEMBER!r}; "
                f"its members are {members[:10]}."
            )
        return archive.getinfo(ENWIK8_MEMBER).file_size


def _read_enwik8(path: Path) -> bytes:
    if not zipfile.is_zipfile(path):
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        return archive.read(ENWIK8_MEMBER)


def split_byte_stream(data: bytes, split_sizes: Sequence[int]) -> dict[str, bytes]:
    """Cut `data` into consecutive train / validation / test pieces of exactly `split_sizes` bytes."""
    sizes = _check_split_sizes(split_sizes)
    if len(data) != sum(sizes):
        raise ValueError(
            f"split_sizes={sizes} sum to {sum(sizes)} bytes but the data has {len(data)}; "
            "they must match so that no byte is dropped."
        )
    boundaries = np.cumsum((0,) + sizes)
    return {name: data[start:end] for name, start, end in zip(SPLIT_NAMES, boundaries[:-1], boundaries[1:])}


def load_enwik8(path: str | os.PathLike, split_sizes: Sequence[int] = ENWIK8_SPLIT_SIZES) -> dict[str, bytes]:
    """Read enwik8 from a local `enwik8` file or `enwik8.zip` and split it by bytes.

    The real file is exactly 100,000,000 bytes and the default `split_sizes` give the
    standard 90M / 5M / 5M split.  For any other file (a test file, a truncated
    download) `split_sizes` must sum to the file's length: a shorter or longer file
    raises instead of quietly yielding short splits or ignoring bytes.

    Returns {"train": bytes, "validation": bytes, "test": bytes}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r} is not a file; expected a local enwik8 or enwik8.zip.")
    sizes = _check_split_sizes(split_sizes)
    n_bytes = _enwik8_size(path)
    if n_bytes != sum(sizes):
        relation = "shorter than" if n_bytes < sum(sizes) else "longer than"
        raise ValueError(
            f"path={str(path)!r} holds {n_bytes} bytes, {relation} split_sizes={sizes} (sum {sum(sizes)}); "
            f"pass split_sizes that sum to {n_bytes}."
        )
    return split_byte_stream(_read_enwik8(path), sizes)


def find_corpus_files(paths, patterns: Sequence[str] = ("*",)) -> list[Path]:
    """Files named in `paths` plus files under directories in `paths` matching any glob in
    `patterns` (searched recursively), sorted and de-duplicated so the corpus is reproducible."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(path) for path in paths]
    if not paths:
        raise ValueError("paths=[] is not allowed; expected at least one file or directory.")
    if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"patterns={patterns!r} is not allowed; expected a list of non-empty glob patterns.")
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"paths contains {missing}, which do not exist.")
    files = set()
    for path in paths:
        if path.is_file():
            files.add(path.resolve())
            continue
        for pattern in patterns:
            files.update(match.resolve() for match in path.rglob(pattern) if match.is_file())
    if not files:
        raise FileNotFoundError(f"no file under paths={[str(p) for p in paths]} matches patterns={list(patterns)}.")
    return sorted(files)


def load_text_corpus(paths, patterns: Sequence[str] = ("*",), separator: bytes = b"\n") -> bytes:
    """All matching files' bytes, in sorted path order, joined by `separator`.

    E.g. Debian's python3.11-doc unpacked into DIR:
    `load_text_corpus(DIR / "usr/share/doc/python3.11/html", ["*.html", "*.txt"])`.
    Bytes are read as they are (no decoding), so any encoding is kept exactly.
    """
    if not isinstance(separator, bytes):
        raise ValueError(f"separator={separator!r} is not allowed; expected bytes, e.g. b'\\n'.")
    return separator.join(path.read_bytes() for path in find_corpus_files(paths, patterns))


REMAINDER_CHOICES = ("pad", "drop", "error")


def chunk_byte_stream(data: bytes, seq_len: int, remainder: str = "pad") -> datasets.Dataset:
    """Cut a byte stream into consecutive examples of `seq_len` byte ids.

    Columns: `input_ids` (byte + BYTE_ID_OFFSET, the ReformerByteTokenizer ids),
    `attention_mask`, and `labels` (== input_ids; -100 on padding).
    The last, shorter piece is handled by `remainder`:
    "pad" (default) pads it with <pad> and masks it, so every byte is trained or
    evaluated on; "drop" leaves it out; "error" raises if there is one.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data is a {type(data).__name__}; expected bytes.")
    _check_int("seq_len", seq_len, minimum=1)
    if remainder not in REMAINDER_CHOICES:
        raise ValueError(f"remainder={remainder!r} is not allowed; expected one of {REMAINDER_CHOICES}.")
    if len(data) == 0:
        raise ValueError("data is empty; there is nothing to cut into examples.")
    n_tail = len(data) % seq_len
    if n_tail and remainder == "error":
        raise ValueError(
            f"data has {len(data)} bytes, not a multiple of seq_len={seq_len} ({n_tail} bytes left over); "
            "use remainder='pad' or 'drop'."
        )
    if len(data) < seq_len and remainder == "drop":
        raise ValueError(f"data has {len(data)} bytes, fewer than seq_len={seq_len}; remainder='drop' leaves nothing.")

    byte_values = np.frombuffer(bytes(data), dtype=np.uint8)
    n_kept = len(byte_values) - n_tail if remainder == "drop" else len(byte_values)
    n_rows = math.ceil(n_kept / seq_len)
    # int32 storage keeps enwik8-sized corpora small; the torch format returns int64.
    input_ids = np.full(n_rows * seq_len, PAD_ID, dtype=np.int32)
    input_ids[:n_kept] = byte_values[:n_kept].astype(np.int32) + BYTE_ID_OFFSET
    attention_mask = np.zeros(n_rows * seq_len, dtype=np.int8)
    attention_mask[:n_kept] = 1
    labels = np.where(attention_mask == 1, input_ids, IGNORE_INDEX).astype(np.int32)
    shape = (n_rows, seq_len)
    return datasets.Dataset.from_dict(
        {
            "input_ids": input_ids.reshape(shape),
            "attention_mask": attention_mask.reshape(shape),
            "labels": labels.reshape(shape),
        }
    )


class RandomByteWindows(torch.utils.data.Dataset):
    """`num_samples` windows of `seq_len` byte ids at seeded random offsets of `data`.

    LM training on enwik8 samples windows anywhere in the stream rather than at fixed
    chunk boundaries.  Window i's offset depends only on (seed, i), so runs are
    reproducible across workers; use a new seed for a different draw.  Holds the
    corpus once as uint8 (90 MB for enwik8's train split).
    """

    def __init__(self, data: bytes, seq_len: int, num_samples: int, seed: int = 0):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data is a {type(data).__name__}; expected bytes.")
        _check_int("seq_len", seq_len, minimum=1)
        _check_int("num_samples", num_samples, minimum=1)
        _check_int("seed", seed, minimum=0)
        if len(data) < seq_len:
            raise ValueError(f"seq_len={seq_len} is longer than the data ({len(data)} bytes).")
        self.byte_values = np.frombuffer(bytes(data), dtype=np.uint8)
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def window_offset(self, index: int) -> int:
        n_offsets = len(self.byte_values) - self.seq_len + 1
        # Seeded by (seed, index) alone, so a window is the same in every worker and epoch.
        return int(torch.randint(n_offsets, (1,), generator=step_generator(self.seed, index)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} windows.")
        offset = self.window_offset(index)
        window = self.byte_values[offset : offset + self.seq_len]
        input_ids = torch.from_numpy(window.astype(np.int64) + BYTE_ID_OFFSET)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids.clone(),
        }


# --------------------------------------------------------------------------- translation pairs

TRANSLATION_COLUMN = "translation"
# A UI label has at most one mnemonic: LibreOffice marks it with "~", GTK with "_",
# Windows/KDE/Qt with "&".  A mark counts only before a letter or digit and not when
# doubled ("__", "&&" are literal); "&" is also left alone where it starts an
# entity such as "&amp;".
_ACCELERATOR_PATTERNS = {
    "~": re.compile(r"(?<!~)~(?=[^\W_])"),
    "_": re.compile(r"(?<!_)_(?=[^\W_])"),
    "&": re.compile(r"(?<!&)&(?=[^\W_])(?!#?\w+;)"),
}


def strip_accelerator_marks(text: str) -> str:
    """Remove UI keyboard-accelerator marks ("~Save", "Sa_ve", "&Open") from a label.

    A mark is removed only when it is the single candidate of its kind in the
    string, so identifiers with several underscores (FILE_NAME_MAX) stay intact.
    """
    for pattern in _ACCELERATOR_PATTERNS.values():
        if len(pattern.findall(text)) == 1:
            text = pattern.sub("", text, count=1)
    return text


def _catalog_pairs(path: Path) -> Iterator[tuple[str, str]]:
    """(English msgid, translated msgstr) for every entry of one .mo file.

    msgctxt entries are stored as "context\\x04msgid": the context is dropped and the
    pair kept.  Plural entries are stored per form as ((msgid, n), msgstr[n]): only
    form 0, the singular, is kept, since the English plural text is not in the catalog.
    """
    try:
        with path.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a readable gettext .mo catalog: {error}") from error
    for key, translated in catalog.items():
        if isinstance(key, tuple):
            key, plural_form = key
            if plural_form != 0:
                continue
        source = key.split("\x04", 1)[-1]
        if source:  # msgid "" is the catalog header, not a message
            yield source, translated


def _clean_label(text: str) -> str:
    return strip_accelerator_marks(text).strip()


def load_gettext_pairs(
    root_dir: str | os.PathLike, source_lang: str = "en", target_lang: str = "de"
) -> datasets.Dataset:
    """Sentence pairs from every `.mo` catalog under `root_dir`, in WMT14 format.

    msgid is the source (English by gettext convention) and msgstr the translation.
    Accelerator marks are stripped from both, surrounding whitespace removed, and
    pairs that are empty on either side, identical on both sides (untranslated
    names, numbers, placeholders) or already seen are dropped; how many of each is
    logged (logger `reformer_hf.data`, INFO).  Files are read in sorted order so the
    result is deterministic.
    """
    root = Path(root_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"root_dir={str(root)!r} is not a directory.")
    _check_language_pair(source_lang, target_lang)
    mo_files = sorted(root.rglob("*.mo"))
    if not mo_files:
        raise FileNotFoundError(f"root_dir={str(root)!r} contains no .mo files.")
    seen = set()
    rows = []
    dropped = {"empty": 0, "untranslated": 0, "duplicate": 0}
    for path in mo_files:
        for source, target in _catalog_pairs(path):
            pair = (_clean_label(source), _clean_label(target))
            reason = ("empty" if not pair[0] or not pair[1] else "untranslated" if pair[0] == pair[1]
                      else "duplicate" if pair in seen else None)
            if reason is not None:
                dropped[reason] += 1
                continue
            seen.add(pair)
            rows.append({source_lang: pair[0], target_lang: pair[1]})
    logger.info("load_gettext_pairs: %d pairs from %d catalogs; dropped %s", len(rows), len(mo_files), dropped)
    return _translation_dataset(rows, source_lang, target_lang)


def _translation_dataset(pairs: list[dict[str, str]], source_lang: str, target_lang: str) -> datasets.Dataset:
    """`pairs` ({source_lang: ..., target_lang: ...} each) as a WMT14-format data set."""
    features = datasets.Features(
        {TRANSLATION_COLUMN: datasets.Translation(languages=sorted([source_lang, target_lang]))}
    )
    return datasets.Dataset.from_dict({TRANSLATION_COLUMN: pairs}, features=features)


def _check_language_pair(source_lang: str, target_lang: str) -> None:
    for name, value in (("source_lang", source_lang), ("target_lang", target_lang)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}={value!r} is not allowed; expected a language code such as 'en' or 'de'.")
    if source_lang == target_lang:
        raise ValueError(f"source_lang and target_lang are both {source_lang!r}; expected two different languages.")


def _resolve_split_size(name: str, size, n_rows: int) -> int:
    if isinstance(size, float) and not isinstance(size, bool):
        if not 0.0 < size < 1.0:
            raise ValueError(f"{name}={size!r} is not allowed; a fraction must lie strictly between 0 and 1.")
        return math.ceil(size * n_rows)
    _check_int(name, size, minimum=1)
    return int(size)


def split_translation_dataset(
    dataset: datasets.Dataset,
    validation_size: int | float = 0.05,
    test_size: int | float = 0.05,
    seed: int = 0,
    source_lang: str = "en",
) -> datasets.DatasetDict:
    """Deterministic train / validation / test split that keeps each source sentence in one split.

    UI catalogs translate the same English string differently in different contexts;
    grouping by source text keeps such a sentence out of both train and test.
    Sizes are row counts (int) or fractions (float in (0, 1)); whole groups are
    assigned in a seeded random order until each held-out split reaches its size,
    so a split can exceed its size by less than one group.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"dataset is a {type(dataset).__name__}; expected a datasets.Dataset.")
    _check_int("seed", seed, minimum=0)
    n_rows = len(dataset)
    n_test = _resolve_split_size("test_size", test_size, n_rows)
    n_validation = _resolve_split_size("validation_size", validation_size, n_rows)
    if n_test + n_validation >= n_rows:
        raise ValueError(
            f"validation_size={validation_size!r} and test_size={test_size!r} take {n_validation + n_test} "
            f"of the {n_rows} rows, leaving nothing to train on."
        )
    sources = [row[source_lang] for row in dataset[TRANSLATION_COLUMN]]
    rows_by_source: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        rows_by_source.setdefault(source, []).append(index)
    groups = [rows_by_source[source] for source in sorted(rows_by_source)]
    order = np.random.default_rng(seed).permutation(len(groups))

    split_rows = {"test": [], "validation": [], "train": []}
    targets = {"test": n_test, "validation": n_validation}
    for group_index in order:
        split = next((name for name, target in targets.items() if len(split_rows[name]) < target), "train")
        split_rows[split].extend(groups[group_index])
    if not split_rows["train"]:
        raise ValueError(
            f"after grouping rows by source sentence, validation_size={validation_size!r} and "
            f"test_size={test_size!r} leave nothing to train on ({len(groups)} distinct sources)."
        )
    return datasets.DatasetDict({name: dataset.select(sorted(split_rows[name])) for name in SPLIT_NAMES})


def _check_translation_row(row, source_lang: str, target_lang: str, where: str) -> dict[str, str]:
    pair = row.get(TRANSLATION_COLUMN) if isinstance(row, dict) else None
    if not isinstance(pair, dict):
        raise ValueError(f"{where}: expected an object with a {TRANSLATION_COLUMN!r} object, got {str(row)[:200]!r}.")
    for lang in (source_lang, target_lang):
        if not isinstance(pair.get(lang), str):
            raise ValueError(
                f"{where}: {TRANSLATION_COLUMN!r} has no {lang!r} string (languages present: {sorted(pair)})."
            )
    return {source_lang: pair[source_lang], target_lang: pair[target_lang]}


def _read_json_rows(path: Path) -> Iterator[tuple[str, object]]:
    """Rows of a JSON array file or of a JSON-lines file, each with a location for errors."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        for index, row in enumerate(json.loads(text)):
            yield f"{path}[{index}]", row
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{line_number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from error


def _load_json_translations(path: Path, source_lang: str, target_lang: str) -> datasets.Dataset:
    pairs = [_check_translation_row(row, source_lang, target_lang, where) for where, row in _read_json_rows(path)]
    if not pairs:
        raise ValueError(f"path_or_name={str(path)!r} contains no rows.")
    return _translation_dataset(pairs, source_lang, target_lang)


def _check_translation_dataset(dataset: datasets.Dataset, source_lang: str, target_lang: str, where: str) -> None:
    """Schema check plus a null count per language, done on the Arrow columns (no Python loop)."""
    feature = dataset.features.get(TRANSLATION_COLUMN)
    if feature is None:
        raise ValueError(f"{where}: no {TRANSLATION_COLUMN!r} column (columns: {dataset.column_names}).")
    languages = feature.languages if isinstance(feature, datasets.Translation) else list(feature)
    for lang in (source_lang, target_lang):
        if lang not in languages:
            raise ValueError(f"{where}: {TRANSLATION_COLUMN!r} has no {lang!r} (languages present: {languages}).")
    column = dataset.data.column(TRANSLATION_COLUMN).combine_chunks()
    for lang in (source_lang, target_lang):
        n_missing = column.field(lang).null_count + column.null_count
        if n_missing:
            raise ValueError(f"{where}: {n_missing} rows have no {lang!r} text.")


def _hub_config_name(source_lang: str, target_lang: str) -> str:
    # WMT14's configs are named "<other>-en" ("de-en", "fr-en", ...) whichever way one translates.
    if "en" not in (source_lang, target_lang):
        raise ValueError(
            f"source_lang={source_lang!r}, target_lang={target_lang!r}: no WMT14 config pairs two non-English "
            "languages; pass config_name."
        )
    other = target_lang if source_lang == "en" else source_lang
    return f"{other}-en"


def _looks_like_local_path(path_or_name: str) -> bool:
    """Hub names are "name" or "owner/name"; anything else that does not exist is a missing local path."""
    return (
        path_or_name.startswith((".", "/", "~"))
        or path_or_name.endswith((".json", ".jsonl"))
        or path_or_name.count("/") > 1
        or (os.sep != "/" and os.sep in path_or_name)
    )


def load_translation_dataset(
    path_or_name: str | os.PathLike,
    source_lang: str = "en",
    target_lang: str = "de",
    split: str | None = None,
    config_name: str | None = None,
) -> datasets.DatasetDict | datasets.Dataset:
    """A WMT14-format translation data set: rows `{"translation": {source_lang: ..., target_lang: ...}}`.

    `path_or_name` is one of
      - a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`;
      - a `.json` file (an array of rows) or `.jsonl` file (one row per line);
      - a Hub data set name, e.g. "wmt14" (needs the network; config "de-en" is derived
        from the languages unless `config_name` is given).
    A single Dataset or file becomes the "train" split.  Every row must have both
    languages.  Returns the DatasetDict, or the one Dataset named by `split`.
    """
    _check_language_pair(source_lang, target_lang)
    path = Path(path_or_name).expanduser()
    text = str(path_or_name)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        for name, dataset in splits.items():
            _check_translation_dataset(dataset, source_lang, target_lang, f"{path} split {name!r}")
    elif path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise ValueError(
                f"path_or_name={text!r} is a {path.suffix or 'suffix-less'} file; expected a .json or .jsonl file, "
                "a save_to_disk folder, or a Hub name."
            )
        splits = datasets.DatasetDict({"train": _load_json_translations(path, source_lang, target_lang)})
    elif _looks_like_local_path(text):
        raise FileNotFoundError(f"path_or_name={text!r} does not exist.")
    else:
        config = config_name or _hub_config_name(source_lang, target_lang)
        splits = datasets.load_dataset(text, config)
        for name, dataset in splits.items():
            _check_translation_dataset(dataset, source_lang, target_lang, f"{text}/{config} split {name!r}")
    if split is None:
        return splits
    if split not in splits:
        raise ValueError(f"split={split!r} is not in {text!r}; available splits: {list(splits)}.")
    return splits[split]


def translation_texts(dataset: datasets.Dataset, languages: Sequence[str] = ("en", "de")) -> Iterator[str]:
    """Every sentence of every language in `languages`, row by row (for training a shared vocabulary)."""
    if isinstance(languages, str) or not languages:
        raise ValueError(f"languages={languages!r} is not allowed; expected a list of language codes.")
    for batch in dataset.iter(batch_size=1000):
        for pair in batch[TRANSLATION_COLUMN]:
            for lang in languages:
                yield pair[lang]


# --------------------------------------------------------------------------- duplication task


def _check_duplication_args(length: int, vocab_low: int, vocab_high: int) -> None:
    _check_int("length", length, minimum=4)
    if length % 2:
        raise ValueError(f"length={length} is not allowed; the sequence 0 w 0 w needs an even length.")
    # 0 is the separator, so symbols must start at 1 for the copy to be unambiguous.
    _check_int("vocab_low", vocab_low, minimum=1)
    _check_int("vocab_high", vocab_high, minimum=vocab_low)


def duplication_batch(
    batch_size: int,
    length: int = 1024,
    vocab_low: int = 1,
    vocab_high: int = 127,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The paper's duplication task: rows `0 w 0 w` with `w` of `length/2 - 1` symbols
    drawn uniformly from `vocab_low..vocab_high` (inclusive).

    `labels` follow the Hugging Face causal-LM convention: aligned with `input_ids`
    (the model shifts them), equal to `input_ids` on the second copy of `w` and -100
    everywhere else, so loss and accuracy count only the `length/2 - 1` symbols that
    can be copied (the second 0 is always 0 and is not counted).  The model needs a
    vocabulary of at least `vocab_high + 1` ids.  All tensors are (batch_size, length).
    """
    _check_int("batch_size", batch_size, minimum=1)
    _check_duplication_args(length, vocab_low, vocab_high)
    half = length // 2
    words = torch.randint(vocab_low, vocab_high + 1, (batch_size, half - 1), generator=generator)
    separator = torch.zeros(batch_size, 1, dtype=words.dtype)
    input_ids = torch.cat([separator, words, separator, words], dim=1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, half + 1 :] = words
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


class DuplicationDataset(torch.utils.data.Dataset):
    """`num_samples` duplication-task rows for a Trainer; row i depends only on (seed, i)."""

    def __init__(self, num_samples: int, length: int = 1024, vocab_low: int = 1, vocab_high: int = 127, seed: int = 0):
        _check_int("num_samples", num_samples, minimum=1)
        _check_duplication_args(length, vocab_low, vocab_high)
        _check_int("seed", seed, minimum=0)
        self.num_samples = num_samples
        self.length = length
        self.vocab_low = vocab_low
        self.vocab_high = vocab_high
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} rows.")
        batch = duplication_batch(
            1, self.length, self.vocab_low, self.vocab_high, generator=step_generator(self.seed, index)
        )
        return {name: tensor[0] for name, tensor in batch.items()}
