"""Saved folders carry their code: trust_remote_code loading, generation and pipeline() without the package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from package_refusal import REFUSE_REFORMER_HF
from tiny_models import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import reformer_hf
from reformer_hf import ReformerByteTokenizer, ReformerForCausalLM

PROMPTS = ["The Reformer", "LSH"]
PACKAGE_DIR = Path(reformer_hf.__file__).parent

# Runs in a fresh interpreter (`python -I`: no PYTHONPATH, no user site, no cwd on sys.path) that
# refuses `reformer_hf` (package_refusal.py), so everything must come from the folder.
REMOTE_SCRIPT = REFUSE_REFORMER_HF + r'''
import json
try:
    import reformer_hf
    package_importable = True
except ModuleNotFoundError:
    package_importable = False

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

folder, out_path = sys.argv[1], sys.argv[2]
prompts = json.loads(sys.argv[3])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
inputs = tokenizer(prompts, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs, use_cache=False).logits
    class_logits = classifier(**inputs).logits
generated = model.generate(**inputs, max_new_tokens=20, do_sample=False)
text = pipeline("text-generation", model=folder, trust_remote_code=True)(
    prompts[0], max_new_tokens=12, do_sample=False
)[0]["generated_text"]
torch.save({"input_ids": inputs["input_ids"], "logits": logits, "generated": generated,
            "class_logits_shape": tuple(class_logits.shape)}, out_path)
print(json.dumps({
    "package_importable": package_importable,
    "loaded_reformer_hf_modules": sorted(name for name in sys.modules if name.startswith("reformer_hf")),
    "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, model, tokenizer, classifier)],
    "pipeline_text": text,
}))
'''



@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny byte-level causal LM and its tokenizer, saved the way a user would publish them."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=260, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         axial_pos_shape=[8, 16], max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("reformer_byte_lm")
    ReformerForCausalLM(config).save_pretrained(folder)
    ReformerByteTokenizer(padding_side="left").save_pretrained(folder)
    return folder


def test_saved_folder_carries_the_code_and_names_every_auto_class(saved_folder):
    auto_map = json.loads((saved_folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration.ReformerConfig",
        "AutoModel": "modeling.ReformerModel",
        "AutoModelForCausalLM": "modeling.ReformerForCausalLM",
        "AutoModelForSequenceClassification": "modeling.ReformerForSequenceClassification",
    }
    tokenizer_config = json.loads((saved_folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"] == {"AutoTokenizer": ["tokenization.ReformerByteTokenizer", None]}
    for module in ("configuration", "modeling", "attention", "attention_functions", "attention_dispatch", "blocks",
                   "stack_running", "losses", "forward_checks", "cache", "embeddings", "reversible", "tokenization"):
        copied = saved_folder / f"{module}.py"
        assert copied.read_bytes() == (PACKAGE_DIR / f"{module}.py").read_bytes(), module


def test_remote_code_loads_and_generates_where_the_package_cannot_be_imported(saved_folder, tmp_path):
    out_path = tmp_path / "remote.pt"
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(saved_folder), str(out_path), json.dumps(PROMPTS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["package_importable"] is False
    assert report["loaded_reformer_hf_modules"] == []
    assert all(name.startswith("transformers_modules.") for name in report["classes"]), report["classes"]
    remote = torch.load(out_path)

    tokenizer = AutoTokenizer.from_pretrained(saved_folder)
    model = AutoModelForCausalLM.from_pretrained(saved_folder).eval()
    assert isinstance(model, ReformerForCausalLM) and isinstance(tokenizer, ReformerByteTokenizer)
    inputs = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], remote["input_ids"])
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(remote["logits"], logits, rtol=1e-5, atol=1e-5)
    generated = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert remote["generated"].shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(remote["generated"], generated)
    assert remote["class_logits_shape"] == (2, model.config.num_labels)
    expected_text = local_greedy_text(model, tokenizer, PROMPTS[0], 12)
    assert report["pipeline_text"] == expected_text


def local_greedy_text(model, tokenizer, prompt, max_new_tokens):
    inputs = tokenizer(prompt, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(ids[0], skip_special_tokens=True)


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_text_generation_pipeline_returns_the_greedy_continuation(saved_folder, trust_remote_code):
    generator = pipeline("text-generation", model=str(saved_folder), trust_remote_code=trust_remote_code)
    # Where the package is imported its registered classes win even with trust_remote_code=True
    # (transformers' rule); the folder's own code is exercised by the subprocess test above.
    assert isinstance(generator.model, ReformerForCausalLM)
    result = generator(PROMPTS[0], max_new_tokens=12, do_sample=False)
    text = result[0]["generated_text"]
    model = AutoModelForCausalLM.from_pretrained(saved_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_folder)
    assert text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])
    assert text == local_greedy_text(model, tokenizer, PROMPTS[0], 12)
