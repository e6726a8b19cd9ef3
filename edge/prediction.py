"""What ``Model.predict`` returns for each input: a ``Prediction``, and the record it becomes.

Usage:
    from medge.edge import Model, Prediction
    model = Model.load("bundles/xray")
    for p in model.predict(["a.png", "b.dcm"]):              # one Prediction per input, in order
        print(p.path, p.label, p.probabilities, p.warnings, p.error)
        record = p.to_record(model.sha256, model.runtime)    # the line medge predict, watch and serve write
"""
from __future__ import annotations

from dataclasses import dataclass, field

from medge.edge.explain import Explanation
from medge.edge.findings import MULTILABEL


@dataclass
class Prediction:
    """One input's result: a label and probabilities, or an error; never both."""

    path: str | None  # None for arrays; a non-UTF-8 name holds surrogate escapes (edge.paths)
    label: str | None = None
    probabilities: dict[str, float] | None = None  # calibrated when the bundle has a temperature (edge.decision)
    logits: list[float] | None = None  # the model's raw outputs, before calibration
    threshold: float | None = None  # the bundle's operating threshold on its positive class; None: argmax
    calibrated: bool = False  # probabilities are softmax(logits / T) with the bundle's fitted T
    timings_ms: dict[str, float] = field(default_factory=dict)  # read, preprocess, inference (batch time / batch size)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # what is odd about the input (edge.inputs.profile); empty when fine
    input: dict | None = None  # ImageInfo.to_dict(): format, size, bits, photometric, modality, decoder, ...
    unexpected: bool = False  # the error is a bug in medge (exit status 3), not a problem of the input
    explanation: Explanation | None = field(default=None, repr=False)  # predict(..., heatmaps=True) only
    # multi-label bundles only (edge.findings): per finding present / absent / undecided (None), and its threshold
    decisions: dict[str, bool | None] | None = None
    thresholds: dict[str, float | None] | None = None
    # predict(..., heatmaps=[names]) only: one Explanation per class (finding) asked for, in that order
    explanations: list[Explanation] | None = field(default=None, repr=False)

    @property
    def positive_findings(self) -> list[str] | None:
        """A multi-label prediction's present findings, in the bundle's order; None for a single-label one."""
        return None if self.decisions is None else [k for k, v in self.decisions.items() if v]

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self, model_sha256: str, runtime: dict | None = None) -> dict:
        """The one record format of medge predict, watch and serve (JSON-ready); ``runtime``: what computed it
        (``Model.runtime``: engine and variant). A multi-label bundle's records (``edge.findings``) add ``task``,
        ``decisions``, ``thresholds``, ``positive_findings`` and ``any_positive``; a single-label record has none of
        them."""
        record = {"path": self.path, "label": self.label, "probabilities": self.probabilities,
                  "threshold": self.threshold, "calibrated": self.calibrated, "logits": self.logits,
                  "model_sha256": model_sha256, "runtime": runtime, "timings_ms": self.timings_ms, "error": self.error,
                  "warnings": list(self.warnings), "input": self.input}
        if self.thresholds is not None:  # a multi-label bundle's (an error has no decisions, but is of that bundle)
            positive = self.positive_findings
            record.update(task=MULTILABEL, decisions=self.decisions, thresholds=self.thresholds,
                          positive_findings=positive, any_positive=None if positive is None else bool(positive))
        return record
