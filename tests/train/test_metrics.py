import itertools

import numpy as np
import pytest

from medge.train.metrics import classification_metrics, roc_auc


def brute_auc(pos, score):
    p, n = score[pos], score[~pos]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(p, n)]
    return np.mean(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.random(40) < 0.4
    score = np.round(rng.random(40) + 0.3 * pos, 1)  # rounding makes ties
    assert roc_auc(pos, score) == pytest.approx(brute_auc(pos, score))


def test_auc_extremes_and_undefined():
    assert roc_auc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert np.isnan(roc_auc(np.ones(3, bool), np.arange(3.0)))


def test_confusion_sensitivity_specificity():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 0])
    probs = np.eye(2)[pred] * 0.8 + 0.1
    m = classification_metrics(labels, probs, ["disease", "normal"])
    assert m["confusion"] == [[2, 1], [2, 3]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx({"disease": 2 / 3, "normal": 3 / 5})
    assert m["specificity"] == pytest.approx({"disease": 3 / 5, "normal": 2 / 3})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    probs = rng.dirichlet(np.ones(3), 30)
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    expected = np.mean([brute_auc(labels == k, probs[:, k]) for k in range(3)])
    assert m["auc"] == pytest.approx(expected)
