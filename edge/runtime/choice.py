"""Which engine runs a bundle on this box: the fastest correct one, by measurement.

``Model.load(engine="auto")`` (the default of bundles and commands) tries every
engine this OpenCV has for the backend: it loads the model, runs the golden
self-test (is it correct here? do batches > 1 work?) and times batch-1 forward
passes of all engines that passed, interleaved; the fastest wins. OpenCV 4.x has
one engine, so there is nothing to time. Never a guess from a version number.
Engines from outside OpenCV (onnxruntime, with the ``ort`` extra) are not measured
at load time: cv2.dnn stays the default unless the user asks for one, or ``medge
check`` measured it as the fastest correct engine on this box.

``medge check`` measures every engine, longer (1 and all threads), and records its choice in a
small JSON file under ``$XDG_CACHE_HOME/medge/engines`` (``~/.cache`` by default),
keyed by the model's SHA-256, the backend, the thread count, the OpenCV version
and build, and the CPU. ``Model.load`` uses a recorded choice whose key matches
once the self-test passes on it, so the two agree; any change of OpenCV, CPU or
threads makes a new key, and a missing or unreadable record means "measure".

Usage:
    model = Model.load("bundles/xray")                 # engine="auto" by default
    print(model.engine, model.engine_choice.to_dict())
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from medge.edge.errors import BundleError, InferenceError, MedgeError, SelfTestError
from medge.edge.numeric import latency_summary
from medge.edge.outputs import atomic_write_text
from medge.edge.runtime.dnn import time_forwards
from medge.edge.runtime.engines import AUTO, ENGINES, engines_for
from medge.edge.runtime.verify import VerifiedBundle
from medge.edge.runtime.verify import self_test as run_self_test  # try_engine's self_test is a flag
from medge.edge.system import cpu_model

LOAD_ROUNDS = 3  # timed batch-1 passes per engine when Model.load measures (medge check does more)


@dataclass(frozen=True)
class EngineTrial:
    """One engine tried on a bundle here: its error, or its self-test result and speed."""

    engine: str
    error: str | None = None
    self_test_max_abs: float | None = None  # None: self-test not run
    batched: bool | None = None  # batches > 1 passed the self-test (None: not tried)
    forward_ms: dict | None = None  # latency_summary of batch-1 forward passes (None: not timed)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class EngineChoice:
    """The engine a Model runs with, why, and what was tried."""

    requested: str  # auto, or the engine asked for (by the caller or the bundle's manifest)
    engine: str
    reason: str
    trials: tuple[EngineTrial, ...]

    def to_dict(self) -> dict:
        return {"requested": self.requested, "engine": self.engine, "reason": self.reason,
                "trials": [{**asdict(t), "ok": t.ok} for t in self.trials]}


def try_engine(bundle: VerifiedBundle, engine: str, self_test: bool = True):
    """Load ``bundle`` with ``engine`` and run its golden self-test, batched when the bundle allows,
    else (or when batches > 1 fail or differ here) one image per pass.

    Returns:
        (EngineTrial, net or None, the MedgeError or None).
    """
    try:
        net = bundle.load_net(engine)
        if not self_test:
            return EngineTrial(engine), net, None
        if bundle.dynamic_batch:
            try:
                worst = run_self_test(bundle, net, len(bundle.golden_inputs()), engine)
                return EngineTrial(engine, self_test_max_abs=worst, batched=True), net, None
            except (InferenceError, SelfTestError):
                net = bundle.load_net(engine)  # a net that failed a pass may keep a bad state
        try:
            worst = run_self_test(bundle, net, 1, engine)
        except InferenceError as e:
            raise SelfTestError(f"{bundle.bundle_dir}: golden self-test could not run with OpenCV {cv2.__version__} "
                                f"({engine} engine): {e}") from None
        return EngineTrial(engine, self_test_max_abs=worst, batched=False if bundle.dynamic_batch else None), net, None
    except MedgeError as e:
        return EngineTrial(engine, error=str(e)), None, e


def choose_engine(bundle: VerifiedBundle, requested: str, self_test: bool = True) -> tuple[EngineChoice, object]:
    """The engine that runs ``bundle`` here, and its net (loaded, self-tested).

    Args:
        bundle: the bundle being loaded (verified by hash).
        requested: ``auto`` or an engine of this OpenCV.
        self_test: run the golden self-test (off: nothing is measured either).

    Raises:
        BundleError: no engine can load the model here. SelfTestError: none passes the self-test.
    """
    if requested != AUTO:
        return _decide(requested, [try_engine(bundle, requested, self_test)], "asked for")
    recorded = read_recorded_engine(record_key(bundle.sha256, bundle.backend))
    if recorded in engines_for(bundle.backend):  # any engine, onnxruntime included: medge check measured them all
        trial = try_engine(bundle, recorded, self_test)
        if trial[0].ok:
            return _decide(AUTO, [trial], "recorded by medge check on this box")
    candidates = engines_for(bundle.backend, extras=False)  # at load time, OpenCV's engines only
    if len(candidates) == 1 or not self_test:
        reason = (f"the only engine of OpenCV {cv2.__version__} for backend {bundle.backend}" if len(candidates) == 1
                  else "the first engine: with the self-test off nothing is measured")
        return _decide(AUTO, [try_engine(bundle, candidates[0], self_test)], reason)
    trials = [try_engine(bundle, e) for e in candidates]
    nets = {t.engine: net for t, net, _ in trials if t.ok}
    if len(nets) > 1:
        times = time_forwards(nets, bundle.golden_inputs()[:1], bundle.chw, len(bundle.classes), LOAD_ROUNDS)
        trials = [(EngineTrial(**{**asdict(t), "forward_ms": latency_summary(times[t.engine])}) if t.ok else t, net, err)
                  for t, net, err in trials]
        fastest = min(nets, key=lambda e: latency_summary(times[e])["p50_ms"])
        reason = f"fastest correct of {list(nets)} (median of {LOAD_ROUNDS} batch-1 passes at load)"
    else:
        fastest = next(iter(nets), candidates[0])
        reason = "the only engine that passed the self-test" if nets else ""
    trials.sort(key=lambda t: t[0].engine != fastest)  # the winner first
    return _decide(AUTO, trials, reason)


def _decide(requested: str, trials: list, reason: str) -> tuple[EngineChoice, object]:
    """The first trial if it passed; else raise, naming every engine's reason."""
    trial, net, error = trials[0]
    if trial.ok:
        return EngineChoice(requested, trial.engine, reason, tuple(t for t, _, _ in trials)), net
    if len(trials) == 1:
        raise error
    errors = [err for _, _, err in trials]
    kind = SelfTestError if any(isinstance(e, SelfTestError) for e in errors) else BundleError
    raise kind(f"no engine of OpenCV {cv2.__version__} runs this model correctly: "
               + "; ".join(f"[{t.engine}] {t.error}" for t, _, _ in trials))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medge" / "engines"


def record_key(model_sha256: str, backend: str, threads: int | None = None) -> dict:
    """What a recorded engine choice holds for: model, backend, OpenCV threads, version and build, CPU and cores
    (the keys of ``edge.system``'s environment record)."""
    return {"model_sha256": model_sha256, "backend": backend,
            "opencv_threads": cv2.getNumThreads() if threads is None else int(threads), "opencv": cv2.__version__,
            "opencv_build_sha256": hashlib.sha256(cv2.getBuildInformation().encode()).hexdigest()[:16],
            "cpu": cpu_model(), "cores": os.cpu_count()}


def record_path(key: dict) -> Path:
    return _cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json")


def read_recorded_engine(key: dict) -> str | None:
    """The engine recorded for ``key`` if it is one this OpenCV has; None when there is none or it is unreadable."""
    try:
        record = json.loads(record_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    engine = record.get("engine") if isinstance(record, dict) and record.get("key") == key else None
    return engine if engine in ENGINES else None


def record_engine(key: dict, engine: str, timings: dict) -> Path:
    """Write the choice for ``key`` atomically (temporary file, then rename). Raises OSError when it cannot."""
    path = record_path(key)
    atomic_write_text(path, json.dumps({"key": key, "engine": engine, "timings": timings, "by": "medge check"}, indent=2))
    return path
