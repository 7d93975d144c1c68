"""Triton's presence and the launch path (kernels_launch.py): every kernels module imports where
triton is missing, and says so when asked to run."""

import json
import subprocess
import sys

from kernel_helpers import kernel_module_names

# A fresh interpreter in which `import triton` fails, importing every kernels module.
WITHOUT_TRITON = r"""
import importlib, json, sys
sys.modules["triton"] = None
sys.modules["triton.language"] = None
import torch
modules = {name: importlib.import_module(f"reformer_hf.{name}") for name in sys.argv[1:]}
from reformer_hf import kernels, kernels_launch
try:
    kernels.lsh_attention(torch.zeros(1, 1, 8, 4), torch.zeros(1, 1, 8, 4), torch.zeros(1, 1, 1, 8, dtype=torch.long),
                          n_buckets=2, chunk_length=8)
    error = None
except RuntimeError as exc:
    error = str(exc)
print(json.dumps({"imported": sorted(modules), "triton_is_none": kernels_launch.triton is None,
                  "reason": kernels.triton_unusable_reason(torch.zeros(1)), "error": error}))
"""


def test_kernels_modules_import_without_triton():
    """Saved model folders carry the kernels modules; they must import where triton is missing."""
    names = kernel_module_names()
    result = subprocess.run([sys.executable, "-c", WITHOUT_TRITON, *names], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == sorted(names)
    assert report["triton_is_none"]
    assert "not installed" in report["reason"]
    assert "triton is not installed" in report["error"]
