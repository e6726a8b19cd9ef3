"""A bundle's fast variants: the same model at lower precision, each offered only where its gate passed.

``fp32`` is the bundle's model.onnx as exported (cv2.dnn's file, unchanged) and runs on every
engine. The export (``medge export --variants``, ``medge quantize``) may add:

- ``int8``: a post-training statically quantized copy (QDQ ONNX, its own file and SHA-256), run
  with integer kernels by the engines that have them (``Engine.quantized``: onnxruntime, OpenVINO);
- ``bf16``: model.onnx computed in bfloat16, a precision of the engines that have it (OpenVINO's
  pinned ``INFERENCE_PRECISION_HINT``), not a file.

Each (engine, variant) pair was gated at export on the validation split against fp32 (logit
drift, top-1 agreement, decisions flipped at the operating point, its own validation figures): a
pair that failed is recorded with its reason and never offered. An offered pair carries its own
golden logits (its outputs on the golden inputs on the gating box) and a tolerance: on this box
the pair must reproduce them (``edge.runtime.verify.self_test``) before it runs, so a CPU that
computes the variant differently (no bf16 here, integer kernels that saturate) never runs a pair
that was not the one gated. The manifest's ``variants`` section is sealed (SHA-256 of its
content, as the operating point's): edited gate results are refused.

Usage:
    variants = read_variants(manifest, bundle_dir)      # {} for bundles without variants
    variants["int8"].offered                            # ("onnxruntime", "openvino"): engines whose gate passed
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medge.edge.decision import section_sha256
from medge.edge.errors import BundleError, ModelIntegrityError
from medge.edge.runtime.bundle import MODEL_FILE, sha256_bytes

SECTION = "variants"
FP32 = "fp32"  # the exported model itself: every bundle has it
PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # the compute precision an engine is pinned to
FILES = {"int8": "model.int8.onnx"}  # variants that are files of their own (bf16 is a precision of model.onnx)
KNOWN = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class Variant:
    """One variant of a bundle: where its model is, how it is computed, and where its gate passed.

    ``gates``: engine -> the export gate's record for the pair (``passed``, ``reason``, figures and
    ``golden``); ``error``: why the variant cannot be used at all here (file missing or modified).
    """

    name: str
    file: str
    precision: str
    data: bytes = field(repr=False, default=b"")
    gates: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def offered(self) -> tuple[str, ...]:
        """Engines whose gate passed for this variant (all of them for fp32)."""
        if self.error is not None:
            return ()
        return tuple(e for e, g in self.gates.items() if isinstance(g, dict) and g.get("passed") is True)

    def why_not(self, engine: str) -> str | None:
        """Why the pair (engine, this variant) is not offered, or None when it is."""
        if self.error is not None:
            return self.error
        gate = self.gates.get(engine)
        if gate is None:
            return f"the {self.name} variant was not gated on the {engine} engine (medge export or medge quantize)"
        if gate.get("passed") is not True:
            return (f"the {self.name} variant failed its gate on the {engine} engine (medge export or medge quantize): "
                    f"{gate.get('reason')}")
        return None

    def golden(self, engine: str) -> dict | None:
        """The pair's golden outputs and tolerance (the manifest's ``golden`` keys), or None."""
        gate = self.gates.get(engine) or {}
        return gate.get("golden")


def read_variants(manifest: dict, bundle_dir: str | Path, fp32_bytes: bytes = b"") -> dict[str, Variant]:
    """The bundle's variants besides fp32, their files verified by SHA-256; {} for a bundle without them.

    Raises:
        ModelIntegrityError: the section's seal does not match its content (edited or damaged).
        BundleError: a malformed section.
    """
    section = manifest.get(SECTION)
    if section is None:
        return {}
    where = Path(bundle_dir) / "model.json"
    if not isinstance(section, dict) or "sha256" not in section:
        raise BundleError(f"{where}: the manifest's {SECTION} section is not sealed (no sha256): run medge quantize again")
    if section_sha256(section) != section["sha256"]:
        raise ModelIntegrityError(f"{where}: the manifest's {SECTION} section (the gates of the fast variants) does not "
                                  "match its SHA-256: it was edited or damaged; refusing to use it (run medge quantize again)")
    variants = {}
    for name, entry in section.items():
        if name == "sha256":
            continue
        if name not in KNOWN or name == FP32 or not isinstance(entry, dict):
            raise BundleError(f"{where}: unknown variant {name!r} in the {SECTION} section (this medge knows {list(KNOWN)})")
        variants[name] = _variant(name, entry, Path(bundle_dir), fp32_bytes)
    return variants


def _variant(name: str, entry: dict, bundle_dir: Path, fp32_bytes: bytes) -> Variant:
    """One entry read: its file's bytes checked against its SHA-256 (a bad file disables the variant, not the bundle)."""
    file = FILES.get(name, MODEL_FILE)  # never a name from the manifest: it could point outside the bundle
    gates, precision = dict(entry.get("gates") or {}), PRECISION[name]
    if file == MODEL_FILE:
        return Variant(name, file, precision, fp32_bytes, gates)
    path = bundle_dir / file
    try:
        data = path.read_bytes()
    except OSError as e:
        return Variant(name, file, precision, b"", gates, f"{path}: cannot read the {name} variant: {e.strerror or e}")
    if sha256_bytes(data) != entry.get("sha256"):
        return Variant(name, file, precision, b"", gates,
                       f"{path}: SHA-256 does not match the manifest's: the {name} variant was modified or partly copied")
    return Variant(name, file, precision, data, gates)
