"""From logits to findings: multi-label bundles, where each output is one finding with its own threshold.

A chest X-ray shows any number of findings at once (effusion and cardiomegaly together), so a
multi-label model gives one logit per finding, each read through a sigmoid, not one softmax over
classes. The manifest says so with ``"task": "multilabel"``; its ``classes`` are the findings, in
the order of the logits.

``medge export`` fits (``export.findings``), per finding on the validation split of the run's own index
split again by patient (or of ``--labels INDEX.csv``), a temperature T_k (calibrated
probability sigmoid(z_k / T_k)) and a threshold chosen by the same criterion and guarantee as the
single-label operating point (``edge.decision``, ``edge.golive.thresholds``). A finding with too few
validation positives or negatives for any threshold is marked unsupported: it has no threshold and
no decision (null), as torchxrayvision marks such a finding's threshold NaN. The findings are stored
in the manifest's ``operating_point`` section (``"task": "multilabel"``, a list ``findings``), sealed
by its SHA-256 like the single-label one. A multi-label bundle exported without an operating point
decides each finding at 0.5 on the uncalibrated sigmoid, and says so.

The rule everywhere (predict, watch, serve, node, validate): finding k is present when its calibrated
probability >= its threshold, absent when below, undecided (null) without a threshold. A record's
``positive_findings`` lists the present ones in the bundle's order, ``any_positive`` is the exam-level
flag (whether any decided finding is present), and its ``label`` is the positive findings joined by ``|``
(NIH ChestX-ray14's own notation), or ``No Finding`` when every finding was decided absent, or
``No Finding (not decided: A)`` when some had no threshold: the model then states nothing of them.
Parity gates stay on logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medge.edge.decision import SECTION, guarantee_text, section_sha256
from medge.edge.errors import BundleError, ModelIntegrityError
from medge.edge.numeric import sigmoid

MULTILABEL = "multilabel"  # the manifest's "task" of a multi-label bundle; absent: single-label (softmax)
NO_FINDING = "No Finding"  # the label of a record with no positive finding
SEPARATOR = "|"  # between the positive findings of a label
DEFAULT_THRESHOLD = 0.5  # a bundle exported without an operating point


def is_multilabel(manifest: dict) -> bool:
    """Whether a manifest (or a record, or a checkpoint's meta) is of a multi-label model."""
    return manifest.get("task") == MULTILABEL


def label_of(positive: list[str], undecided=()) -> str:
    """A record's label: the positive findings joined by ``|``; without one, ``No Finding``, or, where findings were
    not decided (no threshold), ``No Finding (not decided: A, B)``: the model states nothing of those."""
    if positive:
        return SEPARATOR.join(positive)
    return f"{NO_FINDING} (not decided: {', '.join(undecided)})" if undecided else NO_FINDING


@dataclass(frozen=True)
class FindingRule:
    """How one finding's logit becomes a probability and a decision."""

    name: str
    temperature: float = 1.0  # calibrated probability: sigmoid(logit / temperature)
    threshold: float | None = DEFAULT_THRESHOLD  # present when probability >= threshold; None: unsupported, no decision
    criterion: str | None = None  # how the threshold was chosen ("sensitivity=0.95", "youden"); None: not chosen
    guarantee: str = "no operating point: 0.5 on the uncalibrated probability"  # guarantee_text, or why none
    supported: bool | None = None  # True: the target holds at its confidence; False: marked unsupported; None: none

    def check(self, where: str) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise BundleError(f"{where}: finding {self.name!r}: temperature {self.temperature!r} is not a positive number")
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0 + 1e-9):
            raise BundleError(f"{where}: finding {self.name!r}: threshold {self.threshold!r} is not a probability")


def _rule(entry: dict, where: str) -> FindingRule:
    """One finding of a sealed multi-label section."""
    criterion, g = entry.get("criterion"), entry.get("guarantee")
    threshold = entry.get("threshold")
    if threshold is None:
        why = entry.get("unsupported") or "no threshold was chosen"
        text = f"unsupported: {why}"
    else:
        text = guarantee_text(criterion, g, recorded="guarantee" in entry)
    try:
        return FindingRule(str(entry["name"]), float(entry.get("temperature", 1.0)),
                           None if threshold is None else float(threshold), criterion, text,
                           bool(g["supported"]) if isinstance(g, dict) else (False if threshold is None else None))
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"{where}: bad finding in the {SECTION} section: {e}") from None


@dataclass(frozen=True)
class FindingsPoint:
    """How a multi-label bundle turns logits into per-finding probabilities and decisions (module docstring)."""

    findings: tuple[FindingRule, ...]
    calibrated: bool = False  # the rules come from a sealed operating point (else sigmoid at 0.5)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    @property
    def thresholds(self) -> dict[str, float | None]:
        return {f.name: f.threshold for f in self.findings}

    @classmethod
    def from_manifest(cls, manifest: dict, where: str = "bundle") -> "FindingsPoint | None":
        """The rules of a multi-label manifest, checked; None for a single-label one.

        Raises:
            ModelIntegrityError: the section's SHA-256 does not match its content.
            BundleError: a section that does not name the manifest's findings in order, or a bad value.
        """
        if not is_multilabel(manifest):
            return None
        names = [str(c) for c in manifest["classes"]]
        section = manifest.get(SECTION)
        if section is None:
            return cls(tuple(FindingRule(n) for n in names), calibrated=False)
        if not isinstance(section, dict) or "sha256" not in section:
            raise BundleError(f"{where}: the manifest's {SECTION} section is not sealed (no sha256): re-export the bundle")
        if section_sha256(section) != section["sha256"]:
            raise ModelIntegrityError(f"{where}: the manifest's {SECTION} section (thresholds, calibration) does not "
                                      "match its SHA-256: it was edited or damaged; refusing to use it")
        entries = section.get("findings")
        if not isinstance(entries, list) or [e.get("name") if isinstance(e, dict) else None for e in entries] != names:
            raise BundleError(f"{where}: the {SECTION} section's findings do not match the model's {names}")
        rules = tuple(_rule(e, where) for e in entries)
        for r in rules:
            r.check(where)
        return cls(rules, calibrated=True)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K), float64: sigmoid(z_k / T_k)."""
        z = np.asarray(logits, np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.findings):
            raise ValueError(f"logits of shape {z.shape}: expected (N, {len(self.findings)})")
        return sigmoid(z / np.array([f.temperature for f in self.findings]))

    def decisions(self, probabilities: np.ndarray) -> list[dict[str, bool | None]]:
        """Per row of calibrated probabilities: each finding present (True), absent (False) or undecided (None)."""
        return [{f.name: None if f.threshold is None else bool(v >= f.threshold)
                 for f, v in zip(self.findings, row, strict=True)} for row in np.asarray(probabilities)]

    def label_indices(self, logits: np.ndarray) -> list[int]:
        """The finding a heatmap explains by default: the most probable one of each row."""
        return [int(k) for k in np.argmax(self.probabilities(logits), axis=1)]
