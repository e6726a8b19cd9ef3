"""``medge export``: a training checkpoint to a verified bundle for the edge.

Usage: medge export runs/xray/best.pt --out bundles/xray --data data/xray

Steps: torch.onnx.export (opset 12, TorchScript exporter) -> onnxsim ->
onnx.checker (full) -> load in cv2.dnn -> parity gate against PyTorch (on
--data's val images through edge.preprocess, else on synthetic images) ->
with --data, calibration (temperature scaling) and the operating point on its
val split (--operating-point, default sensitivity=0.95 on the class that is not
"normal", met by a one-sided lower bound at --confidence, 95%: 0.95 needs 59
validation positives, else exit 2 unless --operating-point-unsupported) ->
with --data, fast variants (--variants: bf16 and int8, where this box has the
engines that run them, onnxruntime and OpenVINO), each gated at the operating
point on the val split (medge quantize) -> bundle (model.onnx + model.json, and
model.int8.onnx) written atomically. Any failure exits non-zero and writes nothing.

A multi-label checkpoint (medge train --labels INDEX.csv) is calibrated per finding, each finding given
its own threshold by --operating-point at --confidence, on the validation split of the run's own index,
split by patient again as in training (or --labels INDEX.csv --images DIR --labels-format F, or
--data INDEX.csv: every row of that index, or its val rows when it has a split column). A finding with
too few validation cases for the target keeps the point-estimate threshold marked unsupported; one with
fewer than 5 positives or negatives gets none (no decision).
Its fast variants are gated on the same validation cases, finding by finding at each finding's threshold;
int8 is calibrated on the index's training split (the run's own, or the train rows of a split column).
"""
from __future__ import annotations

import argparse
import json

from medge.edge.errors import MedgeError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from medge.edge.inputs.index import FORMATS, UNCERTAIN
    from medge.edge.runtime.engines import engine_choices
    from medge.export.onnx_export import ExportConfig
    from medge.export.quantize import add_variant_arguments
    from medge.export.variants import VariantConfig

    d = ExportConfig()
    p = sub.add_parser("export", help="export a checkpoint to a verified ONNX bundle (extra: train)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="best.pt / last.pt, or a run folder (uses its best.pt)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--data", help="data folder whose val images are the parity inputs (default: synthetic images)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim (recorded in the manifest)")
    p.add_argument("--static-batch", action="store_true", help="export a fixed batch of 1 instead of a dynamic batch axis")
    p.add_argument("--engine", choices=engine_choices(), default=d.engine,
                   help="engine the edge runs; auto: the fastest correct one on the edge box, so every engine of this "
                        "OpenCV is verified here (default: %(default)s)")
    p.add_argument("--max-abs-logit", type=float, default=d.tolerance.max_abs_logit,
                   help="parity tolerance on |logit difference| (default: %(default)s)")
    p.add_argument("--min-agreement", type=float, default=d.tolerance.min_top1_agreement,
                   help="parity: required top-1 agreement (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="parity inputs at most (default: %(default)s)")
    p.add_argument("--modality", action="append", default=[], metavar="CODE",
                   help="DICOM modality the model is for (CR, DX, ...; repeat for several): the edge warns about "
                        "DICOM inputs of other modalities; added to those of the training DICOM files")
    p.add_argument("--operating-point", default=d.operating_point, metavar="CRITERION",
                   help="with --data: calibrate on its val split and label by a threshold on the positive class chosen "
                        "there: sensitivity=X, specificity=X or youden; none: argmax, uncalibrated (default: %(default)s)")
    p.add_argument("--confidence", type=float, default=d.confidence,
                   help="a sensitivity or specificity target is met by its one-sided lower confidence bound at this level "
                        "(distribution-free, from the validation scores' order statistics; 0.95 at 95%% needs 59 "
                        "positives) (default: %(default)s)")
    p.add_argument("--operating-point-unsupported", action="store_true",
                   help="when the validation split has too few cases for the target at --confidence, store the threshold "
                        "chosen on the point estimate, marked 'unsupported, N positives', instead of exiting 2")
    p.add_argument("--positive", help="two-class models: the positive class of the threshold (default: the class that "
                                      "is not 'normal', else the second class)")
    p.add_argument("--calibration-images", type=int, default=d.calibration_images,
                   help="validation images used for calibration at most (default: %(default)s)")
    p.add_argument("--labels", metavar="INDEX.csv",
                   help="multi-label checkpoints: calibrate on this index instead of the run's own: every row, or its "
                        "val rows when it has a split column (the run's own index given so is split as in training)")
    p.add_argument("--images", metavar="DIR", help="the folder the index's paths are under (default: with --labels its "
                   "folder, else the run's images: give it when they have moved)")
    p.add_argument("--labels-format", choices=FORMATS,
                   help="with --labels: the index's layout (default: generic)")
    p.add_argument("--uncertain", choices=UNCERTAIN,
                   help="multi-label: uncertain labels (-1) in the validation index: ignore (masked), zeros or ones "
                        "(default: the policy the model was trained with)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out (atomically)")
    add_variant_arguments(p, VariantConfig(), default="auto")
    return p


def export_variants(args: argparse.Namespace, log=print):
    """The VariantConfig of --variants: auto = the variants whose engines this box has, made where there is data to
    gate them on (a single-label model's --data, a multi-label model's validation index; export decides); none =
    fp32 only."""
    from medge.export.quantize import variant_config
    from medge.export.variants import GATE_ENGINES, pairs_here

    text = args.variants.strip().lower()
    if text == "none":
        return None
    if text == "auto":
        here = []
        for v in GATE_ENGINES:
            try:
                pairs_here((v,))
                here.append(v)
            except MedgeError as e:
                if args.data or args.labels:  # where variants are wanted at all: say why one is not made
                    log(f"note: no {v} variant: {e}")
        if not here:
            return None
        args = argparse.Namespace(**{**vars(args), "variants": ",".join(here)})
    cfg = variant_config(args)
    return cfg if cfg.variants else None  # --variants fp32: the exported model only


def run(args: argparse.Namespace) -> int:
    from medge.edge.decision import guarantee_text
    from medge.edge.errors import UsageError
    from medge.export.findings import IndexArgs
    from medge.export.onnx_export import ExportConfig, export_bundle
    from medge.export.parity import Tolerance

    cfg = ExportConfig(simplify=not args.no_simplify, dynamic_batch=not args.static_batch, engine=args.engine,
                       tolerance=Tolerance(args.max_abs_logit, args.min_agreement), max_images=args.max_images,
                       modalities=tuple(code.strip().upper() for arg in args.modality for code in arg.split(",") if code.strip()),
                       operating_point=args.operating_point.strip().lower(), positive=args.positive,
                       confidence=args.confidence, unsupported=args.operating_point_unsupported,
                       calibration_images=args.calibration_images)
    if args.labels and args.data:
        raise UsageError("--labels and --data: give one (--data is a class folder, or a multi-label model's index)")
    if args.images and args.data:
        raise UsageError("--images and --data: give one (--images goes with --labels INDEX.csv, or alone for the "
                         "run's own index when its images have moved)")
    if (args.labels_format or args.uncertain) and not args.labels:
        raise UsageError("--labels-format and --uncertain go with --labels INDEX.csv (the run's own index is read as "
                         "in training, so that its validation split is the run's)")
    index = IndexArgs(args.labels, args.images, args.labels_format, args.uncertain)
    m = export_bundle(args.checkpoint, args.out, args.data, cfg, overwrite=args.overwrite, variants=export_variants(args),
                      index=index, optional_variants=args.variants.strip().lower() == "auto")
    s = m["export"]["simplify_stats"]
    if s:
        print(f"onnxsim: {s['nodes_before']} -> {s['nodes_after']} nodes, "
              f"{s['bytes_before'] / 1e6:.2f} -> {s['bytes_after'] / 1e6:.2f} MB")
    op = m.get("operating_point") or {}
    if op.get("threshold") is not None:
        print(f"operating point: {guarantee_text(op['criterion'], op.get('guarantee'))}")
    if "task" in m:  # a multi-label bundle: its findings' thresholds (null: unsupported)
        print(json.dumps({"task": m["task"], "thresholds": {e["name"]: e["threshold"] for e in op.get("findings", [])}}))
    print(json.dumps({"bundle": args.out, "sha256": m["model"]["sha256"], "input_shape": m["model"]["input_shape"],
                      "parity_max_abs_logit": m["parity"]["logits"]["max_abs"], "top1_agreement": m["parity"]["top1_agreement"],
                      "threshold": (m.get("operating_point") or {}).get("threshold"),
                      "temperature": (m.get("operating_point") or {}).get("temperature"),
                      "temperature_at_bound": ((m.get("operating_point") or {}).get("calibration") or {}).get("at_bound")}))
    return 0
