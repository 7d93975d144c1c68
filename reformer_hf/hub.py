"""Publishing a saved Reformer folder to the Hugging Face Hub, with its model card.

`push_folder_to_hub` checks the folder (config, weights, tokenizer), writes the model card into it
when it has none or when asked, lists what would be uploaded, and then, unless `dry_run`, creates
the repository and uploads the folder.  Every check runs before anything is written or sent.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from .model_card import write_model_card

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class PushResult:
    """What `push_folder_to_hub` did: the files (path in repo, size in bytes) it uploaded or would
    upload, whether it wrote README.md, and the commit URL of a real upload."""

    files: list = field(default_factory=list)
    card_written: bool = False
    commit_url: str | None = None


def check_model_folder(folder):
    """Raise a clear error unless `folder` holds config.json, safetensors weights and tokenizer files."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a directory: expected a folder written by "
                                "save_pretrained (model and tokenizer).")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise ValueError(f"folder={str(folder)!r}: model.safetensors.index.json is not a safetensors index "
                             "(expected a JSON object with a 'weight_map').") from None
        missing += sorted(f"{shard} (listed in model.safetensors.index.json)"
                          for shard in shards if not (path / shard).is_file())
    elif not (path / "model.safetensors").is_file():
        missing.append("model weights (model.safetensors, or model.safetensors.index.json with its shards)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise FileNotFoundError(f"folder={str(folder)!r} is not a complete saved model: missing "
                                f"{'; '.join(missing)}.  Save the model and the tokenizer with save_pretrained "
                                "into this folder.")
    return path


def upload_file_list(folder):
    """(path in repo, size in bytes) of every file `HfApi.upload_folder` would send, sorted."""
    folder = Path(folder).resolve()
    relative_paths = [path.relative_to(folder).as_posix() for path in sorted(folder.glob("**/*")) if path.is_file()]
    kept = filter_repo_objects(relative_paths, ignore_patterns=list(DEFAULT_IGNORE_PATTERNS))
    return [(relative, (folder / relative).stat().st_size) for relative in kept]


def push_folder_to_hub(
    folder,
    repo_id,
    *,
    private=False,
    commit_message="Upload Reformer model",
    token=None,
    dry_run=False,
    write_card=False,
    eval_results=None,
    model_name=None,
    pipeline_tag=None,
    datasets=None,
    license=None,
    language=None,
    training_hyperparameters=None,
    training_data=None,
    extra_tags=None,
):
    """Publish a saved model folder as the model repository `repo_id`.

    README.md is (re)written from the folder's config.json when it is missing, when `write_card` is
    True, or when any card option (eval_results, model_name, ...) is given: options are never
    silently ignored, and an existing card is kept only when none is given.  `token` falls back to
    HF_TOKEN or the saved login.  With `dry_run`, nothing is sent over the network.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id={repo_id!r} is invalid: expected 'name' or 'namespace/name' ({error})") from None
    if not isinstance(private, bool):
        raise ValueError(f"private={private!r} is invalid: expected True or False.")
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f"commit_message={commit_message!r} is invalid: expected a non-empty string.")
    if not dry_run:
        token = token or get_token()
        if not token:
            raise ValueError("token=None is invalid for a real upload: pass --token, set HF_TOKEN, or run "
                             "`hf auth login` (or use --dry-run).")
    path = check_model_folder(folder)

    card_options = {name: value for name, value in dict(
        eval_results=eval_results, model_name=model_name, pipeline_tag=pipeline_tag, datasets=datasets,
        license=license, language=language, training_hyperparameters=training_hyperparameters,
        training_data=training_data, extra_tags=extra_tags).items() if value is not None}
    card_written = write_card or bool(card_options) or not (path / "README.md").is_file()
    if card_written:
        card_options.setdefault("model_name", repo_id.split("/")[-1])
        write_model_card(path, repo_id=repo_id, **card_options)

    result = PushResult(files=upload_file_list(path), card_written=card_written)
    if dry_run:
        return result
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=path, commit_message=commit_message, repo_type="model")
    result.commit_url = commit.commit_url
    return result
