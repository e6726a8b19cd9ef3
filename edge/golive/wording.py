"""Figures for people: how the demo's report and the serve model card name a figure, write its number and say
which decision rule it was counted at.

A record keeps keys and full precision (``ppv``: 0.5263157894736842); a reader gets a name and three decimals
("positive predictive value 0.526 (0.317 to 0.727)"). The hazard this module guards against is one model shown
with two accuracies and nothing saying why: training counts each image at argmax (the class with the highest
probability), the edge at the bundle's operating point (a threshold on the positive class's calibrated
probability). Every figure is written beside its rule (``rule_text``), and ``rules_differ_text`` says in one
sentence why the two rules give different figures on the same images.

Usage::

    from medge.edge.golive.wording import figure_name, figure_text, rule_text
    f"{figure_name('ppv')} {figure_text(report['figures']['ppv'])} at {rule_text('disease', 0.206)}"

Tested by tests/edge/golive/test_wording.py
"""
from __future__ import annotations

import math

from medge.edge.golive.validation import ci_text

FIGURE_NAMES = {
    "auc": "AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "positive predictive value",
    "npv": "negative predictive value",
    "brier": "Brier score",
    "ece": "expected calibration error",
    "loss": "loss (cross-entropy)",
}
ARGMAX_RULE = "argmax (the class with the highest probability)"
THRESHOLD = "{positive} when its calibrated probability >= {threshold}"
THRESHOLD_RULE = "the operating point ({threshold_text})"
# Why argmax (training) and the operating point (the edge) count the same images differently. For two classes,
# argmax is the positive class when its probability >= 0.5, calibrated or not (temperature scaling keeps argmax).
RULES_DIFFER = {
    "both": ("Training counts each image at argmax ({positive} when its probability >= 0.5); the bundle at its "
             "operating point ({positive} when its calibrated probability >= {threshold}). "),
    "lower": ("The threshold is below 0.5, so the bundle calls more images {positive} than argmax does: on the same "
              "images its sensitivity is at least as high, its specificity at most as high, and its accuracy can differ."),
    "higher": ("The threshold is above 0.5, so the bundle calls fewer images {positive} than argmax does: on the "
               "same images its sensitivity is at most as high, its specificity at least as high, and its accuracy "
               "can differ."),
    "same": "The threshold is 0.5: both rules give the same labels.",
}


def figure_name(key: str) -> str:
    """The name a reader sees for a record's key ("ppv" -> "positive predictive value"); unknown keys with spaces."""
    return FIGURE_NAMES.get(key, key.replace("_", " "))


def number_text(v, digits: int = 3) -> str:
    """``0.526`` (``digits`` decimals); ``n/a`` for a figure that is missing or undefined (None, NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def figure_text(f, digits: int = 3, to: str = " to ") -> str:
    """A figure with its 95% CI as ``0.400 (0.264 to 0.554)`` (``ci_text``; ``to`` joins the bounds), a bare figure
    as ``0.400``; a share of no cases (an NPV where nothing was called negative) as ``n/a (no cases)``."""
    if isinstance(f, dict) and f.get("n") == 0:
        return "n/a (no cases)"
    if isinstance(f, dict) and "low" in f:
        return ci_text(f, digits, to)
    if isinstance(f, dict):
        return number_text(f.get("value"), digits)
    return number_text(f, digits)


def percent_text(share) -> str:
    """A share as a percentage: 1.0 -> ``100%``, 0.975 -> ``97.5%``; never ``100%`` for a share below 1."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
        return "n/a"
    text = f"{100 * share:.1f}"
    if text == "100.0" and share < 1:
        text = "99.9"
    return text.removesuffix(".0") + "%"


def rule_text(positive: str | None, threshold: float | None) -> str:
    """The decision rule a figure was counted at, to follow "at": the operating point with its threshold, else argmax.

    >>> rule_text("disease", 0.2057)
    'the operating point (disease when its calibrated probability >= 0.206)'
    """
    if threshold is None:
        return ARGMAX_RULE
    return THRESHOLD_RULE.format(threshold_text=threshold_text(positive, threshold))


def threshold_text(positive: str, threshold: float) -> str:
    """An operating point's threshold: ``disease when its calibrated probability >= 0.206``."""
    return THRESHOLD.format(positive=positive, threshold=number_text(threshold))


def rules_differ_text(positive: str, threshold: float, templates: dict = RULES_DIFFER) -> str:
    """Why figures at argmax and at the operating point differ on the same images, in ``templates``' words."""
    side = "lower" if threshold < 0.5 else "higher" if threshold > 0.5 else "same"
    return (templates["both"] + templates[side]).format(positive=positive, threshold=number_text(threshold))
