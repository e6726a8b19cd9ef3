"""``medge parity``: PyTorch vs the edge engines (cv2.dnn, onnxruntime, OpenVINO) and the fast variants on every image.

Usage: medge parity --model bundles/xray --checkpoint runs/xray/best.pt --data data/xray --out parity.json

Every image under --data (all splits, recursively) goes through edge.preprocess
once; the same blob is given to each runtime. Reported per comparison: max and
mean |delta| of logits and probabilities, cosine similarity, top-1 agreement,
label flips, decisions flipped at the bundle's operating point, cases within 0.05
of the decision boundary, per class. Where the ``ort`` and ``openvino`` extras are
installed, medge's onnxruntime and OpenVINO engines (through the same guards as in
``medge predict --engine``) are compared with PyTorch and with cv2.dnn at the logit
tolerance (either engine may run the bundle on a box); each gated fast variant
(bf16, int8) is compared with cv2.dnn fp32 by its decisions at the operating point,
at most its gate's --max-flips. The exit status is 1 when any comparison fails,
so it can gate a release.

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


def parity_runners(bundle: str, checkpoint: str) -> tuple[list, list]:
    """PyTorch, cv2.dnn fp32, medge's other engines in fp32 (extras installed), and each gated fast variant here."""
    from medge.benchmarks.runners import DnnRunner, TorchRunner, offered_pairs

    dnn = DnnRunner(bundle)
    fp32, fast = [TorchRunner(checkpoint), dnn], []
    for engine, variant in offered_pairs(dnn.model):
        (fp32 if variant == "fp32" else fast).append(DnnRunner(bundle, engine=engine, variant=variant))
    return fp32, fast


def collect_logits(runners: list, paths: list[str], cfg, batch_size: int) -> tuple[dict, list, list]:
    """Every runner's logits on every readable image (one preprocessing, the same blob for all)."""
    from medge.edge.errors import MedgeError
    from medge.edge.preprocess import preprocess_file
    from medge.train.progress import progress

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
    return {k: np.concatenate(v) for k, v in logits.items() if v}, names, skipped


def run_parity(bundle: str, checkpoint: str, data: str, tol=None, batch_size: int = 16, log=print) -> dict:
    """fp32 runtimes against PyTorch and cv2.dnn at the logit tolerance; fast variants against cv2.dnn fp32 by their
    gate's rule (at most its max_flips decisions flipped at the operating point, a calibrated probability moved by at
    most its max_probability_change), their drift reported beside."""
    from medge.benchmarks.common import environment
    from medge.benchmarks.runners import flipped_decisions, probability_change
    from medge.edge.errors import MedgeError
    from medge.edge.inputs.scanning import scan_inputs
    from medge.export.parity import Tolerance, compare, summary_line

    tol = tol or Tolerance()
    link = check_link(bundle, checkpoint, log)
    fp32, fast = parity_runners(bundle, checkpoint)
    dnn = fp32[1]
    logits, names, skipped = collect_logits(fp32 + fast, scan_inputs([data]).paths, dnn.model.preprocess_config, batch_size)
    if not names:
        raise MedgeError(f"{data}: no readable image to compare")
    comparisons, classes = {}, dnn.model.classes
    pairs = [("pytorch", r.name) for r in fp32[1:]] + [(dnn.name, r.name) for r in fp32[2:] + fast]
    for a, b in pairs:  # edge-engine parity last: either engine may run the bundle on a box
        rep = compare(logits[a], logits[b], names, classes, tol, a, b)
        runner = next((r for r in fast if r.name == b), None)
        rep["operating_point_flips"] = flipped_decisions(dnn.model, runner.model if runner is not None else dnn.model,
                                                         logits[a], logits[b], names)
        if runner is not None:  # a fast variant: judged by its gate's rule, not by the fp32 logit tolerance
            gate = runner.model.bundle.variants[runner.model.variant].gates[runner.model.engine]
            limit = gate.get("max_probability_change", 1.0)  # gates made before it was bounded: unbounded
            rep["max_abs_probability_change"] = probability_change(dnn.model, runner.model, logits[a], logits[b])
            rep["gate"] = (f"decisions at the operating point: at most {gate['max_flips']} flipped, a calibrated "
                           f"probability moved by at most {limit:g} (the variant's gate)")
            rep["passed"] = (len(rep["operating_point_flips"]) <= gate["max_flips"]
                             and rep["max_abs_probability_change"] <= limit)
        comparisons[f"{a}_vs_{b}"] = rep
        log(summary_line(rep) + f"; {len(rep['operating_point_flips'])} decisions flipped at the operating point")
    notes = [f"{e} not installed: its engine not compared" for e in ("onnxruntime", "openvino")
             if not any(r.model.engine == e for r in fp32[1:])]
    return {"benchmark": "medge parity", "bundle": str(bundle), "checkpoint": str(checkpoint), "checkpoint_link": link,
            "data": str(data), "images": len(names), "skipped": skipped, "comparisons": comparisons,
            "passed": all(c["passed"] for c in comparisons.values()), "notes": notes, "env": environment()}


def markdown(record: dict) -> str:
    lines = [f"Parity on {record['images']} images ({len(record['skipped'])} unreadable, skipped):", "",
             "| comparison | max abs logit | mean abs logit | max abs prob | min cosine | top-1 agreement | flips "
             "| flips at operating point | near threshold | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, c in record["comparisons"].items():
        op = c.get("operating_point_flips")
        lines.append(f"| {name} | {c['logits']['max_abs']:.2e} | {c['logits']['mean_abs']:.2e} | "
                     f"{c['probabilities']['max_abs']:.2e} | {c['cosine']['min']:.6f} | {c['top1_agreement']:.2%} | "
                     f"{len(c['label_flips'])} | {'-' if op is None else len(op)} | {len(c['near_threshold'])} | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    gates = [f"{name}: {c['gate']}" for name, c in record["comparisons"].items() if c.get("gate")]
    if gates:
        lines += ["", "Fast variants are judged by their gate, not by the fp32 logit tolerance: " + "; ".join(gates) + "."]
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
