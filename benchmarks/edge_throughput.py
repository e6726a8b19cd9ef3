"""End-to-end throughput on files: medge's pipelined edge vs a plain sequential loop.

Usage: python -m benchmarks.edge_throughput --model bundles/xray --make 24 --rounds 3 --out edge_tp.json

Contenders, on the same files, interleaved round by round (the order alternates)
so that machine drift hits both:
  medge       ``Model.predict_iter``: reading + preprocessing on worker threads,
              overlapped with batched cv2.dnn forward passes;
  sequential  the plain loop: read -> edge.preprocess -> net.forward, one image at a time.
Both use OpenCV's default thread count for inference. Outputs are compared
(they must be identical). ``--make N`` writes N 2048x2048 radiograph-like PNGs
(half 8-bit, half 16-bit) to a temporary folder; ``--images DIR`` uses yours.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from medge.benchmarks.common import add_out_arguments, emit, environment
from medge.edge.image import write_image
from medge.edge.inputs import scan_inputs
from medge.edge.model import Model
from medge.edge.outputs import check_output_file
from medge.edge.preprocess import preprocess_file
from medge.edge.runtime import forward, load_net


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


def run_medge(model: Model, paths, batch_size: int, workers: int) -> np.ndarray:
    return np.stack([np.float32(p.logits) for p in model.predict_iter(paths, batch_size, workers)])


def run_sequential(net, paths, cfg, chw, k) -> np.ndarray:
    return np.concatenate([forward(net, preprocess_file(p, cfg)[None], chw, k) for p in paths])


def measure(bundle: str, paths: list[str], rounds: int = 3, batch_size: int = 8, workers: int | None = None,
            others: dict | None = None, log=None) -> dict:
    """Images/s per contender on ``paths``, interleaved; ``others`` maps a name to a runner
    (``infer(blob)``) fed by the same sequential read -> preprocess loop (onnxruntime, PyTorch)."""
    model = Model.load(bundle)
    net = load_net(model.onnx_bytes, model.engine)  # a net of its own for the plain loop
    cfg, k = model.preprocess_config, len(model.classes)
    contenders = {
        "medge": lambda: run_medge(model, paths, batch_size, workers),
        "sequential": lambda: run_sequential(net, paths, cfg, model.chw, k),
    }
    for name, runner in (others or {}).items():
        contenders[name] = lambda r=runner: np.concatenate([r.infer(preprocess_file(p, cfg)[None]) for p in paths])
    outputs = {name: fn() for name, fn in contenders.items()}  # warm-up, and the outputs to compare
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        if log is not None:
            log(f"end to end: round {r + 1} of {rounds} ({len(names)} pipelines, {len(paths)} files each)")
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    ips = {name: len(paths) / float(np.median(t)) for name, t in times.items()}
    ref = outputs["sequential"]
    return {
        "benchmark": "edge_throughput", "images": len(paths), "rounds": rounds, "batch_size": batch_size,
        "workers": workers, "model": {"arch": model.manifest["model"].get("arch"), "input": list(model.chw)},
        "images_per_s": ips, "seconds_per_round": times,
        "ms_per_image": {n: 1000 / v for n, v in ips.items()},
        "speedup_of_medge": {n: ips["medge"] / v for n, v in ips.items() if n != "medge"},
        "outputs_identical": bool(np.array_equal(outputs["medge"], ref)),
        "max_abs_logit_vs_sequential": {n: float(np.abs(o - ref).max()) for n, o in outputs.items()},
        "env": environment(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", help="folder of images to classify")
    g.add_argument("--make", type=int, help="write this many 2048x2048 PNGs to a temporary folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, help="default: one per core")
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.out:
        check_output_file(a.out, a.overwrite, "record")
    with tempfile.TemporaryDirectory() as tmp:
        paths = scan_inputs([a.images]).paths if a.images else make_images(tmp, a.make)
        rec = measure(a.model, paths, a.rounds, a.batch_size, a.workers)
    emit(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
