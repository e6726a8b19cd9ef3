"""The operating point: a criterion ("sensitivity=0.95", "specificity=0.9", "youden") read and applied to
choose a threshold among the distinct scores, with a guarantee where the criterion is a target.

The hazard: the highest threshold whose *validation* sensitivity is >= 0.95 gives a site a true
sensitivity below 0.95 about 6 times in 10 in simulation: a sample proportion at its target is below it half
the time, and choosing the threshold on the same cases makes it worse. So a target is met by a one-sided
lower confidence bound instead (``confidence``, default 95%), distribution-free, from the order statistics
of the positive scores (the negative scores for specificity):

With n positive scores X_(1) <= ... <= X_(n) and the threshold at X_(k), the true sensitivity is
S = P(X >= X_(k)), and F(X_(k)) is the k-th order statistic of n uniforms for a continuous F (ties only
help). So S < target  <=>  U_(k) > 1 - target  <=>  fewer than k of the n uniforms fall below 1 - target:
P(S < target) = P(Binomial(n, 1 - target) <= k - 1). The chosen k is the largest with that probability
<= 1 - confidence (the highest threshold, so the best specificity). It is the one-sided distribution-free
tolerance bound of Wilks (1941; David & Nagaraja, Order Statistics, 3rd ed., section 7.2), and the same
statement as "the Clopper-Pearson lower bound of (n - k + 1) / n is >= target": Beta(n - k + 1, k) is
the distribution of S. k = 1 is the least the rule can ask, so a target needs n with target**n <=
1 - confidence: 59 positives for 0.95 at 95% (0.95**59 = 0.0485, 0.95**58 = 0.0510).

The binomial tail and the Clopper-Pearson bound are computed here with numpy and math.lgamma (no scipy on
the edge); the tests check them against scipy.stats and check the guarantee by simulation.
Tested by tests/edge/golive/test_thresholds.py and tests/edge/golive/test_statistics.py."""
from __future__ import annotations

import math
import re

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.roc import cumulative_counts
from medge.edge.numeric import as_truth_and_score

DEFAULT_CONFIDENCE = 0.95  # of the one-sided lower bound a sensitivity or specificity target is met by
CRITERIA_HELP = "'sensitivity=<target>', 'specificity=<target>' (target in (0, 1]) or 'youden'"

_CRITERION_RE = re.compile(r"^\s*(sensitivity|specificity)\s*=\s*(\S+)\s*$", re.IGNORECASE)


def parse_criterion(text: str) -> tuple[str, float | None]:
    """Read an operating-point criterion.

    Args:
        text: "sensitivity=0.95", "specificity=0.9" or "youden"; case-insensitive, spaces allowed.

    Returns:
        ("sensitivity", 0.95), ("specificity", 0.9) or ("youden", None).

    Raises:
        UsageError: any other text, or a target outside (0, 1].
    """
    if not isinstance(text, str):
        raise UsageError(f"criterion must be text: {CRITERIA_HELP}; got {text!r}")
    if text.strip().lower() == "youden":
        return "youden", None
    match = _CRITERION_RE.match(text)
    if not match:
        raise UsageError(f"criterion {text!r} not understood: use {CRITERIA_HELP}")
    try:
        target = float(match.group(2))
    except ValueError:
        raise UsageError(f"criterion {text!r}: the target is not a number: use {CRITERIA_HELP}") from None
    if not 0 < target <= 1:
        raise UsageError(f"criterion {text!r}: the target must be in (0, 1]: use {CRITERIA_HELP}")
    return match.group(1).lower(), target


def _criterion(criterion) -> tuple[str, float | None]:
    """A checked (name, target) from the tuple of parse_criterion, or its text."""
    if isinstance(criterion, str):
        return parse_criterion(criterion)
    if not (isinstance(criterion, tuple) and len(criterion) == 2):
        raise UsageError(f"criterion must be parse_criterion's (name, target) or its text: {CRITERIA_HELP}")
    name, target = criterion
    if name == "youden" and target is None:
        return name, None
    if name in ("sensitivity", "specificity") and isinstance(target, (int, float)) and 0 < target <= 1:
        return name, float(target)
    raise UsageError(f"criterion {criterion!r} not understood: use {CRITERIA_HELP}")


class TooFewCasesError(UsageError):
    """A target cannot be guaranteed at this confidence with this many cases (exit 2); carries the figures."""

    def __init__(self, statistic: str, target: float, confidence: float, n: int, needed: int | None):
        self.statistic, self.target, self.confidence, self.n, self.needed = statistic, target, confidence, n, needed
        cases = cases_of(statistic)
        need = (f"at least {needed} {cases}" if needed is not None
                else f"more {cases} than any sample has (a target of 1 cannot be guaranteed)")
        best = max_supported_target(n, confidence)
        super().__init__(
            f"{statistic}={target:g} at {confidence:.0%} confidence needs {need}; the validation split has {n}: "
            f"lower the target (at most {best:.3f} with {n} {cases} at {confidence:.0%}), lower the confidence, "
            f"add {cases}, or accept the point-estimate threshold marked unsupported")


def cases_of(statistic: str) -> str:
    """The cases a statistic rests on: positives for sensitivity, negatives for specificity."""
    return "positives" if statistic == "sensitivity" else "negatives"


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(Binomial(n, p) = i) for i = 0..n, from log-gamma (exact at p = 0 and p = 1)."""
    if p <= 0.0 or p >= 1.0:
        out = np.zeros(n + 1)
        out[0 if p <= 0.0 else n] = 1.0
        return out
    i = np.arange(n + 1)
    log_choose = math.lgamma(n + 1) - np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1) for k in range(n + 1)])
    return np.exp(log_choose + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    pmf = _binomial_pmf(n, p)
    # the shorter sum of the two tails, so that a small tail is not lost to 1 - (a number near 1)
    return float(min(1.0, pmf[: k + 1].sum())) if k < n / 2 else float(max(0.0, 1.0 - pmf[k + 1 :].sum()))


def clopper_pearson_lower(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The one-sided Clopper-Pearson lower confidence bound of a proportion: the p with P(Bin(n, p) >= x) = 1 - c.

    Equal to the (1 - confidence) quantile of Beta(x, n - x + 1); 0 when x = 0. Found by bisection on the
    binomial tail, which is increasing in p (60 halvings: below 1e-15).

    Args:
        successes: x, in 0..n. n: the number of trials, >= 1. confidence: in (0, 1).
    """
    if not (0 <= successes <= n and n >= 1):
        raise UsageError(f"clopper_pearson_lower: need 0 <= successes <= n and n >= 1, got {successes}, {n}")
    alpha = 1.0 - _confidence(confidence)
    if successes == 0:
        return 0.0
    if successes == n:
        return alpha ** (1.0 / n)  # P(Bin(n, p) >= n) = p**n
    low, high = 0.0, 1.0
    for _ in range(60):
        p = (low + high) / 2
        upper_tail = _binomial_pmf(n, p)[successes:].sum()
        low, high = (p, high) if upper_tail < alpha else (low, p)
    return (low + high) / 2


def cases_needed(target: float, confidence: float = DEFAULT_CONFIDENCE) -> int | None:
    """The fewest cases that can support ``target`` at ``confidence``: the least n with target**n <= 1 - c.

    None for a target of 1, which no finite sample supports. 0.95 at 95%: 59.
    """
    alpha = 1.0 - _confidence(confidence)
    if target >= 1.0:
        return None
    n = max(1, math.ceil(math.log(alpha) / math.log(target)))
    while target**n > alpha:  # the logarithms' rounding, either way
        n += 1
    while n > 1 and target ** (n - 1) <= alpha:
        n -= 1
    return n


def max_supported_target(n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The highest target n cases can support at ``confidence``: (1 - c) ** (1 / n); 0 for no case."""
    return 0.0 if n < 1 else (1.0 - _confidence(confidence)) ** (1.0 / n)


def guaranteed_rank(n: int, target: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The largest k in 1..n with P(Binomial(n, 1 - target) <= k - 1) <= 1 - confidence; 0 when none is.

    The threshold at the k-th smallest of n positive scores then has a true sensitivity >= target with
    probability >= confidence, whatever the distribution of the scores (module docstring).
    """
    alpha = 1.0 - _confidence(confidence)
    if n < 1:
        return 0
    cdf = np.cumsum(_binomial_pmf(n, 1.0 - target))
    return int(np.count_nonzero(cdf[:n] <= alpha))


def _confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UsageError(f"confidence must be a number in (0, 1), e.g. 0.95; got {confidence!r}")
    return float(confidence)


def _pick_index(name: str, target: float | None, sensitivity: np.ndarray, specificity: np.ndarray) -> int | None:
    """Index into the distinct scores (descending) chosen by the point estimate; None: none qualifies."""
    if name == "sensitivity":
        return int(np.flatnonzero(sensitivity >= target)[0])  # the lowest score has sensitivity 1: always found
    if name == "specificity":
        ok = np.flatnonzero(specificity >= target)
        return int(ok[-1]) if ok.size else None
    return int(np.argmax(sensitivity + specificity - 1))  # the first maximum is the highest threshold


def _point_threshold(name: str, target: float | None, t: np.ndarray, s: np.ndarray) -> float:
    """The threshold chosen on the point estimates (today's rule; youden's only rule)."""
    fps, tps, thresholds = cumulative_counts(t, s)
    # tn / n_negative rather than 1 - fpr: the same float as a count at the threshold gives
    sensitivity, specificity = tps / tps[-1], (fps[-1] - fps) / fps[-1]
    i = _pick_index(name, target, sensitivity, specificity)
    return float(np.nextafter(s.max(), np.inf)) if i is None else float(thresholds[i])


def _guaranteed_threshold(name: str, k: int, t: np.ndarray, s: np.ndarray) -> float:
    """The threshold at rank k: the k-th smallest positive score (sensitivity), or just above the k-th largest
    negative score (specificity: the lowest distinct score above it, else the next float)."""
    if name == "sensitivity":
        return float(np.sort(s[t])[k - 1])
    v = np.sort(s[~t])[::-1][k - 1]
    above = s[s > v]
    return float(above.min()) if above.size else float(np.nextafter(v, np.inf))


def choose_threshold(y, score, criterion, confidence: float = DEFAULT_CONFIDENCE, unsupported: bool = False) -> dict:
    """Choose the operating threshold on (y, score) by a criterion, among the distinct scores.

    - ("sensitivity", t): the highest threshold whose true sensitivity is >= t with probability
      >= ``confidence``: the k-th smallest positive score by ``guaranteed_rank`` (module docstring);
    - ("specificity", t): the same for the negatives: the lowest threshold above the k-th largest negative
      score, or ``np.nextafter(that score, inf)`` when no score is above it;
    - ("youden", None): the threshold maximising sensitivity + specificity - 1 (ties go to the higher one),
      as achieved on these cases: no guarantee.

    Args:
        y: truth, boolean or 0/1; both classes must be present.
        score: scores; a case is positive when ``score >= threshold``.
        criterion: the tuple of ``parse_criterion`` (its text is accepted too).
        confidence: of the one-sided lower bound the target is met by, in (0, 1).
        unsupported: where the cases are too few for the target at this confidence, choose the threshold on
            the point estimate instead (the highest threshold whose sensitivity on these cases is >= t; for
            specificity the lowest whose specificity is >= t, ``np.nextafter(max score, inf)`` when none is),
            with ``guarantee["supported"]`` False, rather than raise.

    Returns:
        {"threshold", "criterion": e.g. "sensitivity=0.95", "sensitivity", "specificity" (as achieved on these
        cases), "guarantee"}: None for youden, else {"statistic", "target", "confidence", "estimate" (the
        statistic on these cases), "bound" (its Clopper-Pearson lower bound at ``confidence``), "n" (the
        positives, or the negatives), "needed" (``cases_needed``), "supported" (bound >= target)}.

    Raises:
        TooFewCasesError (a UsageError, exit 2): too few cases for the target, without ``unsupported``.
    """
    name, target = _criterion(criterion)
    t, s = as_truth_and_score(y, score)
    if t.all() or not t.any():
        raise UsageError("choose_threshold needs both classes in y")
    if target is None:
        threshold, guarantee = _point_threshold(name, None, t, s), None
    else:
        n = int(t.sum()) if name == "sensitivity" else int((~t).sum())
        k = guaranteed_rank(n, target, confidence)
        if k == 0 and not unsupported:
            raise TooFewCasesError(name, target, confidence, n, cases_needed(target, confidence))
        threshold = _guaranteed_threshold(name, k, t, s) if k else _point_threshold(name, target, t, s)
        guarantee = _guarantee(name, target, confidence, t, s, threshold, n)
    sens, spec = float(np.mean(s[t] >= threshold)), float(np.mean(s[~t] < threshold))
    text = "youden" if target is None else f"{name}={target!r}"
    return {"threshold": threshold, "criterion": text, "sensitivity": sens, "specificity": spec, "guarantee": guarantee}


def _guarantee(name: str, target: float, confidence: float, t: np.ndarray, s: np.ndarray, threshold: float,
               n: int) -> dict:
    """The figures a target rests on at the chosen threshold (``choose_threshold``'s Returns)."""
    hits = int(np.sum(s[t] >= threshold)) if name == "sensitivity" else int(np.sum(s[~t] < threshold))
    # with ties the count at the threshold may exceed n - k + 1: its bound holds too (the rank of its lowest tie)
    bound = clopper_pearson_lower(hits, n, confidence)
    return {"statistic": name, "target": target, "confidence": float(confidence), "estimate": hits / n,
            "bound": bound, "n": n, "needed": cases_needed(target, confidence), "supported": bool(bound >= target)}
