"""The edge model: a verified bundle, run with cv2.dnn on numpy + OpenCV only.

Usage:
    from medge.edge import Model
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

Built once: ``Model.load`` verifies the bundle (``edge.runtime.verify``: hashes, then the golden
self-test on each engine tried), chooses the engine (``edge.runtime.choice``) and builds the
``Model`` from the bundle and that choice; nothing is patched in afterwards.

Engine: with ``engine="auto"`` (the default) ``Model.load`` runs the fastest engine
that passes the self-test on this box (``edge.runtime.choice``); ``model.engine``
names it and ``model.engine_choice`` says why. Where batches > 1 fail or differ
(OpenCV 4.5.5/4.6 with squeeze-excitation models) the model runs one image per pass.

Throughput: ``predict`` runs a pipeline (``edge.execution.pipeline``, driven by ``edge.execution.run``): one
thread per core, each reading and preprocessing the next file (OpenCV releases the GIL) or running a
single-threaded batched forward pass on a net of its own, whichever is next; the
thread budget and why are in ``edge.execution.budget`` (``model.budget``). Results come back
in input order.
"""
from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from medge.edge.decision import OperatingPoint, label_indices
from medge.edge.errors import BundleError, InferenceError, UsageError
from medge.edge.execution.budget import ThreadBudget
from medge.edge.execution.run import NetPool, RunOptions, run_predictions
from medge.edge.explain import Explainer, Explanation, OcclusionExplainer, default_occlusion
from medge.edge.findings import FindingsPoint
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import load_image, to_gray
from medge.edge.prediction import Prediction
from medge.edge.preprocess import preprocess
from medge.edge.runtime.bundle import LOGITS_OUTPUT
from medge.edge.runtime.choice import EngineChoice, choose_engine
from medge.edge.runtime.dnn import forward_batches, forward_outputs_batches
from medge.edge.runtime.verify import VerifiedBundle, open_bundle

ALL_CLASSES = "all"  # predict_iter(heatmaps=["all"]): one heatmap per class (a multi-label bundle's findings)


class Model:
    """A loaded, verified bundle running on the engine chosen here. Build with ``Model.load``; complete when built.

    Args:
        bundle: the verified bundle (``Model.open``).
        engine_choice: the engine that passed the self-test here, and why (``edge.runtime.choice``).
        net: the net that passed it, kept as the building thread's (None: loaded on first use).
    """

    def __init__(self, bundle: VerifiedBundle, engine_choice: EngineChoice, net=None):
        self.bundle = bundle
        self.manifest, self.bundle_dir, self.backend = bundle.manifest, bundle.bundle_dir, bundle.backend
        self.onnx_bytes = bundle.onnx_bytes  # the verified bytes of model.onnx (SHA-256 ``self.sha256``), for other runtimes
        self.sha256 = bundle.sha256
        self.classes: list[str] = bundle.classes
        self.preprocess_config = bundle.preprocess_config
        self.chw = bundle.chw
        # what training saw (edge.inputs.profile); may be absent
        self.data_profile: dict | None = self.manifest.get("data_profile")
        self.engine = engine_choice.engine  # the one running (auto resolved)
        self.variant = engine_choice.variant  # fp32 (the exported model), or a fast variant whose gate passed
        # calibration and threshold (edge.decision); None: argmax of softmax(logits), as bundles exported without them.
        # A fast variant may decide by its own, chosen at export by the same rule (edge.runtime.variants).
        self.operating_point: OperatingPoint | None = bundle.operating_point_for(self.engine, self.variant)
        self.own_operating_point = self.operating_point is not bundle.operating_point
        # a multi-label bundle's per-finding probabilities and decisions (edge.findings); None: single-label
        self.findings: FindingsPoint | None = bundle.findings
        self.explainer: Explainer | None = bundle.explainer_for(self.engine, self.variant)  # None: no heatmaps
        self.explain_method: str | None = self.explainer.method if self.explainer else None  # "cam", "occlusion"
        self.engine_choice = engine_choice  # which engine, why, and what was tried
        trial = engine_choice.trials[0]
        self.self_test_max_abs: float | None = trial.self_test_max_abs  # None: the self-test was off
        self.dynamic_batch = bundle.dynamic_batch and trial.batched is not False
        self.batch_note: str | None = None  # why batches > 1 are off here, when the self-test turned them off
        if trial.batched is False:
            self.batch_note = (f"OpenCV {cv2.__version__} ({self.engine} engine) fails or differs on batches > 1 "
                               "of this model: one image per forward pass here")
        self._local = threading.local()
        if net is not None:
            self.set_thread_net(net)
        self.budget: ThreadBudget | None = None  # the thread budget of the latest pipelined run (edge.execution.budget)
        self.net_pool = NetPool()  # nets of the pipeline's forward passes, kept between runs (edge.execution)

    @property
    def runtime(self) -> dict:
        """What computes this model's outputs, for every record: the engine and the variant (and, where the variant
        decides by its own temperature and threshold, says so)."""
        own = {"operating_point": "own"} if self.own_operating_point else {}
        entry = (self.manifest.get("variants") or {}).get(self.variant) or {}
        file = {"variant_sha256": entry["sha256"]} if "sha256" in entry else {}  # the int8 file that computed it
        return {"engine": self.engine, "variant": self.variant, **file, **own}

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, backend: str = "cpu", engine: str | None = None,
             self_test: bool = True, variant: str | None = None) -> Model:
        """Load a bundle and prove it is the model that was exported.

        Args:
            bundle_dir: folder with model.onnx and model.json.
            backend: a key of ``edge.runtime.engines.BACKENDS`` (default OpenCV on the CPU).
            engine: ``auto`` (the fastest engine that passes the self-test here) or
                one of ``edge.runtime.engines.ENGINES``; default: the manifest's (``auto``
                unless the export named one).
            self_test: run the manifest's golden self-test (on by default; only
                benchmarks of raw loading turn it off).
            variant: ``auto`` (default: the fastest pair of engine and variant whose gate passed and that
                passes its self-test here), ``fp32`` (the exported model only), or a variant of the bundle
                (``edge.runtime.variants``).

        Raises:
            BundleError: missing folder/manifest/model, unknown format version, an
                engine the manifest asks for that this OpenCV lacks, an OpenCV too
                old or unable to load the model. ModelIntegrityError: model.onnx's
                SHA-256 differs from the manifest's. SelfTestError: this machine's
                outputs on the golden inputs differ beyond tolerance.
                ConfigError: an engine or backend this OpenCV or box does not have.
        """
        bundle = open_bundle(bundle_dir, backend, engine, variant)
        engine_choice, net = choose_engine(bundle, bundle.requested_engine, self_test)
        return cls(bundle, engine_choice, net)

    @staticmethod
    def open(bundle_dir: str | os.PathLike, backend: str = "cpu", engine: str | None = None,
             variant: str | None = None) -> VerifiedBundle:
        """The bundle's manifest read and model.onnx's SHA-256 verified, without a net or an engine choice
        (``medge check`` tries each engine on it; ``edge.runtime.verify.open_bundle``)."""
        return open_bundle(bundle_dir, backend, engine, variant)

    def new_net(self):
        """A new net of the chosen engine and variant (for one thread)."""
        return self.bundle.load_net(self.engine, self.variant)

    def thread_net(self):
        """This thread's net (loaded on first use): a net is never shared between threads."""
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self.new_net()
        return net

    def set_thread_net(self, net) -> None:
        """Make ``net`` this thread's net (``Model.load`` keeps the self-tested one). Also the seam for tests
        that wrap the net to make OpenCV misbehave (any object with ``setInput``, ``forward`` and
        ``getUnconnectedOutLayersNames``)."""
        self._local.net = net

    def infer_outputs(self, blob: np.ndarray, names: tuple[str, ...], net=None) -> dict[str, np.ndarray]:
        """Named outputs for a non-empty blob, in chunks the model accepts (the heatmaps' forward pass;
        ``net``: default this thread's)."""
        step = max(1, len(blob)) if self.dynamic_batch else 1
        outs = forward_outputs_batches(net if net is not None else self.thread_net(), blob, self.chw, names, step)
        if LOGITS_OUTPUT in outs:
            outs[LOGITS_OUTPUT] = outs[LOGITS_OUTPUT].reshape(len(blob), -1)
            if outs[LOGITS_OUTPUT].shape[1] != len(self.classes):
                raise InferenceError(f"model returned {outs[LOGITS_OUTPUT].shape[1]} logits per image, "
                                     f"expected {len(self.classes)}")
        return outs

    def require_heatmaps(self) -> Explainer:
        """The bundle's explainer; BundleError (exit 2) when it has none (exported before heatmaps)."""
        if self.explainer is None:
            raise BundleError(f"{self.bundle_dir}: this bundle has no heatmaps (its manifest has no 'explain' section: "
                              "it was exported before medge had them); export it again to get heatmaps")
        return self.explainer

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
        return self._explainer_for(method).explain(self.infer_outputs, blob, class_indices, self.preprocess_config)

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
        classes = self.label_indices if class_index is None else [class_index]
        return explainer.explain(self.infer_outputs, blob, classes, self.preprocess_config)[1][0]

    def label_indices(self, logits: np.ndarray) -> list[int]:
        """The predicted class of each row of logits: by the bundle's threshold, else argmax (``edge.decision``); for a
        multi-label bundle, the most probable finding (what a heatmap explains by default, ``edge.findings``)."""
        if self.findings is not None:
            return self.findings.label_indices(logits)
        return label_indices(self.operating_point, logits)

    def heatmap_classes(self, names) -> tuple[int, ...]:
        """The class indices of the names a heatmap per name is asked for (``predict_iter(heatmaps=[...])``).

        Args:
            names: class names (a multi-label bundle's findings), or ``["all"]`` for every class, in the bundle's order.

        Returns:
            Their indices, in the order given, each once.

        Raises:
            UsageError: no name, or a name the bundle does not have (the message lists those it has).
        """
        names = list(names)
        if names == [ALL_CLASSES] and ALL_CLASSES not in self.classes:
            return tuple(range(len(self.classes)))
        unknown = [n for n in names if n not in self.classes]
        if unknown or not names:
            raise UsageError(f"{self.bundle_dir}: no heatmap for {unknown or 'no class'}: this bundle's "
                             f"{'findings' if self.findings is not None else 'classes'} are {self.classes} "
                             f"(or '{ALL_CLASSES}')")
        return tuple(dict.fromkeys(self.classes.index(n) for n in names))

    def error_prediction(self, path: str | None, error: str) -> Prediction:
        """The Prediction of an input that failed before the model ran (unreadable, lost).

        Args:
            path: the input's path (None for an array). error: why it failed, naming the input.

        Returns:
            a Prediction with that error and, for a multi-label bundle, the findings' thresholds, so that its record
            has the same keys as the others (``Prediction.to_record``).
        """
        return Prediction(path, error=error, thresholds=self.findings.thresholds if self.findings is not None else None)

    def infer(self, blob: np.ndarray, net=None) -> np.ndarray:
        """Logits for a preprocessed (N, C, H, W) float32 blob, in chunks the model accepts (``net``: default
        this thread's)."""
        step = max(1, len(blob)) if self.dynamic_batch else 1
        return forward_batches(net if net is not None else self.thread_net(), blob, self.chw, len(self.classes), step)

    def predict_iter(self, inputs, batch_size: int = 8, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     strict: bool = False, heatmaps: bool | list[str] = False, streams: int | None = None):
        """Yield one Prediction per input, in input order, as soon as each batch is done.

        Three ways to run, chosen by ``edge.execution`` (``edge.execution.budget`` explains why):
        - ``workers=0``: everything in this thread, one input after the other, with
          OpenCV's thread setting as it is;
        - a run that fits in one batch: its inputs read side by side, then one forward
          pass with OpenCV's threads set to the cores that are idle (no inference to
          overlap with reading: the pass gets them all);
        - otherwise pipelined (``edge.execution.pipeline``): ``workers`` threads (default: one per
          core) each read and preprocess the next input or run a single-threaded batched
          forward pass on a net of its own, whichever is next, at most ``streams`` passes
          at once; a list or tuple of inputs gets smaller passes when it is short
          (``edge.execution.budget.pass_size``); ``self.budget`` records the plan and the stages' measured costs.

        Args:
            inputs: iterable of paths, arrays (gray, BGR or BGRA) and/or ``edge.inputs.image.EncodedFile`` (a file's bytes
                read elsewhere, named by its path: the same record as the path).
            batch_size: images per forward pass, at most (1 for a fixed-batch model; fewer in a short pipelined run).
            workers: threads of the pipeline (0 = no pipeline; default: one per core, ``edge.execution.budget``).
            max_pixels: refuse larger images.
            strict: an input with warnings (``edge.inputs.profile``) is refused instead of labelled.
            heatmaps: also explain each classified input (``Prediction.explanation``, the predicted
                class; a multi-label bundle's most probable finding); with CAM from the same forward pass.
                A list of class (finding) names, or ``["all"]``: one heatmap per name instead
                (``Prediction.explanations``, in that order; ``heatmap_classes``). BundleError if the bundle has none.
            streams: at most this many forward passes at once in the pipeline (default: ``min(workers, 8)``).

        Raises:
            UsageError: workers < 0 or streams < 1, or a heatmap class the bundle does not have.
            BundleError: heatmaps asked of a bundle without them.
        """
        if workers is not None and workers < 0:
            raise UsageError(f"workers must be 0 or more, got {workers}")
        if streams is not None and streams < 1:
            raise UsageError(f"streams must be 1 or more, got {streams}")
        if heatmaps:
            self.require_heatmaps()
            heatmaps = heatmaps if heatmaps is True else self.heatmap_classes(heatmaps)
        run = RunOptions(max(1, batch_size if self.dynamic_batch else 1), max_pixels, strict, heatmaps)
        yield from run_predictions(self, inputs, run, workers, streams)

    def predict(self, inputs, batch_size: int = 8, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                strict: bool = False, heatmaps: bool | list[str] = False, streams: int | None = None) -> list[Prediction]:
        """Predict one path or array, or a list of them; returns a list of Predictions in order."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray)):
            inputs = [inputs]
        return list(self.predict_iter(inputs, batch_size, workers, max_pixels, strict, heatmaps, streams))

