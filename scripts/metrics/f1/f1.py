"""F1 as an `evaluate` metric that loads offline: `evaluate.load("scripts/metrics/f1")`.

Same arguments as the Hub's "f1" metric (average = "binary", "macro", "micro" or "weighted";
pos_label; labels), computed with numpy instead of scikit-learn.  A class with no predicted and
no true example has F1 0 where it is listed in `labels`, as scikit-learn's zero_division=0 gives.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), per class, then averaged."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str, default "binary"): "binary" (the class pos_label), "macro" (unweighted mean over
        classes), "micro" (global counts), "weighted" (mean weighted by true counts) or None
        (one score per class).
    pos_label (int, default 1): the positive class for "binary".
    labels (list of int, optional): the classes to average over (default: every class seen).
Returns:
    f1 (float, or a list of floats for average=None).
"""

AVERAGES = ("binary", "macro", "micro", "weighted", None)


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1, labels=None):
        if average not in AVERAGES:
            raise ValueError(f"average={average!r} is not allowed; expected one of {AVERAGES}.")
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            classes = np.array([pos_label])
        elif labels is not None:
            classes = np.asarray(labels)
        else:
            classes = np.union1d(predictions, references)
        true_positive = np.array([np.sum((predictions == c) & (references == c)) for c in classes], dtype=np.float64)
        predicted = np.array([np.sum(predictions == c) for c in classes], dtype=np.float64)
        actual = np.array([np.sum(references == c) for c in classes], dtype=np.float64)
        if average == "micro":
            denominator = predicted.sum() + actual.sum()
            return {"f1": float(2 * true_positive.sum() / denominator) if denominator else 0.0}
        denominator = predicted + actual
        per_class = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
        if average is None:
            return {"f1": per_class.tolist()}
        if average == "weighted":
            return {"f1": float(np.sum(per_class * actual) / actual.sum()) if actual.sum() else 0.0}
        return {"f1": float(per_class.mean())}
