"""How ``Model.predict_iter`` runs: three strategies over two shared steps, and the nets of the pipeline.

The steps: ``prepare`` reads, preprocesses and checks one input (a ``Prediction`` and
its model input, or its error); ``finish`` runs one batch of prepared inputs through
the model (logits, calibrated probabilities, label, heatmap) and isolates an input
that breaks the batch. The strategies (``edge.execution.budget`` says why each is chosen):

- ``predict_in_turn``: everything in the calling thread, one input after the other;
- ``predict_one_batch``: a run that fits in one batch reads its inputs side by side on
  the idle cores, then runs one forward pass with their threads;
- ``predict_pipelined``: ``edge.execution.pipeline``'s threads each read or infer, whichever is
  next; each forward pass takes a net of the model's ``NetPool`` (a ``cv2.dnn.Net`` is
  never used by two threads at once) and the run's stage costs go into the budget.

Results come back in input order. numpy + OpenCV only, like the rest of ``edge``.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

import numpy as np

from medge.edge.errors import MedgeError
from medge.edge.execution.budget import LOAD, StageCosts, budget_cores, lone_threads, opencv_threads, plan_budget
from medge.edge.execution.pipeline import Pipeline
from medge.edge.findings import label_of
from medge.edge.inputs.formats import array_info
from medge.edge.inputs.image import EncodedFile, decode_image, load_image, to_gray
from medge.edge.inputs.profile import STATS, check_input, image_stats
from medge.edge.numeric import softmax
from medge.edge.prediction import Prediction
from medge.edge.preprocess import preprocess_stages

if TYPE_CHECKING:
    from medge.edge.model import Model


@dataclass(frozen=True)
class RunOptions:
    """What every input of one predict run gets."""

    batch_size: int
    max_pixels: int
    strict: bool
    heatmaps: bool | tuple[int, ...]  # True: the predicted class's heatmap; a tuple: one per class index given


class NetPool:
    """Nets of the pipeline's forward passes, kept between runs: as many as passes ever ran at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nets: list = []

    @contextmanager
    def borrow(self, load: Callable[[], object]):
        """A net no other thread uses until it is given back (a new one from ``load`` when none is free)."""
        with self._lock:
            net = self._nets.pop() if self._nets else None
        if net is None:
            net = load()
        try:
            yield net
        finally:
            with self._lock:
                self._nets.append(net)

    def __len__(self) -> int:
        with self._lock:
            return len(self._nets)


class RunCosts:
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


def prepare(model: Model, item, max_pixels: int, strict: bool = False):
    """Read, preprocess and check one input (runs on a worker thread): (Prediction, model input or None)."""
    thresholds = model.findings.thresholds if model.findings is not None else None  # a multi-label record's, error or not
    if not isinstance(item, (str, os.PathLike, np.ndarray, EncodedFile)):
        return Prediction(None, error=f"unsupported input {type(item).__name__}: give a path or a numpy array",
                          thresholds=thresholds), None
    path = None if isinstance(item, np.ndarray) else item.path if isinstance(item, EncodedFile) else os.fspath(item)
    pred = Prediction(path, thresholds=thresholds)
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
        stages = preprocess_stages(image, model.preprocess_config, info.display_range)
        stats = image_stats(stages["gray"], stages["resized"])
        pred.input["stats"] = {k: round(stats[k], 3) for k in STATS}  # what medge monitor compares with the profile
        pred.warnings = check_input(info, stats, model.data_profile, path)
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


def finish(model: Model, batch: list[tuple[Prediction, np.ndarray]], heatmaps: bool = False, net=None) -> None:
    """Logits, probabilities, label (and heatmap) for each item of a batch, or each item's error
    (``net``: default this thread's)."""
    try:
        t0 = time.perf_counter()
        blob = np.stack([t for _, t in batch])
        if heatmaps:
            logits, explanations = _explain(model, blob, heatmaps, net)
        else:
            logits, explanations = model.infer(blob, net), [None] * len(batch)
        per_image = 1000 * (time.perf_counter() - t0) / len(batch)
    except MedgeError as e:
        if len(batch) == 1 and heatmaps:  # the label does not need the heatmap: classify, and say why there is none
            finish(model, batch, False, net)
            if batch[0][0].error is None:
                batch[0][0].warnings.append(f"no heatmap: {e}")
            return
        if len(batch) == 1:
            batch[0][0].error = str(e)
            return
        for one in batch:  # isolate the input that breaks the batch
            finish(model, [one], heatmaps, net)
        return
    _label(model, batch, logits, explanations, per_image)


def _explain(model: Model, blob: np.ndarray, heatmaps, net) -> tuple[np.ndarray, list]:
    """Logits and, per image, its Explanation (``heatmaps`` True: of the predicted class) or its list of Explanations
    (``heatmaps`` a tuple of class indices: one per class, in that order)."""
    explainer, run = model.require_heatmaps(), partial(model.infer_outputs, net=net)
    if heatmaps is True:
        return explainer.explain(run, blob, model.label_indices, model.preprocess_config)
    return explainer.explain_classes(run, blob, heatmaps, model.preprocess_config)  # every class from the same passes


def _attach(pred: Prediction, explanation) -> None:
    """A prediction's heatmap: one Explanation, or a list of them (one per class asked for; the first is also
    ``explanation``)."""
    if isinstance(explanation, list):
        pred.explanation, pred.explanations = explanation[0], explanation
    else:
        pred.explanation = explanation


def _label(model: Model, batch: list, logits: np.ndarray, explanations: list, per_image_ms: float) -> None:
    """Each prediction of a batch from its logits: calibrated probabilities, label, threshold, heatmap."""
    if model.findings is not None:
        _findings(model, batch, logits, explanations, per_image_ms)
        return
    op = model.operating_point
    probs = softmax(logits) if op is None else op.probabilities(logits)
    labels = model.label_indices(logits)
    for (pred, _), z, p, k, e in zip(batch, logits, probs, labels, explanations, strict=True):
        pred.logits = [float(v) for v in z]
        pred.probabilities = {c: float(v) for c, v in zip(model.classes, p, strict=True)}
        pred.label = model.classes[k]
        pred.threshold = op.threshold if op is not None else None
        pred.calibrated = op is not None
        pred.timings_ms["inference"] = per_image_ms  # with heatmaps: inference and heatmap together
        _attach(pred, e)


def _findings(model: Model, batch: list, logits: np.ndarray, explanations: list, per_image_ms: float) -> None:
    """A multi-label batch (``edge.findings``): per-finding probabilities and decisions, the positive ones as label."""
    rules = model.findings
    probs = rules.probabilities(logits)
    for (pred, _), z, p, d, e in zip(batch, logits, probs, rules.decisions(probs), explanations, strict=True):
        pred.logits = [float(v) for v in z]
        pred.probabilities = {c: float(v) for c, v in zip(model.classes, p, strict=True)}
        pred.decisions, pred.thresholds = d, rules.thresholds
        pred.label = label_of(pred.positive_findings, [k for k, v in d.items() if v is None])
        pred.calibrated = rules.calibrated
        pred.timings_ms["inference"] = per_image_ms
        _attach(pred, e)


def run_predictions(model: Model, inputs, run: RunOptions, workers: int | None, streams: int | None):
    """Yield one Prediction per input in input order, by the strategy that fits (``Model.predict_iter``)."""
    total = len(inputs) if isinstance(inputs, (list, tuple)) else None  # a run of known length (pass_size)
    inputs = iter(inputs)
    if workers == 0:
        yield from predict_in_turn(model, inputs, run)
        return
    head = list(itertools.islice(inputs, run.batch_size + 1))
    if len(head) <= run.batch_size:  # one batch: no inference to overlap with reading
        yield from predict_one_batch(model, head, run)
        return
    yield from predict_pipelined(model, itertools.chain(head, inputs), total, run, workers, streams)


def predict_one_batch(model: Model, items: list, run: RunOptions):
    """A run of one batch on the idle cores: the inputs read side by side, then one forward pass with as many
    intra-op threads as there are idle cores (one input: read and run in this thread)."""
    threads = lone_threads(budget_cores(), LOAD.busy_cores())
    if len(items) < 2 or threads < 2:
        with opencv_threads(threads):
            done = list(predict_in_turn(model, items, run))
        yield from done
        return
    with opencv_threads(1), ThreadPoolExecutor(min(len(items), threads), thread_name_prefix="medge-read") as pool:
        prepared = list(pool.map(partial(prepare, model, max_pixels=run.max_pixels, strict=run.strict), items))
    batch = [(pred, tensor) for pred, tensor in prepared if tensor is not None]
    if batch:
        with opencv_threads(threads):
            finish(model, batch, run.heatmaps)
    yield from (pred for pred, _ in prepared)


def predict_in_turn(model: Model, inputs, run: RunOptions):
    """Read, preprocess and infer in this thread, ``run.batch_size`` inputs per forward pass."""
    batch, done = [], []
    for item in inputs:
        pred, tensor = prepare(model, item, run.max_pixels, run.strict)
        done.append(pred)
        if tensor is not None:
            batch.append((pred, tensor))
        if len(batch) == run.batch_size:
            finish(model, batch, run.heatmaps)
            batch = []
            yield from done
            done = []
    if batch:
        finish(model, batch, run.heatmaps)
    yield from done


def predict_pipelined(model: Model, inputs, total: int | None, run: RunOptions, workers: int | None,
                      streams: int | None):
    """The pipeline (``edge.execution.pipeline``): every thread reads, preprocesses or infers, whichever is next; forward
    passes single-threaded, each on a net of ``model.net_pool``; input order. ``model.budget`` records the plan."""
    cores = budget_cores()
    budget = model.budget = plan_budget(cores, None, workers, streams, batch_size=run.batch_size, inputs=total)
    costs = RunCosts()

    def prepare_timed(item):
        t0 = time.thread_time()
        out = prepare(model, item, run.max_pixels, run.strict)
        costs.add_decode(1000 * (time.thread_time() - t0))
        return out

    def infer(batch: list) -> None:
        with model.net_pool.borrow(model.new_net) as net:
            t0 = time.thread_time()
            finish(model, batch, run.heatmaps, net)
            costs.add_forward(1000 * (time.thread_time() - t0), len(batch))

    with opencv_threads(1):  # every forward pass and preprocessing single-threaded (see edge.execution.budget)
        yield from Pipeline(inputs, budget.batch_size, budget.threads, budget.forwards, prepare_timed, infer)
    model.budget = plan_budget(cores, costs.measured(), workers, streams, batch_size=run.batch_size,
                               inputs=total)  # the record: the same plan, with the costs this run measured
