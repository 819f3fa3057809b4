"""Generation metrics: plain functions from (predictions, references) to one number.

Every metric here is on a 0-100 scale, higher is better, so one table can hold them all and
"change" always reads the same way. `METRICS` is the extension point: add a function and a
line in the dict, and `smolora eval` computes it for the base and the fine-tuned model and
puts it in metrics.json and the report (docs/evaluation.md walks through it).

Run as:
    from smolora.eval.metrics import METRICS
    scores = {name: fn(["product=lamp; qty=3"], ["product=lamp; qty=4"]) for name, fn in METRICS.items()}
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache


def normalize(text: str) -> str:
    """Case and runs of whitespace do not count: "Paris." and " paris. " are the same answer."""
    return " ".join(text.strip().split()).lower()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Percent of predictions equal to their reference after `normalize`."""
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(references)


def contains(predictions: list[str], references: list[str]) -> float:
    """Percent of predictions that contain their reference (after `normalize`).

    Fair to a model that answers in a sentence: a base model's "The capital is Paris, a city
    of ..." has the fact that exact match scores 0. A fine-tune that makes answers short but
    wrong more often shows up here as forgetting (eval/diagnose.py).
    """
    if not references:
        return 0.0
    hits = sum(normalize(r) in normalize(p) for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(references)


@cache
def _rouge_scorer():
    # Built once: the scorer compiles its tokenizer and is reused for every call.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])


def _rouge(kind: str, predictions: list[str], references: list[str]) -> float:
    """Mean F1 over examples, as the ROUGE papers and the rouge-score package report it."""
    if not references:
        return 0.0
    scorer = _rouge_scorer()
    scores = [scorer.score(r, p)[kind].fmeasure for p, r in zip(predictions, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


def rouge1(predictions: list[str], references: list[str]) -> float:
    """Unigram overlap F1 (rouge-score's tokenizer: lowercase, alphanumeric words)."""
    return _rouge("rouge1", predictions, references)


def rouge2(predictions: list[str], references: list[str]) -> float:
    """Bigram overlap F1."""
    return _rouge("rouge2", predictions, references)


def rougeL(predictions: list[str], references: list[str]) -> float:  # noqa: N802 (the metric's name)
    """Longest-common-subsequence F1."""
    return _rouge("rougeL", predictions, references)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu: 13a tokenizer, up to 4-grams, exp smoothing).

    With `effective_order`, a corpus of answers shorter than 4 tokens is scored on the n-gram
    orders it has instead of getting 0 ("Paris" == "Paris" is 100); on longer answers this is
    the standard corpus BLEU.
    """
    from sacrebleu.metrics import BLEU

    if not references:
        return 0.0
    return float(BLEU(effective_order=True).corpus_score(predictions, [references]).score)


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (character n-grams up to 6, beta 2): kind to near misses in short answers."""
    import sacrebleu

    if not references:
        return 0.0
    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


METRICS: dict[str, Callable[[list[str], list[str]], float]] = {
    "exact_match": exact_match,
    "contains": contains,
    "rouge1": rouge1,
    "rouge2": rouge2,
    "rougeL": rougeL,
    "bleu": bleu,
    "chrf": chrf,
}

# Scores from a model's loss, not its generations: lower is better. Everything else in a
# report (METRICS, lm-eval accuracies) is higher-is-better.
LOWER_IS_BETTER = {"eval_loss", "perplexity"}
