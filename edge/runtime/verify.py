"""A bundle proven to be the model that was exported: its SHA-256 when it is opened, its golden self-test on a net.

``open_bundle`` reads the manifest, checks model.onnx (and a CAM head) against the hashes in it and
returns a ``VerifiedBundle``: everything needed to load nets of those verified bytes, and nothing that
depends on this box. ``self_test`` then proves that a net gives the exported outputs here: the
golden inputs are regenerated from the manifest's seed through this box's preprocessing, and the
logits (and CAM maps) must match the stored ones within the manifest's tolerance. The engine choice
(``edge.runtime.choice``) runs it on each engine it tries; ``Model.load`` builds a ``Model`` from the
bundle and the engine that passed.

Usage:
    bundle = open_bundle("bundles/xray")                  # hash-checked; no net loaded
    net = bundle.load_net("classic")
    worst = self_test(bundle, net, batch_size=1, engine="classic")   # SelfTestError beyond tolerance
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from medge.edge.decision import OperatingPoint
from medge.edge.errors import BundleError, ConfigError, ModelIntegrityError, SelfTestError
from medge.edge.explain import CamExplainer, Explainer, load_explainer
from medge.edge.findings import FindingsPoint
from medge.edge.preprocess import PreprocessConfig
from medge.edge.runtime.bundle import LOGITS_OUTPUT, MANIFEST_FILE, MODEL_FILE, golden_inputs, read_manifest, sha256_bytes
from medge.edge.runtime.dnn import forward_batches, forward_outputs_batches, load_net
from medge.edge.runtime.engines import AUTO, check_choices
from medge.edge.runtime.variants import FP32, read_variants


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files match its manifest's hashes (``open_bundle``); no net is loaded yet."""

    manifest: dict
    onnx_bytes: bytes = field(repr=False)  # the verified bytes of model.onnx: every net is loaded from these
    bundle_dir: Path
    operating_point: OperatingPoint | None  # calibration and threshold (edge.decision); None: argmax of the logits
    explainer: Explainer | None  # from the manifest's "explain" section; None for bundles exported before heatmaps
    requested_engine: str  # auto, or the engine asked for by the caller or the manifest
    backend: str  # a key of edge.runtime.engines.BACKENDS
    variants: dict = field(default_factory=dict)  # name -> edge.runtime.variants.Variant, besides fp32 ({}: none)
    requested_variant: str = AUTO  # auto, or the variant asked for (fp32 forbids the fast ones)
    findings: FindingsPoint | None = None  # a multi-label bundle's per-finding rules (edge.findings); None: single-label

    @property
    def sha256(self) -> str:
        return self.manifest["model"]["sha256"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def chw(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.manifest["model"]["input_shape"][1:])

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def dynamic_batch(self) -> bool:
        """The exported model takes batches > 1 (the self-test may still turn them off on this box)."""
        return bool(self.manifest["model"].get("dynamic_batch", False))

    def load_net(self, engine: str, variant: str = FP32):
        """A new net of the verified bytes of ``variant`` (default the exported model) with ``engine`` on this
        bundle's backend, at the variant's pinned precision (for one thread)."""
        if variant == FP32:
            return load_net(self.onnx_bytes, engine, self.backend, str(self.bundle_dir / MODEL_FILE),
                            self.manifest.get("versions", {}).get("opencv"))
        v = self.variants.get(variant)
        why = f"the bundle has no {variant} variant" if v is None else v.why_not(engine)
        if why:
            raise BundleError(f"{self.bundle_dir}: {why}")
        return load_net(v.data, engine, self.backend, str(self.bundle_dir / v.file), precision=v.precision)

    def operating_point_for(self, engine: str, variant: str = FP32) -> OperatingPoint | None:
        """The operating point the pair decides by: the bundle's, or the pair's own where its export gate chose one
        by the same rule on the same split (its decisions at the bundle's moved; at its own they keep fp32's)."""
        gate = self.variants[variant].gates.get(engine) if variant != FP32 else None
        if not gate or gate.get("operating_point") is None:
            return self.operating_point
        return OperatingPoint.from_manifest({"classes": self.classes, "operating_point": gate["operating_point"]},
                                            f"{self.bundle_dir} ({engine} engine, {variant} variant)")

    def explainer_for(self, engine: str, variant: str = FP32) -> Explainer | None:
        """The bundle's explainer as the pair runs it: a fast variant's CAM head is checked against its logits at
        twice its gated logit drift (its last layer is quantized, the head is not), never tighter than fp32's."""
        gate = self.variants[variant].gates.get(engine) if variant != FP32 else None
        if not isinstance(self.explainer, CamExplainer) or not gate:
            return self.explainer
        rtol = max(self.explainer.logit_rtol, 2 * float(gate["logit_drift"]["max"]))
        return self.explainer.with_tolerance(rtol)

    def golden(self, engine: str, variant: str = FP32) -> dict:
        """The golden self-test section a net of (engine, variant) must reproduce: the manifest's for fp32,
        the pair's own (its outputs on the gating box, with its tolerance) for a variant."""
        if variant == FP32:
            return self.manifest["golden"]
        return {**self.manifest["golden"], **self.variants[variant].golden(engine)}

    def golden_inputs(self) -> np.ndarray:
        """The manifest's self-test inputs, regenerated here (N, C, H, W)."""
        g = self.manifest["golden"]
        return golden_inputs(int(g["seed"]), int(g["count"]), self.preprocess_config)


def open_bundle(bundle_dir: str | os.PathLike, backend: str = "cpu", engine: str | None = None,
                variant: str | None = None) -> VerifiedBundle:
    """Read a bundle's manifest and verify model.onnx's SHA-256 (and the CAM head's); no net is loaded.

    Args:
        bundle_dir: folder with model.onnx and model.json.
        backend: a key of ``edge.runtime.engines.BACKENDS``.
        engine: ``auto`` or one of ``edge.runtime.engines.ENGINES``; default: the manifest's (``auto``
            unless the export named one).
        variant: ``auto`` (default: the fastest pair whose gate passed, by ``edge.runtime.choice``), ``fp32``
            (the exported model only) or one of the bundle's variants (``edge.runtime.variants``).

    Raises:
        BundleError: missing folder/manifest/model, unknown format version, an engine the manifest asks for
            that this OpenCV lacks, a bad operating point or heatmap section. ModelIntegrityError: model.onnx's,
            the operating point's or the CAM head's SHA-256 differs from the manifest's.
        ConfigError: an engine or backend asked for that this OpenCV does not have.
    """
    d = Path(bundle_dir)
    manifest = read_manifest(d)
    path = d / MODEL_FILE  # never a name from the manifest: it could point outside the bundle
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: model file missing from the bundle") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None
    digest = sha256_bytes(data)
    if digest != manifest["model"]["sha256"]:
        raise ModelIntegrityError(
            f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {manifest['model']['sha256'][:16]}...: "
            "the model file was modified or only partly copied; refusing to run it")
    requested = engine or manifest.get("runtime", {}).get("engine", AUTO)
    try:
        check_choices(requested, backend)
    except ConfigError as e:
        if engine:
            raise
        raise BundleError(f"{d / MANIFEST_FILE}: the bundle asks for an engine this OpenCV lacks: {e}; "
                          "run it with --engine auto (Model.load(..., engine='auto')) or install an OpenCV that has it"
                          ) from None
    operating_point = OperatingPoint.from_manifest(manifest, str(d))  # checks the section's SHA-256
    explainer = load_explainer(manifest, d)  # checks the CAM head's SHA-256
    variants = read_variants(manifest, d, data)  # checks the section's seal and each variant file's SHA-256
    wanted = variant or AUTO
    if wanted not in (AUTO, FP32, *variants):
        raise ConfigError(f"{d}: variant {wanted!r}: this bundle has {[FP32, *variants]} (add variants with medge quantize)")
    findings = FindingsPoint.from_manifest(manifest, str(d))  # a multi-label bundle's; checks the section's SHA-256
    return VerifiedBundle(manifest, data, d, operating_point, explainer, requested, backend, variants, wanted, findings)


def self_test(bundle: VerifiedBundle, net, batch_size: int, engine: str, variant: str = FP32) -> float:
    """Max |logit difference| between ``net``'s outputs on the golden inputs (``batch_size`` per pass)
    and the exported ones (a variant's: its own, ``VerifiedBundle.golden``); with a CAM bundle, its maps
    are tested from the same passes.

    Args:
        bundle: the bundle ``net`` was loaded from.
        net: a net of ``bundle.onnx_bytes`` (any object with ``setInput``, ``forward`` and
            ``getUnconnectedOutLayersNames``).
        batch_size: golden inputs per forward pass.
        engine: the net's engine, named in errors.
        variant: the variant the net runs (``edge.runtime.variants``).

    Raises:
        SelfTestError: beyond the manifest's tolerance. InferenceError: a forward pass failed.
    """
    g = bundle.golden(engine, variant)
    expected = np.asarray(g["expected_logits"], np.float32)
    explainer, chw, classes = bundle.explainer, bundle.chw, len(bundle.manifest["classes"])
    cam = explainer if isinstance(explainer, CamExplainer) and "expected_cam" in g else None
    features = None
    if cam is None:
        got = forward_batches(net, bundle.golden_inputs(), chw, classes, batch_size)
    else:  # one pass for both outputs: the feature map is tested with the logits (after them, below)
        outs = forward_outputs_batches(net, bundle.golden_inputs(), chw, (LOGITS_OUTPUT, cam.output), batch_size)
        got, features = outs[LOGITS_OUTPUT].reshape(len(outs[LOGITS_OUTPUT]), -1), outs[cam.output]
    if got.shape != expected.shape:
        raise SelfTestError(f"{bundle.bundle_dir}: the manifest's golden logits have shape {expected.shape}, "
                            f"the model gives {got.shape}: a damaged manifest")
    worst = float(np.abs(got - expected).max())
    if not worst <= float(g["tolerance"]):
        what = "" if variant == FP32 else f" of the {variant} variant (against its outputs on the box that gated it)"
        raise SelfTestError(
            f"{bundle.bundle_dir}: golden self-test{what} failed: max |logit difference| {worst:.3g} > {g['tolerance']:g} "
            f"(OpenCV {cv2.__version__}, {engine} engine here; the bundle was verified with OpenCV "
            f"{bundle.manifest.get('versions', {}).get('opencv', '?')}): do not use this model on this machine")
    if cam is not None:
        _self_test_cam(bundle, cam, features, engine, g)
    return worst


def _self_test_cam(bundle: VerifiedBundle, cam: CamExplainer, features: np.ndarray, engine: str, g: dict) -> None:
    """The CAM maps of the golden inputs against the expected ones (``g``), relative to their largest value."""
    expected = np.asarray(g["expected_cam"], np.float32)
    got = np.stack([cam.cams(features, [k] * len(features)) for k in range(len(bundle.manifest["classes"]))], axis=1)
    worst = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max())) \
        if got.shape == expected.shape else float("inf")
    tolerance = float(g.get("cam_tolerance", g["tolerance"]))
    if not worst <= tolerance:
        raise SelfTestError(
            f"{bundle.bundle_dir}: golden self-test of the heatmaps failed: max relative |CAM difference| {worst:.3g} > "
            f"{tolerance:g} (OpenCV {cv2.__version__}, {engine} engine here): "
            "do not use this model's heatmaps on this machine")
