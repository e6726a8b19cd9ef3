"""Multi-label copies of the test bundles for the edge tests, made without torch (``edge.findings``).

The test bundles give two logits. ``multilabel_copy`` relabels a copy as a multi-label bundle of two
findings with a hand-made sealed operating point: the same ONNX file and golden logits, read through a
sigmoid per finding instead of a softmax. ``medge export``'s own multi-label sections are tested in
tests/export.
"""
import json
import shutil
from pathlib import Path

from medge.edge.decision import seal

FINDINGS = ("Effusion", "Nodule")


def finding_entry(name: str, temperature: float = 1.0, threshold: float | None = 0.5,
                  criterion: str | None = "youden") -> dict:
    """One finding of a multi-label ``operating_point`` section (no threshold: unsupported, with the reason)."""
    entry = {"name": name, "temperature": temperature, "threshold": threshold, "criterion": criterion}
    if threshold is None:
        entry.update(criterion=None, unsupported="3 positives in the validation split (5 needed for a threshold)")
    return entry


def multilabel_copy(src: Path, dst: Path, entries: list[dict] | None = None, findings=FINDINGS) -> Path:
    """Copy bundle ``src`` to ``dst`` as a multi-label bundle of ``findings``; ``entries``: the sealed section's
    findings (``finding_entry``), or None for a bundle exported without an operating point."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "model.json").read_text())
    manifest.update(task="multilabel", classes=list(findings))
    manifest.pop("operating_point", None)
    if entries is not None:
        manifest["operating_point"] = seal({"task": "multilabel", "findings": entries})
    (dst / "model.json").write_text(json.dumps(manifest, indent=2))
    return dst
