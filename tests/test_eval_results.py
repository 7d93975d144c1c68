import json
import math
import sys

import pytest
from module_imports import absolute_import_roots

from reformer_hf import eval_results
from reformer_hf.eval_results import load_eval_results


# ---------------------------------------------------------------- bad evaluation results, one case each

BAD_EVAL_RESULTS = {
    "missing_metrics": ({"dataset": {"type": "enwik8", "split": "test"}}, ["eval_results[0]", "missing required keys ['metrics']"]),
    "missing_split": ({"dataset": {"type": "enwik8"}, "metrics": [{"type": "bpb", "value": 1.0}]},
                      ["eval_results[0].dataset", "missing required keys ['split']"]),
    "misspelt_value_key": ({"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb", "valeu": 1.0}]},
                           ["eval_results[0].metrics[0]", "unknown keys ['valeu']"]),
    "string_value": ({"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb", "value": "1.0"}]},
                     ["eval_results[0].metrics[0].value='1.0'", "expected a finite number"]),
    "nan_value": ({"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb", "value": math.nan}]},
                  ["eval_results[0].metrics[0].value=nan", "expected a finite number"]),
    "boolean_value": ({"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "acc", "value": True}]},
                      ["eval_results[0].metrics[0].value=True", "expected a finite number"]),
    "empty_metrics": ({"dataset": {"type": "enwik8", "split": "test"}, "metrics": []},
                      ["eval_results[0].metrics=[]", "non-empty list"]),
    "empty_list": ([], ["eval_results=[]", "non-empty list"]),
    "not_an_object": (1.05, ["eval_results=1.05", "expected"]),
}


@pytest.mark.parametrize("case", BAD_EVAL_RESULTS, ids=list(BAD_EVAL_RESULTS))
def test_bad_eval_results_raise_a_clear_error(case):
    eval_results, fragments = BAD_EVAL_RESULTS[case]
    with pytest.raises(ValueError) as error:
        load_eval_results(eval_results)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_eval_results_file_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eval_results='.*missing\.json' is not a file"):
        load_eval_results(tmp_path / "missing.json")


def test_eval_results_file_that_is_not_json(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("{'bpb': 1.0}")
    with pytest.raises(ValueError, match=r"eval_results='.*eval\.json' is not valid JSON"):
        load_eval_results(path)


def test_eval_results_file_errors_name_the_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"dataset": {"type": "enwik8", "split": "test"}, "metrics": [{"type": "bpb"}]}))
    with pytest.raises(ValueError, match=r"eval_results file '.*eval\.json': eval_results\[0\]\.metrics\[0\]"):
        load_eval_results(path)


def test_module_imports_only_the_standard_library():
    # model_card.py imports this module, and both may be copied next to a checkpoint without torch.
    roots = absolute_import_roots(eval_results)
    assert all(root in sys.stdlib_module_names for root in roots), roots
