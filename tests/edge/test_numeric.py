"""medge.edge.numeric, the one softmax, NLL, AUC and latency summary, against scipy, scikit-learn and numpy
(each imported with importorskip: the base-install CI environments run the rest)."""
import itertools

import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.numeric import delong, latency_summary, log_softmax, midranks, nll, roc_auc, softmax


@pytest.mark.parametrize("seed", range(4))
def test_softmax_and_log_softmax_match_scipy(seed):
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=30, size=(64, 3))  # large logits: the naive exp overflows
    z[0] = [800.0, -800.0, 0.0]
    for t in (0.25, 1.0, 3.0):
        np.testing.assert_allclose(softmax(z, t), special.softmax(z / t, axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_softmax(z), special.log_softmax(z, axis=1), rtol=1e-12)
    assert softmax(z[0]).shape == (3,) and softmax(z).sum(axis=1) == pytest.approx(np.ones(64))


def test_temperature_keeps_the_argmax_and_softens():
    z = np.array([[2.0, -1.0, 0.5]])
    assert softmax(z, 10.0)[0].argmax() == softmax(z, 0.1)[0].argmax() == 0
    assert softmax(z, 10.0)[0].max() < softmax(z)[0].max() < softmax(z, 0.1)[0].max()


@pytest.mark.parametrize("seed", range(3))
def test_nll_is_sklearns_log_loss(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 40)
    z = rng.normal(size=(40, 3)) * 2
    assert nll(z, labels) == pytest.approx(metrics.log_loss(labels, softmax(z), labels=[0, 1, 2]), rel=1e-10)
    assert nll(z, labels, 2.0) == pytest.approx(metrics.log_loss(labels, softmax(z / 2), labels=[0, 1, 2]), rel=1e-10)
    assert np.isnan(nll(np.zeros((0, 3)), np.zeros(0, int)))


def test_midranks_are_scipys_average_ranks():
    stats = pytest.importorskip("scipy.stats")
    x = np.round(np.random.default_rng(1).random(200), 1)  # many ties
    np.testing.assert_array_equal(midranks(x), stats.rankdata(x))
    assert midranks(np.zeros(0)).size == 0


def brute_auc(pos, score):
    p, n = score[pos], score[~pos]
    return np.mean([(a > b) + 0.5 * (a == b) for a, b in itertools.product(p, n)])


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.random(40) < 0.4
    score = np.round(rng.random(40) + 0.3 * pos, 1)  # rounding makes ties
    assert roc_auc(pos, score) == pytest.approx(brute_auc(pos, score), rel=1e-12)
    assert delong(pos, score)[0] == roc_auc(pos, score) and delong(pos, score)[2:] == (pos.sum(), (~pos).sum())


def test_auc_extremes_and_undefined():
    assert roc_auc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert np.isnan(roc_auc(np.ones(3, bool), np.arange(3.0)))
    assert np.isnan(delong(np.array([True, False]), np.array([0.9, 0.1]))[1])  # one case per class: no variance


@pytest.mark.parametrize("call, match", [
    (lambda: softmax([[0.0, np.nan]]), "NaN or infinite"),
    (lambda: softmax([[0.0, 1.0]], 0.0), "temperature must be finite and > 0"),
    (lambda: softmax(np.zeros((2, 2, 2))), r"must be \(C,\) or \(N, C\)"),
    (lambda: nll([[0.0, 1.0]], [2]), r"labels must be in \[0, 2\)"),
    (lambda: nll([[0.0, 1.0]], [0.5]), "labels must be integers"),
    (lambda: roc_auc([0, 2], [0.1, 0.2]), "boolean or 0/1"),
    (lambda: roc_auc([0, 1], [0.1]), "differ in length"),
])
def test_bad_arguments_raise_usage_error(call, match):
    with pytest.raises(UsageError, match=match):
        call()


@pytest.mark.parametrize("seed", range(4))
def test_latency_summary_percentiles_match_numpy_on_unsorted_input(seed):
    rng = np.random.default_rng(seed)
    data = rng.exponential(10, size=int(rng.integers(1, 200)))
    s = latency_summary(rng.permutation(data), images_per_call=4)
    for q in (50, 90, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(data, q), rel=1e-12)
    assert (s["n"], s["min_ms"], s["max_ms"]) == (data.size, data.min(), data.max())
    assert s["images_per_s"] == pytest.approx(4000.0 / data.mean())


def test_latency_summary_known_data_and_no_data():
    s = latency_summary([4.0, 1.0, 3.0, 2.0, 10.0], images_per_call=8)
    assert (s["p50_ms"], s["min_ms"], s["max_ms"], s["mean_ms"], s["n"]) == (3.0, 1.0, 10.0, 4.0, 5)
    assert s["p90_ms"] == pytest.approx(7.6) and s["images_per_s"] == pytest.approx(2000.0)
    empty = latency_summary([])
    assert empty["n"] == 0 and all(np.isnan(v) for k, v in empty.items() if k != "n")
