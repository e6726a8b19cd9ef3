"""``medge demo``: the whole promise in one command, from nothing to a verified, benchmarked model.

Usage: medge demo                        # synthetic data, CPU-sized, a few minutes on 2 cores
       medge demo --data data/xray --device cuda --out runs/demo-gpu

Stages, each in the run folder, each stopping the demo with a clear message if it fails:
  1. data      synthetic chest-X-ray-like set (medge synth), unless --data is given
  2. train     a short training run (medge train)
  3. export    opset-12 ONNX, onnxsim, cv2.dnn, parity gate, calibration and operating point
               on the val split, bundle (medge export --data)
  4. predict   the bundle on held-out images, numpy + OpenCV only (medge predict)
  5. validate  the bundle's operating point on the held-out images, with CIs (medge validate)
  6. bench     a short PyTorch vs cv2.dnn latency run (medge bench)
  7. parity    PyTorch vs cv2.dnn on every image (medge parity)
and a report: summary.json (the figures) and summary.md (a Markdown report with
tables, the ROC and the latency plot). Each figure of the report says which decision rule
it was counted at: argmax in training, the bundle's operating point on the edge, with a
sentence on why the two differ. Speeds in the report are the user's own, measured on
their CPU; medge's speed goals (ratios it aims for) stay in bench.json, the record, and
in benchmarks/results. The demo ends by listing every file and folder it wrote at the top
of the run folder. It lives in benchmarks/ because it is the one package allowed to use
all the others.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medge.edge.decision import guarantee_text
from medge.edge.errors import UsageError
from medge.edge.golive.wording import (
    figure_name,
    figure_text,
    number_text,
    rule_text,
    rules_differ_text,
    threshold_text,
)
from medge.edge.outputs import atomic_write_text, check_output_dir


@dataclass(frozen=True)
class DemoConfig:
    n_images: int = 400  # synthetic images (half per class)
    image_px: int = 256  # side of the synthetic images
    img_size: int = 128  # network input (the bundle's PreprocessConfig.size)
    arch: str = "resnet18"
    epochs: int = 8
    batch_size: int = 16
    bench_repeats: int = 20
    bench_e2e_images: int = 8
    bench_image_px: int = 2048


CPU = DemoConfig()
GPU = DemoConfig(n_images=2000, img_size=224, epochs=15, batch_size=64, bench_repeats=50, bench_e2e_images=16)
QUICK = DemoConfig(n_images=100, image_px=96, img_size=32, epochs=2, batch_size=8, bench_repeats=3,
                   bench_e2e_images=2, bench_image_px=256)  # for tests: checks the plumbing, learns little


STAGES = 7


class StageError(Exception):
    pass


def run_stage(k: int, name: str, fn, log, stages: int = STAGES):
    """Stage ``k`` of ``stages``: its name, ``fn()``, and the time it took; any failure becomes one StageError line."""
    log(f"\n[{k}/{stages}] {name}")
    t0 = time.perf_counter()
    try:
        result = fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # every stage failure becomes one clear line
        raise StageError(f"demo failed at stage {k} ({name}): {e}") from e
    log(f"[{k}/{stages}] {name}: done in {time.perf_counter() - t0:.1f} s")
    return result


def make_data(out_dir: Path, cfg: DemoConfig, log) -> str:
    """Stage 1: a synthetic set in OUT/data (mixed 8- and 16-bit PNGs)."""
    from medge.train.synth import SynthConfig, generate

    counts = generate(out_dir / "data", SynthConfig(n=cfg.n_images, size=cfg.image_px, bits="mix", seed=0))
    log("  " + ", ".join(f"{s}: {sum(c.values())}" for s, c in sorted(counts.items())))
    return str(out_dir / "data")


def train_model(data_dir: str, out_dir: Path, device: str, cfg: DemoConfig) -> dict:
    """Stage 2: a short training run in OUT/run."""
    from medge.edge.preprocess import PreprocessConfig
    from medge.train.config import TrainConfig
    from medge.train.engine import train

    tcfg = TrainConfig(data=data_dir, out=str(out_dir / "run"), arch=cfg.arch, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, device=device, cache_dir=str(out_dir / "cache"))  # the default recipe
    return train(tcfg, PreprocessConfig(size=cfg.img_size))


TARGETS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)  # sensitivity targets the demo may choose, highest first


def choose_target(data_dir: str) -> tuple[str, bool, str]:
    """The demo's operating point: the highest of TARGETS its validation positives support at 95% confidence.

    The demo's validation split is small (40 positives in the CPU demo; 0.95 at 95% needs 59), so the demo
    chooses its target rather than enlarge the split, and says so. Where no target is supported it
    exports the point estimate at 0.95, marked unsupported, and says that.

    Returns:
        (the criterion, whether it is unsupported, the sentence the demo logs and reports).
    """
    from medge.edge.decision import default_positive
    from medge.edge.golive import DEFAULT_CONFIDENCE, cases_needed
    from medge.train.data import discover

    classes, splits = discover(data_dir)
    positive = default_positive(classes)[0]
    n = sum(1 for k in splits["val"].labels if classes[k] == positive)
    for target in TARGETS:
        if n >= cases_needed(target, DEFAULT_CONFIDENCE):
            why = (f"the demo chose sensitivity={target:g}: the highest of {', '.join(f'{t:g}' for t in TARGETS)} that "
                   f"its {n} validation positives support at 95% confidence (0.95 needs {cases_needed(0.95)})")
            return f"sensitivity={target:g}", False, why
    why = (f"the demo's {n} validation positives support none of {', '.join(f'{t:g}' for t in TARGETS)} at 95% "
           f"confidence: it exports sensitivity=0.95 with --operating-point-unsupported (the point estimate, marked)")
    return "sensitivity=0.95", True, why


def export_model(out_dir: Path, data_dir: str, log) -> dict:
    """Stage 3: the verified bundle in OUT/bundle, at the operating point ``choose_target`` picks."""
    from medge.export.onnx_export import ExportConfig, export_bundle

    criterion, unsupported, why = choose_target(data_dir)
    log("  operating point: " + why)
    manifest = export_bundle(str(out_dir / "run" / "best.pt"), str(out_dir / "bundle"), data_dir,
                             ExportConfig(operating_point=criterion, unsupported=unsupported), log=lambda m: log("  " + m))
    return {**manifest, "demo_operating_point": why}


def held_out(data_dir: str) -> Path:
    """The images no training or export step chose anything on: the test split (else val)."""
    return Path(data_dir) / ("test" if (Path(data_dir) / "test").is_dir() else "val")


def predict_held_out(out_dir: Path, data_dir: str, log) -> dict:
    """Stage 4: the edge runtime alone on the test (else val) images; OUT/predictions.jsonl."""
    from medge.edge.inputs.scanning import scan_inputs
    from medge.edge.model import Model
    from medge.edge.paths import to_json

    held_out_dir = held_out(data_dir)
    paths = scan_inputs([held_out_dir]).paths
    model = Model.load(out_dir / "bundle")
    preds = model.predict(paths)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(to_json(p.to_record(model.sha256)) + "\n" for p in preds))
    truth = [Path(p).parent.name for p in paths]
    correct = sum(p.label == t for p, t in zip(preds, truth, strict=True))
    failed = sum(not p.ok for p in preds)
    op = model.operating_point  # the rule Model.predict labelled by (a fast variant may carry its own)
    rule = rule_text(op.positive, op.threshold) if op is not None else rule_text(None, None)
    log(f"  {len(preds)} held-out images from {held_out_dir} at {rule}: {correct} correct, {failed} failed")
    counts = Counter(w for p in preds for w in p.warnings)
    return {"images": len(preds), "correct": correct, "failed": failed, "accuracy": correct / max(len(preds), 1),
            "rule": rule, "warnings": dict(counts.most_common())}


def validate_held_out(out_dir: Path, data_dir: str, log) -> dict:
    """Stage 5: medge validate (edge: numpy + OpenCV) on the held-out class folders; OUT/validation.json and beside it
    validation.md, .roc.png, .reliability.png, .cases.jsonl. The bundle's own operating point is judged, with CIs."""
    from medge.edge.apps.cli import main as medge

    report = out_dir / "validation.json"
    rc = medge(["validate", "--model", str(out_dir / "bundle"), "--data", str(held_out(data_dir)), "--out", str(report)])
    if rc != 0:
        raise RuntimeError(f"medge validate exited {rc} (its message above)")
    rec = json.loads(report.read_text())
    log("  " + validate_line(rec))
    return rec


def validate_line(rec: dict) -> str:
    """One line: the held-out figures at the bundle's operating point, with 95% CIs."""
    f, d = rec["figures"], rec["decision"]
    return (f"{rec['counts']['cases']} held-out cases at {validate_rule(d)}: AUC {figure_text(f['auc'])}, "
            f"sensitivity {figure_text(f['sensitivity'])}, specificity {figure_text(f['specificity'])}")


def bench_model(out_dir: Path, cfg: DemoConfig, log) -> dict:
    """Stage 6: a short medge bench; OUT/bench.json (the whole record), bench.md (the user's speeds), bench.png."""
    from medge.benchmarks.bench import BenchConfig, markdown, plot, run_bench

    bcfg = BenchConfig(threads=(os.cpu_count() or 1,), warmup=3, repeats=cfg.bench_repeats,
                       e2e_images=cfg.bench_e2e_images, e2e_rounds=2, image_size=cfg.bench_image_px)
    rec = run_bench(str(out_dir / "bundle"), str(out_dir / "run" / "best.pt"), None, bcfg, log=lambda msg: log("  " + msg))
    atomic_write_text(out_dir / "bench.json", json.dumps(rec, indent=2) + "\n")
    atomic_write_text(out_dir / "bench.md", markdown(rec) + "\n")
    plot(rec, str(out_dir / "bench.png"))
    return rec


def check_parity(out_dir: Path, data_dir: str, log) -> dict:
    """Stage 7: medge parity on every image; OUT/parity.json; beyond tolerance stops the demo."""
    from medge.benchmarks.parity import run_parity

    rec = run_parity(str(out_dir / "bundle"), str(out_dir / "run" / "best.pt"), data_dir, log=lambda m: log("  " + m))
    atomic_write_text(out_dir / "parity.json", json.dumps(rec, indent=2) + "\n")
    if not rec["passed"]:
        raise RuntimeError("parity beyond tolerance: " + "; ".join(
            f for c in rec["comparisons"].values() for f in c["failures"]))
    return rec


def output_paths(out_dir: Path, data_dir: str, synthetic: bool) -> dict:
    """Every file and folder the demo writes at the top of OUT, by name (summary.json's "paths", the list it ends
    with), and the checkpoint inside run/. A folder is one entry: its files are its stage's (run/: checkpoints and
    metrics; bundle/: the model; cache/: preprocessed images)."""
    return {"data": str(out_dir / "data") if synthetic else data_dir, "run": str(out_dir / "run"),
            "checkpoint": str(out_dir / "run" / "best.pt"), "bundle": str(out_dir / "bundle"),
            "predictions": str(out_dir / "predictions.jsonl"), "validation": str(out_dir / "validation.json"),
            "validation_report": str(out_dir / "validation.md"), "roc_plot": str(out_dir / "validation.roc.png"),
            "reliability_plot": str(out_dir / "validation.reliability.png"),
            "validation_cases": str(out_dir / "validation.cases.jsonl"), "bench": str(out_dir / "bench.json"),
            "bench_table": str(out_dir / "bench.md"), "bench_plot": str(out_dir / "bench.png"),
            "parity": str(out_dir / "parity.json"), "summary": str(out_dir / "summary.json"),
            "report": str(out_dir / "summary.md"), "preprocess_cache": str(out_dir / "cache")}


TRAINING_FIGURES = ("n", "accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")  # at argmax
EDGE_FIGURES = ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy", "brier", "ece")  # at the operating point


def summarize(out_dir: Path, seconds: float, device, data_dir: str, synthetic: bool, cfg: DemoConfig, trained: dict,
              manifest: dict, predicted: dict, validated: dict, bench: dict, parity: dict) -> dict:
    """The demo's figures in one dict (summary.json). "rules" names the decision rule of each group of figures:
    training's at argmax, the edge's (predict, validate) at the bundle's operating point, and why they differ."""
    lat = {(r["runtime"], r["batch"]): r["p50_ms"] for r in bench["latency"]}
    c = parity["comparisons"]["pytorch_vs_cv2.dnn"]
    return {
        "out": str(out_dir), "seconds": round(seconds, 1), "device": str(device),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": data_dir, "arch": cfg.arch, "img_size": cfg.img_size, "epochs": cfg.epochs,
        "best_epoch": (trained.get("best") or {}).get("epoch"),
        "rules": decision_rules(manifest, predicted),
        "val": {k: trained["val"].get(k) for k in TRAINING_FIGURES},
        "test": {k: trained["test"].get(k) for k in TRAINING_FIGURES} if "test" in trained else None,
        "held_out": held_out(data_dir).name,
        "bundle_sha256": manifest["model"]["sha256"],
        "export_parity": {"max_abs_logit": manifest["parity"]["logits"]["max_abs"],
                          "top1_agreement": manifest["parity"]["top1_agreement"]},
        "parity": {"images": parity["images"], "max_abs_logit": c["logits"]["max_abs"],
                   "max_abs_prob": c["probabilities"]["max_abs"], "top1_agreement": c["top1_agreement"]},
        "machine": {"cpu": bench["env"]["cpu"], "cores": bench["env"]["cores"]},
        "latency_p50_ms": {f"{rt} batch {b}": v for (rt, b), v in sorted(lat.items())},
        "bench_headline": bench.get("headline"),  # bench's verdict: ratios, or that the box was busy
        "end_to_end_images_per_s": bench.get("end_to_end", {}).get("images_per_s"),
        "predict": predicted,
        "operating_point": operating_point_summary(manifest),
        "validate": {"cases": validated["counts"]["cases"], "decision": validated["decision"],
                     **{k: validated["figures"][k] for k in EDGE_FIGURES}, "line": validate_line(validated)},
        "paths": output_paths(out_dir, data_dir, synthetic),
    }


def decision_rules(manifest: dict, predicted: dict) -> dict:
    """The rule of training's figures, of the edge's, and the sentence on why they differ (None: no threshold)."""
    from medge.edge.decision import default_positive

    op = manifest.get("operating_point") or {}
    positive = op.get("positive") or default_positive(manifest["classes"])[0]
    threshold = op.get("threshold")
    return {"positive": positive, "training": rule_text(None, None), "edge": predicted["rule"],
            "why_they_differ": None if threshold is None else rules_differ_text(positive, threshold)}


def operating_point_summary(manifest: dict) -> dict:
    """The bundle's operating point as summary.json keeps it: its rule, and the guarantee it was chosen for."""
    op = manifest.get("operating_point") or {}
    return {**{k: op.get(k) for k in ("positive", "threshold", "criterion", "temperature", "guarantee")},
            "rule": rule_text(op.get("positive"), op.get("threshold")),
            "temperature_at_bound": (op.get("calibration") or {}).get("at_bound"),
            "guarantee_text": guarantee_text(op.get("criterion"), op.get("guarantee")),
            "why": manifest.get("demo_operating_point")}


def open_run_folder(out: str, device: str, cfg, cpu, gpu):
    """(the demo's new or empty run folder, created; the training device; ``cfg``, else ``gpu`` on CUDA and ``cpu``
    elsewhere). UsageError for a folder that holds anything: nothing is overwritten."""
    from medge.train.engine import select_device

    out_dir = check_output_dir(out, "demo")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise UsageError(f"{out_dir} is not empty; choose a new --out (nothing is overwritten)")
    dev = select_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, dev, cfg or (gpu if dev.type == "cuda" else cpu)


def run_demo(out: str, data: str | None = None, device: str = "auto", cfg: DemoConfig | None = None,
             log=print) -> dict:
    """Run the stages; returns the summary (also written to OUT/summary.json and summary.md)."""
    out_dir, dev, cfg = open_run_folder(out, device, cfg, CPU, GPU)
    log(f"medge demo -> {out_dir} (device {dev}, {cfg.arch} at {cfg.img_size}px, {cfg.epochs} epochs)")
    t0 = time.perf_counter()
    data_dir = run_stage(1, "data", lambda: data or make_data(out_dir, cfg, log), log)
    trained = run_stage(2, "train", lambda: train_model(data_dir, out_dir, device, cfg), log)
    manifest = run_stage(3, "export", lambda: export_model(out_dir, data_dir, log), log)
    predicted = run_stage(4, "predict (edge: numpy + OpenCV only)", lambda: predict_held_out(out_dir, data_dir, log), log)
    validated = run_stage(5, "validate (edge: numpy + OpenCV only)", lambda: validate_held_out(out_dir, data_dir, log), log)
    bench = run_stage(6, "bench", lambda: bench_model(out_dir, cfg, log), log)
    parity = run_stage(7, "parity", lambda: check_parity(out_dir, data_dir, log), log)
    summary = summarize(out_dir, time.perf_counter() - t0, dev, data_dir, data is None, cfg, trained, manifest,
                        predicted, validated, bench, parity)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "summary.md", report_markdown(summary, bench, parity))
    log("\n" + summary_text(summary))
    return summary


def report_markdown(s: dict, bench: dict, parity: dict) -> str:
    """summary.md: the demo as a Markdown report (tables generated from the records, the latency plot embedded)."""
    from medge.benchmarks import parity as parity_mod

    out = Path(s["out"])
    rel = lambda p: os.path.relpath(p, out)  # links relative to the report, which lives in OUT
    lines = [
        "# medge demo report", "",
        f"{s['created']}: {s['arch']} at {s['img_size']} px, {s['epochs']} epochs on {s['device']}, "
        f"{s['seconds']:.0f} s from data to this report. Data: `{s['data']}`.", "",
        *training_markdown(s),
        "## Export", "",
        f"Bundle [`{rel(s['paths']['bundle'])}`]({rel(s['paths']['bundle'])}), model SHA-256 `{s['bundle_sha256']}`. "
        f"Parity gate at export: max |delta logit| {s['export_parity']['max_abs_logit']:.2e}, "
        f"top-1 agreement {s['export_parity']['top1_agreement']:.2%}.", "",
        *edge_markdown(s),
        *validation_markdown(s, rel),
        "## Parity, PyTorch vs cv2.dnn on every image", "", parity_mod.markdown(parity), "",
        *speed_markdown(s, bench, rel),
        "## Files", "", "Every file and folder the demo wrote in this folder:", "", "| what | path |", "| --- | --- |",
        *[f"| {k} | [`{rel(v)}`]({rel(v)}) |" for k, v in s["paths"].items()],
    ]
    return "\n".join(lines) + "\n"


def training_markdown(s: dict) -> list[str]:
    """The report's training section: the kept checkpoint's figures, at argmax."""
    positive = s["rules"]["positive"]
    lines = ["## Training, at argmax", "",
             f"Figures of the kept checkpoint (best epoch {s['best_epoch']}), each image counted at "
             f"{s['rules']['training']}; sensitivity and specificity of {positive!r}:", "",
             "| split | images | accuracy | balanced accuracy | AUC | sensitivity | specificity |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for split in ("val", "test"):
        if s.get(split):
            v = s[split]
            lines.append(f"| {split} | {v['n']} | {number_text(v['accuracy'])} | {number_text(v['balanced_accuracy'])} | "
                         f"{number_text(v['auc'])} | {_of(v['sensitivity'], positive)} | "
                         f"{_of(v['specificity'], positive)} |")
    return lines + [""]


def _of(per_class: dict | None, cls: str) -> str:
    return number_text((per_class or {}).get(cls))


def edge_markdown(s: dict) -> list[str]:
    """The report's edge section: the held-out images as the bundle labels them, then at both rules, and why they
    differ."""
    pr, rules = s["predict"], s["rules"]
    lines = ["## Edge predictions at the operating point (numpy + OpenCV only)", "",
             f"Each held-out image labelled as the bundle labels it, at {pr['rule']}.", "",
             "| held-out images | correct | failed | accuracy |", "| ---: | ---: | ---: | ---: |",
             f"| {pr['images']} | {pr['correct']} | {pr['failed']} | {number_text(pr['accuracy'])} |", ""]
    if pr.get("warnings"):
        lines += ["Warnings in the records (predictions.jsonl), each with the images that carry it:", "",
                  *[f"- {text}: {n} of {pr['images']}" for text, n in pr["warnings"].items()], ""]
    trained, v = s.get(s["held_out"]), s["validate"]
    if rules["why_they_differ"] is None or not trained:
        return lines
    positive = rules["positive"]
    return lines + [
        f"### The {v['cases']} held-out images ({s['held_out']} split) at both rules", "",
        "| decision rule | accuracy | sensitivity | specificity |", "| --- | ---: | ---: | ---: |",
        f"| training: {rules['training']} | {number_text(trained['accuracy'])} | "
        f"{_of(trained['sensitivity'], positive)} | {_of(trained['specificity'], positive)} |",
        f"| the bundle on the edge: {rules['edge']} | {number_text(v['accuracy']['value'])} | "
        f"{number_text(v['sensitivity']['value'])} | {number_text(v['specificity']['value'])} |", "",
        f"Why the two differ: {rules['why_they_differ']}", ""]


def temperature_note_text(op: dict) -> str:
    """" (validation classes separable or nearly: T capped at 0.617)" when the fit stopped at a bound, else ""."""
    from medge.edge.golive import temperature_note

    note = temperature_note(op.get("temperature_at_bound"), op["temperature"])
    return f" ({note})" if note else ""


def validation_markdown(s: dict, rel) -> list[str]:
    """The report's validation section: the bundle's operating point and the held-out figures with CIs, and the ROC."""
    op, v = s["operating_point"], s["validate"]
    if op["threshold"] is not None:
        chosen = (f"The bundle's operating point, chosen at export on the validation split by {op['criterion']}: "
                  f"{threshold_text(op['positive'], op['threshold'])}, temperature {number_text(op['temperature'])}"
                  f"{temperature_note_text(op)}. Chosen for: {op['guarantee_text']}. Why this target: {op['why']}.")
    else:
        chosen = "The bundle has no operating point (too few validation images to choose one): labels by argmax."
    return ["## Validation at the operating point (medge validate)", "", chosen, "",
            f"On the {v['cases']} held-out images ([report]({rel(s['paths']['validation_report'])})), each counted at "
            f"{validate_rule(v['decision'])}:", "",
            "| figure | value (95% CI) |", "| --- | --- |",
            *[f"| {figure_name(k)} | {figure_text(v[k])} |" for k in EDGE_FIGURES], "",
            f"![ROC with the operating point]({rel(s['paths']['roc_plot'])})", ""]


def validate_rule(d: dict) -> str:
    """medge validate's decision as a rule: the bundle's operating point, or argmax where it has none."""
    return rule_text(None, None) if d["source"].startswith("argmax") else rule_text(d["positive"], d["threshold"])


def speed_markdown(s: dict, bench: dict, rel) -> list[str]:
    """The report's speed section: the user's model on the user's machine (medge bench's tables: no project goals)."""
    from medge.benchmarks import bench as bench_mod

    m = s["machine"]
    return ["## Speed of your model on this machine", "",
            f"Your model's speeds, measured in this run on {m['cpu']} ({m['cores']} cores):", "",
            bench_mod.markdown(bench), "",
            f"![latency per forward pass]({rel(s['paths']['bench_plot'])})", ""]


def summary_text(s: dict) -> str:
    """The console summary the demo ends with: the key figures, each at its decision rule, then every output path."""
    rules, pr = s["rules"], s["predict"]
    lines = [f"medge demo finished in {s['seconds']:.0f} s on {s['device']}: {s['arch']} at {s['img_size']}px",
             f"  training, each image at {rules['training']}:"]
    for split, name in (("val", "validation"), ("test", "test")):
        if s.get(split):
            v = s[split]
            lines.append(f"    {name + ':':<12}accuracy {number_text(v['accuracy'])}, balanced accuracy "
                         f"{number_text(v['balanced_accuracy'])}, AUC {number_text(v['auc'])}")
    op = s["operating_point"]
    if op.get("threshold") is not None:
        lines.append(f"  {op['rule']}, chosen for {op['guarantee_text']}; {op['why']}")
    lines += [f"  edge predictions on {pr['images']} held-out images at {pr['rule']}: {pr['correct']} correct, "
              f"{pr['failed']} failed (accuracy {number_text(pr['accuracy'])})",
              *[f"    warning on {n} of {pr['images']}: {text}" for text, n in (pr.get("warnings") or {}).items()],
              f"  validate: {s['validate']['line']}"]
    if rules["why_they_differ"]:
        lines.append(f"  why training and the edge differ: {rules['why_they_differ']}")
    lines += speed_lines(s)
    width = max(len(k) for k in s["paths"])
    return "\n".join(lines + ["files:", *[f"  {k:<{width}}  {v}" for k, v in s["paths"].items()]])


def speed_lines(s: dict) -> list[str]:
    """Parity and the user's own speeds, named with the machine they were measured on."""
    p, m = s["parity"], s["machine"]
    b1 = {k.split(" batch")[0]: ms for k, ms in s["latency_p50_ms"].items() if k.endswith(" batch 1")}
    busy = (s.get("bench_headline") or "").startswith("The box was busy")  # then no ratio (benchmarks.trust)
    ratio = f" (cv2.dnn / PyTorch = {b1['cv2.dnn'] / b1['pytorch']:.2f})" if (
        "cv2.dnn" in b1 and "pytorch" in b1 and not busy) else ""
    lines = [f"  parity PyTorch vs cv2.dnn on {p['images']} images: max |dlogit| {p['max_abs_logit']:.2e}, "
             f"max |dprob| {p['max_abs_prob']:.2e}, top-1 agreement {p['top1_agreement']:.2%}",
             f"  latency p50, batch 1, on {m['cpu']} ({m['cores']} cores): "
             + ", ".join(f"{k} {ms:.1f} ms" for k, ms in b1.items()) + ratio]
    if busy:
        lines.append(f"  {s['bench_headline']}")
    if s.get("end_to_end_images_per_s"):
        lines.append("  end to end (files -> logits), images/s: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in s["end_to_end_images_per_s"].items()))
    return lines


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="synthetic data -> train -> export -> predict -> validate -> bench -> parity (extra: train)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="run folder, must be new or empty (default: runs/demo-<date-time>)")
    p.add_argument("--data", help="your data folder instead of synthetic data (ImageFolder layout)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks every stage in about a minute (tests)")
    p.add_argument("--multilabel", action="store_true",
                   help="the multi-label loop instead: 5 findings indexed like NIH ChestX-ray14, split by patient, a "
                        "threshold per finding, validated per finding, a DICOM SR per image (benchmarks.demo_multilabel)")
    return p


def run(args: argparse.Namespace) -> int:
    out = args.out or f"runs/demo-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    log = lambda msg: print(msg, flush=True)
    try:
        if args.multilabel:
            if args.data:
                raise UsageError("--multilabel makes its own indexed data set: train on yours with medge train --labels")
            from medge.benchmarks import demo_multilabel

            demo_multilabel.run_demo(out, args.device, demo_multilabel.QUICK if args.quick else None, log)
        else:
            run_demo(out, args.data, args.device, QUICK if args.quick else None, log)
    except StageError as e:
        print(f"medge demo: {e}", file=sys.stderr)
        return 1
    return 0
