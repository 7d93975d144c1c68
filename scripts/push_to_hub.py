"""Publish a saved Reformer folder (model, tokenizer, code) to the Hugging Face Hub with a model card.

    python scripts/push_to_hub.py --folder runs/enwik8/final --repo-id me/reformer-enwik8 \
        --eval-results runs/enwik8/eval.json --dataset enwik8 --language en --dry-run

The logic lives in reformer_hf.hub.push_folder_to_hub; this script parses arguments and prints.
"""

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="saved model folder: config.json, model.safetensors "
                        "(or a sharded index), tokenizer files")
    parser.add_argument("--repo-id", required=True, help="Hub repository, 'name' or 'namespace/name'")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--eval-results", help="JSON file of evaluation results (schema: reformer_hf.model_card)")
    parser.add_argument("--commit-message", default="Upload Reformer model")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the folder, write the card, list the files; upload nothing")
    parser.add_argument("--write-card", action="store_true", help="replace an existing README.md with a new card")
    card = parser.add_argument_group(
        "model card (README.md is written when missing, with --write-card, or when any of these is given)")
    card.add_argument("--model-name", help="card title (default: the repository name)")
    card.add_argument("--pipeline-tag", help="text-generation, fill-mask, text-classification, question-answering "
                      "or translation (default: from config.json's architectures)")
    card.add_argument("--dataset", action="append", dest="datasets", help="training dataset id (repeatable)")
    card.add_argument("--license", help="Hub license id (default: apache-2.0)")
    card.add_argument("--language", action="append", help="ISO 639 language code (repeatable)")
    card.add_argument("--hyperparameters", help="JSON file: an object of training hyper-parameters")
    card.add_argument("--training-data", help="free-text description of the training data")
    card.add_argument("--tag", action="append", dest="extra_tags", help="extra Hub tag (repeatable)")
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    from reformer_hf.hub import push_folder_to_hub  # after parsing, so --help needs no torch import

    hyperparameters = None
    if args.hyperparameters:
        try:
            hyperparameters = json.loads(Path(args.hyperparameters).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"--hyperparameters={args.hyperparameters!r} is not a readable JSON file: {error}")
    try:
        result = push_folder_to_hub(
            args.folder, args.repo_id, private=args.private, commit_message=args.commit_message,
            token=args.token, dry_run=args.dry_run, write_card=args.write_card,
            eval_results=args.eval_results, model_name=args.model_name, pipeline_tag=args.pipeline_tag,
            datasets=args.datasets, license=args.license, language=args.language,
            training_hyperparameters=hyperparameters, training_data=args.training_data,
            extra_tags=args.extra_tags,
        )
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))

    if result.card_written:
        print(f"wrote model card {Path(args.folder) / 'README.md'}")
    total = sum(size for _, size in result.files)
    verb = "would upload" if args.dry_run else "uploaded"
    visibility = "private" if args.private else "public"
    print(f"{verb} {len(result.files)} files ({total:,} bytes) to {visibility} model repo {args.repo_id}:")
    for name, size in result.files:
        print(f"{size:>14,}  {name}")
    if args.dry_run:
        print("dry run: nothing was sent to the Hub")
    else:
        print(result.commit_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
