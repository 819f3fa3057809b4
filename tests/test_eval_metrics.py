"""Each generation metric on inputs whose score is worked out by hand (all on a 0-100 scale)."""

from __future__ import annotations

import pytest

from smolora.eval.metrics import METRICS, bleu, chrf, contains, exact_match, rouge1, rouge2, rougeL


def test_exact_match_normalizes_case_and_whitespace():
    assert exact_match(["Paris.", "  paris.  ", "Lyon"], ["paris.", "Paris.", "Paris."]) == pytest.approx(
        200 / 3
    )
    assert exact_match(["a  b"], ["A B"]) == 100.0
    assert exact_match([], []) == 0.0


def test_rouge_by_hand():
    # "the cat ran" vs "the cat sat": 2 of 3 unigrams shared; 1 of 2 bigrams; LCS "the cat" = 2.
    pred, ref = ["the cat ran"], ["the cat sat"]
    assert rouge1(pred, ref) == pytest.approx(200 / 3)
    assert rouge2(pred, ref) == pytest.approx(50.0)
    assert rougeL(pred, ref) == pytest.approx(200 / 3)
    # Mean over examples: one perfect, one disjoint.
    assert rouge1(["a b", "c d"], ["a b", "x y"]) == pytest.approx(50.0)


def test_bleu_by_hand():
    # 1-4 gram precisions 5/6, 3/5, 2/4, 1/3; same length, so no brevity penalty:
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 0.5373
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected)
    assert bleu(["product=lamp; qty=3; city=Lisbon"], ["product=lamp; qty=3; city=Lisbon"]) == pytest.approx(
        100.0
    )


def test_chrf_by_hand():
    # "abc" vs "abd": char 1-grams F = 2/3, 2-grams 1/2, 3-grams 0; longer orders do not exist
    # and are left out, so chrF = (2/3 + 1/2 + 0) / 3 = 7/18.
    assert chrf(["abc"], ["abd"]) == pytest.approx(100 * 7 / 18)
    assert chrf(["abc"], ["abc"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0


def test_metrics_is_a_plain_dict_of_functions_on_one_scale():
    assert list(METRICS) == ["exact_match", "contains", "rouge1", "rouge2", "rougeL", "bleu", "chrf"]
    for name, fn in METRICS.items():
        assert callable(fn)
        assert fn(["same answer"], ["same answer"]) == pytest.approx(100.0), name
        assert fn(["zzz"], ["other words"]) == pytest.approx(0.0, abs=1e-9), name


def test_contains_credits_an_answer_inside_a_sentence():
    preds = ["The capital of France is Paris, a big city.", "paris", "Lyon"]
    refs = ["Paris", "Paris", "Paris"]
    assert contains(preds, refs) == pytest.approx(200 / 3)
    assert exact_match(preds, refs) == pytest.approx(100 / 3)
    assert contains([], []) == 0.0
