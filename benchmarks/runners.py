"""Runners: one per runtime, each with a ``name`` and ``infer(blob) -> logits``.

cv2.dnn needs only the edge install; PyTorch needs the ``train`` extra and a
checkpoint; onnxruntime is optional (``bench`` extra) and skipped when absent.
"""
from __future__ import annotations

import numpy as np

from medge.edge.model import Model
from medge.edge.runtime.bundle import LOGITS_OUTPUT
from medge.edge.runtime.engines import ENGINES, engines_for


class DnnRunner:
    """An edge engine through the edge runtime (the bundle's engine and backend, all guards on): cv2.dnn fp32 by
    default, another engine (``engine="onnxruntime"``, ``"openvino"``) and a fast variant by name."""

    def __init__(self, bundle: str, backend: str = "cpu", engine: str | None = None, variant: str = "fp32"):
        self.model = (Model.load(bundle, backend=backend, engine=engine, variant=variant) if engine
                      else load_opencv_model(bundle, backend))
        self.name = runner_name(self.model.engine, self.model.variant)
        if backend != "cpu":
            self.name += f"-{backend}"

    def set_threads(self, n: int) -> None:
        import cv2

        cv2.setNumThreads(n)

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return self.model.infer(blob)


def runner_name(engine: str, variant: str) -> str:
    """cv2.dnn for OpenCV's engines in fp32 (the reference), else edge-ENGINE[-VARIANT]: edge-openvino-int8."""
    if ENGINES[engine].extra is None and variant == "fp32":
        return "cv2.dnn"
    return f"edge-{engine}" + ("" if variant == "fp32" else f"-{variant}")


def load_opencv_model(bundle: str, backend: str = "cpu") -> Model:
    """The bundle in fp32 on the engine ``auto`` picks among OpenCV's own (never an extra's, even where ``medge
    check`` recorded onnxruntime as the fastest here, nor a fast variant): the "cv2.dnn" of every comparison."""
    model = Model.load(bundle, backend=backend, variant="fp32")
    if ENGINES[model.engine].extra is not None:
        model = Model.load(bundle, backend=backend, engine=engines_for(backend, extras=False)[0], variant="fp32")
    return model


def offered_pairs(model: Model) -> list[tuple[str, str]]:
    """(engine, variant) pairs beyond OpenCV's fp32 that this box can run for the bundle: the extras' engines in
    fp32, and every variant on the installed engines whose gate passed (``edge.runtime.variants``)."""
    pairs = [(e, "fp32") for e in engines_for(model.backend) if ENGINES[e].extra is not None]
    for name, v in model.bundle.variants.items():
        pairs += [(e, name) for e in v.offered if e in ENGINES]
    return pairs


def flipped_decisions(reference: Model, model: Model, a: np.ndarray, b: np.ndarray, names: list[str]) -> list[str]:
    """The decisions that differ between logits ``a`` (``reference``'s, at its operating point) and ``b`` (``model``'s,
    at its own: a fast variant's where its gate chose one): the names of the images for a single-label bundle; for a
    multi-label one each (image, finding) whose presence differs, as "image (finding)" (undecided findings never)."""
    from medge.edge.decision import label_indices

    if reference.findings is not None:
        rules = reference.findings
        da, db = (rules.decisions(rules.probabilities(x)) for x in (a, b))
        return [f"{n} ({f})" for n, x, y in zip(names, da, db, strict=True) for f in rules.names
                if x[f] is not None and x[f] != y[f]]
    la, lb = label_indices(reference.operating_point, a), label_indices(model.operating_point, b)
    return [n for n, x, y in zip(names, la, lb, strict=True) if x != y]


def probability_change(reference: Model, model: Model, a: np.ndarray, b: np.ndarray) -> float:
    """The largest change of a probability records show between logits ``a`` (``reference``'s) and ``b`` (``model``'s):
    calibrated at each one's operating point, the findings' for a multi-label bundle, else the softmax."""
    from medge.edge.numeric import softmax

    if reference.findings is not None:
        pa, pb = reference.findings.probabilities(a), reference.findings.probabilities(b)
    elif reference.operating_point is not None:
        pa = reference.operating_point.probabilities(a)
        pb = (model.operating_point or reference.operating_point).probabilities(b)
    else:
        pa, pb = softmax(a), softmax(b)
    return float(np.abs(np.asarray(pa, np.float64) - pb).max())


class TorchRunner:
    """PyTorch eager in inference mode, on the CPU or a CUDA device."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        import torch

        from medge.train.checkpoint import load_checkpoint, model_from_checkpoint

        self.torch = torch
        self.device = torch.device(device)
        self.net = model_from_checkpoint(load_checkpoint(checkpoint)).to(self.device).eval()
        self.name = "pytorch" if device == "cpu" else f"pytorch-{device}"

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def infer(self, blob: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(blob).to(self.device))
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()  # the clock is read after this returns
            return out.float().cpu().numpy()


class OrtRunner:
    """onnxruntime's CPU execution provider on the bundle's model.onnx."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        import onnxruntime as ort

        self.ort, self.onnx_bytes = ort, onnx_bytes
        self.name = "onnxruntime"
        self.set_threads(threads or 0)

    def set_threads(self, n: int) -> None:
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        self.session = self.ort.InferenceSession(self.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        # A heatmap bundle has a feature map beside the logits: ask for the logits by name.
        self.outputs = [LOGITS_OUTPUT] if LOGITS_OUTPUT in outputs else outputs[:1]

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run(self.outputs, {self.input_name: blob})[0]


def optional_ort(onnx_bytes: bytes):
    """An OrtRunner, or None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return OrtRunner(onnx_bytes)
