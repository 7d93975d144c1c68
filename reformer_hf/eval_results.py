"""Evaluation results for model cards: read them (a dict, a list of dicts or a JSON file) and check them.

The schema is described in `reformer_hf.model_card`.  Every error names the field, its value and what
is allowed; unknown keys are errors, so a typo cannot drop a number silently.  Like model_card.py,
this file imports only the standard library.
"""

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

EVAL_BLOCK_KEYS = {"task", "dataset", "metrics"}
EVAL_TASK_KEYS = {"type", "name"}
EVAL_DATASET_KEYS = {"type", "name", "split", "config", "revision"}
EVAL_METRIC_KEYS = {"type", "value", "name"}


def _invalid(where, value, allowed):
    return ValueError(f"{where}={value!r} is invalid: {allowed}.")


def _check_text(where, value):
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise _invalid(where, value, "expected a non-empty, single-line string")
    return value


def _check_keys(where, block, required, allowed):
    if not isinstance(block, Mapping):
        raise _invalid(where, block, f"expected an object with keys {sorted(allowed)}")
    unknown = set(block) - allowed
    if unknown:
        raise _invalid(where, dict(block), f"unknown keys {sorted(unknown)}; allowed keys are {sorted(allowed)}")
    missing = [key for key in required if key not in block]
    if missing:
        raise _invalid(where, dict(block), f"missing required keys {missing}")


def _check_eval_block(where, block):
    _check_keys(where, block, ["dataset", "metrics"], EVAL_BLOCK_KEYS)
    task = block.get("task", {})
    _check_keys(f"{where}.task", task, [], EVAL_TASK_KEYS)
    for key in task:
        _check_text(f"{where}.task.{key}", task[key])
    dataset = block["dataset"]
    _check_keys(f"{where}.dataset", dataset, ["type", "split"], EVAL_DATASET_KEYS)
    for key in dataset:
        _check_text(f"{where}.dataset.{key}", dataset[key])
    metrics = block["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise _invalid(f"{where}.metrics", metrics,
                       'expected a non-empty list of {"type", "value"[, "name"]} objects')
    for index, metric in enumerate(metrics):
        _check_keys(f"{where}.metrics[{index}]", metric, ["type", "value"], EVAL_METRIC_KEYS)
        _check_text(f"{where}.metrics[{index}].type", metric["type"])
        if "name" in metric:
            _check_text(f"{where}.metrics[{index}].name", metric["name"])
        value = metric["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _invalid(f"{where}.metrics[{index}].value", value, "expected a finite number")


def load_eval_results(eval_results):
    """Validate evaluation results (dict, list of dicts, JSON path or None); return a list of blocks."""
    if eval_results is None:
        return []
    where = "eval_results"
    if isinstance(eval_results, (str, os.PathLike)):
        path = Path(eval_results)
        if not path.is_file():
            raise FileNotFoundError(f"eval_results={str(path)!r} is not a file: expected the path of a JSON file "
                                    "with evaluation results (see reformer_hf.model_card for the schema).")
        try:
            eval_results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"eval_results={str(path)!r} is not valid JSON: {error}.") from None
        where = f"eval_results file {str(path)!r}: eval_results"
    blocks = [eval_results] if isinstance(eval_results, Mapping) else eval_results
    if not isinstance(blocks, list) or not blocks:
        raise _invalid(where, eval_results,
                       'expected {"dataset": {...}, "metrics": [...]} or a non-empty list of such objects')
    for index, block in enumerate(blocks):
        _check_eval_block(f"{where}[{index}]", block)
    return blocks
