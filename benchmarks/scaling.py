"""How end-to-end throughput scales with cores: measured on 1 and 2 cores, the pipeline's model for more.

Usage: python -m medge.benchmarks.scaling --model bundles/xray --cores 1 2 --make 16 --rounds 3 --out scaling.json

For each core count C, a fresh subprocess pinned to C of this process's cores
(CPU affinity; OpenCV, onnxruntime and BLAS threads set to C) runs
``benchmarks.edge_throughput`` on the same files: medge's pipeline on cv2.dnn and
on onnxruntime, and the sequential loops (cv2.dnn; onnxruntime with C threads).

The model (``edge.execution.budget``), from the stage costs medge measured on the
smallest core count (d = reading + preprocessing, f = one image's share of a
single-threaded batched forward pass, both CPU-ms per image):
  medge:      images/s = e x min(C / (d + f), forwards / f) x 1000: C threads that each
              read or infer, whichever is next, at most ``forwards`` passes at once
              (the budget ``plan_budget`` gives on C cores: min(C, MAX_STREAMS)), and e
              the efficiency measured on the largest core count (measured / ideal:
              memory bandwidth, the GIL, the OS);
  sequential: a two-point Amdahl fit of its seconds per image, T(C) = a + b / C,
              through the figures measured on the two smallest core counts.
The model ignores what more cores may not give: memory bandwidth shared by more
passes at once, turbo clocks that drop as more cores work, SMT siblings counted as cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from medge.benchmarks.common import add_out_arguments, check_outputs, research_parser, save_record

PAPER_CORES = (8, 16)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ENGINES = (("medge", "sequential", "thread_budget"), ("medge (onnxruntime)", "onnxruntime", "thread_budget_onnxruntime"))


def run_child(bundle: str, images: str, cores: int, rounds: int) -> dict:
    """``edge_throughput.measure`` pinned to ``cores`` cores (called in the subprocess)."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise SystemExit(f"{cores} cores asked for, this process may use {len(allowed)}")
    os.sched_setaffinity(0, allowed[:cores])
    import cv2

    cv2.setNumThreads(cores)
    from medge.benchmarks import edge_throughput
    from medge.benchmarks.runners import optional_ort
    from medge.edge.inputs.scanning import scan_inputs

    paths = scan_inputs([images]).paths
    with open(os.path.join(bundle, "model.onnx"), "rb") as f:
        ort = optional_ort(f.read())
    if ort:
        ort.set_threads(cores)
    rec = edge_throughput.measure(bundle, paths, rounds, others={"onnxruntime": ort} if ort else {})
    rec["cores"] = cores
    return rec


def measure_cores(bundle: str, images: str, cores: int, rounds: int, log=lambda msg: None) -> dict:
    """``run_child`` in a fresh subprocess (thread pools sized before any import)."""
    log(f"scaling: {cores} core(s)")
    env = {**os.environ, **{v: str(cores) for v in THREAD_VARS}}
    cmd = [sys.executable, "-m", "medge.benchmarks.scaling", "--model", bundle, "--images", images, "--child", str(cores),
           "--rounds", str(rounds)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scaling run on {cores} core(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def pipeline_model(costs: dict, cores: int, efficiency: float = 1.0) -> dict:
    """Images/s of medge's pipeline on ``cores`` cores by the model of ``edge.execution.budget`` (see the module docstring)."""
    from medge.edge.execution.budget import StageCosts, plan_budget

    d, f = costs["decode_ms"], costs["forward_ms"]
    budget = plan_budget(cores, StageCosts(d, f))
    bounds = {"cores": cores / (d + f), "passes at once": budget.forwards / f}
    limit = min(bounds, key=bounds.get)
    return {"images_per_s": 1000 * efficiency * bounds[limit], "limited_by": limit, "threads": budget.threads,
            "forwards": budget.forwards}


def amdahl_fit(ips_by_cores: dict[int, float]) -> tuple[float, float] | None:
    """(a, b) of T(C) = a + b / C seconds per image through the two smallest core counts; None with fewer than two."""
    if len(ips_by_cores) < 2:
        return None
    (c1, i1), (c2, i2) = sorted(ips_by_cores.items())[:2]
    t1, t2 = 1 / i1, 1 / i2
    b = (t1 - t2) / (1 / c1 - 1 / c2)
    return t1 - b / c1, b


def model(runs: dict[int, dict], paper_cores=PAPER_CORES) -> dict:
    """The model's images/s for every measured and paper core count, per engine, from the measured runs."""
    small, large = min(runs), max(runs)
    out = {}
    for medge_name, loop_name, budget_key in ENGINES:
        budget = runs[small].get(budget_key)
        if not budget or not budget.get("costs") or medge_name not in runs[large]["images_per_s"]:
            continue
        ideal = pipeline_model(budget["costs"], large)["images_per_s"]
        efficiency = min(1.0, runs[large]["images_per_s"][medge_name] / ideal)
        fit = amdahl_fit({c: r["images_per_s"][loop_name] for c, r in runs.items() if loop_name in r["images_per_s"]})
        rows = {}
        for c in sorted(set(runs) | set(paper_cores)):
            rows[str(c)] = {medge_name: pipeline_model(budget["costs"], c, efficiency),
                            loop_name: 1 / (fit[0] + fit[1] / c) if fit and fit[0] + fit[1] / c > 0 else None}
        out[medge_name] = {"costs": budget["costs"], "efficiency": efficiency, "amdahl_fit_s": fit, "by_cores": rows}
    return out


def run_scaling(bundle: str, images: str, cores: tuple[int, ...], rounds: int, log=lambda msg: None) -> dict:
    from medge.benchmarks.common import environment

    runs = {c: measure_cores(bundle, images, c, rounds, log) for c in cores}
    measured = {str(c): r["images_per_s"] for c, r in runs.items()}
    return {"benchmark": "medge scaling", "bundle": bundle, "images": runs[min(runs)]["images"], "rounds": rounds,
            "measured_images_per_s": measured, "model": model(runs),
            "thread_budgets": {str(c): {"cv2.dnn": r.get("thread_budget"), "onnxruntime": r.get("thread_budget_onnxruntime")}
                               for c, r in runs.items()},
            "env": environment()}


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(rec: dict) -> str:
    """Measured and modelled images/s per core count (generated from the record)."""
    lines = [f"Scaling, end to end on {rec['images']} files (images/s; measured on this machine, pinned to C cores; "
             "model: edge.execution.budget's pipeline model from the stage costs measured here, see benchmarks/scaling.py):", ""]
    if not rec["model"]:
        lines.append("No pipelined run to model: give more files than the batch size (8).")
    for medge_name, m in rec["model"].items():
        loop = next(loop for name, loop, _ in ENGINES if name == medge_name)
        c = m["costs"]
        lines += [f"{medge_name}: d = {c['decode_ms']:.0f} core-ms reading + preprocessing, f = {c['forward_ms']:.0f} "
                  f"core-ms single-threaded inference per image; pipeline efficiency {m['efficiency']:.2f}.", "",
                  f"| cores | {medge_name} measured | {medge_name} model | threads (passes at once) | "
                  f"{loop} measured | {loop} model |", "| ---: | ---: | ---: | --- | ---: | ---: |"]
        for cores, row in m["by_cores"].items():
            got = rec["measured_images_per_s"].get(cores, {})
            p = row[medge_name]
            lines.append(f"| {cores} | {_fmt(got.get(medge_name))} | {_fmt(p['images_per_s'])} ({p['limited_by']}) | "
                         f"{p['threads']} ({p['forwards']}) | {_fmt(got.get(loop))} | {_fmt(row[loop])} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--model", required=True, help="bundle folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", help="folder of images")
    g.add_argument("--make", type=int, help="write this many 2048x2048 PNGs to a temporary folder")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=2048, help="side of the --make files (default: %(default)s)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one core count, in this process (run_child)
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.child:
        rec = run_child(a.model, a.images, a.child, a.rounds)
        rec.pop("env", None)
        print(json.dumps(rec))
        return 0
    status = check_outputs("scaling", a.overwrite, {"record": a.out})  # before minutes of measuring
    if status:
        return status
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = a.images
        if not images:
            from medge.benchmarks.edge_throughput import make_images

            make_images(tmp, a.make, a.size)
            images = tmp
        rec = run_scaling(a.model, images, tuple(a.cores), a.rounds, log)
    print(markdown(rec))
    save_record(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
