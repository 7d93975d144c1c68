"""SacreBLEU as an `evaluate` metric that loads offline: `evaluate.load("scripts/metrics/sacrebleu")`.

`evaluate.load("sacrebleu")` fetches its script from the Hub and fails without a network
("Couldn't find a module script at .../sacrebleu/sacrebleu.py. Module 'sacrebleu' doesn't exist on
the Hugging Face Hub either.").  This one takes the same arguments and returns the same fields,
computed by the installed `sacrebleu` package (corpus BLEU, default 13a tokenisation, cased).
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU (Papineni et al. 2002) as computed by sacreBLEU (Post 2018)."
_CITATION = """@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the system's translations, detokenised.
    references (list of list of str): the reference translations of each prediction; every
        prediction must have the same number of references.
    smooth_method (str, default "exp"): "none", "floor", "add-k" or "exp".
    smooth_value (float, optional): for "floor" and "add-k".
    force (bool, default False): score input that looks tokenised without a warning.
    lowercase (bool, default False): case-insensitive BLEU.
    tokenize (str, optional): sacreBLEU's tokeniser name (default "13a").
    use_effective_order (bool, default False): leave out n-gram orders without matches (sentence BLEU).
Returns:
    score (float, 0..100), counts, totals, precisions (lists of four), bp, sys_len, ref_len.
"""


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references, smooth_method="exp", smooth_value=None, force=False,
                 lowercase=False, tokenize=None, use_effective_order=False):
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError(f"references: every prediction needs the same number of references, got {sorted(counts)}.")
        n_refs = counts.pop() if counts else 0
        # sacreBLEU wants one stream per reference position: streams[j][i] is the j-th reference of prediction i.
        streams = [[refs[j] for refs in references] for j in range(n_refs)]
        bleu = sacrebleu.corpus_bleu(
            predictions, streams, smooth_method=smooth_method, smooth_value=smooth_value, force=force,
            lowercase=lowercase, use_effective_order=use_effective_order,
            **({} if tokenize is None else {"tokenize": tokenize}),
        )
        return {"score": bleu.score, "counts": bleu.counts, "totals": bleu.totals, "precisions": bleu.precisions,
                "bp": bleu.bp, "sys_len": bleu.sys_len, "ref_len": bleu.ref_len}
