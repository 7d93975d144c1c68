"""Tokenizers for the Reformer: a byte-level tokenizer and a BPE training helper.

Byte-level id layout (shared with `data.py`, which turns raw byte corpora into
the same ids without going through the tokenizer)::

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4 + b  for every byte b in 0..255

so `vocab_size == 260`.  The specials come first so that id 0 is padding, the
usual Hugging Face default, and so that adding specials never moves a byte id.

This module is copied into saved model folders for `trust_remote_code`, so it
imports only stdlib, numpy, transformers and tokenizers and no sibling module.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import AddedToken

# One source of truth for the byte-level id layout: data.py imports these.
BYTE_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(BYTE_SPECIAL_TOKENS))
BYTE_ID_OFFSET = len(BYTE_SPECIAL_TOKENS)
N_BYTE_VALUES = 256
BYTE_VOCAB_SIZE = BYTE_ID_OFFSET + N_BYTE_VALUES

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# A byte-level BPE vocabulary holds its 4 specials and all 256 byte symbols before any merge.
MIN_BPE_VOCAB_SIZE = 4 + len(pre_tokenizers.ByteLevel.alphabet())


def bytes_to_ids(data: bytes) -> np.ndarray:
    """Byte ids of `data` as int64, each byte shifted past the special ids."""
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64) + BYTE_ID_OFFSET


def ids_to_bytes(ids: Iterable[int]) -> bytes:
    """The bytes behind byte ids; special ids (and any id outside the byte range) are dropped."""
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
    is_byte = (ids >= BYTE_ID_OFFSET) & (ids < BYTE_VOCAB_SIZE)
    return (ids[is_byte] - BYTE_ID_OFFSET).astype(np.uint8).tobytes()


def _check_added_token(token, index: int | None = None) -> None:
    """Refuse an added token that would break exact round trips or the byte id layout."""
    content = str(token)
    where = f" (id {index})" if index is not None else ""
    if len(content) < 2:
        raise ValueError(
            f"ReformerByteTokenizer: the added token {content!r}{where} is not allowed; one-character strings "
            "stand for bytes in this vocabulary, so an added token needs at least two characters."
        )
    if index is not None and BYTE_ID_OFFSET <= index < BYTE_VOCAB_SIZE:
        raise ValueError(
            f"ReformerByteTokenizer: the added token {content!r} has id {index}, a byte id; byte ids are "
            f"{BYTE_ID_OFFSET}..{BYTE_VOCAB_SIZE - 1}, added tokens come after them (>= {BYTE_VOCAB_SIZE})."
        )
    if isinstance(token, AddedToken):
        for flag in ("lstrip", "rstrip", "single_word"):
            if getattr(token, flag):
                raise ValueError(
                    f"ReformerByteTokenizer: the added token {content!r} has {flag}=True, which would drop or "
                    f"move characters of the text around it; this tokenizer encodes text exactly: expected "
                    f"{flag}=False."
                )


def _special_token(name: str, value) -> AddedToken:
    # A one-character special would collide with the one-character strings that
    # stand for bytes (chr(b)), so the vocabulary would map one string to two ids.
    content = str(value) if value is not None else None
    if content is None or len(content) < 2:
        raise ValueError(
            f"ReformerByteTokenizer: {name}={value!r} is not allowed; byte-level ids need all four specials, "
            "each a string of at least two characters (one-character strings are reserved for bytes)."
        )
    return AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True)


class ReformerByteTokenizer(PreTrainedTokenizer):
    """Byte-level tokenizer: UTF-8 bytes of the text, each shifted by 4 past the specials.

    Every string round-trips exactly: `decode(encode(text), skip_special_tokens=True) == text`,
    including NUL, control characters, emoji and any script, because text is never
    normalised, never stripped, and special-token strings inside the text (e.g. a literal
    "<eos>") are encoded as their bytes rather than as the special id
    (`split_special_tokens=True`): specials only ever come from `add_bos_token` /
    `add_eos_token`, padding, or the model.

    `add_tokens(["hello"])` gives "hello" the next free id (260, 261, ...): wherever it occurs
    in the text it is one id (the longest added token wins where several match), and it
    decodes back to its text; grow the model with `model.resize_token_embeddings(len(tok))`.
    Special tokens added with `add_special_tokens` get ids the same way but, like the four
    above, stay bytes inside the text unless a call passes `split_special_tokens=False`.
    An added token needs at least two characters (one-character strings stand for bytes)
    and no `lstrip` / `rstrip` / `single_word` (they would drop or move text).

    Args:
        add_bos_token: prepend `<bos>` to every encoded sequence (default False: byte LMs
            such as the enwik8 model are trained on raw byte windows without markers).
        add_eos_token: append `<eos>` to every encoded sequence (default False, same reason).
        padding_side: "right" (default) or "left" (use left for batched generation).
    """

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        **kwargs,
    ) -> None:
        for name, value in (("add_bos_token", add_bos_token), ("add_eos_token", add_eos_token)):
            if not isinstance(value, bool):
                raise ValueError(f"ReformerByteTokenizer: {name}={value!r} is not allowed; expected True or False.")
        specials = {
            "pad_token": _special_token("pad_token", pad_token),
            "bos_token": _special_token("bos_token", bos_token),
            "eos_token": _special_token("eos_token", eos_token),
            "unk_token": _special_token("unk_token", unk_token),
        }
        contents = [token.content for token in specials.values()]
        if len(set(contents)) != len(contents):
            raise ValueError(f"ReformerByteTokenizer: the special tokens {contents} must be four distinct strings.")
        # Fixing the specials at ids 0..3 before the base __init__ runs stops it from
        # appending them after the bytes, which would break the id layout above.
        self._added_tokens_decoder = dict(enumerate(specials.values()))
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        # Exact round trips need: specials in the text stay text, no space clean-up.
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            **specials,
            **kwargs,
        )
        # A saved tokenizer's added tokens reach the vocabulary without passing _add_tokens.
        for index, token in self._added_tokens_decoder.items():
            if index >= BYTE_ID_OFFSET:
                _check_added_token(token, index)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *init_inputs, **kwargs):
        """transformers' from_pretrained; a folder's tokenizer_config.json is read first, so that a file
        that is not valid JSON is named (transformers lets json's error out without the file's name)."""
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        config_path = os.path.join(folder, TOKENIZER_CONFIG_FILE)
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as handle:
                    json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise OSError(f"The tokenizer config file at '{config_path}' is not a valid JSON file: {error}.") from error
        return super().from_pretrained(pretrained_model_name_or_path, *init_inputs, **kwargs)

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        # transformers 5.17-5.25 route add_tokens, add_special_tokens and the specials of __init__ through
        # here; every new token is checked before any is added.
        for token in new_tokens or ():
            if isinstance(token, (str, AddedToken)) and str(token) and str(token) not in self._added_tokens_encoder:
                _check_added_token(token)
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(byte): byte + BYTE_ID_OFFSET for byte in range(N_BYTE_VALUES)}
        vocab.update({token.content: index for index, token in self._added_tokens_decoder.items()})
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        # One token per UTF-8 byte; chr(b) is a one-character stand-in for byte b.  Tokens added with
        # add_tokens stay whole (transformers splits them out itself only when it does not split specials).
        pattern = self._added_text_pattern()
        pieces = [text] if pattern is None else pattern.split(text)
        tokens = []
        for position, piece in enumerate(pieces):
            if position % 2:
                tokens.append(piece)
            else:
                tokens.extend(chr(byte) for byte in piece.encode("utf-8"))
        return tokens

    def _added_text_pattern(self) -> re.Pattern | None:
        """A regex matching any non-special added token, longest first; None when there is none."""
        contents = tuple(sorted((token.content for index, token in self._added_tokens_decoder.items()
                                 if index >= BYTE_VOCAB_SIZE and not token.special), key=lambda text: (-len(text), text)))
        if not contents:
            return None
        cached_contents, pattern = getattr(self, "_added_text_pattern_cache", ((), None))
        if cached_contents != contents:
            pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")")
            self._added_text_pattern_cache = (contents, pattern)
        return pattern

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) == 1 and ord(token) < N_BYTE_VALUES:
            return ord(token) + BYTE_ID_OFFSET
        return UNK_ID

    def _convert_id_to_token(self, index: int) -> str:
        if not BYTE_ID_OFFSET <= index < BYTE_VOCAB_SIZE:
            added = f"{BYTE_VOCAB_SIZE}..{len(self) - 1}" if len(self) > BYTE_VOCAB_SIZE else "none"
            raise ValueError(
                f"ReformerByteTokenizer: token id {index} is not a byte id; byte ids are "
                f"{BYTE_ID_OFFSET}..{BYTE_VOCAB_SIZE - 1}, specials are 0..{BYTE_ID_OFFSET - 1}, added tokens {added}."
            )
        return chr(index - BYTE_ID_OFFSET)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        text_bytes = bytearray()
        for token in tokens:
            if token in self._added_tokens_encoder:
                text_bytes += token.encode("utf-8")
            else:
                text_bytes.append(ord(token))
        # Generated ids are not guaranteed to be valid UTF-8 (a sample can stop in the
        # middle of a multi-byte character or emit a stray continuation byte).  "replace"
        # turns each bad byte into U+FFFD, so decoding never raises and the damage stays
        # visible; "ignore" would silently drop bytes.
        return bytes(text_bytes).decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        def wrap(ids: list[int]) -> list[int]:
            return [BOS_ID] * self.add_bos_token + ids + [EOS_ID] * self.add_eos_token

        if token_ids_1 is None:
            return wrap(token_ids_0)
        return wrap(token_ids_0) + wrap(token_ids_1)

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return [int(index < BYTE_ID_OFFSET) for index in token_ids_0 + (token_ids_1 or [])]

        def mask(ids: list[int]) -> list[int]:
            return [1] * self.add_bos_token + [0] * len(ids) + [1] * self.add_eos_token

        return mask(token_ids_0) + (mask(token_ids_1) if token_ids_1 is not None else [])

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        # The vocabulary is the fixed byte layout above; there is nothing to write.
        return ()

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved_files = super().save_pretrained(save_directory, *args, **kwargs)
        # transformers 5 drops add_bos_token/add_eos_token from tokenizer_config.json
        # because fast tokenizers keep them in tokenizer.json's post-processor; this
        # tokenizer has no tokenizer.json, so without this they would reset on reload.
        for path in saved_files or ():
            if os.path.basename(str(path)).endswith(TOKENIZER_CONFIG_FILE):
                with open(path, encoding="utf-8") as handle:
                    config = json.load(handle)
                config["add_bos_token"] = self.add_bos_token
                config["add_eos_token"] = self.add_eos_token
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return saved_files


def register_tokenizer_auto_class() -> None:
    """Make `save_pretrained` write an `auto_map` and copy this file into the folder.

    The saved folder then loads with `AutoTokenizer.from_pretrained(folder,
    trust_remote_code=True)` without this package installed.  Idempotent.
    """
    ReformerByteTokenizer.register_for_auto_class("AutoTokenizer")


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}.")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    pad_token: str = "<pad>",
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    unk_token: str = "<unk>",
    add_eos_token: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer, e.g. one vocabulary shared by source and target languages.

    Ids 0..3 are pad, bos, eos, unk (the same layout as the byte tokenizer).  There is
    no normaliser, the pre-tokenizer is byte-level without an added prefix space and the
    decoder is byte-level, so `decode(encode(text), skip_special_tokens=True) == text`
    for any string; special-token strings inside the text stay text.  With
    `add_eos_token` every sequence ends with `eos_token`, as seq2seq sources and labels
    need (the decoder must learn to stop).  The result's `save_pretrained` folder
    loads with `AutoTokenizer.from_pretrained(folder)` and no custom code.
    """
    _check_positive_int("vocab_size", vocab_size)
    _check_positive_int("min_frequency", min_frequency)
    if not isinstance(add_eos_token, bool):
        raise ValueError(f"add_eos_token={add_eos_token!r} is not allowed; expected True or False.")
    specials = {"pad_token": pad_token, "bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token}
    for name, value in specials.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}={value!r} is not allowed; expected a non-empty string.")
    if len(set(specials.values())) != len(specials):
        raise ValueError(f"special tokens {list(specials.values())} must be distinct strings.")
    if vocab_size < MIN_BPE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is not allowed; a byte-level BPE vocabulary needs at least "
            f"{MIN_BPE_VOCAB_SIZE} entries (4 specials + 256 byte symbols)."
        )
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be an iterable of strings, not a single string.")

    backend = Tokenizer(models.BPE(unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Peek at the first text so an empty iterable fails before any training work.
    text_iterator = iter(texts)
    first_text = next(text_iterator, None)
    if first_text is None:
        raise ValueError("texts is empty; a BPE vocabulary needs at least one training text.")

    def checked_texts():
        for index, text in enumerate(itertools.chain([first_text], text_iterator)):
            if not isinstance(text, str):
                raise ValueError(f"texts[{index}] has type {type(text).__name__}; every text must be a str.")
            yield text

    backend.train_from_iterator(checked_texts(), trainer=trainer)
    if add_eos_token:
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {eos_token}:0",
            pair=f"$A:0 {eos_token}:0 $B:1 {eos_token}:1",
            special_tokens=[(eos_token, backend.token_to_id(eos_token))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **specials,
    )
