"""Checkpoint -> opset-12 ONNX -> onnxsim -> onnx.checker -> cv2.dnn -> parity gate -> bundle.

Each step is a function that returns a path, bytes or a report and raises
ExportError on failure; ``export_bundle`` reads as the list of them, times each
(``StepTimer``), and writes the bundle only when every step passed.

Heatmaps (issue 16, ``export.explain``): a CAM architecture is exported with a second
output, its feature map, which the parity gate and the golden self-test cover too, and
its head goes into the bundle; other architectures are marked for occlusion.
"""
from __future__ import annotations

import datetime
import json
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medge.edge.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    check_writable_parent,
    golden_inputs,
    read_manifest,
    write_bundle,
)
from medge.edge.errors import BundleError, ExportError, MedgeError, ParityError
from medge.edge.explain import CAM_HEAD_FILE, FEATURES_OUTPUT
from medge.edge.image import read_image
from medge.edge.preprocess import PreprocessConfig, preprocess
from medge.edge.runtime import LOGITS_OUTPUT, forward_batches, forward_outputs_batches, load_net
from medge.export.explain import CamExport, compare_features, explain_section, prepare_cam, torch_outputs
from medge.export.parity import Tolerance, compare, summary_line

INPUT_NAME, OUTPUT_NAME = "input", LOGITS_OUTPUT


@dataclass(frozen=True)
class ExportConfig:
    """How a checkpoint becomes a bundle; saved in the manifest."""

    opset: int = 12  # ONNX default-domain opset; cv2.dnn's best-supported
    simplify: bool = True  # run onnxsim; its failed check is an error
    dynamic_batch: bool = True  # batch axis dynamic when cv2.dnn runs batches > 1 correctly on it
    engine: str = "auto"  # cv2.dnn engine used for verification, and by the edge
    tolerance: Tolerance = Tolerance()  # the parity gate (PyTorch vs cv2.dnn)
    max_images: int = 64  # parity inputs taken from --data (val split), or synthetic ones
    parity_batch: int = 8  # batch size of the cv2.dnn parity run (checks batched inference)
    golden_count: int = 4  # self-test inputs stored (as a seed) with expected outputs
    golden_seed: int = 0
    golden_tolerance: float = 1e-3  # the edge's self-test tolerance on |logit difference| (and relative, on CAM)
    feature_rtol: float = 1e-3  # heatmap bundles: max |delta feature map| / max |feature|, PyTorch vs cv2.dnn


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


def parity_inputs(data: str | None, pcfg: PreprocessConfig, classes: list[str], count: int):
    """Inputs for the parity gate: --data's val images through edge.preprocess, else synthetic ones.

    Returns:
        (float32 (N, C, H, W), names, skipped [(path, reason)]).
    """
    if data is None:
        from medge.train.synth import SynthConfig, make_image

        scfg = SynthConfig(size=256, seed=12345)
        imgs = [np.round(make_image(i, i % 2 == 1, scfg) * 255).astype(np.uint8) for i in range(count)]
        return np.stack([preprocess(im, pcfg) for im in imgs]), [f"synthetic:{i}" for i in range(count)], []
    from medge.train.data import discover

    data_classes, splits = discover(data)
    if data_classes != classes:
        raise ExportError(f"{data}: classes {data_classes} differ from the checkpoint's {classes}")
    split = splits["val"]
    pick = np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int))
    tensors, names, skipped = [], [], []
    for i in pick:
        try:
            tensors.append(preprocess(read_image(split.paths[i]), pcfg))
            names.append(split.paths[i])
        except MedgeError as e:
            skipped.append((split.paths[i], str(e)))
    if not tensors:
        raise ExportError(f"{data}: no readable validation image for the parity check")
    return np.stack(tensors), names, skipped


class StepTimer:
    """Runs the export's steps and records how long each took (saved in the manifest)."""

    def __init__(self):
        self.steps: list[dict] = []

    def run(self, name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        self.steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 3)})
        return result


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing bundle without ``overwrite``, and any other existing folder; prove the parent writable."""
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: exists already (use --overwrite to replace the bundle in it)")
    if out.exists() and not (out / MANIFEST_FILE).is_file():
        raise BundleError(f"{out}: exists and is not a medge bundle; refusing to replace it")
    check_writable_parent(out)  # fail before the expensive steps


@dataclass(frozen=True)
class OnnxCandidate:
    """An exported, simplified, checked model and what cv2.dnn made of it."""

    onnx_bytes: bytes
    dynamic: bool  # batch axis dynamic (False after the fallback to a fixed batch of 1)
    logits: np.ndarray  # cv2.dnn's logits on the parity inputs
    features: np.ndarray | None  # cv2.dnn's feature maps on them (heatmap bundles with CAM)
    net: object  # the cv2.dnn.Net that produced them
    simplify_stats: dict | None
    batch_note: str | None  # why the batch axis is fixed, when it fell back


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
    """Export and run the model in cv2.dnn on the parity inputs; a dynamic batch axis that cv2.dnn
    runs wrongly (or not at all) for batches > 1 falls back to a fixed batch of 1, said in the manifest.
    With ``cam``, its wrapper (logits and feature map) is what is exported."""
    chw = (ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size)
    k = len(ck.classes)
    outputs = (OUTPUT_NAME,) if cam is None else (OUTPUT_NAME, FEATURES_OUTPUT)
    with tempfile.TemporaryDirectory() as work:
        dynamic, note = cfg.dynamic_batch, None
        while True:
            onnx_bytes, stats = build_onnx(model if cam is None else cam.module, ck, chw, cfg, dynamic, Path(work), timer,
                                           outputs)
            net = timer.run("cv2.dnn.load", load_net, onnx_bytes, cfg.engine, "cpu", name)
            try:
                logits, features = timer.run("cv2.dnn.forward", cv2_outputs, net, inputs, chw, k,
                                             cfg.parity_batch if dynamic else 1, cam)
            except MedgeError as e:
                if not dynamic:
                    raise ExportError(f"cv2.dnn cannot run the exported model: {e}") from None
                logits = features = None
            batch_ok = logits is not None and np.abs(logits - reference).max() <= cfg.tolerance.max_abs_logit and (
                cam is None or compare_features(cam.features, features, cfg.feature_rtol)["passed"])
            if not dynamic or batch_ok:
                return OnnxCandidate(onnx_bytes, dynamic, logits, features, net, stats, note)
            note = ("cv2.dnn gave wrong results or failed for batches > 1 on the dynamic batch axis; "
                    "exported with a fixed batch of 1")
            log(f"warning: {note}")
            dynamic = False


def parity_gate(reference: np.ndarray, candidate: np.ndarray, names: list[str], classes: list[str],
                tol: Tolerance, log) -> dict:
    """compare() PyTorch with cv2.dnn; ParityError (and no bundle) beyond the tolerance."""
    report = compare(reference, candidate, names, classes, tol)
    log(f"parity: {summary_line(report)}")
    if not report["passed"]:
        worst = sorted(report["label_flips"], key=lambda f: -f["max_abs_logit"])[:5]
        raise ParityError(f"parity gate failed, no bundle written: {'; '.join(report['failures'])}"
                          + (f"; flips: {worst}" if worst else ""))
    return report


def feature_gate(cam: CamExport, candidate: OnnxCandidate, rtol: float, log) -> dict:
    """PyTorch vs cv2.dnn feature maps (the heatmaps' input); ParityError (and no bundle) beyond ``rtol``."""
    report = compare_features(cam.features, candidate.features, rtol)
    log(f"parity: feature map {report['shape']}: max |delta| {report['max_abs']:.2e} of max |feature| "
        f"{report['reference_max_abs']:.3g} (relative {report['max_rel']:.2e}) -> {'PASS' if report['passed'] else 'FAIL'}")
    if not report["passed"]:
        raise ParityError(f"parity gate failed, no bundle written: feature map max relative |delta| "
                          f"{report['max_rel']:.3g} > {rtol:g}")
    return report


def golden_section(model, candidate: OnnxCandidate, ck, cfg: ExportConfig, cam: CamExport | None = None) -> dict:
    """The manifest's self-test: a seed for the inputs, PyTorch's logits on them (and, for CAM, every class's
    raw map at the feature map's resolution), the tolerance."""
    chw = (ck.preprocess.channels, ck.preprocess.size, ck.preprocess.size)
    x = golden_inputs(cfg.golden_seed, cfg.golden_count, ck.preprocess)
    expected, features = torch_outputs(cam.module, x) if cam is not None else (torch_logits(model, x), None)
    here, here_features = cv2_outputs(candidate.net, x, chw, len(ck.classes), 1, cam)
    golden = {"seed": cfg.golden_seed, "count": cfg.golden_count, "generator": "medge.edge.bundle.golden_inputs",
              "expected_logits": expected.tolist(), "tolerance": cfg.golden_tolerance,
              "export_max_abs_logit": float(np.abs(expected - here).max())}
    if cam is not None:
        expected_cam = cam.raw_cams(features)
        golden["expected_cam"] = expected_cam.tolist()
        golden["export_max_rel_cam"] = float(np.abs(expected_cam - cam.raw_cams(here_features)).max()
                                             / max(1.0, float(np.abs(expected_cam).max())))
    return golden


def build_manifest(ck, checkpoint: str, candidate: OnnxCandidate, cfg: ExportConfig, report: dict, golden: dict,
                   data: str | None, skipped: list, steps: list[dict], cam: CamExport | None = None) -> dict:
    """Everything the edge needs to know about the model, as model.json."""
    import cv2
    import onnx
    import onnxsim
    import torch

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
        "runtime": {"engine": cfg.engine, "backend": "cpu"},
        "golden": golden,
        "parity": {**report, "inputs": "val images of " + data if data else "synthetic images",
                   "skipped": [{"path": p, "reason": r} for p, r in skipped]},
        "training": {"epoch": ck.epoch, "metrics": ck.metrics, "train_config": ck["train_config"],
                     "checkpoint": str(checkpoint)},
        "export": {"config": asdict(cfg), "simplified": cfg.simplify, "simplify_stats": candidate.simplify_stats,
                   "steps": steps},
        "versions": {**ck.versions, "export_torch": str(torch.__version__), "onnx": onnx.__version__,
                     "onnxsim": getattr(onnxsim, "__version__", "unknown"), "opencv": cv2.__version__},
    }


def export_bundle(checkpoint: str, out: str, data: str | None = None, cfg: ExportConfig = ExportConfig(),
                  overwrite: bool = False, log=print) -> dict:
    """Export a training checkpoint to a verified bundle.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` or a run folder (its best.pt).
        out: the bundle folder to write.
        data: optional data folder; its val images are the parity inputs.
        cfg: export settings and tolerances.
        overwrite: replace an existing bundle at ``out``.
        log: where progress lines go.

    Returns:
        the manifest written.

    Raises:
        CheckpointError, ExportError, ParityError, BundleError: nothing is written then.
    """
    from medge.train.checkpoint import load_checkpoint, model_from_checkpoint

    out_path = Path(out)
    check_target(out_path, overwrite)
    timer = StepTimer()
    ck = timer.run("load_checkpoint", load_checkpoint, checkpoint)
    model = model_from_checkpoint(ck)
    inputs, names, skipped = timer.run("parity_inputs", parity_inputs, data, ck.preprocess, ck.classes, cfg.max_images)
    for _, reason in skipped:
        log(f"parity: skipping unreadable image: {reason}")
    reference, cam = timer.run("pytorch_reference", pytorch_reference, model, ck.arch, inputs)  # cam None: occlusion
    log(f"exporting {ck.arch} ({len(ck.classes)} classes, input {inputs.shape[1:]}, heatmaps by "
        f"{'CAM' if cam else 'occlusion'}) from {checkpoint}")
    candidate = export_verified_onnx(model, ck, inputs, reference, cfg, str(out_path / MODEL_FILE), timer, log, cam)
    report = parity_gate(reference, candidate.logits, names, ck.classes, cfg.tolerance, log)
    if cam is not None:
        report["features"] = feature_gate(cam, candidate, cfg.feature_rtol, log)
    golden = golden_section(model, candidate, ck, cfg, cam)
    manifest = build_manifest(ck, checkpoint, candidate, cfg, report, golden, data, skipped, timer.steps, cam)
    extra = {CAM_HEAD_FILE: cam.head_bytes} if cam is not None else {}
    written = write_bundle(out_path, candidate.onnx_bytes, manifest, overwrite=overwrite, extra_files=extra)
    manifest = read_manifest(written)
    log(f"bundle written: {written} (model.onnx {len(candidate.onnx_bytes) / 1e6:.1f} MB, "
        f"sha256 {manifest['model']['sha256'][:16]}...)")
    return manifest
