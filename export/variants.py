"""Fast variants of a bundle, each gated at the operating point: int8 (a QDQ file) and bf16 (a precision).

Steps (``add_variants``, run by ``medge export --variants`` and ``medge quantize``): open the bundle
(hash-checked) -> the int8 copy: opset 13 (per-channel QDQ needs it), calibrated by onnxruntime's
static quantizer on images of the training split -> every (engine, variant) pair of this box's
engines that run it (onnxruntime, OpenVINO; bf16 on OpenVINO only, its precision pinned) run on the
validation split beside fp32 on cv2.dnn -> each pair's gate -> the sealed ``variants`` manifest
section (``edge.runtime.variants``) and the int8 file, written into the bundle atomically.

The gate of a pair, against fp32 on cv2.dnn on the same validation images: logit drift (max, p99),
top-1 agreement, the decisions flipped at the bundle's operating point (temperature + threshold; argmax
without one), at most ``max_flips`` (0 by default), and the pair's own validation figures with
intervals (AUC, sensitivity and specificity at the threshold); no calibrated probability may move by more
than ``max_probability_change`` (0.2). A pair that fails is recorded with its reason and never offered;
a pair that passes also records its golden outputs, which the edge must reproduce before running it.

A multi-label bundle (``edge.findings``) is gated the same way on its validation cases (``export.findings``:
the run's own index split again by patient, or a given index's val rows): every decided finding's decision
at its own temperature and threshold is compared, so ``flips`` counts (image, finding) decisions, and each
finding keeps its own flips and validation figures (``findings``). int8 is calibrated on the index's
training split. A multi-label variant that flips decisions gets no operating point of its own (not built).

Why onnxruntime's quantizer and not NNCF's, measured on the demo's resnet18 (2-core Intel Xeon with
AMX, 80 validation images, docs/variants.md): the same per-channel QDQ graph from both ran equally
fast on onnxruntime and OpenVINO (within 5%), but NNCF's default preset moved a logit by up to 7.5
(onnxruntime's U8S8: 0.35); NNCF would also add a large dependency to the export.
U8 activations with S8 weights: onnxruntime's S8S8 QDQ ran no faster than fp32 on x86.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from medge.edge.decision import label_indices, seal
from medge.edge.errors import ExportError, MedgeError, SelfTestError, UsageError
from medge.edge.golive import auc_ci, binary_figures
from medge.edge.numeric import latency_summary, softmax
from medge.edge.preprocess import preprocess_file
from medge.edge.runtime.bundle import MANIFEST_FILE, MODEL_FILE, golden_inputs, write_bundle
from medge.edge.runtime.dnn import forward_batches, forward_outputs_batches, load_net, time_forwards
from medge.edge.runtime.engines import ENGINES
from medge.edge.runtime.variants import FILES, FP32, PRECISION, SECTION
from medge.edge.runtime.verify import VerifiedBundle, open_bundle
from medge.edge.system import environment

QUANTIZED_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13
GATE_ENGINES = {"int8": ("onnxruntime", "openvino"), "bf16": ("openvino",)}  # engines that run each variant
FEW_GATE_IMAGES = 50  # below this, the gate is said to be weak
REFERENCE_ENGINE = "classic"  # fp32 on cv2.dnn: what medge runs by default, and what the gate compares with


@dataclass(frozen=True)
class VariantConfig:
    """Which variants to make and how they are gated; saved in the manifest's ``variants`` section."""

    variants: tuple[str, ...] = ("bf16", "int8")
    max_flips: int = 0  # decisions at the operating point a variant may change on the validation split
    # the most a variant may move a validation case's calibrated probability (what records show, and what medge
    # monitor compares with the validation scores): 0.84 once, with every decision kept (docs/variants.md)
    max_probability_change: float = 0.2
    calibration_images: int = 128  # training-split images the int8 scales are calibrated on (evenly spread)
    gate_images: int = 5000  # validation images the gate compares on, at most (evenly spread)
    own_operating_point: bool = True  # a pair that flips decisions may keep them with its own temperature + threshold
    golden_share: float = 0.25  # an offered pair's golden tolerance: this share of its gated max logit drift
    min_golden_tolerance: float = 1e-3  # ... and at least this (the fp32 self-test's)
    timing_rounds: int = 20  # batch-1 forward passes per pair timed on this machine, interleaved


def parse_variants(text: str) -> tuple[str, ...]:
    """``--variants`` as a tuple of the fast variants: 'bf16,int8' -> ('bf16', 'int8'); fp32 is always there."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRECISION]
    if unknown or not names:
        raise UsageError(f"--variants {text!r}: choose among {list(PRECISION)}, comma-separated (fp32 is always kept)")
    return tuple(n for n in dict.fromkeys(names) if n != FP32)


def pairs_here(variants: tuple[str, ...]) -> dict[str, list[str]]:
    """variant -> the engines of this box that run it; ExportError when a variant has none here."""
    found = {v: [e for e in GATE_ENGINES[v] if e in ENGINES] for v in variants}
    missing = [v for v, engines in found.items() if not engines]
    if missing:
        need = {v: list(GATE_ENGINES[v]) for v in missing}
        raise ExportError(f"variants {missing} need one of the engines {need}, not installed here: "
                          "pip install 'medge[ort,openvino]' on the exporting machine")
    return found


def split_images(data: str, split: str, limit: int, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of at most ``limit`` images of a split of ``data``, evenly spread; UsageError when its class
    folders are not the bundle's ``classes`` (labels would mean other things, and the gate nothing)."""
    from medge.train.data import discover

    found, splits = discover(data)
    if list(found) != list(classes):
        raise UsageError(f"{data}: its classes {list(found)} are not the bundle's {list(classes)}: give the data the "
                         "model was trained on (the same class folders)")
    s = splits[split]
    if not len(s):
        raise ExportError(f"{data}: the {split} split has no images")
    pick = np.unique(np.linspace(0, len(s) - 1, min(limit, len(s))).round().astype(int))
    return [(s.paths[i], int(s.labels[i])) for i in pick]


def case_images(split, limit: int, where: str) -> list[tuple[str, tuple]]:
    """(path, targets) of at most ``limit`` images of a multi-label ``train.data.Split``, evenly spread; ``where``:
    the split, for the error."""
    if not len(split):
        raise ExportError(f"{where}: no image")
    pick = np.unique(np.linspace(0, len(split) - 1, min(limit, len(split))).round().astype(int))
    return [(split.paths[i], tuple(split.labels[i])) for i in pick]


def findings_cases(bundle: VerifiedBundle, data, log):
    """A multi-label bundle's ``export.findings.ValidationCases`` from ``data``: the cases themselves, or an index
    CSV or a folder holding one (``export.findings.index_of_data``; the run's own index is split again as in
    training, found through the manifest's training configuration, and checked against the split hashes it
    records)."""
    from medge.export import findings

    if isinstance(data, findings.ValidationCases):
        return data
    given = data if isinstance(data, findings.IndexArgs) else findings.index_of_data(str(data))
    training = bundle.manifest.get("training") or {}
    src = findings.index_source(training.get("train_config") or {}, given, run_data_source(training))
    return findings.validation_split(src, bundle.classes, log)


def run_data_source(training: dict) -> dict | None:
    """The training run's data source (its index's SHA-256 and its splits' hashes): the manifest's, or, for a bundle
    exported before the manifest held it, its checkpoint's where that file is still there."""
    if training.get("data_source"):
        return training["data_source"]
    checkpoint = training.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    from medge.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(checkpoint).data_source
    except MedgeError:
        return None


def read_blob(items: list[tuple[str, int]], bundle: VerifiedBundle, log) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The images through the bundle's preprocessing: (blob, labels, paths); unreadable ones skipped and said."""
    tensors, labels, paths = [], [], []
    for path, label in items:
        try:
            tensors.append(preprocess_file(path, bundle.preprocess_config))
        except MedgeError as e:
            log(f"variants: skipping unreadable image: {e}")
            continue
        labels.append(label)
        paths.append(path)
    if not tensors:
        raise ExportError("no readable image among " + ", ".join(p for p, _ in items[:3]))
    multi = bundle.findings is not None  # K targets per image: 1, 0, NaN (masked)
    return np.stack(tensors), np.asarray(labels, np.float64 if multi else np.int64), paths


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray, work: Path) -> tuple[bytes, dict]:
    """A per-channel QDQ int8 copy of the model (U8 activations, S8 weights) calibrated on ``calibration``."""
    import onnx
    import onnxruntime
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load_from_string(onnx_bytes)
    name = model.graph.input[0].name
    src, dst = work / "fp32_opset13.onnx", work / "int8.onnx"
    onnx.save(version_converter.convert_version(model, QUANTIZED_OPSET), src)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x[None]}

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is printed through the root logger
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as e:  # onnxruntime's quantizer raises many types; the message says what is wrong
        raise ExportError(f"onnxruntime {onnxruntime.__version__} could not quantize the model: "
                          f"{type(e).__name__}: {e}") from None
    data = dst.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    info = {"tool": f"onnxruntime {onnxruntime.__version__} quantize_static", "format": "QDQ", "per_channel": True,
            "activations": "uint8 (asymmetric)", "weights": "int8 (symmetric, per channel)", "opset": QUANTIZED_OPSET,
            "calibration": {"method": "MinMax", "images": int(len(calibration))}}
    return data, info


def gate(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, bundle: VerifiedBundle, paths: list[str],
         max_flips: int, own_op=None) -> dict:
    """A pair's gate against fp32 on the same images: drift, agreement, flips at the operating point, figures.
    fp32 decides at the bundle's operating point; the variant at ``own_op`` when given (its own temperature and
    threshold, ``own_operating_point``), else at the bundle's."""
    ref_op = bundle.operating_point
    op = own_op or ref_op
    drift = np.abs(logits.astype(np.float64) - reference).max(axis=1)
    ref_labels, labels_here = np.array(label_indices(ref_op, reference)), np.array(label_indices(op, logits))
    flipped = np.flatnonzero(ref_labels != labels_here)
    record = {"images": int(len(labels)), "decisions": int(len(labels)),  # one decision per image
              "logit_drift": {"max": float(drift.max()), "p99": float(np.percentile(drift, 99))},
              "top1_agreement": float(np.mean(np.argmax(reference, 1) == np.argmax(logits, 1))),
              "flips": int(len(flipped)), "max_flips": int(max_flips),
              "flipped": [{"path": paths[i], "fp32": bundle.classes[ref_labels[i]], "variant": bundle.classes[labels_here[i]]}
                          for i in flipped[:10]]}
    if op is not None:
        p_ref, p = ref_op.probabilities(reference), op.probabilities(logits)
        record["max_abs_probability"] = float(np.abs(p - p_ref).max())
        if op.threshold is not None:
            pos = op.positive_index
            y, score = labels == pos, p[:, pos]
            if y.any() and (~y).any():
                figures = binary_figures(y, score, op.threshold)
                record["validation"] = {"auc": auc_ci(y, score), "sensitivity": figures["sensitivity"],
                                        "specificity": figures["specificity"], "threshold": op.threshold}
    else:  # argmax on the uncalibrated softmax: the probabilities records show
        record["max_abs_probability"] = float(np.abs(softmax(logits) - softmax(reference)).max())
    passed = record["flips"] <= max_flips
    record["passed"] = passed
    record["reason"] = None if passed else (f"{record['flips']} of {record['images']} validation decisions flipped at "
                                            f"the operating point (at most {max_flips} allowed)")
    return record


def limit_probabilities(record: dict, limit: float) -> dict:
    """The gate's record, refused also when a calibrated probability moved more than ``limit`` (its decisions may all
    have held: a variant that shifts every score above a low threshold flips none)."""
    moved = record.get("max_abs_probability")
    out = {**record, "max_probability_change": float(limit)}
    if moved is None or moved <= limit:
        return out
    why = f"a calibrated probability moved by {moved:.3g} (at most {limit:g} allowed)"
    return {**out, "passed": False, "reason": f"{record['reason']}; {why}" if record["reason"] else why}


def gate_findings(reference: np.ndarray, logits: np.ndarray, targets: np.ndarray, bundle: VerifiedBundle,
                  paths: list[str], max_flips: int) -> dict:
    """A multi-label pair's gate: ``gate``'s record, its decisions those of every decided finding at the bundle's
    temperature and threshold of that finding (``flips`` counts (image, finding) pairs; ``decisions`` how many were
    compared), with each finding's own flips, largest probability change and validation figures (``findings``)."""
    rules = bundle.findings
    p_ref, p = rules.probabilities(reference), rules.probabilities(logits)
    thresholds = np.array([np.nan if f.threshold is None else f.threshold for f in rules.findings])
    decided = ~np.isnan(thresholds)
    with np.errstate(invalid="ignore"):
        flipped = ((p_ref >= thresholds) != (p >= thresholds)) & decided
    drift = np.abs(logits.astype(np.float64) - reference).max(axis=1)
    state = lambda v: "present" if v else "absent"
    record = {"images": int(len(targets)), "decisions": int(len(targets) * decided.sum()),
              "logit_drift": {"max": float(drift.max()), "p99": float(np.percentile(drift, 99))},
              "flips": int(flipped.sum()), "max_flips": int(max_flips),
              "flipped": [{"path": paths[i], "finding": rules.names[k], "fp32": state(p_ref[i, k] >= thresholds[k]),
                           "variant": state(p[i, k] >= thresholds[k])} for i, k in np.argwhere(flipped)[:10]],
              "max_abs_probability": float(np.abs(p - p_ref).max()), "findings": {}}
    for k, rule in enumerate(rules.findings):
        known = ~np.isnan(targets[:, k])
        y, score = targets[known, k] == 1, p[known, k]
        entry = {"flips": int(flipped[:, k].sum()), "max_abs_probability": float(np.abs(p[:, k] - p_ref[:, k]).max()),
                 "threshold": rule.threshold}
        if y.any() and (~y).any():
            entry["auc"] = auc_ci(y, score)
            if rule.threshold is not None:
                figures = binary_figures(y, score, rule.threshold)
                entry.update(sensitivity=figures["sensitivity"], specificity=figures["specificity"])
        record["findings"][rule.name] = entry
    passed = record["flips"] <= max_flips
    record["passed"] = passed
    record["reason"] = None if passed else (
        f"{record['flips']} of {record['decisions']} validation decisions flipped at the findings' thresholds (at most "
        f"{max_flips} allowed): " + ", ".join(f"{n} {e['flips']}" for n, e in record["findings"].items() if e["flips"]))
    return record


def own_operating_point(bundle: VerifiedBundle, logits: np.ndarray, labels: np.ndarray, source: str):
    """The variant's own temperature and threshold, chosen by the bundle's rule (criterion, positive class,
    confidence) on the same validation images: (sealed section, OperatingPoint), or None when the bundle has no
    threshold or the split cannot support the rule for the variant."""
    from medge.edge.decision import OperatingPoint
    from medge.export.calibrate import operating_point_section

    section = bundle.manifest.get("operating_point") or {}
    if section.get("threshold") is None or not section.get("criterion"):
        return None
    g = section.get("guarantee") or {}
    try:
        own = operating_point_section(logits.astype(np.float64), labels, bundle.classes, section["criterion"],
                                      section.get("positive"), source, 0, float(g.get("confidence", 0.95)),
                                      unsupported=g.get("supported") is False)
    except MedgeError:
        return None
    body = {k: v for k, v in own.items() if k != "sha256"}
    body["positive_source"] = f"the bundle's ({section.get('positive_source', 'as exported')})"
    own = seal(body)
    return own, OperatingPoint.from_manifest({"classes": bundle.classes, "operating_point": own})


def golden_record(bundle: VerifiedBundle, net, drift_max: float, cfg: VariantConfig) -> dict:
    """The pair's own outputs on the golden inputs (logits, and CAM maps for a CAM bundle) and its tolerance."""
    from medge.edge.explain import CamExplainer

    g = bundle.manifest["golden"]
    x = golden_inputs(int(g["seed"]), int(g["count"]), bundle.preprocess_config)
    tolerance = max(cfg.min_golden_tolerance, cfg.golden_share * drift_max)
    cam = bundle.explainer if isinstance(bundle.explainer, CamExplainer) and "expected_cam" in g else None
    if cam is None:
        return {"expected_logits": forward_batches(net, x, bundle.chw, len(bundle.classes), 1).tolist(),
                "tolerance": tolerance}
    outs = forward_outputs_batches(net, x, bundle.chw, ("logits", cam.output), 1)
    maps = np.stack([cam.cams(outs[cam.output], [k] * len(x)) for k in range(len(bundle.classes))], axis=1)
    return {"expected_logits": outs["logits"].reshape(len(x), -1).tolist(), "tolerance": tolerance,
            "expected_cam": maps.tolist(), "cam_tolerance": max(cfg.min_golden_tolerance, cfg.golden_share)}


def pair_nets(bundle: VerifiedBundle, found: dict, int8: bytes | None) -> dict:
    """(engine, variant) -> a net of this box, for every pair to gate; fp32 on cv2.dnn as the reference."""
    nets = {(REFERENCE_ENGINE, FP32): load_net(bundle.onnx_bytes, REFERENCE_ENGINE)}
    for variant, engines in found.items():
        for e in engines:
            src = int8 if variant == "int8" else bundle.onnx_bytes
            nets[(e, variant)] = load_net(src, e, precision=PRECISION[variant], name=f"{variant} variant")
    return nets


def run_pairs(nets: dict, blob: np.ndarray, bundle: VerifiedBundle, chunk: int = 32) -> dict:
    """Each net's logits on the blob (one image per pass: as the pipeline runs them)."""
    k = len(bundle.classes)
    return {pair: np.concatenate([forward_batches(net, blob[i : i + chunk], bundle.chw, k, 1)
                                  for i in range(0, len(blob), chunk)]) for pair, net in nets.items()}


def variant_entry(variant: str, pairs: dict, int8: tuple[bytes, dict] | None, cfg: VariantConfig, calibrated_on: str) -> dict:
    """The manifest entry of one variant: its file (int8), how it was made and each engine's gate."""
    entry = {"precision": PRECISION[variant], "file": FILES.get(variant, MODEL_FILE), "gates": pairs,
             "config": asdict(cfg)}
    if variant == "int8":
        data, info = int8
        from medge.edge.runtime.bundle import sha256_bytes

        entry.update(sha256=sha256_bytes(data), size_bytes=len(data), opset=QUANTIZED_OPSET,
                     quantization={**info, "calibration": {**info["calibration"], "split": calibrated_on}})
    else:
        entry["about"] = "model.onnx computed in bfloat16 (the engine's precision pinned to bf16), not a file"
    return entry


def gate_pairs(bundle: VerifiedBundle, nets: dict, val: tuple, cfg: VariantConfig, log) -> dict:
    """Every non-reference pair gated, timed (batch 1, interleaved, with the reference) and given its golden."""
    blob, labels, paths = val
    logits = run_pairs(nets, blob, bundle)
    reference = logits[(REFERENCE_ENGINE, FP32)].astype(np.float64)
    times = time_forwards(nets, blob[:1], bundle.chw, len(bundle.classes), cfg.timing_rounds, warmup=2)
    ref_ms = latency_summary(times[(REFERENCE_ENGINE, FP32)])["p50_ms"]
    results: dict = {}
    for pair, net in nets.items():
        if pair == (REFERENCE_ENGINE, FP32):
            continue
        if bundle.findings is not None:
            record = limit_probabilities(gate_findings(reference, logits[pair], labels, bundle, paths, cfg.max_flips),
                                         cfg.max_probability_change)
        else:
            record = limit_probabilities(gate(reference, logits[pair], labels, bundle, paths, cfg.max_flips),
                                         cfg.max_probability_change)
            if not record["passed"] and cfg.own_operating_point:
                record = regate_with_own_operating_point(record, reference, logits[pair], val, bundle, cfg)
        record["forward_ms"] = latency_summary(times[pair])
        record["speedup_vs_cv2_fp32"] = ref_ms / record["forward_ms"]["p50_ms"]
        computed = getattr(net, "precision", PRECISION[pair[1]])
        if computed != PRECISION[pair[1]]:
            record.update(passed=False, reason=f"the {pair[0]} engine computes {computed} here, not {PRECISION[pair[1]]}: "
                                               "this CPU lacks it, so the variant was not what would be gated")
        try:
            if record["passed"]:
                record["golden"] = golden_record(bundle, net, record["logit_drift"]["max"], cfg)
        except MedgeError as e:
            record.update(passed=False, reason=f"its golden outputs could not be computed: {e}")
        results.setdefault(pair[1], {})[pair[0]] = record
        log(f"variants: {pair[1]} on {pair[0]}: {summary(record)}")
    return results


def regate_with_own_operating_point(record: dict, reference: np.ndarray, logits: np.ndarray, val: tuple,
                                     bundle: VerifiedBundle, cfg: VariantConfig) -> dict:
    """A pair that flipped decisions at the bundle's operating point, gated again at its own (same rule, same split):
    offered with that operating point, recorded, when its decisions then keep fp32's; else the first record."""
    _, labels, paths = val
    own = own_operating_point(bundle, logits, labels, "the validation split, for this variant")
    if own is None:
        return record
    why = own_unfit(own[0], bundle)
    if why:
        return {**record, "reason": f"{record['reason']}; no operating point of its own: {why}"}
    again = limit_probabilities(gate(reference, logits, labels, bundle, paths, cfg.max_flips, own[1]),
                                cfg.max_probability_change)
    if not again["passed"]:
        return {**record, "reason": record["reason"] + f"; with its own temperature and threshold: {again['reason']}"}
    return {**again, "operating_point": own[0],
            "at_bundle_operating_point": {"flips": record["flips"], "flipped": record["flipped"]}}


def own_unfit(own: dict, bundle: VerifiedBundle) -> str | None:
    """Why a variant's own operating point cannot stand in for the bundle's: its temperature stopped at an end of
    its range (its scores do not calibrate), or the bundle's guarantee held and its own does not."""
    if own["calibration"].get("at_bound"):
        return f"its temperature stopped at the {own['calibration']['at_bound']} end of its range ({own['temperature']:.3g})"
    ours = (bundle.manifest.get("operating_point") or {}).get("guarantee") or {}
    theirs = own.get("guarantee") or {}
    if ours.get("supported") and not theirs.get("supported"):
        return "the bundle's guarantee is not met on the variant's scores"
    return None


def summary(record: dict) -> str:
    """One line of a pair's gate."""
    d = record["logit_drift"]
    top1 = f"top-1 agreement {record['top1_agreement']:.3f}, " if "top1_agreement" in record else ""
    text = (f"{record['forward_ms']['p50_ms']:.2f} ms ({record['speedup_vs_cv2_fp32']:.1f}x cv2.dnn fp32), "
            f"max |delta logit| {d['max']:.3g} (p99 {d['p99']:.3g}), {top1}"
            f"{record['flips']} of {record['decisions']} decisions flipped")
    own = record.get("operating_point")
    if own is not None:
        text += (f" with its own temperature {own['temperature']:.3g} and threshold {own['threshold']:.4g} "
                 f"({record['at_bundle_operating_point']['flips']} at the bundle's)")
    return text + (" -> OFFERED" if record["passed"] else f" -> REFUSED: {record['reason']}")


def gate_images(bundle: VerifiedBundle, data, cfg: VariantConfig, log) -> tuple[list | None, list, str, str]:
    """(calibration images or None where int8 is not asked for, validation images, as (path, label) pairs; where
    each came from): a class folder's train and val splits, or a multi-label bundle's index (``findings_cases``).

    Raises:
        UsageError: data of other classes, an index for a single-label bundle; int8 for a multi-label bundle whose
            index gives no training split.
    """
    if bundle.findings is None:
        if not isinstance(data, (str, os.PathLike)) or Path(data).is_file():
            raise UsageError(f"{data}: {bundle.bundle_dir} is a single-label bundle ({', '.join(bundle.classes)}): give "
                             "the data folder it was trained on (its class folders), not an index")
        calib = split_images(data, "train", cfg.calibration_images, bundle.classes) if "int8" in cfg.variants else None
        val = split_images(data, "val", cfg.gate_images, bundle.classes)
        return calib, val, f"train split of {data}", f"val split of {data}"
    cases = findings_cases(bundle, data, log)
    if "int8" in cfg.variants and cases.train is None:
        why = ("it is used whole, all validation cases (it has no split column)" if cases.source.startswith("every row")
               else "its split column names no train row")
        raise UsageError(f"{cases.source}: int8 is calibrated on training images, and this index gives none ({why}): "
                         "give the run's own index, or one with a split column naming train rows, or --variants bf16")
    calib = case_images(cases.train, cfg.calibration_images, cases.train_source) if "int8" in cfg.variants else None
    return calib, case_images(cases.split, cfg.gate_images, cases.source), cases.train_source, cases.source


def add_variants(bundle_dir: str | os.PathLike, data, cfg: VariantConfig = VariantConfig(), log=print) -> dict:
    """Make, gate and add the fast variants to a bundle; the bundle is rewritten atomically with them.

    Args:
        bundle_dir: an exported bundle (verified by its hashes first).
        data: the data folder it was trained on (ImageFolder layout): int8 is calibrated on its train split,
            every pair gated on its val split. For a multi-label bundle: its index CSV (or a folder holding one), or
            ``export.findings.ValidationCases`` (int8 calibrated on their training split, every pair gated on them).
        cfg: which variants and how strict the gate is.
        log: where progress lines go.

    Returns:
        the new manifest.

    Raises:
        ExportError: no engine here runs a variant asked for, no readable image, the quantizer failed.
        UsageError: data of other classes, an index for a single-label bundle, int8 without training images.
        ExportError: an index of other findings, or whose split is not the one training held out.
        BundleError, ModelIntegrityError: the bundle itself is bad. Nothing is written then.
    """
    import tempfile

    bundle = open_bundle(bundle_dir, engine=REFERENCE_ENGINE, variant=FP32)
    if not cfg.variants:
        raise UsageError("no fast variant to make: name bf16 and/or int8 (fp32, the exported model, is always there)")
    found = pairs_here(cfg.variants)
    if bundle.findings is not None:  # a multi-label variant has no operating point of its own (module docstring)
        cfg = replace(cfg, own_operating_point=False)
    calib_items, val_items, calibrated_on, gated_on = gate_images(bundle, data, cfg, log)
    int8 = None
    if "int8" in found:
        calib, _, _ = read_blob(calib_items, bundle, log)
        with tempfile.TemporaryDirectory() as work:
            int8 = quantize_int8(bundle.onnx_bytes, calib, Path(work))
        log(f"variants: int8 quantized ({int8[1]['tool']}, {len(calib)} training images, {len(int8[0]) / 1e6:.1f} MB)")
    val = read_blob(val_items, bundle, log)
    if len(val[1]) < FEW_GATE_IMAGES:
        log(f"warning: the gate sees only {len(val[1])} validation images: 0 decisions flipped on so few says little; "
            f"a variant is better gated on a validation split of {FEW_GATE_IMAGES} or more")
    try:
        nets = pair_nets(bundle, found, int8[0] if int8 else None)
    except SelfTestError as e:
        raise ExportError(str(e)) from None
    gated = gate_pairs(bundle, nets, val, cfg, log)
    env = environment()
    section = {v: {**variant_entry(v, gated[v], int8, cfg, calibrated_on),
                   "gated_on": {**{k: env[k] for k in ("cpu", "cores", "opencv")}, "images": gated_on}} for v in found}
    manifest = {**bundle.manifest, SECTION: seal({**{k: v for k, v in (bundle.manifest.get(SECTION) or {}).items()
                                                     if k != "sha256"}, **section})}
    return write_with_variants(bundle, manifest, {FILES["int8"]: int8[0]} if int8 else {})


def write_with_variants(bundle: VerifiedBundle, manifest: dict, files: dict[str, bytes]) -> dict:
    """Rewrite the bundle atomically with the new manifest and variant files, keeping every other file of it."""
    from medge.edge.runtime.bundle import read_manifest

    keep = {p.name: p.read_bytes() for p in Path(bundle.bundle_dir).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name not in (MODEL_FILE, MANIFEST_FILE, *files)}
    written = write_bundle(bundle.bundle_dir, bundle.onnx_bytes, manifest, overwrite=True, extra_files={**keep, **files})
    return read_manifest(written)
