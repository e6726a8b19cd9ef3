"""medge batch on Ray against medge predict on the same files, and a model for N nodes.

Usage: python -m medge.benchmarks.batch_scaling --model bundles/xray --make 32 --rounds 3 --out batch_scaling.json

Contenders, on the same files, interleaved round by round (the order rotates), each
timed from the files on disk to every record in the driver:
  predict   what ``medge predict`` does after parsing its options: ``Model.load`` (SHA-256,
            self-test) and ``Model.predict_iter``, the pipeline over all of this box's cores;
  ray-1     what ``medge batch`` does once Ray runs (``edge.apps.batch.predict_on_ray``): an
            actor pool of 1 worker, each loading the bundle (``BatchPredictor``), the files
            sent as tasks, the rows back in the driver;
  ray-2     the same with 2 workers (one per core of a 2-core box).
A local Ray instance (``ray.init(num_cpus=<cores>)``) is started once and its start-up
time reported apart (``ray_init_s``): a cluster is started once per archive, not per
file. For each Ray round the time to the first row (actor start, bundle load, the first
task) is recorded, and the steady rate after it, so that the overhead is measured, not
assumed.

The model for N nodes: each worker is one core; a core classifies an image in
``core_s_per_image`` = workers / steady rate (ray-2, measured here). N nodes of C cores
then give ``N x C / core_s_per_image`` images/s, once their workers started (the
measured time to the first row) and as long as the files reach the nodes as fast
(a shared file system's bandwidth, which this box does not measure).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from medge.benchmarks.common import add_out_arguments, environment, save_record
from medge.edge.errors import MedgeError
from medge.edge.outputs import check_output_file

NODES = (1, 4, 16, 64)
ARCHIVE_IMAGES = 1_000_000  # a hospital network's retrospective archive, for the model's days


def run_predict(bundle: str, paths: list[str]) -> dict:
    """``medge predict``'s work: load the bundle, run the pipeline; seconds and the probabilities."""
    from medge.edge.model import Model

    t0 = time.perf_counter()
    model = Model.load(bundle)
    probs = [p.probabilities for p in model.predict_iter(paths)]
    return {"s": time.perf_counter() - t0, "probabilities": probs}


def run_ray(bundle: str, paths: list[str], workers: int) -> dict:
    """``medge batch``'s work on a running Ray: seconds, time to the first rows, and the logits in input order."""
    from medge.edge.apps.batch import predict_on_ray

    t0 = time.perf_counter()
    first_s, first_rows, got = None, 0, {}
    for i, rec in predict_on_ray(list(enumerate(paths)), {"bundle": bundle, "threads": 1}, workers):
        got[i] = rec
        if first_s is None:
            first_s = time.perf_counter() - t0
        if time.perf_counter() - t0 - first_s < 1e-3:  # rows of the first task arrive together
            first_rows = len(got)
    s = time.perf_counter() - t0
    steady = (len(paths) - first_rows) / (s - first_s) if s > first_s and len(paths) > first_rows else None
    probs = [got[i]["probabilities"] for i in range(len(paths))]
    return {"s": s, "first_row_s": first_s, "first_rows": first_rows, "steady_images_per_s": steady, "probabilities": probs}


def measure(bundle: str, paths: list[str], rounds: int, log=lambda msg: None) -> dict:
    """Interleaved rounds of predict, ray-1 and ray-2 (after a warm-up round of each) on a local Ray."""
    import ray

    from medge.edge.system import usable_cores

    cores = usable_cores()
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        contenders = {"predict": lambda: run_predict(bundle, paths), "ray-1": lambda: run_ray(bundle, paths, 1),
                      "ray-2": lambda: run_ray(bundle, paths, min(2, cores))}
        log(f"batch_scaling: warm-up of {', '.join(contenders)} on {len(paths)} files")
        warm = {name: fn() for name, fn in contenders.items()}
        runs = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                runs[name].append(contenders[name]())
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {len(paths) / runs[n][-1]['s']:.2f}" for n in names)
                + " images/s")
    finally:
        ray.shutdown()
    return summarize(paths, rounds, cores, ray_init_s, runs, warm)


def summarize(paths, rounds, cores, ray_init_s, runs, warm) -> dict:
    """The record: medians per contender, ratios to predict, Ray's overhead, the model for N nodes."""
    med = lambda name, key: float(np.median([r[key] for r in runs[name] if r.get(key) is not None]))
    ips = {name: len(paths) / med(name, "s") for name in runs}
    overhead = {name: {"first_row_s": med(name, "first_row_s"), "first_rows": int(med(name, "first_rows")),
                       "steady_images_per_s": med(name, "steady_images_per_s")} for name in runs if name != "predict"}
    workers = min(2, cores)
    core_s = workers / overhead["ray-2"]["steady_images_per_s"]
    model = {str(n): {"images_per_s": n * cores / core_s,
                      "days_for_archive": ARCHIVE_IMAGES * core_s / (n * cores) / 86400} for n in NODES}
    same = all(warm[n]["probabilities"] == warm["predict"]["probabilities"] for n in ("ray-1", "ray-2"))
    return {"benchmark": "medge batch_scaling", "images": len(paths), "rounds": rounds, "cores": cores,
            "images_per_s": ips, "ratio_to_predict": {n: ips[n] / ips["predict"] for n in ips if n != "predict"},
            "goal": {"ray-2 / predict": 0.85, "met": ips["ray-2"] / ips["predict"] >= 0.85},
            "steady_ratio_to_predict": {n: overhead[n]["steady_images_per_s"] / ips["predict"] for n in overhead},
            "ray_init_s": ray_init_s, "ray_overhead": overhead, "seconds_per_round": {n: [r["s"] for r in runs[n]] for n in runs},
            "model": {"core_s_per_image": core_s, "archive_images": ARCHIVE_IMAGES, "cores_per_node": cores, "by_nodes": model},
            "probabilities_identical_to_predict": same, "env": environment()}


def markdown(rec: dict) -> str:
    """The README's table, generated from the record."""
    ips, ratio, o = rec["images_per_s"], rec["ratio_to_predict"], rec["ray_overhead"]
    lines = [f"{rec['images']} files, median of {rec['rounds']} interleaved rounds on {rec['env']['cpu']} "
             f"({rec['cores']} cores); images/s from files on disk to every record:", "",
             "| contender | images/s | x predict | time to first row (s) | steady images/s after it | x predict |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| medge predict (pipeline, all cores) | {ips['predict']:.2f} | 1.00 | | | |"]
    for n in ("ray-1", "ray-2"):
        lines.append(f"| medge batch, {n[-1]} Ray worker(s) | {ips[n]:.2f} | {ratio[n]:.2f} | {o[n]['first_row_s']:.1f} | "
                     f"{o[n]['steady_images_per_s']:.2f} | {rec['steady_ratio_to_predict'][n]:.2f} |")
    m = rec["model"]
    lines += ["", f"Goal ray-2 >= 0.85 x predict: {'met' if rec['goal']['met'] else 'not met'} ({ratio['ray-2']:.2f} end to end, "
              f"{rec['steady_ratio_to_predict']['ray-2']:.2f} after the first row). "
              f"Records identical to predict's: {'yes' if rec['probabilities_identical_to_predict'] else 'NO'}. "
              f"Starting the local Ray instance took {rec['ray_init_s']:.1f} s (once per run of medge batch).", "",
              f"Model for N nodes of {m['cores_per_node']} cores ({m['core_s_per_image']:.3f} core-s per image, measured): ",
              "", "| nodes | images/s | days for 1 million images |", "| ---: | ---: | ---: |"]
    lines += [f"| {n} | {v['images_per_s']:.1f} | {v['days_for_archive']:.2f} |" for n, v in m["by_nodes"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", help="folder of images")
    g.add_argument("--make", type=int, help="write this many radiograph-like PNGs to a temporary folder")
    p.add_argument("--size", type=int, default=2048, help="side of the --make files (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3)
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.out:  # before minutes of measuring
        try:
            check_output_file(a.out, a.overwrite, "record")
        except MedgeError as e:
            print(f"batch_scaling: {e}", file=sys.stderr)
            return e.exit_status
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if a.images:
            from medge.edge.inputs import scan_inputs

            paths = scan_inputs([a.images]).paths
        else:
            from medge.benchmarks.edge_throughput import make_images

            paths = make_images(tmp, a.make, a.size)
        rec = measure(os.path.abspath(a.model), paths, a.rounds, log)
    print(markdown(rec))
    save_record(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
