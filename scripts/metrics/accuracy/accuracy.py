"""Accuracy as an `evaluate` metric that loads offline: `evaluate.load("scripts/metrics/accuracy")`.

The Hub's "accuracy" script cannot be fetched without a network (and it needs scikit-learn);
this one computes the same quantity with numpy: the (optionally weighted) share of predictions
equal to their reference.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the share of predictions equal to their reference, optionally weighted."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    normalize (bool, default True): the share of correct predictions; False gives their count.
    sample_weight (list of float, optional): a weight per example.
Returns:
    accuracy (float).
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        correct = float(np.sum(weights * (predictions == references)))
        return {"accuracy": correct / float(np.sum(weights)) if normalize else correct}
