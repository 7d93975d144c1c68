"""The kernels' entry points (kernels.py) as attention_dispatch.py reaches them, and the layout
of the kernels modules: no import cycle with the attention modules, and a saved folder that carries
every kernels module and loads the kernels from itself."""

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import DEVICE, kernel_module_names, lsh_inputs, packed_inputs, relative_error
from package_refusal import REFUSE_REFORMER_HF
from tiny_models import tiny_config

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

import reformer_hf  # noqa: E402
from reformer_hf import ReformerForCausalLM, attention, attention_dispatch, attention_functions, kernels  # noqa: E402
from reformer_hf.configuration import ReformerConfig  # noqa: E402

PACKAGE_DIR = Path(reformer_hf.__file__).parent


def lsh_layer_config(backend, **overrides):
    fields = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, num_hashes=2, num_buckets=4,
                  lsh_attn_chunk_length=8, local_attn_chunk_length=8, is_decoder=True, attn_backend=backend,
                  attn_layers=["lsh"], axial_pos_embds=False, max_position_embeddings=64)
    fields.update(overrides)
    return ReformerConfig(**fields)



def test_triton_backend_layer_equals_torch_backend_layer():
    """The whole layer: hashing and attention through the dispatcher, outputs and weight gradients."""
    outputs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(12)
        layer = attention.LSHSelfAttention(lsh_layer_config(backend)).to(DEVICE)
        hidden = torch.randn(1, 16, 32, device=DEVICE)
        rotations = torch.randn(2, 16, 2, 2, device=DEVICE)
        out = layer(hidden, rotations=rotations)
        out.square().sum().backward()
        outputs[backend] = [out, layer.query_key.weight.grad, layer.value.weight.grad]
    for got, want in zip(outputs["triton"], outputs["torch"]):
        assert relative_error(got, want) < 1e-5



def test_dispatcher_uses_the_torch_path_for_dropout_in_training(caplog):
    function = attention_dispatch.lsh_attention_dispatch("triton")
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 2, 4, 0, seed=13)
    options = dict(n_buckets=4, chunk_length=8, causal=True, dropout_p=0.5, training=True)
    with caplog.at_level(logging.INFO, logger="reformer_hf.attention_dispatch"):
        torch.manual_seed(14)
        got, _ = function(query_key.float(), value.float(), bucket_ids, **options)
    torch.manual_seed(14)
    want, _ = attention_functions.lsh_attention(query_key.float(), value.float(), bucket_ids, **options)
    assert torch.equal(got, want)
    assert "dropout" in caplog.text



def test_dispatcher_refuses_an_unsupported_input_for_the_triton_backend():
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 1, 4, 0, seed=15)
    function = attention_dispatch.lsh_attention_dispatch("triton")
    with pytest.raises(RuntimeError, match="float64"):
        function(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)



def test_dispatcher_auto_takes_the_kernel_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "lsh_attention", lambda *args, **kwargs: calls.append(args) or (None, None))
    query_key, value, bucket_ids, _ = lsh_inputs(1, 1, 16, 16, 1, 4, 0, seed=16)
    query_key, value = query_key.float(), value.float()
    got, _ = attention_dispatch.lsh_attention_dispatch("auto")(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)
    if DEVICE == "cuda":
        assert len(calls) == 1
    else:
        want, _ = attention_functions.lsh_attention(query_key, value, bucket_ids, n_buckets=4, chunk_length=8)
        assert not calls and torch.equal(got, want)



def test_dispatcher_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="attn_backend='cuda'"):
        attention_dispatch.lsh_attention_dispatch("cuda")



def test_packed_dispatcher_checks_the_heads_not_the_packed_width():
    """d_head is what the kernels limit: a packed width of 2 * 2 * 128 = 512 is within it."""
    heads, length, d_head = 2, 8, 128
    packed = packed_inputs(2, 1, heads, length, d_head, seed=25)
    _, _, bucket_ids, _ = lsh_inputs(1, heads, length, d_head, 1, 2, 0, seed=26)
    options = dict(n_heads=heads, n_buckets=2, chunk_length=4, causal=True)
    got, _ = attention_dispatch.lsh_attention_dispatch("triton", packed=True)(packed, bucket_ids, **options)
    want, _ = attention_functions.lsh_attention_packed(packed, bucket_ids, **options)
    assert relative_error(got, want) < 1e-5
    with pytest.raises(ValueError, match=r"packed projections have shape \(1, 8, 498\)"):
        attention_dispatch.lsh_attention_dispatch("triton", packed=True)(packed[..., :498], bucket_ids, **options)



def test_attention_imports_no_kernels_module():
    """The attention modules import the kernels only where one is about to run (`kernels_module`)."""
    modules = "reformer_hf.attention, reformer_hf.attention_dispatch, reformer_hf.attention_functions"
    script = (f"import json, sys, {modules}; "
              "print(json.dumps(sorted(name for name in sys.modules if name.startswith('reformer_hf.kernel'))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def relative_imports(path):
    """The modules a file imports from its own package (`from .x import y`, `from . import x`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [module] if module else [alias.name for alias in node.names]:
                if name.startswith("reformer_hf"):
                    names.add(name.removeprefix("reformer_hf").lstrip(".") or "reformer_hf")
    return names


def test_no_kernels_module_imports_attention_modules():
    names = kernel_module_names()
    assert {"kernels", "kernel_ops", "kernels_launch", "kernels_lsh", "kernels_local"} <= set(names)
    for name in names:
        path = PACKAGE_DIR / f"{name}.py"
        imported = relative_imports(path)
        assert not {module for module in imported if module.startswith("attention")} - {"attention_rules"}, name
        assert imported <= set(names) | {"attention_rules", "replay"}, (name, imported)
    rules_imports = relative_imports(PACKAGE_DIR / "attention_rules.py")
    assert not {module for module in rules_imports if module.startswith("attention")}


# A fresh interpreter whose import system refuses `reformer_hf` (package_refusal.py): the
# model, and the kernels it runs, can only come from the saved folder's code.
REMOTE_KERNELS = REFUSE_REFORMER_HF + r"""
import importlib, json
import torch
from transformers import AutoModelForCausalLM

folder, device, names = sys.argv[1], sys.argv[2], sys.argv[3:]
input_ids = torch.randint(0, 40, (2, 24), generator=torch.Generator().manual_seed(0)).to(device)
logits = {}
for backend in ("torch", "triton"):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_backend=backend).to(device)
    with torch.no_grad():
        logits[backend] = model.eval()(input_ids=input_ids, use_cache=False).logits.cpu()
package = type(model).__module__.rpartition(".")[0]
run_by_the_model = sorted(name.rpartition(".")[2] for name in sys.modules if name.startswith(package + ".kernel"))
modules = {name: importlib.import_module(f"{package}.{name}") for name in names}
print(json.dumps({
    "backend": model.config.attn_backend,
    "max_difference": (logits["triton"] - logits["torch"]).abs().max().item(),
    "run_by_the_model": run_by_the_model,
    "folders": sorted({module.__file__.rpartition("/")[0] for module in modules.values()}),
    "loaded_reformer_hf_modules": sorted(name for name in sys.modules if name.startswith("reformer_hf")),
}))
"""


def test_saved_folder_carries_every_kernels_module_and_runs_the_kernels_from_it(tmp_path):
    """save_pretrained copies a module's relative imports into the folder, and the model's forward
    pass with attn_backend="triton" runs the kernels from those copies (on a machine without a GPU
    under Triton's interpreter) with the torch path's logits."""
    torch.manual_seed(0)
    folder = tmp_path / "saved"
    ReformerForCausalLM(tiny_config()).save_pretrained(folder)
    names = kernel_module_names()
    for name in [*names, "attention_rules"]:
        copied = folder / f"{name}.py"
        assert copied.is_file(), name
        assert copied.read_bytes() == (PACKAGE_DIR / f"{name}.py").read_bytes(), name

    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    if DEVICE == "cpu":
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, "-I", "-c", REMOTE_KERNELS, str(folder), DEVICE, *names],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded_reformer_hf_modules"] == []
    assert report["backend"] == "triton"
    assert report["max_difference"] < 1e-4
    # The forward pass imported the kernels (the entry points and every module behind them) itself.
    assert set(report["run_by_the_model"]) >= {"kernels", "kernels_lsh", "kernels_local", "kernels_hashing",
                                                "kernels_sorting", "kernels_window_forward", "kernels_launch"}
    [folder_of_modules] = report["folders"]
    assert folder_of_modules.startswith(str(tmp_path / "modules"))
