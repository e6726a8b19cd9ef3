"""``medge check``: the acceptance test of a new edge box, on numpy + OpenCV only.

Usage: medge check --model bundles/xray [--json] [--repeats 20]

Reports the machine (CPU, cores, the SIMD features OpenCV sees, its parallel
framework and threads), the Python, numpy and OpenCV versions and OpenCV's
build, the engines and backends available here, the input formats this install
reads (each image format decoded once by this OpenCV; DICOM and which transfer
syntaxes, by the decoders installed, naming the package that adds the others); verifies the bundle (SHA-256,
golden self-test with each engine: max error against the tolerance, and of each
fast variant whose gate passed on each engine that runs it); says whether the node
extra works (``medge node``: imports, a C-ECHO to itself); times the batch-1 forward
pass of every correct (engine, variant) pair, interleaved, with 1 and all threads
(p50/p90), names the fastest correct one (a variant only 1.1x faster than the
fastest fp32 engine) and why not the others, and records it for ``Model.load`` on
this box; then times one image end to end, from a synthetic
2048x2048 16-bit PNG file to probabilities. Exit status 0 when the bundle is
verified and runs, 2 when it cannot be verified here (reason printed), 1 when it
is verified but the end-to-end run fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np

from medge.edge import system
from medge.edge.apps.records import findings_text
from medge.edge.errors import MedgeError, UsageError
from medge.edge.findings import MULTILABEL
from medge.edge.inputs import png
from medge.edge.inputs.dicom import decoder_support
from medge.edge.inputs.image import write_image
from medge.edge.model import Model
from medge.edge.node_extra import check_node_extra
from medge.edge.numeric import latency_summary
from medge.edge.runtime.choice import bundle_key, candidate_pairs, pick_fastest, record_engine, try_engine
from medge.edge.runtime.dnn import check_opencv, time_forwards
from medge.edge.runtime.engines import AUTO, BACKENDS, ENGINES, KNOWN_ENGINES, available_backends, engines_for
from medge.edge.runtime.variants import FP32
from medge.edge.runtime.verify import VerifiedBundle, open_bundle

E2E_SIZE = 2048  # side of the synthetic end-to-end image, as a radiograph's
E2E_RUNS = 3  # timed end-to-end runs after one untimed


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="prove a bundle runs on this box: machine, versions, self-test, speed (base install)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder (model.onnx + model.json)")
    p.add_argument("--json", action="store_true", help="print one JSON record instead of the table")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed forward passes per engine and thread count (default: %(default)s)")
    return p


def describe_box() -> dict:
    """The machine, the software, and the engines and backends this OpenCV offers here."""
    return {"machine": system.machine(), "software": system.software(),
            "engines": {name: e.about for name, e in ENGINES.items()},
            "backends": {"known": list(BACKENDS), "available": available_backends()}}


def verify_bundle(bundle: str) -> tuple[dict, VerifiedBundle | None, dict]:
    """OpenCV's version, the manifest, model.onnx's SHA-256, then each CPU engine's load and golden self-test
    (fp32 in ``engines``; the fast variants' pairs in ``variants``, those not offered with why).

    Returns:
        (section, the verified bundle or None, (engine, variant) -> net of each pair that passed).
    """
    section: dict = {"opencv_supported": True, "hash_ok": None, "engines": {}, "variants": {}, "error": None,
                     "exit_status": 0}
    try:
        check_opencv()
    except MedgeError as e:
        return {**section, "opencv_supported": False, "error": str(e), "exit_status": e.exit_status}, None, {}
    try:
        verified = open_bundle(bundle)  # the manifest's engine, as predict runs it: one this OpenCV lacks is an error
    except MedgeError as e:
        return {**section, "error": str(e), "exit_status": e.exit_status}, None, {}
    g = verified.manifest["golden"]
    section.update(hash_ok=True, sha256=verified.sha256, bundle_engine=verified.requested_engine,
                   arch=verified.manifest["model"].get("arch"), classes=verified.classes, input=list(verified.chw),
                   tolerance=float(g["tolerance"]), golden_inputs=int(g["count"]),
                   exported_with_opencv=verified.manifest.get("versions", {}).get("opencv"))
    if verified.findings is not None:  # a multi-label bundle (edge.findings): its findings and their thresholds
        section.update(task=MULTILABEL, thresholds=verified.findings.thresholds, calibrated=verified.findings.calibrated)
    nets, errors = {}, []
    pairs, refused = candidate_pairs(verified, engines_for("cpu"), AUTO)
    for engine, variant in pairs:
        trial, net, error = try_engine(verified, engine, True, variant)
        where = section["engines"] if variant == FP32 else section["variants"]
        where[engine if variant == FP32 else f"{engine}/{variant}"] = {
            "ok": trial.ok, "self_test_max_abs": trial.self_test_max_abs, "batched": trial.batched, "error": trial.error,
            "own_operating_point": verified.operating_point_for(engine, variant) is not verified.operating_point}
        if trial.ok:
            nets[(engine, variant)] = net
        elif variant == FP32:
            errors.append(error)
    for t in refused:
        section["variants"][f"{t.engine}/{t.variant}"] = {"ok": False, "self_test_max_abs": None, "batched": None,
                                                          "error": t.error}
    for name, v in verified.variants.items():  # gated on an engine this box lacks: say what to install
        for engine in (e for e in v.offered if e not in ENGINES):
            section["variants"][f"{engine}/{name}"] = {
                "ok": False, "self_test_max_abs": None, "batched": None,
                "error": f"the {engine} engine is not installed here ({KNOWN_ENGINES.get(engine, engine)})"}
    if not any(v == FP32 for _, v in nets):
        section.update(error=f"no engine of OpenCV {cv2.__version__} runs this bundle correctly: "
                             + "; ".join(f"[{e}] {s['error']}" for e, s in section["engines"].items()),
                       exit_status=max(e.exit_status for e in errors))
    return section, verified, nets


def time_engines(verified: VerifiedBundle, nets: dict, repeats: int) -> dict:
    """Batch-1 forward passes of each correct (engine, variant), interleaved, with 1 and all threads; the one
    to run at each (``edge.runtime.choice.pick_fastest``)."""
    all_threads = cv2.getNumThreads()
    blob = verified.golden_inputs()[:1]
    rows, fastest = [], {}
    try:
        for threads in sorted({1, all_threads}):
            cv2.setNumThreads(threads)
            times = time_forwards(nets, blob, verified.chw, len(verified.classes), repeats, warmup=2)
            stats = {pair: latency_summary(t) for pair, t in times.items()}
            rows += [{"engine": e, "variant": v, "threads": threads, **s} for (e, v), s in stats.items()]
            pair, why = pick_fastest({pair: s["p50_ms"] for pair, s in stats.items()})
            fastest[threads] = {"engine": pair[0], "variant": pair[1], "why": why}
    finally:
        cv2.setNumThreads(all_threads)
    exported = verified.manifest.get("runtime", {}).get("export_timings")
    return {"batch": 1, "repeats": repeats, "all_threads": all_threads, "rows": rows,
            "fastest": {str(t): f for t, f in fastest.items()}, "exporting_machine": exported}


def record_choice(verified: VerifiedBundle, forward: dict) -> dict:
    """Record the (engine, variant) to run per thread count for Model.load on this box."""
    paths, error = [], None
    for threads, f in forward["fastest"].items():
        timings = {f"{r['engine']}/{r['variant']}": r for r in forward["rows"] if str(r["threads"]) == threads}
        try:
            paths.append(str(record_engine(bundle_key(verified, int(threads)), f["engine"], f["variant"],
                                           timings)))
        except OSError as e:
            error = f"cannot record the choice ({e.strerror or e}): Model.load will measure at each load instead"
    return {"recorded": paths, "error": error}


def synthetic_radiograph(size: int = E2E_SIZE, seed: int = 0) -> np.ndarray:
    """A smooth radiograph-like uint16 image with 12-bit values and fine noise (drawn at 256 px, scaled up)."""
    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / np.float32(256)
    img = 0.45 + 0.2 * np.sin(7 * x + seed) * np.cos(5 * y)
    img += 0.3 * np.exp(-(((x - 0.33) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img += 0.3 * np.exp(-(((x - 0.67) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = np.empty_like(img)
    cv2.setRNGSeed(seed)
    cv2.randn(noise, 0.0, 0.02)
    return np.round(np.clip(img + noise, 0, 1) * 4095).astype(np.uint16)


def end_to_end(bundle: str) -> dict:
    """``Model.load`` as predict does (auto), then one 2048x2048 PNG file to probabilities, timed."""
    model = Model.load(bundle)
    with tempfile.TemporaryDirectory(prefix="medge-check-") as tmp:
        path = Path(tmp) / "synthetic.png"
        write_image(path, synthetic_radiograph())
        runs = []
        for _ in range(1 + E2E_RUNS):
            t0 = time.perf_counter()
            (pred,) = model.predict([str(path)], batch_size=1, workers=0)
            runs.append((1000 * (time.perf_counter() - t0), pred))
    total = [ms for ms, _ in runs[1:]]
    pred = runs[-1][1]
    if not pred.ok:
        return {"ok": False, "error": pred.error, "engine": model.engine, "variant": model.variant}
    parts = {k: float(np.median([p.timings_ms[k] for _, p in runs[1:]])) for k in ("read", "preprocess", "inference")}
    return {"ok": True, "image": f"{E2E_SIZE}x{E2E_SIZE} 16-bit PNG (12-bit values), synthetic", "runs": E2E_RUNS,
            "total_ms": latency_summary(total), "median_ms": parts, "label": pred.label,
            "probabilities": pred.probabilities, "engine": model.engine, "variant": model.variant,
            "engine_choice": model.engine_choice.to_dict(),
            "batch_note": model.batch_note, "error": None,
            **({} if pred.decisions is None else {"decisions": pred.decisions})}  # a multi-label bundle's findings


def node_extra() -> dict:
    """Whether ``medge node`` works here: the node extra imports and answers a C-ECHO to itself (not part of the verdict)."""
    try:
        return check_node_extra()
    except Exception as e:  # a broken install of the extra: reported, the bundle's check goes on
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def input_support() -> dict:
    """The image formats this OpenCV encodes and decodes again (a 4 x 4 gray image each) and the DICOM this install
    reads (``edge.inputs.dicom.decoder_support``)."""
    image = np.full((4, 4), 128, np.uint8)
    readable = []
    for name, ext in (("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        try:
            ok, data = cv2.imencode(ext, image)
            readable += [name] if ok and cv2.imdecode(data, cv2.IMREAD_UNCHANGED) is not None else []
        except cv2.error:  # an OpenCV built without that codec
            continue
    fast_png = png.decoder_name("numpy") if png.available() else None
    return {"images": readable, "png_inflate": fast_png, "png_extra": png.installed(), "dicom": decoder_support()}


def run_check(bundle: str, repeats: int) -> dict:
    """Every step of ``medge check``; the record says what passed and why not."""
    record = {"check": "medge check", "bundle": bundle, **describe_box(), "inputs": input_support(),
              "node": node_extra()}
    record["verification"], verified, nets = verify_bundle(bundle)
    verification = record["verification"]
    if verification["error"]:
        return {**record, "verdict": {"ok": False, "exit_status": verification["exit_status"], "reason": verification["error"]}}
    record["forward"] = time_engines(verified, nets, repeats)
    record["choice"] = record_choice(verified, record["forward"])
    try:
        record["end_to_end"] = end_to_end(bundle)
    except MedgeError as e:
        record["end_to_end"] = {"ok": False, "error": str(e)}
    e2e = record["end_to_end"]
    if not e2e["ok"]:
        return {**record, "verdict": {"ok": False, "exit_status": 1, "reason": f"end-to-end run failed: {e2e['error']}"}}
    return {**record, "verdict": {"ok": True, "exit_status": 0,
                                  "reason": f"verified and runs on this box; Model.load picks the {e2e['engine']} engine, "
                                            f"{e2e['variant']} variant"}}


def _ms(v: float) -> str:
    return f"{v:.2f}"


def render(r: dict) -> str:
    """The record as a human-readable report."""
    lines = [f"medge check {r['bundle']}", "", *_box_lines(r), *_input_lines(r["inputs"]), *_node_lines(r["node"]),
             *_verification_lines(r["verification"])]
    if "forward" in r:
        lines += _forward_lines(r["forward"], r["choice"], r["verification"])
    if "end_to_end" in r:
        lines += _end_to_end_lines(r["end_to_end"])
    verdict = r["verdict"]
    lines.append(f"verdict     {'OK' if verdict['ok'] else 'FAIL'}: {verdict['reason']}")
    return "\n".join(lines)


def _box_lines(r: dict) -> list[str]:
    """Machine, software, engines and backends."""
    m, s = r["machine"], r["software"]
    build = s["opencv_build"]
    return [f"machine     {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['arch']}",
            f"            SIMD OpenCV uses: {' '.join(m['simd']['available']) or '-'}"
            + (f"  (built for, not on this CPU: {' '.join(m['simd']['missing'])})" if m['simd']['missing'] else ""),
            f"            parallel framework {m['parallel_framework']}; OpenCV uses {m['opencv_threads']} threads",
            f"software    Python {s['python']}, numpy {s['numpy']}, OpenCV {s['opencv']}, medge {s['medge']}",
            f"            OpenCV from {s['opencv_module']}",
            *[f"            {k}: {v}" for k, v in build.items() if k != "Parallel framework"],
            f"engines     {', '.join(r['engines'])} (auto: the fastest correct one)",
            f"backends    available {', '.join(r['backends']['available'])} (known: {', '.join(r['backends']['known'])})"]


def _input_lines(inputs: dict) -> list[str]:
    """Which files this install reads, and what to install for the rest."""
    images = f"inputs      {', '.join(inputs['images']) or 'no image format'} (OpenCV)"
    if "PNG" in inputs["images"]:
        images += ("; PNG inflated by " + inputs["png_inflate"].split(" + ")[0] if inputs.get("png_inflate")
                   else f"; PNG decoded by OpenCV ({png.DECODER_ENV}=opencv)" if inputs.get("png_extra")
                   else '; PNG faster with pip install "medge[png]"')
    d = inputs["dicom"]
    if d["pydicom"] is None:
        return [images, '            DICOM: not on this install (pip install "medge[dicom]": pydicom and python-gdcm)']
    have = [t["name"] for t in d["transfer_syntaxes"] if t["installed"]]
    missing: dict[str, list[str]] = {}
    for t in d["transfer_syntaxes"]:
        if not t["installed"]:
            missing.setdefault(t["package"], []).append(t["name"])
    indent = " " * 12
    lines = [images, *textwrap.wrap(f"DICOM (pydicom {d['pydicom']}): {len(have)} of {len(d['transfer_syntaxes'])} "
                                    f"transfer syntaxes: {', '.join(have)}", 110, initial_indent=indent,
                                    subsequent_indent=indent + "  ")]
    lines += [f"{indent}not readable without {package}: {', '.join(names)}" for package, names in missing.items()]
    if not d["jpeg_12bit"]:
        lines.append("            12-bit JPEG extended also needs pylibjpeg-libjpeg (GPL-3.0: not installed by medge)")
    return lines


def _node_lines(n: dict) -> list[str]:
    if not n["ok"]:
        return [f"node        medge node cannot run here: {n['error']}"]
    ts, v = n["transfer_syntaxes"], n["versions"]
    return [f"node        extra works: pynetdicom {v['pynetdicom']}, highdicom {v['highdicom']}; "
            f"C-ECHO to itself OK; decodes {ts['decodable']} of {ts['known']} transfer syntaxes"]


def _verification_lines(v: dict) -> list[str]:
    """The bundle's hash and each engine's self-test."""
    if not v.get("hash_ok"):
        return []
    lines = [f"bundle      {v['arch']}, classes {v['classes']}, input {'x'.join(map(str, v['input']))}, "
             f"SHA-256 {v['sha256'][:16]}... verified (exported with OpenCV {v['exported_with_opencv']})"]
    if "thresholds" in v:  # a multi-label bundle: each finding decided by its own threshold
        lines.append(f"findings    multi-label, {'calibrated' if v['calibrated'] else 'uncalibrated, at 0.5'}: "
                     + ", ".join(f"{n} " + ("not decided: unsupported" if t is None else f"threshold {t:.4g}")
                                 for n, t in v["thresholds"].items()))
    batched = {True: "batched", False: "one image per pass (batches > 1 fail here)", None: "fixed batch"}
    for engine, t in v["engines"].items():
        if t["ok"]:
            lines.append(f"self-test   {engine:11} max |dlogit| {t['self_test_max_abs']:.2e} <= {v['tolerance']:g}: pass, "
                         f"{batched[t['batched']]}")
        else:
            lines.append(f"self-test   {engine:11} FAIL: {t['error']}")
    for pair, t in v.get("variants", {}).items():
        if t["ok"]:
            lines.append(f"variant     {pair:16} self-test against its gated outputs, max |dlogit| "
                         f"{t['self_test_max_abs']:.2e}: pass"
                         + ("; decides by its own temperature and threshold" if t.get("own_operating_point") else ""))
        else:
            lines.append(f"variant     {pair:16} not offered here: {t['error']}")
    return lines


def _forward_lines(f: dict, c: dict, v: dict) -> list[str]:
    """The forward-pass table, the exporting machine's figures and the recorded choice."""
    lines = [f"forward     batch 1, {f['repeats']} passes per engine and variant, interleaved",
             f"            {'engine':11} {'variant':7} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9}"]
    for row in f["rows"]:
        chosen = f["fastest"][str(row["threads"])]
        mark = "  <- runs" if (chosen["engine"], chosen["variant"]) == (row["engine"], row["variant"]) else ""
        lines.append(f"            {row['engine']:11} {row['variant']:7} {row['threads']:>7} {_ms(row['p50_ms']):>9} "
                     f"{_ms(row['p90_ms']):>9}{mark}")
    for t, chosen in f["fastest"].items():
        lines.append(f"            with {t} thread(s): {chosen['engine']}/{chosen['variant']}"
                     + (f" ({chosen['why']})" if chosen["why"] else " (the fastest correct)"))
    ex = f.get("exporting_machine")
    if ex:
        figures = ", ".join(f"{e} {_ms(t['p50_ms'])}" for e, t in ex["forward_ms"].items())
        lines.append(f"            exporting machine ({ex['machine']['cpu']}, OpenCV {ex['machine']['opencv']}, "
                     f"{ex['machine'].get('opencv_threads', ex['machine'].get('threads'))} threads): p50 ms {figures}")
    lines.append("choice      " + (f"recorded for Model.load: {', '.join(c['recorded'])}" if c["recorded"] else c["error"]))
    if v["bundle_engine"] != AUTO:
        lines.append(f"            the bundle asks for the {v['bundle_engine']} engine: Model.load runs it "
                     "(--engine auto runs the fastest correct one)")
    return lines


def _end_to_end_lines(e: dict) -> list[str]:
    if not e["ok"]:
        return [f"end to end  FAIL: {e['error']}"]
    t = e["median_ms"]
    lines = [f"end to end  {e['image']}: p50 {_ms(e['total_ms']['p50_ms'])} ms (read {_ms(t['read'])}, "
             f"preprocess {_ms(t['preprocess'])}, inference {_ms(t['inference'])}); {e['engine']} engine, "
             f"{e['variant']} variant, "
             f"label {e['label']}"]
    if "decisions" in e:
        lines.append(f"            findings: {findings_text(e['probabilities'], e['decisions'])}")
    if e["batch_note"]:
        lines.append(f"            note: {e['batch_note']}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    record = run_check(args.model, args.repeats)
    print(json.dumps(record, indent=2, ensure_ascii=False) if args.json else render(record))
    verdict = record["verdict"]
    if not verdict["ok"]:
        print(f"medge check: {verdict['reason']}", file=sys.stderr)
    return verdict["exit_status"]

