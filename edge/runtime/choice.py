"""Which engine runs a bundle on this box: the fastest correct one, by measurement.

``Model.load(engine="auto")`` (the default of bundles and commands) tries every
engine this OpenCV has for the backend: it loads the model, runs the golden
self-test (is it correct here? do batches > 1 work?) and times batch-1 forward
passes of all engines that passed, interleaved; the fastest wins. OpenCV 4.x has
one engine, so there is nothing to time. Never a guess from a version number.
Engines from outside OpenCV (onnxruntime, OpenVINO, with their extras) are not
measured at load time for a bundle without fast variants: cv2.dnn stays the default
unless the user asks for one, or ``medge check`` measured it as the fastest correct
engine on this box.

A bundle with fast variants (``edge.runtime.variants``) has (engine, variant) pairs:
fp32 on every engine, and each variant on the engines where its export gate passed.
The first load self-tests every pair (a variant against its own gated outputs) and
times them all, interleaved; a variant wins only ``VARIANT_MARGIN`` (1.1x) faster than
the fastest fp32 pair, and the choice is recorded like ``medge check``'s, so later
loads reuse it. ``--variant fp32`` forbids the variants; naming one forces it.

``medge check`` measures every engine, longer (1 and all threads), and records its choice in a
small JSON file under ``$XDG_CACHE_HOME/medge/engines`` (``~/.cache`` by default),
keyed by the model's SHA-256, the backend, the thread count, the OpenCV version
and build, and the CPU. ``Model.load`` uses a recorded choice whose key matches
once the self-test passes on it, so the two agree; any change of OpenCV, CPU or
threads makes a new key, and a missing or unreadable record means "measure".

Usage:
    model = Model.load("bundles/xray")                 # engine="auto", variant="auto" by default
    print(model.engine, model.variant, model.engine_choice.to_dict())
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
from medge.edge.runtime.engines import AUTO, ENGINES, KNOWN_ENGINES, engines_for
from medge.edge.runtime.variants import FP32
from medge.edge.runtime.verify import VerifiedBundle
from medge.edge.runtime.verify import self_test as run_self_test  # try_engine's self_test is a flag
from medge.edge.system import cpu_model

LOAD_ROUNDS = 3  # timed batch-1 passes per engine when Model.load measures (medge check does more)
# A fast variant is chosen only when it beats the fastest fp32 engine by this factor: a variant is a
# gated approximation, worth it for a clear gain, never for noise between two equal timings.
VARIANT_MARGIN = 1.10


@dataclass(frozen=True)
class EngineTrial:
    """One (engine, variant) pair tried on a bundle here: its error, or its self-test result and speed."""

    engine: str
    error: str | None = None
    self_test_max_abs: float | None = None  # None: self-test not run
    batched: bool | None = None  # batches > 1 passed the self-test (None: not tried)
    forward_ms: dict | None = None  # latency_summary of batch-1 forward passes (None: not timed)
    variant: str = FP32  # edge.runtime.variants: fp32 (the exported model), bf16, int8

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pair(self) -> tuple[str, str]:
        return self.engine, self.variant


@dataclass(frozen=True)
class EngineChoice:
    """The engine and variant a Model runs with, why, and what was tried."""

    requested: str  # auto, or the engine asked for (by the caller or the bundle's manifest)
    engine: str
    reason: str
    trials: tuple[EngineTrial, ...]
    variant: str = FP32
    requested_variant: str = AUTO

    def to_dict(self) -> dict:
        return {"requested": self.requested, "engine": self.engine, "variant": self.variant,
                "requested_variant": self.requested_variant, "reason": self.reason,
                "trials": [{**asdict(t), "ok": t.ok} for t in self.trials]}


def try_engine(bundle: VerifiedBundle, engine: str, self_test: bool = True, variant: str = FP32):
    """Load ``bundle`` (its ``variant``) with ``engine`` and run the golden self-test, batched when the bundle
    allows, else (or when batches > 1 fail or differ here) one image per pass.

    Returns:
        (EngineTrial, net or None, the MedgeError or None).
    """
    try:
        net = bundle.load_net(engine, variant)
        if not self_test:
            return EngineTrial(engine, variant=variant), net, None
        if bundle.dynamic_batch:
            try:
                worst = run_self_test(bundle, net, len(bundle.golden_inputs()), engine, variant)
                return EngineTrial(engine, self_test_max_abs=worst, batched=True, variant=variant), net, None
            except (InferenceError, SelfTestError):
                net = bundle.load_net(engine, variant)  # a net that failed a pass may keep a bad state
        try:
            worst = run_self_test(bundle, net, 1, engine, variant)
        except InferenceError as e:
            raise SelfTestError(f"{bundle.bundle_dir}: golden self-test could not run with OpenCV {cv2.__version__} "
                                f"({engine} engine, {variant}): {e}") from None
        return (EngineTrial(engine, self_test_max_abs=worst, batched=False if bundle.dynamic_batch else None,
                            variant=variant), net, None)
    except MedgeError as e:
        return EngineTrial(engine, error=str(e), variant=variant), None, e


def candidate_pairs(bundle: VerifiedBundle, engines: list[str], variant: str) -> tuple[list, list[EngineTrial]]:
    """The (engine, variant) pairs that may run ``bundle`` here, and the gated pairs that may not, with why.

    fp32 on every engine (unless another variant is asked for); a variant on the engines whose gate passed.
    """
    pairs, refused = [], []
    for e in engines:
        if variant in (AUTO, FP32):
            pairs.append((e, FP32))
        for name, v in bundle.variants.items():
            if variant not in (AUTO, name):
                continue
            why = v.why_not(e)
            if why is None:
                pairs.append((e, name))
            elif e in v.gates:
                refused.append(EngineTrial(e, error=why, variant=name))
    return pairs, refused


def choose_engine(bundle: VerifiedBundle, requested: str, self_test: bool = True) -> tuple[EngineChoice, object]:
    """The (engine, variant) that runs ``bundle`` here, and its net (loaded, self-tested).

    Without fast variants (or with ``fp32`` asked for), OpenCV's engines as always: the one asked for, the one
    ``medge check`` recorded, else the fastest of OpenCV's. With variants whose gate passed, every pair of an
    installed engine is self-tested and timed; a variant wins only ``VARIANT_MARGIN`` faster than the fastest
    fp32 engine, and the choice is recorded for the next load on this box (``record_pair``).

    Args:
        bundle: the bundle being loaded (verified by hash); ``bundle.requested_variant`` says which variants may run.
        requested: ``auto`` or an engine of this box.
        self_test: run the golden self-test (off: nothing is measured either).

    Raises:
        BundleError: no engine can load the model here, or a variant asked for that is not offered on the engine.
        SelfTestError: none passes the self-test.
    """
    variant = bundle.requested_variant
    engines = [requested] if requested != AUTO else engines_for(bundle.backend)
    pairs, refused = candidate_pairs(bundle, engines, variant)
    if not pairs:
        raise BundleError(f"{bundle.bundle_dir}: the {variant} variant does not run on {engines}"
                          + "".join(f"; [{t.engine}] {t.error}" for t in refused) + _offered_hint(bundle, variant, engines))
    if all(v == FP32 for _, v in pairs):
        return _choose_fp32(bundle, requested, self_test)
    if len(pairs) == 1 or not self_test:
        why = "asked for" if len(pairs) == 1 else "the first pair: with the self-test off nothing is measured"
        return _decide(requested, [try_engine(bundle, pairs[0][0], self_test, pairs[0][1])], why, variant)
    key = bundle_key(bundle)
    recorded = read_recorded_pair(key) if requested == AUTO and variant == AUTO else None
    if recorded in pairs:
        trial = try_engine(bundle, recorded[0], self_test, recorded[1])
        if trial[0].ok:
            return _decide(requested, [trial], "recorded on this box (medge check, or an earlier load)", variant)
    trials, fastest, reason = _measure(bundle, pairs)
    choice = _decide(requested, trials + [(t, None, None) for t in refused], reason, variant)
    if requested == AUTO and variant == AUTO:
        try:
            record_engine(key, *fastest, {f"{e}/{v}": t.forward_ms for (e, v), t in
                                          ((t.pair, t) for t, _, _ in trials if t.ok)}, by="Model.load")
        except OSError:
            pass  # a read-only cache: measure again next time
    return choice


def _offered_hint(bundle: VerifiedBundle, variant: str, engines: list[str]) -> str:
    """Where the variant could run instead: another installed engine (--engine), or one to install."""
    v = bundle.variants.get(variant)
    if v is not None and v.error:
        return f"; {v.error}"
    offered = list(v.offered) if v else []
    here = [e for e in offered if e in ENGINES and e not in engines]
    absent = [e for e in offered if e not in ENGINES]
    if here:
        return f"; it is offered on {here}: --engine auto or one of those"
    if absent:
        return f"; it is offered on {absent}, not installed here ({'; '.join(KNOWN_ENGINES[e] for e in absent)})"
    return "; no engine passed its gate at export: run fp32 (--variant fp32)" if v and not offered else ""


def _measure(bundle: VerifiedBundle, pairs: list) -> tuple[list, tuple[str, str], str]:
    """Self-test and time every pair, interleaved; the winner first, by the fp32-first margin rule."""
    trials = [try_engine(bundle, e, True, v) for e, v in pairs]
    nets = {t.pair: net for t, net, _ in trials if t.ok}
    if not nets:
        return trials, pairs[0], ""
    times = time_forwards(nets, bundle.golden_inputs()[:1], bundle.chw, len(bundle.classes), LOAD_ROUNDS)
    trials = [(EngineTrial(**{**asdict(t), "forward_ms": latency_summary(times[t.pair])}) if t.ok else t, net, err)
              for t, net, err in trials]
    p50 = {pair: latency_summary(times[pair])["p50_ms"] for pair in nets}
    fastest, reason = pick_fastest(p50)
    reason = reason or f"fastest correct of {[f'{e}/{v}' for e, v in nets]} (median of {LOAD_ROUNDS} batch-1 passes at load)"
    trials.sort(key=lambda t: t[0].pair != fastest)  # the winner first
    return trials, fastest, reason


def pick_fastest(p50: dict) -> tuple[tuple[str, str], str | None]:
    """The (engine, variant) to run from median ms per pair: the fastest, except that a variant must beat the
    fastest fp32 pair by ``VARIANT_MARGIN``; the reason when the margin decided, else None."""
    fastest = min(p50, key=p50.get)
    fp32 = [pair for pair in p50 if pair[1] == FP32]
    if fp32 and fastest[1] != FP32:
        best32 = min(fp32, key=p50.get)
        if p50[fastest] * VARIANT_MARGIN > p50[best32]:
            return best32, (f"{best32[0]}/fp32: the fastest variant ({fastest[0]}/{fastest[1]}, {p50[fastest]:.2f} ms) is "
                            f"not {VARIANT_MARGIN:.2f}x faster than fp32 ({p50[best32]:.2f} ms)")
    return fastest, None


def _choose_fp32(bundle: VerifiedBundle, requested: str, self_test: bool) -> tuple[EngineChoice, object]:
    """The exported model's engine, as medge chose it before variants: asked for, recorded, or OpenCV's fastest."""
    variant = bundle.requested_variant
    if requested != AUTO:
        return _decide(requested, [try_engine(bundle, requested, self_test)], "asked for", variant)
    recorded = read_recorded_pair(bundle_key(bundle))
    if recorded is not None and recorded[1] == FP32 and recorded[0] in engines_for(bundle.backend):
        trial = try_engine(bundle, recorded[0], self_test)  # any engine, onnxruntime included: medge check measured all
        if trial[0].ok:
            return _decide(AUTO, [trial], "recorded by medge check on this box", variant)
    candidates = engines_for(bundle.backend, extras=False)  # at load time, OpenCV's engines only
    if len(candidates) == 1 or not self_test:
        reason = (f"the only engine of OpenCV {cv2.__version__} for backend {bundle.backend}" if len(candidates) == 1
                  else "the first engine: with the self-test off nothing is measured")
        return _decide(AUTO, [try_engine(bundle, candidates[0], self_test)], reason, variant)
    trials, _, reason = _measure(bundle, [(e, FP32) for e in candidates])
    if not any(t.ok for t, _, _ in trials):
        reason = ""
    elif sum(t.ok for t, _, _ in trials) == 1:
        reason = "the only engine that passed the self-test"
    return _decide(AUTO, trials, reason, variant)


def _decide(requested: str, trials: list, reason: str, variant: str = AUTO) -> tuple[EngineChoice, object]:
    """The first trial if it passed; else raise, naming every pair's reason."""
    trial, net, error = trials[0]
    if trial.ok:
        return EngineChoice(requested, trial.engine, reason, tuple(t for t, _, _ in trials), trial.variant, variant), net
    if len(trials) == 1:
        raise error
    errors = [err for _, _, err in trials]
    kind = SelfTestError if any(isinstance(e, SelfTestError) for e in errors) else BundleError
    raise kind(f"no engine of OpenCV {cv2.__version__} runs this model correctly: "
               + "; ".join(f"[{t.engine}{'' if t.variant == FP32 else '/' + t.variant}] {t.error}" for t, _, _ in trials))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medge" / "engines"


def record_key(model_sha256: str, backend: str, threads: int | None = None, variants: dict | None = None) -> dict:
    """What a recorded engine choice holds for: model, backend, OpenCV threads, version and build, CPU and cores
    (the keys of ``edge.system``'s environment record), and the bundle's fast variants (``variants``: the seal of
    their section and those whose files verified: a new ``medge quantize``, or a damaged copy, offers other pairs,
    so an earlier choice no longer holds)."""
    return {"model_sha256": model_sha256, "backend": backend,
            "opencv_threads": cv2.getNumThreads() if threads is None else int(threads), "opencv": cv2.__version__,
            "opencv_build_sha256": hashlib.sha256(cv2.getBuildInformation().encode()).hexdigest()[:16],
            "cpu": cpu_model(), "cores": os.cpu_count(), **({"variants": variants} if variants else {})}


def bundle_key(bundle: VerifiedBundle, threads: int | None = None) -> dict:
    """``record_key`` of a verified bundle on its backend."""
    if not bundle.variants:
        return record_key(bundle.sha256, bundle.backend, threads)
    usable = sorted(name for name, v in bundle.variants.items() if v.error is None)
    return record_key(bundle.sha256, bundle.backend, threads, {"sha256": bundle.manifest["variants"]["sha256"],
                                                              "usable": usable})


def record_path(key: dict) -> Path:
    return _cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json")


def read_recorded_pair(key: dict) -> tuple[str, str] | None:
    """The (engine, variant) recorded for ``key`` if its engine is one this box has; None when there is none or
    it is unreadable (records written before variants hold fp32)."""
    try:
        record = json.loads(record_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or record.get("engine") not in ENGINES:
        return None
    return record["engine"], str(record.get("variant") or FP32)


def record_engine(key: dict, engine: str, variant: str = FP32, timings: dict | None = None, by: str = "medge check") -> Path:
    """Write the choice for ``key`` atomically (temporary file, then rename). Raises OSError when it cannot."""
    path = record_path(key)
    atomic_write_text(path, json.dumps({"key": key, "engine": engine, "variant": variant, "timings": timings or {},
                                        "by": by}, indent=2))
    return path
