"""The edge model: a verified bundle, run with cv2.dnn on numpy + OpenCV only.

Usage:
    from medge.edge.model import Model
    model = Model.load("bundles/xray")           # checks hash and golden self-test, picks the engine
    for p in model.predict(["a.png", "b.dcm"]):  # files, arrays, or a mix
        print(p.path, p.label, p.probabilities, p.warnings, p.error)
    if model.explain_method:                     # "cam" / "occlusion"; None for bundles without heatmaps
        heatmap = model.explain("a.png").heatmap   # float32 in [0, 1] at the model's input size

Thread safety: a ``cv2.dnn.Net`` is never used by two threads at once. Each thread
that calls ``predict`` gets its own net, built on first use from the model bytes
whose SHA-256 was verified at load (OpenCV crashes or returns wrong outputs when
threads share one); the pipeline's forward passes take nets from a pool of
the model's, one each. CLAHE objects are per thread too (``edge.preprocess``).
So one ``Model`` may be used from many threads at once.

Engine: with ``engine="auto"`` (the default) ``Model.load`` runs the fastest engine
that passes the self-test on this box (``edge.engine_choice``); ``model.engine``
names it and ``model.engine_choice`` says why. Where batches > 1 fail or differ
(OpenCV 4.5.5/4.6 with squeeze-excitation models) the model runs one image per pass.

Throughput: ``predict`` runs a pipeline (``edge.pipeline``): one thread per core,
each reading and preprocessing the next file (OpenCV releases the GIL) or running a
single-threaded batched forward pass on a net of its own, whichever is next; the
thread budget and why are in ``edge.budget`` (``model.budget``). Results come back
in input order.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from medge.edge.budget import LOAD, StageCosts, ThreadBudget, budget_cores, lone_threads, opencv_threads, plan_budget
from medge.edge.bundle import MANIFEST_FILE, MODEL_FILE, golden_inputs, read_manifest, sha256_bytes
from medge.edge.engine_choice import EngineChoice, choose_engine
from medge.edge.errors import (
    BundleError,
    ConfigError,
    InferenceError,
    MedgeError,
    ModelIntegrityError,
    SelfTestError,
    UsageError,
)
from medge.edge.explain import (
    CamExplainer,
    Explainer,
    Explanation,
    OcclusionExplainer,
    default_occlusion,
    load_explainer,
)
from medge.edge.formats import DEFAULT_MAX_PIXELS
from medge.edge.image import EncodedFile, array_info, decode_image, load_image, to_gray
from medge.edge.pipeline import Pipeline
from medge.edge.preprocess import PreprocessConfig, preprocess, preprocess_stages
from medge.edge.profile import check_input, image_stats
from medge.edge.runtime import (
    AUTO,
    LOGITS_OUTPUT,
    check_choices,
    forward_batches,
    forward_outputs_batches,
    load_net,
    softmax,
)


@dataclass
class Prediction:
    """One input's result: a label and probabilities, or an error; never both."""

    path: str | None  # None for arrays; a non-UTF-8 name holds surrogate escapes (edge.paths)
    label: str | None = None
    probabilities: dict[str, float] | None = None
    logits: list[float] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # read, preprocess, inference (batch time / batch size)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # what is odd about the input (edge.profile); empty when fine
    input: dict | None = None  # ImageInfo.to_dict(): format, size, bits, photometric, modality, decoder, ...
    unexpected: bool = False  # the error is a bug in medge (exit status 3), not a problem of the input
    explanation: Explanation | None = field(default=None, repr=False)  # predict(..., heatmaps=True) only

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self, model_sha256: str) -> dict:
        """The one record format of medge predict, watch and serve (JSON-ready)."""
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities,
                "model_sha256": model_sha256, "timings_ms": self.timings_ms, "error": self.error,
                "warnings": list(self.warnings), "input": self.input}


class Model:
    """A loaded, verified bundle. Build with ``Model.load``."""

    def __init__(self, manifest: dict, onnx_bytes: bytes, bundle_dir: Path, engine: str, backend: str):
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.classes: list[str] = list(manifest["classes"])
        self.preprocess_config = PreprocessConfig.from_dict(manifest["preprocess"])
        self.chw = tuple(int(v) for v in manifest["model"]["input_shape"][1:])
        self.dynamic_batch = bool(manifest["model"].get("dynamic_batch", False))
        self.sha256 = manifest["model"]["sha256"]
        self.data_profile: dict | None = manifest.get("data_profile")  # what training saw (edge.profile); may be absent
        self.engine, self.backend = engine, backend  # engine: the one running (Model.load resolves auto)
        self.engine_choice: EngineChoice | None = None  # which engine, why, and what was tried
        self.batch_note: str | None = None  # why batches > 1 are off here, when the self-test turned them off
        self._onnx_bytes = onnx_bytes
        self._local = threading.local()
        self.self_test_max_abs: float | None = None
        self._explainer: Explainer | None = None  # set by open() from the manifest's "explain" section
        self.budget: ThreadBudget | None = None  # the thread budget of the latest pipelined run (edge.budget)
        self._stream_nets: list = []  # nets of the pipeline's forward passes, kept between runs
        self._stream_lock = threading.Lock()

    @property
    def explain_method(self) -> str | None:
        """The heatmap method this bundle supports: "cam", "occlusion", or None (exported before heatmaps)."""
        return self._explainer.method if self._explainer else None

    @property
    def onnx_bytes(self) -> bytes:
        """The verified bytes of model.onnx (their SHA-256 is ``self.sha256``), for other runtimes."""
        return self._onnx_bytes

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, backend: str = "cpu", engine: str | None = None,
             self_test: bool = True) -> "Model":
        """Load a bundle and prove it is the model that was exported.

        Args:
            bundle_dir: folder with model.onnx and model.json.
            backend: a key of ``edge.runtime.BACKENDS`` (default OpenCV on the CPU).
            engine: ``auto`` (the fastest engine that passes the self-test here) or
                one of ``edge.runtime.ENGINES``; default: the manifest's (``auto``
                unless the export named one).
            self_test: run the manifest's golden self-test (on by default; only
                benchmarks of raw loading turn it off).

        Raises:
            BundleError: missing folder/manifest/model, unknown format version, an
                engine the manifest asks for that this OpenCV lacks, an OpenCV too
                old or unable to load the model. ModelIntegrityError: model.onnx's
                SHA-256 differs from the manifest's. SelfTestError: this machine's
                outputs on the golden inputs differ beyond tolerance.
                ConfigError: an engine or backend this OpenCV or box does not have.
        """
        model = cls.open(bundle_dir, backend, engine)
        model.engine_choice, net = choose_engine(model, model.engine, self_test)
        model.engine, model._local.net = model.engine_choice.engine, net
        trial = model.engine_choice.trials[0]
        model.self_test_max_abs = trial.self_test_max_abs
        if trial.batched is False:
            model.dynamic_batch = False
            model.batch_note = (f"OpenCV {cv2.__version__} ({model.engine} engine) fails or differs on batches > 1 "
                                "of this model: one image per forward pass here")
        return model

    @classmethod
    def open(cls, bundle_dir: str | os.PathLike, backend: str = "cpu", engine: str | None = None) -> "Model":
        """Read a bundle's manifest and verify model.onnx's SHA-256; no net is loaded and ``engine`` may still be
        ``auto`` (``load`` goes on to choose the engine and run the self-test; ``medge check`` tries each engine).

        Raises:
            the errors of ``load`` that come before any engine is involved.
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
        model = cls(manifest, data, d, requested, backend)
        model._explainer = load_explainer(manifest, d)  # checks the CAM head's SHA-256
        return model

    def load_net(self, engine: str):
        """A new net of the verified model bytes with ``engine`` on this model's backend (for one thread)."""
        return load_net(self._onnx_bytes, engine, self.backend, str(self.bundle_dir / MODEL_FILE),
                        self.manifest.get("versions", {}).get("opencv"))

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self.load_net(self.engine)
        return net

    def golden_inputs(self) -> np.ndarray:
        """The manifest's self-test inputs, regenerated here (N, C, H, W)."""
        g = self.manifest["golden"]
        return golden_inputs(int(g["seed"]), int(g["count"]), self.preprocess_config)

    def run_self_test(self) -> float:
        """Compare this machine's logits on the golden inputs with the exported ones (this thread's net)."""
        self.self_test_max_abs = self.self_test(self._net(), len(self.golden_inputs()) if self.dynamic_batch else 1)
        return self.self_test_max_abs

    def self_test(self, net, batch_size: int, engine: str | None = None) -> float:
        """Max |logit difference| between ``net``'s outputs on the golden inputs (``batch_size`` per pass)
        and the exported ones; ``engine`` names the net's engine in errors (default: ``self.engine``).

        Raises:
            SelfTestError: beyond the manifest's tolerance. InferenceError: a forward pass failed.
        """
        g = self.manifest["golden"]
        expected = np.asarray(g["expected_logits"], np.float32)
        cam = self._explainer if isinstance(self._explainer, CamExplainer) and "expected_cam" in g else None
        features = None
        if cam is None:
            got = forward_batches(net, self.golden_inputs(), self.chw, len(self.classes), batch_size)
        else:  # one pass for both outputs: the feature map is tested with the logits (after them, below)
            outs = forward_outputs_batches(net, self.golden_inputs(), self.chw, (LOGITS_OUTPUT, cam.output), batch_size)
            got, features = outs[LOGITS_OUTPUT].reshape(len(outs[LOGITS_OUTPUT]), -1), outs[cam.output]
        if got.shape != expected.shape:
            raise SelfTestError(f"{self.bundle_dir}: the manifest's golden logits have shape {expected.shape}, "
                                f"the model gives {got.shape}: a damaged manifest")
        worst = float(np.abs(got - expected).max())
        if not worst <= float(g["tolerance"]):
            raise SelfTestError(
                f"{self.bundle_dir}: golden self-test failed: max |logit difference| {worst:.3g} > {g['tolerance']:g} "
                f"(OpenCV {cv2.__version__}, {engine or self.engine} engine here; the bundle was verified with OpenCV "
                f"{self.manifest.get('versions', {}).get('opencv', '?')}): do not use this model on this machine")
        if cam is not None:
            self._self_test_cam(cam, features, g, engine)
        return worst

    def _self_test_cam(self, cam: CamExplainer, features: np.ndarray, g: dict, engine: str | None) -> None:
        expected = np.asarray(g["expected_cam"], np.float32)
        got = np.stack([cam.cams(features, [k] * len(features)) for k in range(len(self.classes))], axis=1)
        worst = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max())) \
            if got.shape == expected.shape else float("inf")
        if not worst <= float(g["tolerance"]):
            raise SelfTestError(
                f"{self.bundle_dir}: golden self-test of the heatmaps failed: max relative |CAM difference| {worst:.3g} > "
                f"{g['tolerance']:g} (OpenCV {cv2.__version__}, {engine or self.engine} engine here): "
                "do not use this model's heatmaps on this machine")

    def _run(self, blob: np.ndarray, names: tuple[str, ...], net=None) -> dict[str, np.ndarray]:
        """Named outputs for a non-empty blob, in chunks the model accepts (the heatmaps' forward pass;
        ``net``: default this thread's)."""
        step = max(1, len(blob)) if self.dynamic_batch else 1
        outs = forward_outputs_batches(net if net is not None else self._net(), blob, self.chw, names, step)
        if LOGITS_OUTPUT in outs:
            outs[LOGITS_OUTPUT] = outs[LOGITS_OUTPUT].reshape(len(blob), -1)
            if outs[LOGITS_OUTPUT].shape[1] != len(self.classes):
                raise InferenceError(f"model returned {outs[LOGITS_OUTPUT].shape[1]} logits per image, "
                                     f"expected {len(self.classes)}")
        return outs

    def require_heatmaps(self) -> Explainer:
        """The bundle's explainer; BundleError (exit 2) when it has none (exported before heatmaps)."""
        if self._explainer is None:
            raise BundleError(f"{self.bundle_dir}: this bundle has no heatmaps (its manifest has no 'explain' section: "
                              "it was exported before medge had them); export it again to get heatmaps")
        return self._explainer

    def _explainer_for(self, method: str | None) -> Explainer:
        """The bundle's explainer (None), or occlusion asked for by name: it needs only the logits, so any bundle has it."""
        if method is None or method == self.explain_method:
            return self.require_heatmaps()
        if method == "occlusion":
            size = self.chw[1]
            return OcclusionExplainer(size, **default_occlusion(size))
        raise UsageError(f"{self.bundle_dir}: heatmap method {method!r} is not available for this bundle "
                         f"(its own: {self.explain_method}; occlusion works with any bundle)")

    def explain_blob(self, blob: np.ndarray, class_indices=None, method: str | None = None
                     ) -> tuple[np.ndarray, list[Explanation]]:
        """Logits and one Explanation per image of a preprocessed (N, C, H, W) float32 blob.

        Args:
            blob: as ``edge.preprocess`` makes it with this bundle's PreprocessConfig.
            class_indices: the class to explain per image (None: each image's predicted class).
            method: None = the bundle's (``explain_method``); "occlusion" works with any bundle.

        Raises:
            BundleError: the bundle has no heatmaps. UsageError: a bad class index or method.
            InferenceError: a bad blob or model output, or a CAM head that does not match the model.
        """
        return self._explainer_for(method).explain(self._run, blob, class_indices, self.preprocess_config)

    def explain(self, path_or_array, class_index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                method: str | None = None) -> Explanation:
        """Where the model looked: a heatmap of one image for one class (default: the predicted class).

        Args:
            path_or_array: an image file (read as ``predict`` reads it, DICOM window included) or a
                gray/BGR/BGRA numpy array.
            class_index: index into ``classes``; None = the class the model predicts.
            max_pixels: refuse larger images.
            method: None = the bundle's (``explain_method``); "occlusion" works with any bundle (a
                cross-check of CAM, or heatmaps from a bundle exported before them), at its cost.

        Returns:
            an ``edge.explain.Explanation``: ``heatmap`` (float32 in [0, 1], the model's input size),
            ``class_index``, ``method``, ``logits``, ``image`` and ``overlay()``.

        Raises:
            BundleError: the bundle has no heatmaps (``explain_method`` is None) and no method was
            named. ImageError: the input cannot be read. UsageError: a bad class index or method.
            InferenceError: as ``explain_blob``.
        """
        explainer = self._explainer_for(method)
        if isinstance(path_or_array, np.ndarray):
            image, display_range = to_gray(path_or_array), None
        elif isinstance(path_or_array, (str, os.PathLike)):
            image, info = load_image(path_or_array, max_pixels)
            display_range = info.display_range
        else:
            raise UsageError(f"explain takes a path or a numpy array, got {type(path_or_array).__name__}")
        blob = preprocess(image, self.preprocess_config, display_range)[None]
        classes = None if class_index is None else [class_index]
        return explainer.explain(self._run, blob, classes, self.preprocess_config)[1][0]

    def infer(self, blob: np.ndarray, net=None) -> np.ndarray:
        """Logits for a preprocessed (N, C, H, W) float32 blob, in chunks the model accepts (``net``: default
        this thread's)."""
        step = max(1, len(blob)) if self.dynamic_batch else 1
        return forward_batches(net if net is not None else self._net(), blob, self.chw, len(self.classes), step)

    def _prepare(self, item, max_pixels: int, strict: bool = False):
        """Read, preprocess and check one input (runs on a worker thread)."""
        if not isinstance(item, (str, os.PathLike, np.ndarray, EncodedFile)):
            return Prediction(None, error=f"unsupported input {type(item).__name__}: give a path or a numpy array"), None
        path = None if isinstance(item, np.ndarray) else item.path if isinstance(item, EncodedFile) else os.fspath(item)
        pred = Prediction(path)
        try:
            t0 = time.perf_counter()
            if path is None:
                image, info = to_gray(item), array_info(item)
            elif isinstance(item, EncodedFile):
                image, info = decode_image(item.data, path, max_pixels)
            else:
                image, info = load_image(path, max_pixels)
            pred.input = info.to_dict()
            t1 = time.perf_counter()
            stages = preprocess_stages(image, self.preprocess_config, info.display_range)
            pred.warnings = check_input(info, image_stats(stages["gray"], stages["resized"]), self.data_profile, path)
            t2 = time.perf_counter()
            pred.timings_ms = {"read": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)}
            if strict and pred.warnings:
                pred.error = f"{path or '<array>'}: refused (strict mode): {'; '.join(pred.warnings)}"
                return pred, None
            return pred, stages["tensor"]
        except MedgeError as e:
            pred.error = str(e)
            return pred, None
        except Exception as e:  # one odd input must not take the batch down; say what happened
            pred.error = f"{path or '<array>'}: internal error ({type(e).__name__}: {e}); this is a bug in medge"
            pred.unexpected = True
            return pred, None

    def _finish(self, batch: list[tuple[Prediction, np.ndarray]], heatmaps: bool = False, net=None) -> None:
        """Logits, probabilities, label (and heatmap) for each item of a batch, or each item's error
        (``net``: default this thread's)."""
        try:
            t0 = time.perf_counter()
            blob = np.stack([t for _, t in batch])
            if heatmaps:
                logits, explanations = self.require_heatmaps().explain(partial(self._run, net=net), blob, None,
                                                                       self.preprocess_config)
            else:
                logits, explanations = self.infer(blob, net), [None] * len(batch)
            per_image = 1000 * (time.perf_counter() - t0) / len(batch)
        except MedgeError as e:
            if len(batch) == 1:
                batch[0][0].error = str(e)
                return
            for one in batch:  # isolate the input that breaks the batch
                self._finish([one], heatmaps, net)
            return
        probs = softmax(logits)
        for (pred, _), z, p, e in zip(batch, logits, probs, explanations, strict=True):
            pred.logits = [float(v) for v in z]
            pred.probabilities = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
            pred.label = self.classes[int(np.argmax(z))]
            pred.timings_ms["inference"] = per_image  # with heatmaps: inference and heatmap together
            pred.explanation = e

    def predict_iter(self, inputs, batch_size: int = 8, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     strict: bool = False, heatmaps: bool = False, streams: int | None = None):
        """Yield one Prediction per input, in input order, as soon as each batch is done.

        Three ways to run, chosen here (``edge.budget`` explains why):
        - ``workers=0``: everything in this thread, one input after the other, with
          OpenCV's thread setting as it is;
        - a run that fits in one batch: its inputs read side by side, then one forward
          pass with OpenCV's threads set to the cores that are idle (no inference to
          overlap with reading: the pass gets them all);
        - otherwise pipelined (``edge.pipeline``): ``workers`` threads (default: one per
          core) each read and preprocess the next input or run a single-threaded batched
          forward pass on a net of its own, whichever is next, at most ``streams`` passes
          at once; a list or tuple of inputs gets smaller passes when it is short
          (``edge.budget.pass_size``); ``self.budget`` records the plan and the stages' measured costs.

        Args:
            inputs: iterable of paths, arrays (gray, BGR or BGRA) and/or ``edge.image.EncodedFile`` (a file's bytes
                read elsewhere, named by its path: the same record as the path).
            batch_size: images per forward pass, at most (1 for a fixed-batch model; fewer in a short pipelined run).
            workers: threads of the pipeline (0 = no pipeline; default: one per core, ``edge.budget``).
            max_pixels: refuse larger images.
            strict: an input with warnings (``edge.profile``) is refused instead of labelled.
            heatmaps: also explain each classified input (``Prediction.explanation``, the predicted
                class); with CAM from the same forward pass. BundleError if the bundle has none.
            streams: at most this many forward passes at once in the pipeline (default: ``min(workers, 8)``).

        Raises:
            UsageError: workers < 0 or streams < 1. BundleError: heatmaps asked of a bundle without them.
        """
        if workers is not None and workers < 0:
            raise UsageError(f"workers must be 0 or more, got {workers}")
        if streams is not None and streams < 1:
            raise UsageError(f"streams must be 1 or more, got {streams}")
        if heatmaps:
            self.require_heatmaps()
        batch_size = max(1, batch_size if self.dynamic_batch else 1)
        run = _Run(batch_size, max_pixels, strict, heatmaps)
        total = len(inputs) if isinstance(inputs, (list, tuple)) else None  # a run of known length (pass_size)
        inputs = iter(inputs)
        if workers == 0:
            yield from self._predict_in_turn(inputs, run)
            return
        head = list(itertools.islice(inputs, batch_size + 1))
        if len(head) <= batch_size:  # one batch: no inference to overlap with reading
            yield from self._predict_one_batch(head, run)
            return
        yield from self._predict_pipelined(itertools.chain(head, inputs), total, run, workers, streams)

    def _predict_one_batch(self, items: list, run: "_Run"):
        """A run of one batch on the idle cores: the inputs read side by side, then one forward pass with as many
        intra-op threads as there are idle cores (one input: read and run in this thread)."""
        threads = lone_threads(budget_cores(), LOAD.busy_cores())
        if len(items) < 2 or threads < 2:
            with opencv_threads(threads):
                done = list(self._predict_in_turn(items, run))
            yield from done
            return
        with opencv_threads(1), ThreadPoolExecutor(min(len(items), threads), thread_name_prefix="medge-read") as pool:
            prepared = list(pool.map(partial(self._prepare, max_pixels=run.max_pixels, strict=run.strict), items))
        batch = [(pred, tensor) for pred, tensor in prepared if tensor is not None]
        if batch:
            with opencv_threads(threads):
                self._finish(batch, run.heatmaps)
        yield from (pred for pred, _ in prepared)

    def _predict_in_turn(self, inputs, run: "_Run"):
        """Read, preprocess and infer in this thread, ``run.batch_size`` inputs per forward pass."""
        batch, done = [], []
        for item in inputs:
            pred, tensor = self._prepare(item, run.max_pixels, run.strict)
            done.append(pred)
            if tensor is not None:
                batch.append((pred, tensor))
            if len(batch) == run.batch_size:
                self._finish(batch, run.heatmaps)
                batch = []
                yield from done
                done = []
        if batch:
            self._finish(batch, run.heatmaps)
        yield from done

    def _predict_pipelined(self, inputs, total: int | None, run: "_Run", workers: int | None, streams: int | None):
        """The pipeline of ``predict_iter`` (``edge.pipeline``): every thread reads, preprocesses or infers,
        whichever is next; forward passes single-threaded, each on a net of the model's pool; input order."""
        cores = budget_cores()
        budget = self.budget = plan_budget(cores, None, workers, streams, batch_size=run.batch_size, inputs=total)
        costs = _RunCosts()

        def prepare(item):
            t0 = time.thread_time()
            out = self._prepare(item, run.max_pixels, run.strict)
            costs.add_decode(1000 * (time.thread_time() - t0))
            return out

        def infer(batch: list) -> None:
            with self._stream_lock:
                net = self._stream_nets.pop() if self._stream_nets else None
            if net is None:
                net = self.load_net(self.engine)
            try:
                t0 = time.thread_time()
                self._finish(batch, run.heatmaps, net)
                costs.add_forward(1000 * (time.thread_time() - t0), len(batch))
            finally:
                with self._stream_lock:
                    self._stream_nets.append(net)

        with opencv_threads(1):  # every forward pass and preprocessing single-threaded (see edge.budget)
            yield from Pipeline(inputs, budget.batch_size, budget.threads, budget.forwards, prepare, infer)
        self.budget = plan_budget(cores, costs.measured(), workers, streams, batch_size=run.batch_size,
                                  inputs=total)  # the record: the same plan, with the costs this run measured

    def predict(self, inputs, batch_size: int = 8, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                strict: bool = False, heatmaps: bool = False, streams: int | None = None) -> list[Prediction]:
        """Predict one path or array, or a list of them; returns a list of Predictions in order."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray)):
            inputs = [inputs]
        return list(self.predict_iter(inputs, batch_size, workers, max_pixels, strict, heatmaps, streams))


@dataclass(frozen=True)
class _Run:
    """What every input of one predict run gets."""

    batch_size: int
    max_pixels: int
    strict: bool
    heatmaps: bool


class _RunCosts:
    """CPU time per image of each stage during one pipelined run (threads add, the pipeline reads)."""

    MIN_IMAGES = 4  # per stage, before the figures are used

    def __init__(self):
        self._lock = threading.Lock()
        self._decode_ms, self._decoded, self._forward_ms, self._forwarded = 0.0, 0, 0.0, 0

    def add_decode(self, ms: float) -> None:
        with self._lock:
            self._decode_ms += ms
            self._decoded += 1

    def add_forward(self, ms: float, images: int) -> None:
        with self._lock:
            self._forward_ms += ms
            self._forwarded += images

    def measured(self) -> StageCosts | None:
        with self._lock:
            if min(self._decoded, self._forwarded) < self.MIN_IMAGES:
                return None
            return StageCosts(self._decode_ms / self._decoded, self._forward_ms / self._forwarded)
