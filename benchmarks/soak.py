"""Memory soak: resident memory over many edge predictions (it must stay flat).

Usage: python -m benchmarks.soak --model bundles/xray --n 10000 --out soak.json

Runs ``Model.predict`` on arrays (a fixed set of preprocessed-size-agnostic gray
images, cycling) and samples the process's resident set size every ``--every``
predictions. Reports the RSS series, growth from the first sample after warm-up
to the last, and the time taken.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from medge.benchmarks.common import add_out_arguments, emit, rss_mb
from medge.edge.model import Model
from medge.edge.outputs import check_output_file


def soak(bundle: str, n: int = 10_000, every: int = 500, batch_size: int = 1) -> dict:
    model = Model.load(bundle)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512), dtype=np.uint8) for _ in range(8)]
    samples, done, t0 = [], 0, time.perf_counter()
    while done < n:
        chunk = [images[(done + i) % len(images)] for i in range(min(every, n - done))]
        preds = model.predict(chunk, batch_size=batch_size, workers=0)
        assert all(p.ok for p in preds)
        done += len(chunk)
        samples.append({"predictions": done, "rss_mb": round(rss_mb(), 1)})
    base = samples[min(1, len(samples) - 1)]["rss_mb"]
    return {"benchmark": "soak", "predictions": n, "batch_size": batch_size, "seconds": time.perf_counter() - t0,
            "rss_mb": samples, "growth_mb_after_warmup": samples[-1]["rss_mb"] - base,
            "max_rss_mb": max(s["rss_mb"] for s in samples)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=1)
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.out:
        check_output_file(a.out, a.overwrite, "record")
    rec = soak(a.model, a.n, a.every, a.batch_size)
    emit(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
