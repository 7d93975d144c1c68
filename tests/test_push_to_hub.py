import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import HfApi, ModelCard, constants
from safetensors.torch import save_file
from tokenizers import Tokenizer, models

from reformer_hf.configuration import ReformerConfig
from reformer_hf.hub import check_model_folder, push_folder_to_hub, upload_file_list
from reformer_hf.modeling import ReformerForCausalLM
from reformer_hf.tokenization import ReformerByteTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "push_to_hub.py"
EVAL_RESULTS = {"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb", "value": 1.234}]}


@pytest.fixture
def saved_folder(tmp_path):
    folder = tmp_path / "saved"
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10,
                            architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    save_file({"wte.weight": torch.zeros(10, 8), "ln_f.bias": torch.zeros(8)}, folder / "model.safetensors")
    vocab = {str(digit): digit for digit in range(9)} | {"[UNK]": 9}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the Hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not call the Hub")
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "upload_folder", refuse)


def folder_files(folder):
    return sorted((path.relative_to(folder).as_posix(), path.stat().st_size)
                  for path in folder.rglob("*") if path.is_file())


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_dry_run_cli_lists_exactly_the_folder_files_offline(saved_folder, tmp_path, no_network, monkeypatch, capsys):
    # In-process rather than a subprocess: importing the package (torch, transformers) in a child
    # process would cost most of the test budget.  HF_HUB_OFFLINE makes any Hub request raise.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(EVAL_RESULTS))
    exit_code = load_script().main(["--folder", str(saved_folder), "--repo-id", "someone/tiny-reformer",
                                    "--eval-results", str(eval_path), "--dataset", "enwik8", "--dry-run"])
    assert exit_code == 0
    stdout = capsys.readouterr().out
    listed = sorted((line.split()[1], int(line.split()[0].replace(",", "")))
                    for line in stdout.splitlines() if line.startswith(" "))
    assert listed == folder_files(saved_folder)
    assert "README.md" in dict(listed)
    assert "dry run: nothing was sent to the Hub" in stdout
    card = ModelCard.load(saved_folder / "README.md")
    assert card.data.eval_results[0].metric_value == 1.234
    assert card.data.datasets == ["enwik8"]


def test_dry_run_returns_the_upload_list_without_the_network(saved_folder, no_network):
    (saved_folder / ".git").mkdir()
    (saved_folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    result = push_folder_to_hub(saved_folder, "someone/tiny", dry_run=True, model_name="tiny")
    assert result.card_written and result.commit_url is None
    expected = [(name, size) for name, size in folder_files(saved_folder) if not name.startswith(".git/")]
    assert sorted(result.files) == expected
    assert "README.md" in dict(result.files)


def test_existing_card_is_kept_unless_asked(saved_folder, no_network):
    (saved_folder / "README.md").write_text("---\nlicense: mit\n---\n\n# Hand-written card\n")
    result = push_folder_to_hub(saved_folder, "someone/tiny", dry_run=True)
    assert not result.card_written
    assert "Hand-written card" in (saved_folder / "README.md").read_text()

    result = push_folder_to_hub(saved_folder, "someone/tiny", dry_run=True, write_card=True)
    assert result.card_written
    assert "Hand-written card" not in (saved_folder / "README.md").read_text()


def test_card_options_rewrite_an_existing_card(saved_folder, no_network):
    (saved_folder / "README.md").write_text("# Hand-written card\n")
    result = push_folder_to_hub(saved_folder, "someone/tiny", dry_run=True, eval_results=EVAL_RESULTS)
    assert result.card_written
    assert ModelCard.load(saved_folder / "README.md").data.eval_results[0].metric_value == 1.234


def test_missing_weights_error_names_them(saved_folder, no_network):
    (saved_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing model weights \(model.safetensors, or model.safetensors.index.json"):
        push_folder_to_hub(saved_folder, "someone/tiny", dry_run=True)
    assert not (saved_folder / "README.md").exists()


def test_missing_shard_error_names_it(saved_folder):
    weight_map = {"wte.weight": "model-00001-of-00002.safetensors", "ln_f.bias": "model-00002-of-00002.safetensors"}
    (saved_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (saved_folder / "model.safetensors").rename(saved_folder / "model-00001-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing model-00002-of-00002.safetensors \(listed in"):
        check_model_folder(saved_folder)


def test_missing_tokenizer_and_config_are_both_named(saved_folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (saved_folder / name).unlink()
    with pytest.raises(FileNotFoundError) as error:
        check_model_folder(saved_folder)
    assert "config.json" in str(error.value)
    assert "tokenizer files (one of tokenizer.json, tokenizer_config.json)" in str(error.value)


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder='.*nowhere' is not a directory"):
        check_model_folder(tmp_path / "nowhere")


def test_invalid_repo_id_raises_before_any_work(saved_folder, no_network):
    with pytest.raises(ValueError, match=r"repo_id='a/b/c' is invalid: expected 'name' or 'namespace/name'"):
        push_folder_to_hub(saved_folder, "a/b/c", dry_run=True)
    assert not (saved_folder / "README.md").exists()


def test_real_upload_without_a_token_raises_before_any_work(saved_folder, no_network, monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    with pytest.raises(ValueError, match="token=None is invalid for a real upload"):
        push_folder_to_hub(saved_folder, "someone/tiny")
    assert not (saved_folder / "README.md").exists()


def test_real_upload_creates_the_repo_and_uploads_the_folder(saved_folder, monkeypatch):
    calls = []

    class Commit:
        commit_url = "https://huggingface.co/someone/tiny/commit/0"

    # Stand-ins for the two network calls only; the card is written and parsed for real.
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or Commit())
    result = push_folder_to_hub(saved_folder, "someone/tiny", token="hf_test", private=True,
                                commit_message="First upload")
    assert calls[0] == ("create_repo", "someone/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[1][1]
    assert (upload["repo_id"], Path(upload["folder_path"]), upload["commit_message"]) == (
        "someone/tiny", saved_folder, "First upload")
    assert result.commit_url == Commit.commit_url
    assert sorted(result.files) == upload_file_list(saved_folder) == folder_files(saved_folder)


def test_cli_help_runs():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    for option in ("--folder", "--repo-id", "--private", "--eval-results", "--commit-message", "--token", "--dry-run"):
        assert option in completed.stdout


def test_cli_reports_a_missing_weights_file(saved_folder, capsys):
    push_to_hub = load_script()
    (saved_folder / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main(["--folder", str(saved_folder), "--repo-id", "someone/tiny", "--dry-run"])
    assert exit_info.value.code == 2
    assert "missing model weights" in capsys.readouterr().err


def test_saved_reformer_folder_publishes_with_a_card_from_its_config(tmp_path, no_network):
    tokenizer = ReformerByteTokenizer()
    config = ReformerConfig(
        attn_layers=["local", "lsh"], hidden_size=16, num_attention_heads=2, feed_forward_size=32,
        vocab_size=len(tokenizer), lsh_attn_chunk_length=4, local_attn_chunk_length=4, num_hashes=2, axial_pos_shape=[4, 8],
        axial_pos_embds_dim=[8, 8], max_position_embeddings=32, is_decoder=True)
    model = ReformerForCausalLM(config)
    folder = tmp_path / "tiny-reformer"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    result = push_folder_to_hub(folder, "someone/tiny-reformer", dry_run=True, eval_results=EVAL_RESULTS)
    assert sorted(result.files) == folder_files(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-generation"
    assert f"| Parameters | {model.num_parameters():,} " in card.text
    assert "| Layers (attention kind of each) | 2 (1 local, 1 lsh): local, lsh |" in card.text
    assert "| LSH window mode | bucket_window |" in card.text
