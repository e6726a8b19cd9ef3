"""Checkpoint -> opset-12 ONNX -> onnxsim -> onnx.checker -> cv2.dnn -> parity gate -> bundle.

cv2.dnn here means each engine the edge may run the bundle with: with ``--engine auto``
(the default) every engine of this OpenCV must pass the gate, and each one's batch-1
forward time on this machine is recorded in the manifest (``runtime.export_timings``).

Each step is a function that returns a path, bytes or a report and raises
ExportError on failure; ``export_bundle`` reads as the list of them, times each
(``StepTimer``), and writes the bundle only when every step passed.

With --data, the model is also calibrated and given an operating point on the validation
split (``export.calibrate``): a temperature, and for two classes a threshold chosen by
``--operating-point``, sealed in the manifest's ``operating_point`` section.

Heatmaps (``export.explain``): a CAM architecture is exported with a second
output, its feature map, which the parity gate and the golden self-test cover too, and
its head goes into the bundle; other architectures are marked for occlusion.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medge.edge.decision import SECTION
from medge.edge.errors import BundleError, ExportError, MedgeError, ParityError, UsageError
from medge.edge.explain import CAM_HEAD_FILE, FEATURES_OUTPUT
from medge.edge.findings import MULTILABEL, is_multilabel
from medge.edge.inputs.profile import SYNTHETIC_WARNING
from medge.edge.numeric import latency_summary
from medge.edge.outputs import atomic_dir, check_output_dir
from medge.edge.preprocess import PreprocessConfig, preprocess, preprocess_file
from medge.edge.runtime.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    check_writable_parent,
    golden_inputs,
    read_manifest,
    write_bundle,
)
from medge.edge.runtime.dnn import forward_batches, forward_outputs_batches, load_net, time_forwards
from medge.edge.runtime.engines import AUTO, ENGINES, engines_for
from medge.edge.system import environment
from medge.export import calibrate, findings
from medge.export.explain import CamExport, compare_features, explain_section, prepare_cam, torch_outputs
from medge.export.findings import IndexArgs
from medge.export.parity import Tolerance, compare, summary_line
from medge.export.variants import VariantConfig, add_variants, pairs_here

if TYPE_CHECKING:
    from medge.train.checkpoint import Checkpoint

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportConfig:
    """How a checkpoint becomes a bundle; saved in the manifest."""

    opset: int = 12  # ONNX default-domain opset; cv2.dnn's best-supported
    simplify: bool = True  # run onnxsim; its failed check is an error
    dynamic_batch: bool = True  # batch axis dynamic when cv2.dnn runs batches > 1 correctly on it
    engine: str = "auto"  # engine the edge runs; auto: the fastest correct one on the edge box (all are verified here)
    tolerance: Tolerance = Tolerance()  # the parity gate (PyTorch vs cv2.dnn)
    max_images: int = 64  # parity inputs taken from --data (val split), or synthetic ones
    parity_batch: int = 8  # batch size of the cv2.dnn parity run (checks batched inference)
    golden_count: int = 4  # self-test inputs stored (as a seed) with expected outputs
    golden_seed: int = 0
    golden_tolerance: float = 1e-3  # the edge's self-test tolerance on |logit difference| (and relative, on CAM)
    feature_rtol: float = 1e-3  # heatmap bundles: max |delta feature map| / max |feature|, PyTorch vs cv2.dnn
    timing_rounds: int = 10  # batch-1 forward passes per engine timed for the manifest (interleaved)
    modalities: tuple = ()  # DICOM modalities the model is for, besides those of the training DICOM files
    # Calibration and threshold on --data's val split (export.calibrate); "none": argmax, uncalibrated
    operating_point: str = "sensitivity=0.95"  # or "specificity=X", "youden", "none"
    positive: str | None = None  # the class the threshold is on (default: the one not called "normal")
    confidence: float = 0.95  # a sensitivity/specificity target is met by its one-sided lower bound at this confidence
    unsupported: bool = False  # too few cases for the target: store the point-estimate threshold, marked, not exit 2
    calibration_images: int = 5000  # validation images used at most (evenly spread)


def _onnx_nodes(model) -> int:
    return len(model.graph.node)


def export_onnx(model, path: Path, chw: tuple[int, int, int], opset: int = 12, dynamic_batch: bool = True,
                outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> Path:
    """torch.onnx.export with the TorchScript exporter (dynamo cannot emit opset 12); asserts the opset.

    ``outputs`` names the model's outputs in order: logits, then the feature map for a heatmap bundle.
    """
    import onnx
    import torch

    dummy = torch.zeros(1, *chw)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, dummy, str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(outputs), dynamic_axes=axes, do_constant_folding=True)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    saved = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    if saved.get("ai.onnx") != opset:
        raise ExportError(f"exported model has default-domain opset {saved.get('ai.onnx')}, expected exactly {opset}")
    return path


def simplify_onnx(src: Path, dst: Path) -> dict:
    """onnxsim.simplify; a failed check is an error. Returns node counts and sizes."""
    import onnx
    import onnxsim

    model = onnx.load(str(src))
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:
        raise ExportError(f"onnxsim failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not ok:
        raise ExportError("onnxsim's check failed: the simplified model does not match the original (use --no-simplify)")
    onnx.save(simplified, str(dst))
    return {"nodes_before": _onnx_nodes(model), "nodes_after": _onnx_nodes(simplified),
            "bytes_before": src.stat().st_size, "bytes_after": dst.stat().st_size}


def finalize_onnx(path: Path, props: dict) -> bytes:
    """Add metadata_props (for Netron and friends), run the full checker, return the final bytes."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the model: {str(e).splitlines()[0]}") from None
    return model.SerializeToString()


def pytorch_reference(model, arch: str, inputs: np.ndarray) -> tuple[np.ndarray, CamExport | None]:
    """PyTorch's logits on the parity inputs; for a CAM architecture also its feature maps, proven to give them."""
    cam = prepare_cam(model, arch, inputs)
    return (torch_logits(model, inputs) if cam is None else cam.logits), cam


def torch_logits(model, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """Reference logits from PyTorch (CPU, float32, inference mode)."""
    import torch

    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(inputs[i : i + batch])).float().numpy()
                               for i in range(0, len(inputs), batch)])


def parity_inputs(data: str | None, pcfg: PreprocessConfig, classes: list[str], count: int, split=None,
                  val_split: tuple[float, int] = (0.2, 0)):
    """Inputs for the parity gate: --data's val images through edge.preprocess, split with ``val_split`` (the run's
    val fraction and seed, ``calibrate.run_split``), or those of ``split`` (a multi-label model's validation
    split), else synthetic ones.

    Returns:
        (float32 (N, C, H, W), names, skipped [(path, reason)]).
    """
    if split is not None:
        return split_inputs(split, pcfg, count, "the validation index")
    if data is None:
        from medge.train.synth import SynthConfig, make_image

        scfg = SynthConfig(size=256, seed=12345)
        imgs = [np.round(make_image(i, i % 2 == 1, scfg) * 255).astype(np.uint8) for i in range(count)]
        return np.stack([preprocess(im, pcfg) for im in imgs]), [f"synthetic:{i}" for i in range(count)], []
    from medge.train.data import discover

    data_classes, splits = discover(data, *val_split)  # split as the run split it (calibrate.run_split)
    if data_classes != classes:
        raise ExportError(f"{data}: classes {data_classes} differ from the checkpoint's {classes}")
    return split_inputs(splits["val"], pcfg, count, data)


def split_inputs(split, pcfg: PreprocessConfig, count: int, where: str):
    """At most ``count`` images of a split (evenly spread) through edge.preprocess: (inputs, names, skipped)."""
    pick = np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int))
    tensors, names, skipped = [], [], []
    for i in pick:
        try:
            tensors.append(preprocess_file(split.paths[i], pcfg))
            names.append(split.paths[i])
        except MedgeError as e:
            skipped.append((split.paths[i], str(e)))
    if not tensors:
        raise ExportError(f"{where}: no readable validation image for the parity check")
    return np.stack(tensors), names, skipped


class StepTimer:
    """Runs the export's steps, says each as it ends (the progress of an export), and records how long
    each took (saved in the manifest)."""

    def __init__(self, log=None):
        self.steps: list[dict] = []
        self.log = log

    def run(self, name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        seconds = time.perf_counter() - t0
        self.steps.append({"step": name, "seconds": round(seconds, 3)})
        if self.log is not None:
            self.log(f"  {name}: done in {seconds:.1f} s")
        return result


def check_operating_point(cfg: ExportConfig, classes: list[str] | None = None) -> None:
    """Refuse a criterion that cannot be parsed, and (once the classes are known) a --positive that is not one of
    them: usage errors, before any expensive step."""
    from medge.edge.errors import UsageError
    from medge.edge.golive import parse_criterion

    if cfg.operating_point == "none":
        return
    try:
        parse_criterion(cfg.operating_point)
    except UsageError as e:
        raise UsageError(f"--operating-point: {e}") from None
    if isinstance(cfg.confidence, bool) or not isinstance(cfg.confidence, (int, float)) or not 0 < cfg.confidence < 1:
        raise UsageError(f"--confidence: a number in (0, 1), e.g. 0.95; got {cfg.confidence!r}")
    if cfg.calibration_images < 10:
        raise UsageError(f"--calibration-images: calibration needs at least 10 validation images, got {cfg.calibration_images}")
    if classes is not None and cfg.positive is not None and cfg.positive not in classes:
        raise UsageError(f"--positive {cfg.positive!r} is not a class of the model ({', '.join(classes)})")


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a file, an existing bundle without ``overwrite`` and any other existing folder; prove the
    parent writable (all before the expensive steps)."""
    check_output_dir(out, "bundle")
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: exists already (use --overwrite to replace the bundle in it)")
    if out.exists() and not (out / MANIFEST_FILE).is_file():
        raise BundleError(f"{out}: exists and is not a medge bundle; refusing to replace it")
    check_writable_parent(out)


@dataclass(frozen=True)
class OnnxCandidate:
    """An exported, simplified, checked model and what each cv2.dnn engine made of it."""

    onnx_bytes: bytes
    dynamic: bool  # batch axis dynamic (False after the fallback to a fixed batch of 1)
    logits: dict  # engine -> cv2.dnn's logits on the parity inputs
    features: dict | None  # engine -> cv2.dnn's feature maps on them (heatmap bundles with CAM), else None
    nets: dict  # engine -> the cv2.dnn.Net that produced them
    simplify_stats: dict | None
    batch_note: str | None  # why the batch axis is fixed, when it fell back


def export_engines(engine: str) -> list[str]:
    """The engines a bundle is verified with: all of this OpenCV's CPU engines for auto, else the one named."""
    if engine == AUTO:
        return engines_for("cpu")
    if engine not in ENGINES:
        raise ExportError(f"engine {engine!r} is not in this OpenCV (it has {list(ENGINES)})")
    return [engine]


def build_onnx(model, ck, chw, cfg: ExportConfig, dynamic: bool, work: Path, timer: StepTimer,
               outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> tuple[bytes, dict | None]:
    """torch.onnx.export -> onnxsim (optional) -> metadata + full check; returns the final bytes and onnxsim's stats."""
    raw = timer.run("torch.onnx.export", export_onnx, model, work / "raw.onnx", chw, cfg.opset, dynamic, outputs)
    stats, src = None, raw
    if cfg.simplify:
        stats = timer.run("onnxsim", simplify_onnx, raw, work / "sim.onnx")
        src = work / "sim.onnx"
    props = {"medge.format_version": "1", "medge.arch": ck.arch, "medge.classes": ck.classes,
             "medge.preprocess": ck.preprocess.to_dict(),
             "medge.input": {"name": INPUT_NAME, "shape": ["batch" if dynamic else 1, *chw]}, "medge.outputs": list(outputs)}
    return timer.run("onnx.checker", finalize_onnx, src, props), stats


def cv2_outputs(net, inputs: np.ndarray, chw, k: int, batch: int, cam: CamExport | None):
    """cv2.dnn's logits on the inputs, and its feature maps for a CAM export (else None)."""
    if cam is None:
        return forward_batches(net, inputs, chw, k, batch), None
    outs = forward_outputs_batches(net, inputs, chw, (OUTPUT_NAME, FEATURES_OUTPUT), batch)
    if outs[OUTPUT_NAME].reshape(len(inputs), -1).shape[1] != k:
        raise ExportError(f"cv2.dnn returned logits of shape {outs[OUTPUT_NAME].shape}, expected {k} per image")
    return outs[OUTPUT_NAME].reshape(len(inputs), k), outs[FEATURES_OUTPUT]


def export_verified_onnx(model, ck, inputs: np.ndarray, reference: np.ndarray, cfg: ExportConfig, name: str,
                         timer: StepTimer, log, cam: CamExport | None = None) -> OnnxCandidate:
    """Export and run the model in each cv2.dnn engine on the parity inputs; a dynamic batch axis that
    an engine runs wrongly (or not at all) for batches > 1 falls back to a fixed batch of 1, said in the manifest.
    With ``cam``, its wrapper (logits and feature map) is what is exported."""
    chw = (ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size)
    k = len(ck.classes)
    engines = export_engines(cfg.engine)
    outputs = (OUTPUT_NAME,) if cam is None else (OUTPUT_NAME, FEATURES_OUTPUT)
    with tempfile.TemporaryDirectory() as work:
        dynamic, note = cfg.dynamic_batch, None
        while True:
            onnx_bytes, stats = build_onnx(model if cam is None else cam.module, ck, chw, cfg, dynamic, Path(work), timer,
                                           outputs)
            nets = {e: timer.run(f"cv2.dnn.load[{e}]", load_net, onnx_bytes, e, "cpu", name) for e in engines}
            logits, features = {}, {}
            for e, net in nets.items():
                try:
                    logits[e], features[e] = timer.run(f"cv2.dnn.forward[{e}]", cv2_outputs, net, inputs, chw, k,
                                                       cfg.parity_batch if dynamic else 1, cam)
                except MedgeError as err:
                    if not dynamic:
                        raise ExportError(f"cv2.dnn ({e} engine) cannot run the exported model: {err}") from None
                    logits[e] = features[e] = None
            batch_ok = all(logits[e] is not None and np.abs(logits[e] - reference).max() <= cfg.tolerance.max_abs_logit
                           and (cam is None or compare_features(cam.features, features[e], cfg.feature_rtol)["passed"])
                           for e in engines)
            if not dynamic or batch_ok:
                return OnnxCandidate(onnx_bytes, dynamic, logits, features if cam is not None else None, nets, stats, note)
            note = ("cv2.dnn gave wrong results or failed for batches > 1 on the dynamic batch axis; "
                    "exported with a fixed batch of 1")
            log(f"warning: {note}")
            dynamic = False


def parity_gate(reference: np.ndarray, candidates: dict, names: list[str], classes: list[str],
                tol: Tolerance, log) -> dict:
    """compare() PyTorch with each cv2.dnn engine; ParityError (and no bundle) when one is beyond the tolerance.

    Returns:
        the report of the engine farthest from PyTorch, with ``engine`` and ``engines`` (each one's figures).
    """
    reports = {}
    for engine, logits in candidates.items():
        report = reports[engine] = compare(reference, logits, names, classes, tol, candidate_name=f"cv2.dnn[{engine}]")
        log(f"parity: {summary_line(report)}")
        if not report["passed"]:
            worst = sorted(report["label_flips"], key=lambda f: -f["max_abs_logit"])[:5]
            raise ParityError(f"parity gate failed, no bundle written: {'; '.join(report['failures'])} ({engine} engine)"
                              + (f"; flips: {worst}" if worst else ""))
    engine = max(reports, key=lambda e: reports[e]["logits"]["max_abs"])
    return {**reports[engine], "candidate": "cv2.dnn", "engine": engine,
            "engines": {e: {"max_abs_logit": r["logits"]["max_abs"], "top1_agreement": r["top1_agreement"],
                            "passed": r["passed"]} for e, r in reports.items()}}


def feature_gate(cam: CamExport, candidate: OnnxCandidate, rtol: float, log) -> dict:
    """PyTorch vs each engine's feature maps (the heatmaps' input); ParityError (and no bundle) beyond ``rtol``.

    Returns:
        the report of the engine farthest from PyTorch, with ``engine``.
    """
    reports = {}
    for engine, features in candidate.features.items():
        report = reports[engine] = compare_features(cam.features, features, rtol)
        log(f"parity: feature map {report['shape']} ({engine} engine): max |delta| {report['max_abs']:.2e} of max "
            f"|feature| {report['reference_max_abs']:.3g} (relative {report['max_rel']:.2e}) "
            f"-> {'PASS' if report['passed'] else 'FAIL'}")
        if not report["passed"]:
            raise ParityError(f"parity gate failed, no bundle written: feature map max relative |delta| "
                              f"{report['max_rel']:.3g} > {rtol:g} ({engine} engine)")
    engine = max(reports, key=lambda e: reports[e]["max_rel"])
    return {**reports[engine], "engine": engine}


def engine_timings(candidate: OnnxCandidate, inputs: np.ndarray, chw: tuple[int, int, int], k: int, rounds: int) -> dict:
    """Batch-1 forward time of each verified engine on this (the exporting) machine, interleaved, for the manifest."""
    times = time_forwards(candidate.nets, inputs[:1], chw, k, rounds, warmup=2)
    env = environment()
    return {"machine": {key: env[key] for key in ("cpu", "cores", "opencv", "opencv_threads")},
            "batch": 1, "forward_ms": {e: latency_summary(t) for e, t in times.items()}}


def golden_section(model, candidate: OnnxCandidate, ck, cfg: ExportConfig, cam: CamExport | None = None) -> dict:
    """The manifest's self-test: a seed for the inputs, PyTorch's logits (and raw CAMs) on them, the tolerance."""
    chw = (ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size)
    x = golden_inputs(cfg.golden_seed, cfg.golden_count, ck.preprocess)
    expected, features = torch_outputs(cam.module, x) if cam is not None else (torch_logits(model, x), None)
    here = [cv2_outputs(net, x, chw, len(ck.classes), 1, cam) for net in candidate.nets.values()]
    golden = {"seed": cfg.golden_seed, "count": cfg.golden_count, "generator": "medge.edge.runtime.bundle.golden_inputs",
              "expected_logits": expected.tolist(), "tolerance": cfg.golden_tolerance,
              "export_max_abs_logit": max(float(np.abs(expected - h).max()) for h, _ in here)}
    if cam is not None:
        expected_cam = cam.raw_cams(features)
        golden["expected_cam"] = expected_cam.tolist()
        scale = max(1.0, float(np.abs(expected_cam).max()))
        golden["export_max_rel_cam"] = max(float(np.abs(expected_cam - cam.raw_cams(f)).max()) / scale for _, f in here)
    return golden


def data_profile_section(ck, cfg: ExportConfig) -> dict | None:
    """What training saw (the checkpoint's data_profile), with the modalities declared at export; None if unknown.

    The edge warns about inputs far from it (``medge.edge.inputs.profile``); without it only the intrinsic checks run.
    """
    profile = ck.payload.get("data_profile")
    if not profile and not cfg.modalities:
        return None
    profile = dict(profile or {"version": 1, "images": 0})
    modalities = dict(profile.get("modalities") or {})
    for m in cfg.modalities:
        modalities.setdefault(m, 0)  # declared, not counted: no training image of it need exist
    profile["modalities"] = dict(sorted(modalities.items()))
    return profile


def data_profile_notes(profile: dict | None) -> list[str]:
    """What the edge will and will not check against the bundle's data profile, for export's log."""
    if profile is None:
        return ["the checkpoint has no data profile (trained by an older medge, or outside medge train): the edge "
                "will check inputs for intrinsic problems only (tiny, uniform, ...), not against the training data"]
    notes = []
    if profile.get("synthetic"):
        notes.append(f"trained on a data set medge synth made: every record of this bundle will say "
                     f"'{SYNTHETIC_WARNING}'")
    if not profile.get("modalities"):
        notes.append("the training data had no DICOM files and no --modality was given: the edge will warn on every "
                     "DICOM input that its modality was never seen in training; declare the modalities the model is "
                     "for with --modality CR,DX")
    return notes


@dataclass(frozen=True)
class ManifestInputs:
    """What an export has gathered by the time it writes the manifest (``build_manifest``)."""

    ck: Checkpoint  # the loaded checkpoint
    checkpoint: str  # its path, as given
    candidate: OnnxCandidate  # the verified ONNX model
    cfg: ExportConfig
    report: dict  # the parity report (with the feature gate's, for CAM bundles)
    golden: dict  # the golden self-test section
    data: str | None  # --data, or None: the parity inputs were synthetic
    skipped: list  # (path, reason) of the parity images that could not be read
    steps: list[dict]  # the export's steps and their times (StepTimer)
    timings: dict  # forward times of each verified engine on this machine
    cam: CamExport | None = None  # the CAM head, or None: heatmaps by occlusion


def build_manifest(m: ManifestInputs) -> dict:
    """Everything the edge needs to know about the model, as model.json."""
    import cv2
    import onnx
    import onnxsim
    import torch

    from medge import __version__

    ck, candidate, cfg, cam = m.ck, m.candidate, m.cfg, m.cam
    chw = [ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size]
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes": ck.classes,
        "preprocess": ck.preprocess.to_dict(),
        "model": {"arch": ck.arch, "opset": cfg.opset, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                  "output_names": [OUTPUT_NAME] if cam is None else [OUTPUT_NAME, FEATURES_OUTPUT],
                  "input_shape": ["batch" if candidate.dynamic else 1, *chw], "dynamic_batch": candidate.dynamic,
                  "batch_note": candidate.batch_note, "output": "logits (apply softmax for probabilities)"},
        "explain": explain_section(cam, ck.preprocess.size),
        "runtime": {"engine": cfg.engine, "backend": "cpu", "verified_engines": list(candidate.nets),
                    "export_timings": m.timings},
        "golden": m.golden,
        "data_profile": data_profile_section(ck, cfg),
        "parity": {**m.report, "inputs": "val images of " + m.data if m.data else "synthetic images",
                   "skipped": [{"path": p, "reason": r} for p, r in m.skipped]},
        "training": {"epoch": ck.epoch, "metrics": ck.metrics, "train_config": ck["train_config"],
                     "checkpoint": str(Path(m.checkpoint).absolute()), "weights_sha256": ck.weights_sha256,
                     **({"data_source": ck.data_source} if ck.data_source else {})},  # an index run's hashes
        "export": {"config": asdict(cfg), "simplified": cfg.simplify, "simplify_stats": candidate.simplify_stats,
                   "steps": m.steps},
        "versions": {**ck.versions, "export_medge": __version__, "export_torch": str(torch.__version__),
                     "onnx": onnx.__version__, "onnxsim": getattr(onnxsim, "__version__", "unknown"), "opencv": cv2.__version__},
    }


def operating_point(model, ck, data: str | None, cfg: ExportConfig, log, multi: tuple | None = None) -> dict | None:
    """The sealed calibration and operating point on --data's val split (``export.calibrate``), or a multi-label
    model's per finding on its validation index (``multi``: (ValidationCases, IndexSource), ``export.findings``);
    None without data."""
    if multi is not None:
        return findings.operating_point(model, ck, *multi, cfg, log)

    if cfg.operating_point == "none":
        log("operating point: none (--operating-point none): the edge labels by argmax, uncalibrated")
        return None
    if data is None:
        log("note: no --data: no calibration and no operating point (the edge labels by argmax, uncalibrated); "
            "give --data to choose them on its validation split")
        return None
    logits, labels, skipped = calibrate.validation_logits(model, data, ck, cfg.calibration_images, log)
    reason = calibrate.too_few(labels, ck.classes)
    if reason:
        log(f"warning: no calibration and no operating point (the edge labels by argmax, uncalibrated): {reason}")
        return None
    section = calibrate.operating_point_section(logits, labels, ck.classes, cfg.operating_point, cfg.positive,
                                                f"val split of {data}", skipped, cfg.confidence, cfg.unsupported)
    log(calibrate.summary_line(section))
    return section


def multilabel_validation(ck, data: str | None, index: IndexArgs | None, variants: VariantConfig | None,
                          optional_variants: bool, log, positive: str | None = None) -> tuple:
    """(multi, data, variants): for a multi-label checkpoint multi is (its validation cases, where they came from),
    both None when no index is known, and its index replaces ``data`` (the parity inputs, the thresholds and the
    variants' gate come from its val split, int8's calibration from its training split); for a single-label one
    (None, data, variants). Refuses what a multi-label export cannot do, before the expensive steps.

    Raises:
        UsageError: an index given for a single-label checkpoint; --positive asked for a multi-label one, or fast
        variants (not ``optional_variants``) without the validation index or the training images they need.
        ExportError: fast variants whose engines are not installed here.
    """
    check_variants(variants)
    if not is_multilabel(ck.payload):
        if index is not None and (index.labels is not None or index.images is not None):
            raise UsageError("--labels/--images/--labels-format validate a multi-label checkpoint; this one is "
                             f"single-label ({', '.join(ck.classes)}): give its class folders with --data")
        if variants is not None and data is None and optional_variants:  # --variants auto without --data: none
            return None, data, None
        check_variant_data(variants, data)
        return None, data, variants
    if positive is not None:
        raise UsageError(f"--positive {positive!r}: a multi-label model has no positive class: each finding gets "
                         "its own threshold")
    src = findings.index_source(ck["train_config"], findings.index_of_data(data) if data else index, ck.data_source)
    cases = None if src is None else findings.validation_split(src, ck.classes, log,
                                                               findings.run_train_patients(ck.path))
    return (cases, src), (None if src is None else src.labels), multilabel_variants(variants, cases, optional_variants,
                                                                                   log)


def multilabel_variants(variants: VariantConfig | None, cases, optional: bool, log) -> VariantConfig | None:
    """The variants a multi-label export can make: none without validation cases; no int8 without training images
    (``optional``, from ``--variants auto``: said and left out; else a UsageError)."""
    if variants is None:
        return None
    if cases is None:
        if not optional:
            raise UsageError("--variants: a multi-label model's variants are gated on its validation index and none is "
                             "known: give --labels INDEX.csv (or --variants none)")
        log("note: no fast variants: no validation index to gate them on")
        return None
    if "int8" in variants.variants and cases.train is None:
        why = f"int8 is calibrated on training images and {cases.source} gives none"
        if not optional:
            raise UsageError(f"--variants int8: {why}: give an index with a split column naming train rows, or "
                             "--variants bf16")
        log(f"note: no int8 variant: {why}")
        rest = tuple(v for v in variants.variants if v != "int8")
        return replace(variants, variants=rest) if rest else None
    return variants


def multilabel_manifest(manifest: dict) -> dict:
    """A manifest of a multi-label model (``edge.findings``): its task, and its output read by sigmoids."""
    model = {**manifest["model"], "output": "logits, one per finding (apply a sigmoid to each for its probability)"}
    return {"task": MULTILABEL, **manifest, "model": model}


def check_variants(variants: VariantConfig | None) -> None:
    """Before the expensive steps: fast variants need the engines that run them installed here."""
    if variants is not None:
        pairs_here(variants.variants)


def check_variant_data(variants: VariantConfig | None, data: str | None) -> None:
    """A single-label model's fast variants need --data (a multi-label one's: its index, ``multilabel_variants``)."""
    if variants is not None and data is None:
        raise UsageError("fast variants need --data: int8 is calibrated on its train split, every variant gated on "
                         "its val split (or --variants none)")


def write_verified(out: Path, onnx_bytes: bytes, manifest: dict, overwrite: bool, extra: dict, fast: tuple) -> Path:
    """The bundle written atomically; with fast variants (``fast``: data, VariantConfig or None, log) it is staged,
    given its gated variants, then renamed into place: a failure leaves no bundle and the old one untouched."""
    data, variants, log = fast
    if variants is None:
        return write_bundle(out, onnx_bytes, manifest, overwrite=overwrite, extra_files=extra)
    with atomic_dir(out, replace=overwrite) as tmp:
        staged = write_bundle(tmp / "staged", onnx_bytes, manifest, extra_files=extra)
        add_variants(staged, data, variants, log)
        for f in staged.iterdir():
            os.replace(f, tmp / f.name)
        staged.rmdir()
    return out


def export_bundle(checkpoint: str, out: str, data: str | None = None, cfg: ExportConfig = ExportConfig(),
                  overwrite: bool = False, log=print, variants: VariantConfig | None = None,
                  index: IndexArgs | None = None, optional_variants: bool = False) -> dict:
    """Export a training checkpoint to a verified bundle.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` or a run folder (its best.pt).
        out: the bundle folder to write; ``overwrite``: replace an existing bundle there.
        data: optional data folder; its val images are the parity inputs.
        cfg: export settings and tolerances. log: where progress lines go.
        variants: fast variants to make and gate with ``data`` (``export.variants``); None: fp32 only.
        index: a multi-label checkpoint's validation index when not the run's own (``export.findings``; or ``data``).
        optional_variants: variants a multi-label checkpoint cannot have are left out and said, not refused.

    Returns:
        the manifest written.

    Raises:
        CheckpointError, ExportError, ParityError, BundleError: nothing is written then.
    """
    from medge.train.checkpoint import load_checkpoint, model_from_checkpoint

    out_path = Path(out)
    check_target(out_path, overwrite)
    check_operating_point(cfg)
    timer = StepTimer(log)
    ck = timer.run("load_checkpoint", load_checkpoint, checkpoint)
    check_operating_point(cfg, ck.classes)
    multi, data, variants = multilabel_validation(ck, data, index, variants, optional_variants, log, cfg.positive)
    log(f"exporting {ck.arch} ({len(ck.classes)} classes, input {ck.preprocess.channels}x{ck.preprocess.size}x"
        f"{ck.preprocess.size}, epoch {ck.epoch}) from {checkpoint}")
    model = model_from_checkpoint(ck)
    inputs, names, skipped = timer.run("parity_inputs", parity_inputs, None if multi else data, ck.preprocess, ck.classes,
                                       cfg.max_images, multi and multi[0] and multi[0].split, calibrate.run_split(ck))
    for _, reason in skipped:
        log(f"parity: skipping unreadable image: {reason}")
    reference, cam = timer.run("pytorch_reference", pytorch_reference, model, ck.arch, inputs)  # cam None: occlusion
    log(f"heatmaps by {'CAM (feature map and head exported)' if cam else 'occlusion'}")
    candidate = export_verified_onnx(model, ck, inputs, reference, cfg, str(out_path / MODEL_FILE), timer, log, cam)
    report = parity_gate(reference, candidate.logits, names, ck.classes, cfg.tolerance, log)
    if cam is not None:
        report["features"] = feature_gate(cam, candidate, cfg.feature_rtol, log)
    golden = golden_section(model, candidate, ck, cfg, cam)
    chw = (ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size)
    timings = timer.run("engine_timings", engine_timings, candidate, inputs, chw, len(ck.classes), cfg.timing_rounds)
    manifest = build_manifest(ManifestInputs(ck, checkpoint, candidate, cfg, report, golden, data, skipped, timer.steps,
                                             timings, cam))
    manifest = manifest if multi is None else multilabel_manifest(manifest)
    op = timer.run("operating_point", operating_point, model, ck, data, cfg, log, multi)
    if op is not None:
        manifest[SECTION] = op
    for note in data_profile_notes(manifest["data_profile"]):
        log(f"note: {note}")
    extra = {CAM_HEAD_FILE: cam.head_bytes} if cam is not None else {}
    fast = (data if multi is None else multi[0], variants, log)  # a multi-label bundle's variants: on its cases
    written = write_verified(out_path, candidate.onnx_bytes, manifest, overwrite, extra, fast)
    manifest = read_manifest(written)
    log(f"bundle written: {written} (model.onnx {len(candidate.onnx_bytes) / 1e6:.1f} MB, "
        f"sha256 {manifest['model']['sha256'][:16]}...)")
    return manifest
