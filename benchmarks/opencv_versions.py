"""OpenCV versions side by side: forward time and parity of the six architectures.

Usage:
    python -m medge.benchmarks.opencv_versions --out opencv_versions.json --readme benchmarks/results/README.md
    python -m medge.benchmarks.opencv_versions --smoke      # checks the tool in a few minutes

Each contender is an OpenCV in a virtual environment of its own under ``--work``:
a pip wheel version (``4.6.0.66``: opencv-python-headless of that version, numpy<2
before 4.10, medge from this checkout without dependencies), or ``system`` (the
distribution's python3-opencv, seen from /usr/bin/python3 through
--system-site-packages). The environments are made once and reused.

The main environment (train extra) exports each architecture with the installed
(pinned) OpenCV: random weights with batch-norm statistics calibrated on random
images (the speed does not depend on the weights, and the outputs do depend on the
input), then PyTorch's logits on 16 synthetic radiographs through the edge
preprocessing. Then, per architecture, one worker process per contender loads the
bundle with each engine its OpenCV has (golden self-test included) and computes its
logits on the 16 inputs; the driver asks the workers in turn, in an order that
rotates every round, for a block of timed batch-1 forward passes, so that one runs
at a time and drift on a shared machine hits all alike. Reported per architecture
and contender/engine: p50/p90 ms, the ratio to the fastest, max |delta logit| and
top-1 agreement against PyTorch, max |delta p| against the reference contender.
The record (JSON, with each contender's environment) and the Markdown tables are
generated from measurements, never typed.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

DEFAULT_VERSIONS = ("4.6.0.66", "4.10.0.84", "4.14.0.94", "5.0.0.93")
N_INPUTS = 16
START, END = "<!-- opencv-versions:start -->", "<!-- opencv-versions:end -->"
REPO = Path(__file__).resolve().parents[1]


# ---- worker: runs inside a contender's environment (numpy + OpenCV + medge.edge only) ----

def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def worker(bundle: str, inputs: str, threads: int | None) -> int:
    """Load ``bundle`` with each engine, send logits on ``inputs``, then time blocks of passes on request."""
    import cv2

    from medge.edge import system
    from medge.edge.errors import MedgeError
    from medge.edge.model import Model
    from medge.edge.runtime.choice import try_engine
    from medge.edge.runtime.dnn import forward_batches, time_forwards
    from medge.edge.runtime.engines import engines_for

    if threads is not None:
        cv2.setNumThreads(threads)
    x = np.load(inputs)
    ready = {"opencv": cv2.__version__, "numpy": np.__version__, "software": system.software(),
             "threads": cv2.getNumThreads(), "engines": {}}
    nets = {}
    try:
        model = Model.open(bundle)
        for engine in engines_for("cpu"):
            trial, net, _ = try_engine(model, engine)
            entry = ready["engines"][engine] = {"error": trial.error, "batched": trial.batched}
            if trial.ok:
                nets[engine] = net
                entry["logits"] = forward_batches(net, x, model.chw, len(model.classes), 1).tolist()
    except MedgeError as e:
        ready["error"] = str(e)
    _send(ready)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("stop") or not nets:
            break
        times = time_forwards(nets, x[:1], model.chw, len(model.classes), command["passes"], command.get("warmup", 0))
        _send({"times": times})
    return 0


# ---- driver: the main environment ----

def ensure_env(spec: str, work: Path, log) -> Path:
    """The Python of the environment for ``spec``, made when missing (pip wheels from the package registry)."""
    if not (REPO / "pyproject.toml").is_file():
        raise SystemExit("run from a checkout of medge installed with pip install -e: the contenders install it from there")
    env = work / "envs" / spec
    python = env / "bin" / "python"
    if python.exists():
        return python
    system = spec == "system"
    log(f"making the environment for {spec} in {env}")
    base = "/usr/bin/python3" if system else sys.executable
    _run([base, "-m", "venv", *(["--system-site-packages"] if system else []), str(env)])
    if not system:
        from medge.edge.runtime.dnn import opencv_version

        numpy = "numpy<2" if opencv_version(spec) < (4, 10, 0) else f"numpy=={np.__version__}"
        _run([str(python), "-m", "pip", "install", "-q", f"opencv-python-headless=={spec}", numpy])
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)])
    return python


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return res.stdout


def calibrated_random_checkpoint(arch: str, size: int, path: Path, seed: int = 0) -> Path:
    """A one-channel, two-class model with random weights and batch-norm statistics of random images."""
    import torch

    from medge.edge.preprocess import PreprocessConfig
    from medge.train.checkpoint import save_model_checkpoint
    from medge.train.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, 1, 2)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 1, size, size) * 2 - 1)
    return save_model_checkpoint(path, model.eval(), arch, ["disease", "normal"], PreprocessConfig(size=size))


def prepare_models(archs: list[str], size: int, work: Path, log) -> tuple[Path, dict]:
    """Bundles (exported once per architecture and size, then reused), the shared inputs and PyTorch's logits."""
    from medge.edge.preprocess import PreprocessConfig, preprocess
    from medge.edge.runtime.bundle import read_manifest
    from medge.export.onnx_export import ExportConfig, export_bundle, torch_logits
    from medge.train.checkpoint import load_checkpoint, model_from_checkpoint
    from medge.train.synth import SynthConfig, make_image

    folder = work / f"models-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    scfg = SynthConfig(size=256, seed=2024)
    x = np.stack([preprocess(np.round(make_image(i, i % 2 == 1, scfg) * 255).astype(np.uint8), PreprocessConfig(size=size))
                  for i in range(N_INPUTS)])
    inputs = folder / "inputs.npy"
    np.save(inputs, x)
    models = {}
    for arch in archs:
        ckpt, bundle = folder / f"{arch}.pt", folder / arch
        if not ckpt.is_file() or not (bundle / "model.json").is_file():
            log(f"exporting {arch} at {size} px")
            calibrated_random_checkpoint(arch, size, ckpt)
            export_bundle(str(ckpt), str(bundle), cfg=ExportConfig(max_images=16), overwrite=True, log=lambda *a: None)
        reference = torch_logits(model_from_checkpoint(load_checkpoint(ckpt)), x)
        models[arch] = {"bundle": str(bundle), "torch_logits": reference, "manifest": read_manifest(bundle)}
    return inputs, models


def _start(python: Path, bundle: str, inputs: Path, threads: int | None) -> subprocess.Popen:
    cmd = [str(python), "-m", "medge.benchmarks.opencv_versions", "--worker", bundle, "--inputs", str(inputs)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def _ask(proc: subprocess.Popen, command: dict | None = None) -> dict:
    if command is not None:
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker ended: {proc.stderr.read()[-1500:]}")
    return json.loads(line)


def measure_arch(arch: str, bundle: str, inputs: Path, pythons: dict, rounds: int, block: int, warmup: int,
                 threads: int | None) -> dict:
    """Start one worker per contender on ``bundle``; interleaved blocks of timed passes; their logits."""
    procs = {name: _start(py, bundle, inputs, threads) for name, py in pythons.items()}
    results, times = {}, {}
    try:
        for name, proc in procs.items():
            try:
                results[name] = _ask(proc)
            except RuntimeError as e:
                results[name] = {"error": str(e), "engines": {}}
        active = [n for n in procs if any(e.get("logits") for e in results[n]["engines"].values())]
        for name in active:
            _ask(procs[name], {"passes": 1, "warmup": warmup})
            times[name] = {}
        for r in range(rounds):
            for name in active[r % len(active):] + active[: r % len(active)]:
                for engine, t in _ask(procs[name], {"passes": block})["times"].items():
                    times[name].setdefault(engine, []).extend(t)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                try:
                    proc.stdin.write(json.dumps({"stop": True}) + "\n")
                    proc.stdin.close()
                except OSError:
                    pass
            proc.wait(timeout=60)
    for name, res in results.items():
        res["times"] = times.get(name, {})
    return results


def summarize(models: dict, results: dict, reference: str, tol: float = 1e-3) -> dict:
    """Per architecture and contender/engine: latency, ratio to the fastest, parity vs PyTorch and vs the reference."""
    from medge.edge.numeric import latency_summary, softmax

    rows = {}
    for arch, per in results.items():
        ref_logits = models[arch]["torch_logits"]
        pinned = per.get(reference, {}).get("engines", {})
        pinned_p = [softmax(np.asarray(e["logits"], np.float32)) for e in pinned.values() if e.get("logits")]
        row = {}
        for name, res in per.items():
            name = f"{name}-{res.get('opencv')}" if name == "system" else name  # the distribution's version
            for engine, e in res["engines"].items():
                cell = {"opencv": res.get("opencv"), "error": e.get("error"), "batched": e.get("batched")}
                if e.get("logits"):
                    z = np.asarray(e["logits"], np.float32)
                    cell.update(latency_summary(res["times"][engine]))
                    cell["max_abs_logit"] = float(np.abs(z - ref_logits).max())
                    cell["top1_agreement"] = float((z.argmax(1) == ref_logits.argmax(1)).mean())
                    cell["parity_passed"] = cell["max_abs_logit"] <= tol and cell["top1_agreement"] == 1.0
                    if pinned_p:
                        cell["max_abs_prob_vs_reference"] = float(np.abs(softmax(z) - pinned_p[0]).max())
                row[f"{name} {engine}"] = cell
            if res.get("error"):
                row[f"{name} -"] = {"opencv": res.get("opencv"), "error": res["error"]}
        fastest = min((c["p50_ms"] for c in row.values() if "p50_ms" in c), default=float("nan"))
        for c in row.values():
            if "p50_ms" in c:
                c["ratio_to_fastest"] = c["p50_ms"] / fastest
        rows[arch] = row
    columns = list(dict.fromkeys(col for row in rows.values() for col in row))
    overall = {col: _overall(rows, lambda row, col=col: row.get(col)) for col in columns}
    # Per contender, what auto runs: its fastest engine that passes parity, model by model.
    contenders = list(dict.fromkeys(col.rsplit(" ", 1)[0] for col in columns))
    by_version = {name: _overall(rows, lambda row, name=name: _best_engine(row, name)) for name in contenders}
    eligible = {n: g["geomean_ratio"] for n, g in by_version.items() if g["all_models_pass"]}
    best = min(eligible, key=eligible.get) if eligible else None
    return {"rows": rows, "columns": columns, "overall": overall, "by_version": by_version, "fastest_passing": best,
            "reference_column": next((c for c in columns if c.startswith(reference + " ")), None)}


def _best_engine(row: dict, name: str) -> dict | None:
    """The fastest cell of contender ``name`` that passes parity (what auto runs), else any of its cells."""
    cells = [c for col, c in row.items() if col.rsplit(" ", 1)[0] == name]
    passing = [c for c in cells if c.get("parity_passed")]
    return min(passing, key=lambda c: c["p50_ms"]) if passing else (cells[0] if cells else None)


def _overall(rows: dict, pick) -> dict:
    """Geometric mean over the models of pick(row)'s ratio to the fastest, and whether every model passed parity."""
    cells = [pick(row) for row in rows.values()]
    ratios = [c.get("ratio_to_fastest") if c else None for c in cells]
    ran = all(r is not None for r in ratios) and bool(ratios)
    return {"geomean_ratio": math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ran else None,
            "all_models_pass": ran and all(c.get("parity_passed") for c in cells)}


def markdown(record: dict) -> str:
    """The tables of a record, for the README."""
    s = record["summary"]
    cols, env = s["columns"], record["environment"]
    head = "| model | " + " | ".join(cols) + " |\n| --- |" + " ---: |" * len(cols)
    lines = [f"Machine: {env['cpu']}, {env['cores']} cores; {record['threads_note']}; every contender in its own "
             f"virtual environment, exported once with OpenCV {record['exported_with']}; git {env.get('git_revision')}.", "",
             f"Forward pass, batch 1, p50 ms (ratio to the fastest for that model); {record['rounds']} interleaved rounds "
             f"of {record['block']} passes per contender (†: batches > 1 fail or differ there, so the edge runs one image "
             "per pass):", "", head]
    for arch, row in s["rows"].items():
        cells = []
        for c in cols:
            cell = row.get(c)
            if cell is None:
                cells.append("-")
            elif "p50_ms" not in cell:
                cells.append("fails")
            else:
                mark = " †" if cell["batched"] is False else ""
                cells.append(f"{cell['p50_ms']:.2f} ({cell['ratio_to_fastest']:.2f}){mark}")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    g = s["overall"]
    lines.append("| geometric mean ratio | " + " | ".join(
        f"{g[c]['geomean_ratio']:.3f}" if g[c]["geomean_ratio"] else "-" for c in cols) + " |")
    lines += ["", f"Parity on {record['inputs']} synthetic radiographs: max |delta logit| vs PyTorch (top-1 agreement); "
                  f"max |delta p| vs {s['reference_column']}:", "", head]
    for arch, row in s["rows"].items():
        cells = []
        for c in cols:
            cell = row.get(c)
            if cell is None or "max_abs_logit" not in cell:
                cells.append("-" if cell is None else f"fails: {(cell.get('error') or '')[:60]}")
            else:
                dp = cell.get("max_abs_prob_vs_reference")
                cells.append(f"{cell['max_abs_logit']:.1e} ({cell['top1_agreement']:.0%}); "
                             + (f"{dp:.1e}" if dp is not None else "-"))
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    v = s["by_version"]
    lines += ["", "Per OpenCV, with its fastest engine that passes parity on each model (what `auto` runs):", "",
              "| OpenCV | geometric mean ratio | parity on every model |", "| --- | ---: | --- |"]
    lines += [f"| {n} | {g['geomean_ratio']:.3f} | {'pass' if g['all_models_pass'] else 'FAIL'} |" if g["geomean_ratio"]
              else f"| {n} | - | fails to run some model |" for n, g in v.items()]
    best = s["fastest_passing"]
    lines += ["", f"Fastest over the set while passing parity (max |delta logit| <= 1e-3, top-1 100% on every model): "
                  f"**{best}** (geometric mean ratio {v[best]['geomean_ratio']:.3f})." if best else
              "No contender passed parity on every model."]
    return "\n".join(lines)


def update_readme(readme: Path, text: str, command: str) -> None:
    """Replace the README's section between START and END with ``text`` (``report.replace_section``)."""
    from medge.benchmarks.report import replace_section

    replace_section(readme, "opencv-versions", text, command)


def run_versions(args, log=print) -> dict:
    """Environments -> bundles and PyTorch references -> interleaved measurement per model -> summary."""
    import cv2

    from medge.benchmarks.common import environment

    work = Path(args.work)
    pythons = {spec: ensure_env(spec, work, log) for spec in args.versions}
    inputs, models = prepare_models(args.archs, args.size, work, log)
    results = {}
    for arch in args.archs:
        log(f"measuring {arch} on {', '.join(pythons)}")
        results[arch] = measure_arch(arch, models[arch]["bundle"], inputs, pythons, args.rounds, args.block, args.warmup,
                                     args.threads)
    reference = args.reference or next((s for s in args.versions if s.startswith(cv2.__version__)), args.versions[-1])
    threads = f"{args.threads} thread(s)" if args.threads else "OpenCV's default thread count"
    return {"benchmark": "opencv_versions", "versions": list(args.versions), "reference": reference,
            "archs": list(args.archs), "size": args.size, "inputs": N_INPUTS, "rounds": args.rounds, "block": args.block,
            "warmup": args.warmup, "threads": args.threads, "threads_note": threads, "exported_with": cv2.__version__,
            "environment": environment(), "results": results, "summary": summarize(models, results, reference)}


def main(argv=None) -> int:
    from medge.benchmarks.common import add_out_arguments, research_parser
    from medge.train.config import ARCHS

    p = research_parser(__doc__, prog="python -m medge.benchmarks.opencv_versions")
    p.add_argument("--versions", nargs="+",
                   help=f"opencv-python-headless versions (pip), or 'system' (default: {' '.join(DEFAULT_VERSIONS)}; "
                        f"with --smoke: 4.6.0.66 {DEFAULT_VERSIONS[-1]})")
    p.add_argument("--reference", help="contender the probabilities are compared with (default: the installed OpenCV's)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help="architectures (default: all six)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--block", type=int, default=5, help="timed passes per contender and round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes per engine first (default: %(default)s)")
    p.add_argument("--threads", type=int, help="cv2.setNumThreads in every contender (default: OpenCV's)")
    p.add_argument("--work", default="runs/opencv_versions", help="environments and bundles (default: %(default)s)")
    add_out_arguments(p)
    p.add_argument("--markdown", help="write the Markdown tables here too (parent folders are created)")
    p.add_argument("--readme", help="replace the README's opencv-versions section with the tables")
    p.add_argument("--smoke", action="store_true", help="two models at 64 px, two contenders, 2 short rounds")
    p.add_argument("--worker", metavar="BUNDLE", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.inputs, args.threads)
    if args.smoke:
        args.archs, args.size, args.rounds, args.block, args.warmup = ["resnet18", "mobilenet_v3_small"], 64, 2, 2, 1
        args.versions = args.versions or ["4.6.0.66", DEFAULT_VERSIONS[-1]]
    args.versions = args.versions or list(DEFAULT_VERSIONS)
    from medge.benchmarks.common import check_outputs, save_record
    from medge.edge.outputs import atomic_write_text, wrote

    status = check_outputs("opencv_versions", args.overwrite, {"record": args.out, "tables": args.markdown})
    if status:
        return status
    record = run_versions(args, log=lambda m: print(m, file=sys.stderr))
    text = markdown(record)
    save_record(record, args.out)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
        wrote(args.markdown, "tables")
    if args.readme:
        command = "python -m medge.benchmarks.opencv_versions " + " ".join(argv if argv is not None else sys.argv[1:])
        update_readme(Path(args.readme), text, command)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
