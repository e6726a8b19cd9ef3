"""The operating point: a criterion ("sensitivity=0.95", "specificity=0.9", "youden") read and applied to
choose a threshold among the distinct scores.
Tested by tests/edge/golive/test_statistics.py."""
from __future__ import annotations

import re

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.roc import cumulative_counts
from medge.edge.numeric import as_truth_and_score

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


def _pick_index(name: str, target: float | None, sensitivity: np.ndarray, specificity: np.ndarray) -> int | None:
    """Index into the distinct scores (descending) chosen by the criterion; None: none qualifies."""
    if name == "sensitivity":
        return int(np.flatnonzero(sensitivity >= target)[0])  # the lowest score has sensitivity 1: always found
    if name == "specificity":
        ok = np.flatnonzero(specificity >= target)
        return int(ok[-1]) if ok.size else None
    return int(np.argmax(sensitivity + specificity - 1))  # the first maximum is the highest threshold


def choose_threshold(y, score, criterion) -> dict:
    """Choose the operating threshold on (y, score) by a criterion, among the distinct scores.

    - ("sensitivity", t): the highest threshold whose sensitivity is >= t, so that specificity is as
      high as it can be while the sensitivity holds;
    - ("specificity", t): the lowest threshold whose specificity is >= t. Where no distinct score
      achieves it (negatives among the top scores), the threshold is ``np.nextafter(max score, inf)``,
      meaning "never positive" (specificity 1, sensitivity 0);
    - ("youden", None): the threshold maximising sensitivity + specificity - 1; ties go to the higher one.

    Args:
        y: truth, boolean or 0/1; both classes must be present.
        score: scores; a case is positive when ``score >= threshold``.
        criterion: the tuple of ``parse_criterion`` (its text is accepted too).

    Returns:
        {"threshold", "criterion": e.g. "sensitivity=0.95", "sensitivity", "specificity"}, the last two
        as achieved on the data given (an optimistic estimate: confirm them on other cases).
    """
    name, target = _criterion(criterion)
    t, s = as_truth_and_score(y, score)
    if t.all() or not t.any():
        raise UsageError("choose_threshold needs both classes in y")
    fps, tps, thresholds = cumulative_counts(t, s)
    # tn / n_negative rather than 1 - fpr: the same float as a count at the threshold gives
    sensitivity, specificity = tps / tps[-1], (fps[-1] - fps) / fps[-1]
    i = _pick_index(name, target, sensitivity, specificity)
    if i is None:
        threshold, sens, spec = float(np.nextafter(s.max(), np.inf)), 0.0, 1.0
    else:
        threshold, sens, spec = float(thresholds[i]), float(sensitivity[i]), float(specificity[i])
    text = "youden" if target is None else f"{name}={target!r}"
    return {"threshold": threshold, "criterion": text, "sensitivity": sens, "specificity": spec}
