"""Convert a checkpoint of transformers' built-in Reformer into a reformer_hf checkpoint.

    python scripts/convert_from_transformers.py SOURCE_DIR OUTPUT_DIR [--architecture NAME]
        [--num-buckets N | --num-buckets A,B] [--verify-length L | --no-verify]

SOURCE_DIR is a folder written by `save_pretrained` of transformers' ReformerModel,
ReformerModelWithLMHead or ReformerForSequenceClassification (for instance a local copy of
google/reformer-crime-and-punishment).  OUTPUT_DIR then loads with
`AutoModelForCausalLM.from_pretrained` (or AutoModel / AutoModelForSequenceClassification) once
`reformer_hf` is imported.  Unless --no-verify, both models are run on random tokens and the
largest difference of their outputs is printed.
"""

import argparse
import logging
import pickle
import sys
from pathlib import Path

import reformer_hf.conversion as conversion


def parse_num_buckets(text):
    """'8' -> 8; '32,64' -> [32, 64]."""
    try:
        factors = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--num-buckets={text!r}: expected an integer or two integers 'a,b'") from None
    return factors[0] if len(factors) == 1 else factors


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_dir", help="folder saved by transformers' Reformer save_pretrained")
    parser.add_argument("output_dir", help="folder to write the reformer_hf checkpoint to")
    parser.add_argument("--architecture", choices=sorted(conversion.TARGET_CLASSES),
                        help="the transformers class to read SOURCE_DIR as (default: the one its config names)")
    parser.add_argument("--num-buckets", type=parse_num_buckets,
                        help="pin the LSH bucket count of a checkpoint saved with num_buckets=None")
    parser.add_argument("--verify-length", type=positive_int, help="tokens per sequence for the output comparison")
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        source_model = conversion.load_transformers_checkpoint(args.source_dir, args.architecture)
        model = conversion.convert_transformers_model(source_model, num_buckets=args.num_buckets)
        conversion.save_converted(model, args.source_dir, args.output_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except pickle.UnpicklingError as error:
        # transformers reads pickled weights with torch's weights-only unpickler, which refuses code.
        pickled = sorted(path.name for path in Path(args.source_dir).glob("*.bin"))
        print(f"error: {args.source_dir!r}: a pickled weights file ({', '.join(pickled)}) holds more than tensors "
              f"(code or other objects); it was refused, not loaded: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    config = model.config
    print(f"wrote {type(model).__name__} to {args.output_dir}: {len(config.attn_layers)} layers {config.attn_layers}, "
          f"num_buckets={config.num_buckets}, hash_seed={config.hash_seed}, lsh_window_mode={config.lsh_window_mode!r}, "
          f"local_attn_wrap_around={config.local_attn_wrap_around}")
    if config.num_buckets is None and "lsh" in config.attn_layers:
        print("note: num_buckets=None: transformers fixes the bucket count at its first forward pass, reformer_hf "
              "chooses it per pass (docs/parity.md); pass --num-buckets to pin it.")
    if not args.no_verify:
        difference = conversion.max_output_difference(source_model, model, length=args.verify_length)
        print(f"largest output difference against transformers on random tokens: {difference:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
