"""``medge parity``: PyTorch vs the edge engines (cv2.dnn, and onnxruntime) on every image of a data set.

Usage: medge parity --model bundles/xray --checkpoint runs/xray/best.pt --data data/xray --out parity.json

Every image under --data (all splits, recursively) goes through edge.preprocess
once; the same blob is given to each runtime. Reported per comparison: max and
mean |delta| of logits and probabilities, cosine similarity, top-1 agreement,
label flips, cases within 0.05 of the decision boundary, per class. Where the
``ort`` extra is installed, medge's onnxruntime engine (the bundle through the
same guards as in ``medge predict --engine onnxruntime``) is compared with
PyTorch and with cv2.dnn (edge-engine parity: either engine may run the bundle
on a box). The exit status is 1 when any comparison exceeds the tolerance, so it
can gate a release.

First it says whether --checkpoint holds the weights the bundle was exported
from (the bundle records their SHA-256). When it does not, nothing is compared
and the exit status is 2: differences between two different models say nothing
about the export.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def check_link(bundle: str, checkpoint: str, log) -> dict:
    """Say whether ``checkpoint`` is the bundle's own; a different one is a UsageError (exit 2), not a parity failure."""
    from medge.benchmarks.common import checkpoint_link, link_line
    from medge.edge.errors import UsageError
    from medge.edge.runtime.bundle import read_manifest

    link = checkpoint_link(read_manifest(bundle), checkpoint)
    if link["matches"] is False:
        raise UsageError(link_line(link, bundle) + ": parity would compare two different models, which says nothing "
                         "about the export. Give the checkpoint the bundle came from, or export this one")
    log(link_line(link, bundle))
    return link


def run_parity(bundle: str, checkpoint: str, data: str, tol=None, batch_size: int = 16, log=print) -> dict:
    from medge.benchmarks.common import environment
    from medge.benchmarks.runners import DnnRunner, TorchRunner
    from medge.edge.errors import MedgeError
    from medge.edge.inputs.scanning import scan_inputs
    from medge.edge.preprocess import preprocess_file
    from medge.edge.runtime.engines import ENGINES
    from medge.export.parity import Tolerance, compare, summary_line
    from medge.train.progress import progress

    tol = tol or Tolerance()
    link = check_link(bundle, checkpoint, log)
    dnn = DnnRunner(bundle)
    runners = [TorchRunner(checkpoint), dnn]
    ort = DnnRunner(bundle, engine="onnxruntime") if "onnxruntime" in ENGINES else None  # medge's engine, ort extra
    if ort:
        runners.append(ort)
    cfg, classes = dnn.model.preprocess_config, dnn.model.classes
    paths = scan_inputs([data]).paths
    names, skipped = [], []
    logits = {r.name: [] for r in runners}
    bar = progress(total=len(paths), desc="parity", unit="img")
    for i in range(0, len(paths), batch_size):
        blob = []
        for p in paths[i : i + batch_size]:
            try:
                blob.append(preprocess_file(p, cfg))
                names.append(p)
            except MedgeError as e:
                skipped.append({"path": p, "reason": str(e)})
        if blob:
            blob = np.stack(blob)
            for r in runners:
                logits[r.name].append(r.infer(blob))
        bar.update(len(paths[i : i + batch_size]))
    bar.close()
    if not names:
        raise MedgeError(f"{data}: no readable image to compare")
    comparisons = {}
    pairs = [("pytorch", r.name) for r in runners[1:]] + ([(dnn.name, ort.name)] if ort else [])
    for a, b in pairs:  # the last: edge-engine parity, cv2.dnn vs onnxruntime
        rep = compare(np.concatenate(logits[a]), np.concatenate(logits[b]), names, classes, tol, a, b)
        comparisons[f"{a}_vs_{b}"] = rep
        log(summary_line(rep))
    return {"benchmark": "medge parity", "bundle": str(bundle), "checkpoint": str(checkpoint), "checkpoint_link": link,
            "data": str(data), "images": len(names), "skipped": skipped, "comparisons": comparisons,
            "passed": all(c["passed"] for c in comparisons.values()),
            "notes": [] if ort else ["onnxruntime not installed (pip install 'medge[ort]'): its edge engine not compared"],
            "env": environment()}


def markdown(record: dict) -> str:
    lines = [f"Parity on {record['images']} images ({len(record['skipped'])} unreadable, skipped):", "",
             "| comparison | max abs logit | mean abs logit | max abs prob | min cosine | top-1 agreement | flips "
             "| near threshold | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, c in record["comparisons"].items():
        lines.append(f"| {name} | {c['logits']['max_abs']:.2e} | {c['logits']['mean_abs']:.2e} | "
                     f"{c['probabilities']['max_abs']:.2e} | {c['cosine']['min']:.6f} | {c['top1_agreement']:.2%} | "
                     f"{len(c['label_flips'])} | {len(c['near_threshold'])} | {'pass' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from medge.export.parity import Tolerance

    t = Tolerance()
    p = sub.add_parser("parity", help="compare PyTorch and the edge engines on a data set; gates a release (extra: train)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder")
    p.add_argument("--checkpoint", required=True, help="the training checkpoint the bundle was exported from")
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", help="write the JSON report here (parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--max-abs-logit", type=float, default=t.max_abs_logit, help="default: %(default)s")
    p.add_argument("--min-agreement", type=float, default=t.min_top1_agreement, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    return p


def run(args: argparse.Namespace) -> int:
    from medge.edge.outputs import atomic_write_text, check_output_file, wrote
    from medge.export.parity import Tolerance

    if args.out:
        check_output_file(args.out, args.overwrite, "report")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    record = run_parity(args.model, args.checkpoint, args.data, Tolerance(args.max_abs_logit, args.min_agreement),
                        args.batch_size, log)
    print(markdown(record))
    if args.out:
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
        wrote(args.out, "report")
    return 0 if record["passed"] else 1
