import numpy as np
import pytest

from medge.train.metrics import classification_metrics, logit_metrics
from tests.edge.test_numeric import brute_auc


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


def test_logit_metrics_loss_is_the_log_loss_and_auc_of_the_softmax():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + 1.5 * np.eye(2)[labels]
    m = logit_metrics(labels, logits, ["disease", "normal"])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["loss"] == pytest.approx(sklearn_metrics.log_loss(labels, p), rel=1e-12)
    assert m["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, p[:, 1]), rel=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels))


def test_logit_metrics_of_a_diverged_model_are_nan_not_an_error():
    logits = np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, np.inf]])
    m = logit_metrics(np.array([1, 0, 1]), logits, ["a", "b"])
    assert np.isnan(m["loss"]) and np.isnan(m["auc"]) and m["n"] == 3
