"""``medge demo --multilabel``: the multi-label loop on a synthetic set indexed like NIH ChestX-ray14, split by patient.

Usage: medge demo --multilabel                    # 5 findings, CPU-sized, about 10 minutes on 2 cores
       medge demo --multilabel --quick --out runs/ml-quick

Stages, each in the run folder, each stopping the demo with a clear message if it fails:
  1. data      5 findings, several images per patient with a patient-level effect, an NIH-format
               index (medge synth --findings 5)
  2. train     one sigmoid per finding, BCE-with-logits, split by patient, best by mean AUC
               (medge train --labels Data_Entry.csv --labels-format nih)
  3. export    opset-12 ONNX, onnxsim, cv2.dnn, parity gate, per finding a temperature and a threshold
               chosen on the run's validation patients (medge export)
  4. predict   the bundle on the test patients' images, numpy + OpenCV only (medge predict)
  5. validate  per finding AUC, sensitivity and specificity with CIs, macro and micro AUC, subgroups, on
               an index of the test patients only (medge validate --labels)
  6. report    a DICOM SR (TID 1500, one measurement group per finding) for a few test images, where the
               node extra is installed (skipped, and said, where it is not)
and summary.json / summary.md. No patient is in two splits; the summary says how many each holds.
Tested by: tests/benchmarks/test_demo_multilabel.py.
"""
from __future__ import annotations

import csv
import datetime
import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medge.benchmarks.demo import TARGETS, open_run_folder, run_stage
from medge.edge.golive.wording import figure_text
from medge.edge.outputs import atomic_write_text


@dataclass(frozen=True)
class MultiDemoConfig:
    # the recipe tests/train/test_multilabel.py proves learns every finding (validation AUC >= 0.8)
    n_images: int = 1000  # synthetic images, in whole patients (2 to 4 images each)
    findings: int = 5
    image_px: int = 128  # side of the synthetic images
    img_size: int = 96  # network input (the bundle's PreprocessConfig.size)
    arch: str = "resnet18"
    epochs: int = 6
    batch_size: int = 16
    hflip: float = 0.0  # each finding sits on one side of the chest: a flip puts it where it never is
    sr_images: int = 3  # test images the demo writes an SR for


CPU = MultiDemoConfig()
GPU = MultiDemoConfig(n_images=3000, image_px=256, img_size=224, epochs=15, batch_size=64)
QUICK = MultiDemoConfig(n_images=120, image_px=96, img_size=32, epochs=2, batch_size=8, sr_images=1)  # plumbing only
STAGES = 6
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}  # by patient; the test patients are the held-out set
FORMAT = "nih"


@dataclass(frozen=True)
class Data:
    """The demo's data set: its NIH-format index and the folder of its images."""

    index: Path
    images: Path


def make_data(out_dir: Path, cfg: MultiDemoConfig, log) -> Data:
    """Stage 1: ``medge synth --findings`` in OUT/data (mixed 8- and 16-bit PNGs, an NIH-format index)."""
    from medge.train.synth import IMAGES_DIR, INDEX_FILE, FindingsConfig, generate_findings

    counts = generate_findings(out_dir / "data", FindingsConfig(n=cfg.n_images, findings=cfg.findings,
                                                                size=cfg.image_px, bits="mix", seed=0))
    log(f"  {counts['images']} images of {counts['patients']} patients; positives per finding: "
        + ", ".join(f"{k} {v}" for k, v in counts["positives"].items()))
    return Data(out_dir / "data" / INDEX_FILE, out_dir / "data" / IMAGES_DIR)


@functools.lru_cache(maxsize=4)
def splits_of(data: Data) -> dict:
    """The run's splits by patient, rebuilt exactly as training draws them (``train.data.discover_index``)."""
    from medge.edge.inputs.index import read_index
    from medge.train.data import discover_index

    return discover_index(read_index(data.index, data.images, FORMAT), **SPLIT)[1]


def train_model(data: Data, out_dir: Path, device: str, cfg: MultiDemoConfig, log) -> dict:
    """Stage 2: multi-label training in OUT/run on the index, split by patient."""
    from medge.edge.preprocess import PreprocessConfig
    from medge.train.config import TrainConfig
    from medge.train.engine import train

    tcfg = TrainConfig(labels=str(data.index), images=str(data.images), labels_format=FORMAT, task="multilabel",
                       out=str(out_dir / "run"), arch=cfg.arch, epochs=cfg.epochs, batch_size=cfg.batch_size, hflip=cfg.hflip,
                       device=device, cache_dir=str(out_dir / "cache"), **SPLIT)
    return train(tcfg, PreprocessConfig(size=cfg.img_size))


def choose_target(data: Data) -> tuple[str, str]:
    """The demo's criterion for every finding: the highest of TARGETS that the rarest finding's validation positives
    support at 95% confidence (a finding below it gets the point estimate, marked unsupported, by export's rule).

    Returns:
        (the criterion, the sentence the demo logs and reports).
    """
    import numpy as np

    from medge.edge.golive import DEFAULT_CONFIDENCE, cases_needed

    val = splits_of(data)["val"]
    positives = (np.asarray(val.labels, np.float64) == 1.0).sum(axis=0)
    n = int(positives.min())
    for target in TARGETS:
        if n >= cases_needed(target, DEFAULT_CONFIDENCE):
            return f"sensitivity={target:g}", (
                f"sensitivity={target:g} for every finding: the highest of {', '.join(f'{t:g}' for t in TARGETS)} that "
                f"the rarest finding's {n} validation positives support at 95% confidence")
    return "sensitivity=0.95", (f"the rarest finding has {n} validation positives, too few for any of "
                                f"{', '.join(f'{t:g}' for t in TARGETS)}: each finding that cannot meet 0.95 gets the "
                                "point-estimate threshold, marked unsupported")


def export_model(out_dir: Path, data: Data, log) -> dict:
    """Stage 3: the bundle in OUT/bundle, thresholds per finding on the run's own validation patients."""
    from medge.export.onnx_export import ExportConfig, export_bundle

    criterion, why = choose_target(data)
    log("  operating points: " + why)
    manifest = export_bundle(str(out_dir / "run" / "best.pt"), str(out_dir / "bundle"), None,
                             ExportConfig(operating_point=criterion), log=lambda m: log("  " + m))
    return {**manifest, "demo_operating_point": why}


def predict_test(out_dir: Path, data: Data, log) -> dict:
    """Stage 4: the edge runtime alone on the test patients' images; OUT/predictions.jsonl."""
    import numpy as np

    from medge.edge.model import Model
    from medge.edge.paths import to_json

    test = splits_of(data)["test"]
    model = Model.load(out_dir / "bundle")
    preds = model.predict(list(test.paths))
    atomic_write_text(out_dir / "predictions.jsonl", "".join(to_json(p.to_record(model.sha256, model.runtime)) + "\n"
                                                             for p in preds))
    truth = np.asarray(test.labels, np.float64)
    names = model.findings.names
    per = {}
    for k, name in enumerate(names):
        decided = [(p.decisions[name], truth[i, k]) for i, p in enumerate(preds)
                   if p.ok and p.decisions[name] is not None and not np.isnan(truth[i, k])]
        per[name] = {"called_positive": int(sum(d for d, _ in decided)), "true_positive": int((truth[:, k] == 1.0).sum()),
                     "agree": int(sum(d == (t == 1.0) for d, t in decided)), "decided": len(decided)}
    flagged = sum(bool(p.positive_findings) for p in preds if p.ok)
    failed = sum(not p.ok for p in preds)
    patients = len(set(test.patients))
    log(f"  {len(preds)} images of {patients} test patients: {flagged} flagged (any finding positive), {failed} failed")
    for name, f in per.items():
        log(f"  {name}: called positive {f['called_positive']}, truly positive {f['true_positive']}, decision agrees "
            f"with the label on {f['agree']} of {f['decided']}")
    return {"images": len(preds), "patients": patients, "flagged": flagged, "failed": failed, "findings": per,
            "warnings": dict(Counter(w for p in preds for w in p.warnings).most_common())}


def write_test_index(out_dir: Path, data: Data) -> Path:
    """OUT/test_index.csv: the rows of the data's NIH index whose images are the test patients'."""
    test = {Path(p).name for p in splits_of(data)["test"].paths}
    with open(data.index, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0] in test]
    target = out_dir / "test_index.csv"
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(kept)
    return target


def validate_test(out_dir: Path, data: Data, log) -> dict:
    """Stage 5: medge validate (edge: numpy + OpenCV) on the test patients' index; OUT/validation.json and beside it
    validation.md and its plots. Each finding's threshold is judged on cases no training or export step saw."""
    from medge.edge.apps.cli import main as medge
    from medge.edge.apps.validate import findings_summary_line

    index = write_test_index(out_dir, data)
    report = out_dir / "validation.json"
    rc = medge(["validate", "--model", str(out_dir / "bundle"), "--labels", str(index), "--images", str(data.images),
                "--labels-format", FORMAT, "--out", str(report)])
    if rc not in (0, 1):  # 1: a guarantee refuted at the site, which the report says: the demo goes on and shows it
        raise RuntimeError(f"medge validate exited {rc} (its message above)")
    rec = json.loads(report.read_text())
    log("  " + findings_summary_line(rec))
    return rec


def source_header(path: str, row: dict):
    """A DX header (no pixels: the SR needs none) for a synthetic PNG and its index row: patient, sex, age, view, and
    UIDs derived from the file name, so that a second demo run writes the same UIDs."""
    from pydicom.dataset import Dataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    stem = Path(path).stem
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["medge demo", stem])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["medge demo study", row["Patient ID"]])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medge demo series", stem])
    ds.Modality, ds.PatientID, ds.PatientSex = "DX", row["Patient ID"], row["Patient Gender"]
    ds.PatientAge = f"{int(row['Patient Age']):03d}Y"
    ds.ViewPosition, ds.PatientName, ds.StudyDescription = row["View Position"], "DEMO^SYNTHETIC", "medge demo"
    ds.Rows, ds.Columns = int(row["Height]"]), int(row["OriginalImage[Width"])  # NIH splits its header cell at the comma
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def report_sr(out_dir: Path, data: Data, cfg: MultiDemoConfig, log) -> dict:
    """Stage 6: the node's SR (``edge.apps.node.report``) for the first test images, in OUT/sr/, each read back with
    highdicom's TID 1500 parser; skipped, and said, without the node extra."""
    try:
        import highdicom as hd
        import pydicom
    except ImportError as e:
        log(f"  skipped: the node extra is not installed ({e.name}): pip install 'medge[node]'")
        return {"skipped": f"the node extra is not installed ({e.name})"}
    from medge.edge.apps.node import report
    from medge.edge.model import Model

    model = Model.load(out_dir / "bundle")
    with open(data.index, newline="", encoding="utf-8") as f:
        rows = {r["Image Index"]: r for r in csv.DictReader(f)}
    paths = list(splits_of(data)["test"].paths)[: cfg.sr_images]
    written = []
    for path, pred in zip(paths, model.predict(paths), strict=True):
        if not pred.ok:
            raise RuntimeError(pred.error)
        source = source_header(path, rows[Path(path).name])
        sr = report.build_sr(source, report.finding_of(model, pred), report.algorithm_of(model),
                             series_uid=report.result_uid(source.StudyInstanceUID, model.sha256, "sr"),
                             instance_uid=report.result_uid(source.SOPInstanceUID, model.sha256, "sr"))
        target = out_dir / "sr" / f"{Path(path).stem}.sr.dcm"
        target.parent.mkdir(exist_ok=True)
        sr.save_as(target, enforce_file_format=True)
        groups = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(target)).content.get_image_measurement_groups()
        written.append({"file": str(target), "groups": len(groups), "positive_findings": pred.positive_findings})
        log(f"  {target.name}: {len(groups)} measurement groups read back by highdicom; positive: "
            f"{', '.join(pred.positive_findings) or 'none'}")
    if private := report.private_classes(model.classes, report.class_codes(model.classes)):
        log(f"  coded in medge's private scheme 99MEDGE (no standard code in medge's table; medge node --class-code "
            f"gives one): {', '.join(private)}")
    return {"reports": written}


def output_paths(out_dir: Path) -> dict:
    """Every file and folder the demo writes at the top of OUT."""
    names = {"data": "data", "run": "run", "bundle": "bundle", "predictions": "predictions.jsonl",
             "test_index": "test_index.csv", "validation": "validation.json", "validation_report": "validation.md",
             "roc_plot": "validation.roc.png", "validation_cases": "validation.cases.jsonl", "sr": "sr",
             "summary": "summary.json", "report": "summary.md", "preprocess_cache": "cache"}
    return {k: str(out_dir / v) for k, v in names.items() if k != "sr" or (out_dir / v).is_dir()}  # sr/: node extra


def summarize(out_dir: Path, seconds: float, device, cfg: MultiDemoConfig, trained: dict, manifest: dict,
              predicted: dict, validated: dict, reported: dict) -> dict:
    """The demo's figures in one dict (summary.json)."""
    section = manifest.get("operating_point") or {}
    return {
        "out": str(out_dir), "seconds": round(seconds, 1), "device": str(device),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "findings": manifest["classes"],
        "splits": trained.get("splits"), "best_epoch": (trained.get("best") or {}).get("epoch"),
        "training_val": {k: trained["val"].get(k) for k in ("mean_auc", "auc_per_finding") if k in trained["val"]},
        "bundle_sha256": manifest["model"]["sha256"],
        "export_parity": {"max_abs_logit": manifest["parity"]["logits"]["max_abs"]},
        "operating_points": {"why": manifest.get("demo_operating_point"),
                             "findings": [{k: e.get(k) for k in ("name", "threshold", "criterion", "temperature",
                                                                   "unsupported")} | {
                                 "supported": (e.get("guarantee") or {}).get("supported")}
                                 for e in section.get("findings", [])]},
        "predict": predicted,
        "validate": {"cases": validated["counts"]["cases"], "summary": validated.get("summary"),
                     "findings": [{k: f.get(k) for k in ("name", "cases", "positives", "auc", "threshold", "supported",
                                                         "sensitivity", "specificity")}
                                  for f in validated["findings"]], "passed": validated.get("passed")},
        "sr": reported, "paths": output_paths(out_dir),
    }


def report_markdown(s: dict) -> str:
    """summary.md: the multi-label demo as a Markdown report, generated from summary.json's figures."""
    v = s["validate"]
    lines = ["# medge demo report (multi-label)", "",
             f"{s['created']}: {len(s['findings'])} findings ({', '.join(s['findings'])}), {s['config']['arch']} at "
             f"{s['config']['img_size']} px, {s['config']['epochs']} epochs on {s['device']}, {s['seconds']:.0f} s. "
             "Trained on synthetic images: not for real patients.", "",
             "## Splits (by patient: no patient in two splits)", "", "| split | images | patients |", "| --- | --- | --- |"]
    lines += [f"| {k} | {x.get('images')} | {x.get('patients')} |" for k, x in (s.get("splits") or {}).items()]
    lines += ["", f"Operating points: {s['operating_points']['why']}.", "",
              f"## Held-out test patients ({v['cases']} images)", "",
              "| finding | cases | positives | AUC (95% CI) | threshold | sensitivity | specificity |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in v["findings"]:
        threshold = "unsupported" if not f["supported"] else f"{f['threshold']:.4f}"
        lines.append(f"| {f['name']} | {f['cases']} | {f['positives']} | {figure_text(f['auc'], to='-')} | {threshold} | "
                     f"{figure_text(f.get('sensitivity'), to='-')} | {figure_text(f.get('specificity'), to='-')} |")
    summ = v.get("summary") or {}
    macro, micro = summ.get("macro_auc"), summ.get("micro_auc")
    lines += ["", f"Macro AUC {'n/a' if macro is None else f'{macro:.3f}'}, micro AUC "
              f"{'n/a' if micro is None else f'{micro:.3f}'}. Details, subgroups and the guarantees: validation.md.", ""]
    sr = s["sr"]
    lines += ["## DICOM SR", "", sr["skipped"] if "skipped" in sr else
              f"{len(sr['reports'])} SR (TID 1500, a measurement group per finding) in sr/, read back by highdicom.", ""]
    return "\n".join(lines)


def run_demo(out: str, device: str = "auto", cfg: MultiDemoConfig | None = None, log=print) -> dict:
    """Run the stages; returns the summary (also written to OUT/summary.json and summary.md)."""
    out_dir, dev, cfg = open_run_folder(out, device, cfg, CPU, GPU)
    log(f"medge demo --multilabel -> {out_dir} (device {dev}, {cfg.findings} findings, {cfg.arch} at {cfg.img_size}px, "
        f"{cfg.epochs} epochs)")
    t0 = time.perf_counter()
    data = run_stage(1, "data", lambda: make_data(out_dir, cfg, log), log, STAGES)
    trained = run_stage(2, "train (split by patient)", lambda: train_model(data, out_dir, device, cfg, log), log, STAGES)
    manifest = run_stage(3, "export", lambda: export_model(out_dir, data, log), log, STAGES)
    predicted = run_stage(4, "predict (edge: numpy + OpenCV only)", lambda: predict_test(out_dir, data, log), log, STAGES)
    validated = run_stage(5, "validate (edge: numpy + OpenCV only)", lambda: validate_test(out_dir, data, log), log, STAGES)
    reported = run_stage(6, "report (DICOM SR)", lambda: report_sr(out_dir, data, cfg, log), log, STAGES)
    summary = summarize(out_dir, time.perf_counter() - t0, dev, cfg, trained, manifest, predicted, validated, reported)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "summary.md", report_markdown(summary))
    log("\n" + summary_text(summary))
    return summary


def summary_text(s: dict) -> str:
    """What the demo prints at the end: the held-out figures per finding, then every file and folder it wrote."""
    v = s["validate"]
    macro = (v["summary"] or {}).get("macro_auc")
    lines = [f"medge demo --multilabel finished in {s['seconds']:.0f} s: {len(s['findings'])} findings, split by patient "
             + ", ".join(f"{k} {x.get('patients')} patients / {x.get('images')} images"
                         for k, x in (s.get("splits") or {}).items()),
             f"held-out test patients: macro AUC {'n/a' if macro is None else f'{macro:.3f}'}; per finding: "
             + ", ".join(f"{f['name']} {figure_text(f['auc'], to='-')}" for f in v["findings"]), "files:"]
    width = max(map(len, s["paths"]))
    lines += [f"  {k:<{width}}  {p}" for k, p in s["paths"].items()]
    return "\n".join(lines)
