"""From logits to a label: the bundle's calibration and operating point.

A classifier's softmax is not a probability a clinician can read (deep networks are
over-confident), and argmax is an operating point nobody chose. So ``medge export
--data`` fits, on the validation split, one temperature T (temperature scaling:
calibrated probabilities are softmax(logits / T), argmax unchanged) and, for a
two-class model, a threshold on the positive class's calibrated probability chosen
by a stated criterion (sensitivity=0.95 by default), met by a one-sided lower
confidence bound, not by the point estimate (``edge.golive.thresholds``); the section
records that guarantee (``guarantee_text``), or marks the point unsupported. They are stored in the
manifest's ``operating_point`` section with the validation ROC and scores, and
sealed by a SHA-256 of the section, checked when the bundle is opened: a threshold
edited by hand, or a copy damaged, is refused rather than silently used.

The rule everywhere (predict, watch, serve, node, validate): the positive class when
its calibrated probability >= threshold, else the other class. Bundles exported
without an operating point keep the argmax of softmax(logits), uncalibrated.
Parity gates stay on logits: neither T nor the threshold changes what cv2.dnn must
reproduce.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from medge.edge.errors import BundleError, ModelIntegrityError
from medge.edge.numeric import softmax  # the one export fitted T and chose the threshold with

SECTION = "operating_point"


def section_sha256(section: dict) -> str:
    """SHA-256 of a manifest section without its own ``sha256`` key (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in section.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(section: dict) -> dict:
    """The section with its ``sha256`` (``section_sha256``)."""
    return {**section, "sha256": section_sha256(section)}


NORMAL = "normal"  # the default positive class is the one not called this


def default_positive(classes) -> tuple[str, str]:
    """The positive class when none is named, and why: the class that is not "normal", else the second class."""
    others = [c for c in classes if c.lower() != NORMAL]
    if len(others) == 1:
        return others[0], f"the class that is not {NORMAL!r}"
    return classes[1], f"the second class (no single class is called {NORMAL!r}; name it with --positive)"


def guarantee_text(criterion: str | None, guarantee: dict | None, recorded: bool = True) -> str:
    """What a bundle's operating point promises, in one line for the card, the reports and the SR.

    Args:
        criterion: the section's ``criterion`` ("sensitivity=0.95", "youden"); None: no threshold.
        guarantee: the section's ``guarantee`` ({"statistic", "target", "confidence", "estimate", "bound", "n",
            "needed", "supported"}, from ``choose_threshold``), or None.
        recorded: False for a bundle exported before the guarantee was recorded (no ``guarantee`` key).

    Returns:
        e.g. "sensitivity >= 0.95 with 95% confidence (lower bound 0.951 on 72 positives)",
        "sensitivity=0.95 unsupported: 40 positives (59 needed)", "youden: no guarantee", or
        "sensitivity=0.95: no guarantee recorded". ASCII only (DICOM SR text).
    """
    if criterion is None:
        return "no threshold (label by argmax)"
    if criterion == "youden":
        return "youden: no guarantee (the threshold maximising validation sensitivity + specificity - 1)"
    if not recorded or not isinstance(guarantee, dict):
        return f"{criterion}: no guarantee recorded (exported before medge recorded one)"
    g = guarantee
    cases = "positives" if g["statistic"] == "sensitivity" else "negatives"
    if g.get("supported"):
        return (f"{g['statistic']} >= {g['target']:g} with {g['confidence']:.0%} confidence (lower bound "
                f"{g['bound']:.3f} on {g['n']} {cases})")
    needed = f"{g['needed']} needed" if g.get("needed") is not None else "no sample size supports a target of 1"
    return (f"{g['statistic']}={g['target']:g} unsupported: {g['n']} {cases} ({needed} at {g['confidence']:.0%} "
            f"confidence); validation {g['statistic']} {g['estimate']:.3f}, lower bound {g['bound']:.3f}")


@dataclass(frozen=True)
class OperatingPoint:
    """How a bundle turns logits into probabilities and a label (module docstring)."""

    classes: tuple[str, ...]
    temperature: float = 1.0  # calibrated probabilities: softmax(logits / temperature)
    positive: str | None = None  # two-class bundles: the class the threshold is on
    threshold: float | None = None  # positive when its calibrated probability >= threshold; None: argmax
    criterion: str | None = None  # how the threshold was chosen: "sensitivity=0.95", "specificity=0.9", "youden"
    guarantee: str = "no threshold (label by argmax)"  # what the threshold promises: guarantee_text
    supported: bool | None = None  # True: the target holds at its confidence; False: marked unsupported; None: none

    @property
    def positive_index(self) -> int | None:
        return None if self.positive is None else self.classes.index(self.positive)

    @classmethod
    def from_manifest(cls, manifest: dict, where: str = "bundle") -> "OperatingPoint | None":
        """The manifest's operating point, checked; None for a bundle without one (argmax, uncalibrated).

        Raises:
            ModelIntegrityError: the section's SHA-256 does not match its content (edited or damaged).
            BundleError: a temperature, class or threshold that cannot be used.
        """
        section = manifest.get(SECTION)
        if section is None or manifest.get("task") == "multilabel":  # a multi-label bundle's: edge.findings
            return None
        if not isinstance(section, dict) or "sha256" not in section:
            raise BundleError(f"{where}: the manifest's {SECTION} section is not sealed (no sha256): re-export the bundle")
        if section_sha256(section) != section["sha256"]:
            raise ModelIntegrityError(f"{where}: the manifest's {SECTION} section (threshold, calibration) does not match "
                                      "its SHA-256: it was edited or damaged; refusing to use it (re-export to change it)")
        classes = tuple(manifest["classes"])
        criterion, g = section.get("criterion"), section.get("guarantee")
        try:
            text = guarantee_text(criterion, g, recorded="guarantee" in section)  # older bundles have no such key
            op = cls(classes, float(section.get("temperature", 1.0)), section.get("positive"),
                     None if section.get("threshold") is None else float(section["threshold"]), criterion, text,
                     bool(g["supported"]) if isinstance(g, dict) else None)
        except (TypeError, ValueError, KeyError) as e:
            raise BundleError(f"{where}: bad {SECTION} section: {e}") from None
        op.check(where)
        return op

    def check(self, where: str) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise BundleError(f"{where}: {SECTION} temperature {self.temperature!r} is not a positive number")
        if self.threshold is None:
            return
        if len(self.classes) != 2 or self.positive not in self.classes:
            raise BundleError(f"{where}: {SECTION} has a threshold, which needs two classes and a positive one among "
                              f"them (classes {list(self.classes)}, positive {self.positive!r})")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0 + 1e-9):
            raise BundleError(f"{where}: {SECTION} threshold {self.threshold!r} is not a probability")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C), float64."""
        return softmax(logits, self.temperature)

    def label_indices(self, logits: np.ndarray) -> list[int]:
        """The label of each row of logits: by threshold on the positive class, else argmax."""
        logits = np.asarray(logits)
        if self.threshold is None:
            return [int(k) for k in np.argmax(logits, axis=1)]
        pos = self.positive_index
        p = self.probabilities(logits)[:, pos]
        return [pos if v >= self.threshold else 1 - pos for v in p]


def label_indices(op: OperatingPoint | None, logits: np.ndarray) -> list[int]:
    """``op.label_indices``, or argmax for a bundle without an operating point."""
    if op is None:
        return [int(k) for k in np.argmax(np.asarray(logits), axis=1)]
    return op.label_indices(logits)
