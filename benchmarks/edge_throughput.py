"""End-to-end throughput on files: medge's pipelined edge vs plain sequential loops.

Usage: python -m medge.benchmarks.edge_throughput --model bundles/xray --make 24 --rounds 3 --busy-cores 1 --out tp.json

Contenders, on the same files, interleaved round by round (the order rotates)
so that machine drift hits all:
  medge                ``Model.predict_iter`` on cv2.dnn: one thread per core, each
                       reading + preprocessing the next file or running a
                       single-threaded batched forward pass, whichever is next
                       (``edge.execution.pipeline``, ``edge.execution.budget``);
  medge (onnxruntime)  the same pipeline on the onnxruntime engine (``ort`` extra);
  medge (before)       the cv2.dnn pipeline with every PNG decoded by OpenCV alone, as
                       medge ran before the png extra (only where it is installed:
                       without it, ``medge`` is that pipeline);
  medge (auto)         the same pipeline on what ``medge predict`` runs here: the fastest
                       (engine, variant) whose gate passed, a fast variant included
                       (``edge.runtime.choice``), when that is not cv2.dnn fp32;
  sequential           the plain loop: read -> edge.preprocess -> cv2.dnn forward, one
                       image at a time, OpenCV's default threads;
  others               the same loop into another runtime (``others``: onnxruntime's
                       default session, PyTorch), fed by the same preprocessing.
Every figure is file on disk to logits. ``--busy-cores N`` runs medge and the
sequential loop again while N background processes each keep a core busy (a
busy loop), to show how the pipeline fares when other work holds cores. Outputs
are compared with the sequential loop's. ``--make N`` writes N 2048x2048
radiograph-like PNGs (half 8-bit, half 16-bit) to a temporary folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, emit, environment, opencv_png, research_parser
from medge.benchmarks.runners import load_opencv_model
from medge.edge.inputs import png
from medge.edge.inputs.image import write_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from medge.edge.preprocess import preprocess_file
from medge.edge.runtime.dnn import forward, load_net
from medge.edge.runtime.engines import ENGINES

MEDGE_AUTO = "medge (auto)"  # the pipeline on the engine and variant Model.load picks here
ORT_ENGINE = "onnxruntime"  # the edge engine of the ort extra (edge.runtime.ort)
MEDGE_ORT = "medge (onnxruntime)"
MEDGE_BEFORE = "medge (before)"  # cv2.dnn fp32 with OpenCV's PNG decoding: the pipeline before fast variants and png


def make_images(folder: str, n: int, size: int = 2048) -> list[str]:
    """N radiograph-like PNGs, alternately 8-bit and 16-bit (12-bit values)."""
    from medge.train.synth import SynthConfig, make_image  # numpy + cv2 only

    cfg = SynthConfig(size=size, seed=7)
    paths = []
    for i in range(n):
        img = make_image(i, i % 2 == 1, cfg)
        arr = np.round(img * 4095).astype(np.uint16) if i % 2 else np.round(img * 255).astype(np.uint8)
        p = os.path.join(folder, f"img{i:04d}.png")
        write_image(p, arr)
        paths.append(p)
    return paths


def run_medge(model: Model, paths, batch_size: int, workers: int | None) -> np.ndarray:
    return np.stack([np.float32(p.logits) for p in model.predict_iter(paths, batch_size, workers)])


def _with_opencv_png(run, *args):
    with opencv_png():
        return run(*args)


def run_sequential(net, paths, cfg, chw, k) -> np.ndarray:
    return np.concatenate([forward(net, preprocess_file(p, cfg)[None], chw, k) for p in paths])


@contextmanager
def background_load(cores: int):
    """``cores`` processes that each keep one core busy (a Python busy loop) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, cores))]
    try:
        time.sleep(0.2 if procs else 0)  # let them start
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def race(contenders: dict, rounds: int, images: int, log=lambda msg: None, label: str = "") -> dict[str, list[float]]:
    """Seconds per round of each contender, interleaved (the order rotates each round)."""
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
        log(f"end to end{label}: round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {images / times[n][-1]:.1f}" for n in names) + " images/s")
    return times


def measure(bundle: str, paths: list[str], rounds: int = 3, batch_size: int = 8, workers: int | None = None,
            others: dict | None = None, busy_cores: int = 0, log=lambda msg: None) -> dict:
    """Images/s per contender on ``paths``, interleaved; ``others`` maps a name to a runner
    (``infer(blob)``) fed by the same sequential read -> preprocess loop (onnxruntime, PyTorch);
    ``busy_cores`` > 0 adds a run of medge vs the sequential loop under that background load."""
    model = load_opencv_model(bundle)
    net = load_net(model.onnx_bytes, model.engine)  # a net of its own for the plain loop
    cfg, k = model.preprocess_config, len(model.classes)
    contenders = {
        "medge": lambda: run_medge(model, paths, batch_size, workers),
        "sequential": lambda: run_sequential(net, paths, cfg, model.chw, k),
    }
    if png.available():
        contenders[MEDGE_BEFORE] = lambda: _with_opencv_png(run_medge, model, paths, batch_size, workers)
    ort_model = None
    if ORT_ENGINE in ENGINES:
        ort_model = Model.load(bundle, engine=ORT_ENGINE)  # the same SHA-256 and golden self-test
        contenders[MEDGE_ORT] = lambda: run_medge(ort_model, paths, batch_size, workers)
    auto = Model.load(bundle)  # what medge predict runs here: the fastest gated (engine, variant)
    if (auto.engine, auto.variant) != (model.engine, model.variant):
        contenders[MEDGE_AUTO] = lambda: run_medge(auto, paths, batch_size, workers)
    for name, runner in (others or {}).items():
        contenders[name] = lambda r=runner: np.concatenate([r.infer(preprocess_file(p, cfg)[None]) for p in paths])
    log(f"end to end: warm-up round of {', '.join(contenders)} on {len(paths)} files")
    outputs = {name: fn() for name, fn in contenders.items()}  # warm-up, and the outputs to compare
    times = race(contenders, rounds, len(paths), log)
    ips = {name: len(paths) / float(np.median(t)) for name, t in times.items()}
    ref = outputs["sequential"]
    rec = {
        "benchmark": "edge_throughput", "images": len(paths), "rounds": rounds, "batch_size": batch_size,
        "workers": workers, "model": {"arch": model.manifest["model"].get("arch"), "input": list(model.chw)},
        "images_per_s": ips, "seconds_per_round": times,
        "ms_per_image": {n: 1000 / v for n, v in ips.items()},
        "speedup_of_medge": {n: ips["medge"] / v for n, v in ips.items() if n != "medge"},
        "outputs_identical": bool(np.array_equal(outputs["medge"], ref)),
        "max_abs_logit_vs_sequential": {n: float(np.abs(o - ref).max()) for n, o in outputs.items()},
        "auto": {**auto.runtime, "reason": auto.engine_choice.reason},
        "thread_budget": model.budget.to_dict() if model.budget else None,
        "thread_budget_onnxruntime": ort_model.budget.to_dict() if ort_model and ort_model.budget else None,
        "env": environment(),
    }
    if busy_cores:
        loaded = {n: contenders[n] for n in ("medge", "sequential")}
        with background_load(busy_cores):
            t_busy = race(loaded, rounds, len(paths), log, f" with {busy_cores} core(s) busy")
            budget = model.budget
        busy_ips = {n: len(paths) / float(np.median(t)) for n, t in t_busy.items()}
        rec["under_load"] = {"busy_cores": busy_cores, "images_per_s": busy_ips, "seconds_per_round": t_busy,
                             "speedup_of_medge": busy_ips["medge"] / busy_ips["sequential"],
                             "thread_budget": budget.to_dict() if budget else None}
    return rec


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--model", required=True, help="bundle folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", help="folder of images to classify")
    g.add_argument("--make", type=int, help="write this many 2048x2048 PNGs to a temporary folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, help="threads of medge's pipeline (default: one per core, edge.execution.budget)")
    p.add_argument("--busy-cores", type=int, default=0, help="also race under this many busy cores (default: %(default)s)")
    add_out_arguments(p)
    a = p.parse_args(argv)
    status = check_outputs("edge_throughput", a.overwrite, {"record": a.out})
    if status:
        return status
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = scan_inputs([a.images]).paths if a.images else make_images(tmp, a.make)
        rec = measure(a.model, paths, a.rounds, a.batch_size, a.workers, busy_cores=a.busy_cores, log=log)
    emit(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
