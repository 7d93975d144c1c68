#!/usr/bin/env python
"""Train the shared source/target byte-level BPE tokenizer for translation and save it.

Examples:
    # a WMT14-format dataset saved with save_to_disk, or a .json/.jsonl file of
    # {"translation": {"de": ..., "en": ...}} rows, or the Hub's "wmt14" where reachable
    python scripts/train_tokenizer.py --dataset data/wmt14 --vocab-size 32000 --output-dir tok/wmt14-bpe

    # the offline En-De stand-in: LibreOffice's German gettext catalogs
    apt-get download libreoffice-l10n-de && dpkg -x libreoffice-l10n-de_*.deb /tmp/lo
    python scripts/train_tokenizer.py --gettext-dir /tmp/lo --vocab-size 8000 --output-dir tok/lo-bpe

The folder loads with `AutoTokenizer.from_pretrained(output_dir)`, no custom code.
"""

import argparse
import sys
from pathlib import Path

from reformer_hf.data import (
    load_gettext_pairs,
    load_translation_dataset,
    split_translation_dataset,
    translation_texts,
)
from reformer_hf.tokenization import MIN_BPE_VOCAB_SIZE, train_bpe_tokenizer


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; expected an integer >= 1")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train_tokenizer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        help="save_to_disk folder, .json/.jsonl file of WMT14-format rows, or a Hub name such as wmt14",
    )
    source.add_argument("--gettext-dir", type=Path, help="folder searched recursively for gettext .mo catalogs")
    parser.add_argument("--split", default="train", help="split to train on (default: train)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the deterministic train/validation/test split of --gettext-dir pairs (default: 0)",
    )
    parser.add_argument("--source-lang", default="en", help="default: en")
    parser.add_argument("--target-lang", default="de", help="default: de")
    parser.add_argument("--vocab-size", type=positive_int, default=8000, help="default: 8000")
    parser.add_argument("--min-frequency", type=positive_int, default=2, help="default: 2")
    parser.add_argument("--no-eos", action="store_true", help="do not append </s> to every encoded sequence")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder to write the tokenizer to")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output-dir")
    args = parser.parse_args(argv)

    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir {str(args.output_dir)!r} is a file; expected a folder")
    if args.output_dir.is_dir() and any(args.output_dir.iterdir()) and not args.overwrite:
        parser.error(f"--output-dir {str(args.output_dir)!r} is not empty; pass --overwrite to write into it")
    if args.gettext_dir is not None and not args.gettext_dir.is_dir():
        parser.error(f"--gettext-dir {str(args.gettext_dir)!r} is not a folder")
    if args.gettext_dir is not None and args.split not in ("train", "validation", "test"):
        parser.error(f"--split {args.split!r} is not allowed with --gettext-dir; expected train, validation or test")
    if args.vocab_size < MIN_BPE_VOCAB_SIZE:
        parser.error(f"--vocab-size {args.vocab_size} is not allowed; expected at least {MIN_BPE_VOCAB_SIZE}")
    if args.seed < 0:
        parser.error(f"--seed {args.seed} is not allowed; expected an integer >= 0")
    return args


def load_pairs(args: argparse.Namespace):
    if args.gettext_dir is not None:
        pairs = load_gettext_pairs(args.gettext_dir, args.source_lang, args.target_lang)
        return split_translation_dataset(pairs, seed=args.seed, source_lang=args.source_lang)[args.split]
    return load_translation_dataset(args.dataset, args.source_lang, args.target_lang, split=args.split)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        pairs = load_pairs(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"train_tokenizer.py: error: {error}", file=sys.stderr)
        return 2
    print(f"training on {len(pairs)} {args.source_lang}-{args.target_lang} pairs ({args.split} split)")
    tokenizer = train_bpe_tokenizer(
        translation_texts(pairs, [args.source_lang, args.target_lang]),
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        add_eos_token=not args.no_eos,
    )
    tokenizer.save_pretrained(args.output_dir)
    example = pairs[0]["translation"][args.source_lang]
    print(f"vocabulary of {len(tokenizer)} tokens written to {args.output_dir}")
    print(f"example: {example!r} -> {tokenizer.tokenize(example)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
