"""``medge quantize``: add fast variants (int8, bf16) to an exported bundle, each gated at its operating point.

Usage: medge quantize bundles/xray --data data/xray                    # bf16 and int8
       medge quantize bundles/xray --data data/xray --variants int8 --max-flips 1
       medge quantize bundles/findings --data data/nih/Data_Entry.csv       # a multi-label bundle: its index

int8 is calibrated on --data's train split (onnxruntime's static quantizer, a QDQ file); every pair of
an engine of this box and a variant (onnxruntime and OpenVINO for int8, OpenVINO for bf16) is gated on
its val split against fp32 on cv2.dnn: logit drift, top-1 agreement, decisions flipped at the bundle's
operating point (at most --max-flips), its own validation figures. A multi-label bundle's --data is
an index CSV (or a folder holding one): the run's own is split again as in training, another is used
by its split column; int8 is calibrated on its training split, every pair gated on its validation
split, each finding at its own threshold. Pairs that fail are recorded with their reason and never
offered. The bundle is rewritten atomically with the int8 file and the sealed
``variants`` section; model.onnx is unchanged. Needs the train extra and the ort and openvino extras.

Tested by tests/export/test_variants.py (the command and the library it drives, ``export.variants``).
"""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from medge.export.variants import VariantConfig

    d = VariantConfig()
    p = sub.add_parser("quantize", help="add gated fast variants (int8, bf16) to a bundle (extras: train, ort, openvino)",
                       description=__doc__.split("\nTested by")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (model.onnx + model.json), rewritten in place, atomically")
    p.add_argument("--data", required=True, help="the data folder: train split calibrates int8, val split gates every pair "
                                                 "(a multi-label bundle: its index CSV, or a folder holding one)")
    from medge.edge.inputs.index import FORMATS, UNCERTAIN

    p.add_argument("--labels-format", choices=FORMATS, help="a multi-label bundle's index given as --data: its layout "
                   "(default: the run's own index is read as in training; another index: generic)")
    p.add_argument("--images", metavar="DIR", help="a multi-label bundle: the folder the index's paths are under "
                   "(default: the run's images for its own index, else the index's folder)")
    p.add_argument("--uncertain", choices=UNCERTAIN, help="a multi-label bundle: uncertain labels (-1) in the index "
                   "(default: the policy the model was trained with)")
    add_variant_arguments(p, d, default=",".join(d.variants), export=False)
    return p


def add_variant_arguments(p: argparse.ArgumentParser, d, default: str, export: bool = True) -> None:
    """--variants, --max-flips, --quantize-images, --keep-operating-point: shared by medge export and medge quantize."""
    choices = ("; auto: with --data, those whose engines (onnxruntime, OpenVINO) are installed; none: fp32 only"
               if export else "")
    p.add_argument("--variants", default=default, metavar="LIST",
                   help="fast variants to make and gate, comma-separated among bf16,int8 (fp32, the exported model, "
                        f"is always there){choices} (default: %(default)s)")
    p.add_argument("--max-flips", type=int, default=d.max_flips,
                   help="decisions at the operating point a variant may change on the validation split; more and it "
                        "is not offered (default: %(default)s)")
    p.add_argument("--max-probability-change", type=float, default=d.max_probability_change,
                   help="the most a variant may move a validation case's calibrated probability, its decisions kept or "
                        "not (default: %(default)s)")
    p.add_argument("--quantize-images", type=int, default=d.calibration_images,
                   help="training-split images that calibrate int8, at most (default: %(default)s)")
    p.add_argument("--keep-operating-point", action="store_true",
                   help="refuse a variant whose decisions move at the bundle's operating point, instead of gating it "
                        "again with its own temperature and threshold chosen by the same rule on the same split")


def variant_config(args: argparse.Namespace):
    from medge.edge.errors import UsageError
    from medge.export.variants import VariantConfig, parse_variants

    if args.max_flips < 0:
        raise UsageError(f"--max-flips {args.max_flips}: must be 0 or more")
    if not 0.0 <= args.max_probability_change <= 1.0:
        raise UsageError(f"--max-probability-change {args.max_probability_change}: a probability change, 0 to 1")
    if args.quantize_images < 1:
        raise UsageError(f"--quantize-images {args.quantize_images}: must be 1 or more")
    return VariantConfig(variants=parse_variants(args.variants), max_flips=args.max_flips,
                         max_probability_change=args.max_probability_change,
                         calibration_images=args.quantize_images, own_operating_point=not args.keep_operating_point)


def gate_data(args: argparse.Namespace):
    """--data as add_variants takes it: the folder or index, or with --labels-format/--images/--uncertain the index
    and how to read it (``export.findings.IndexArgs``)."""
    from dataclasses import replace

    from medge.export.findings import index_of_data

    if not (args.labels_format or args.images or args.uncertain):
        return args.data
    index = index_of_data(args.data)
    return replace(index, images=args.images or index.images, labels_format=args.labels_format,
                   uncertain=args.uncertain)


def run(args: argparse.Namespace) -> int:
    from medge.export.variants import add_variants

    cfg = variant_config(args)
    if not cfg.variants:
        from medge.edge.errors import UsageError

        raise UsageError(f"--variants {args.variants}: nothing to make: name bf16 and/or int8 (fp32, the exported "
                         "model, is always there)")
    manifest = add_variants(args.bundle, gate_data(args), cfg)
    print(json.dumps({"bundle": args.bundle, "variants": {v: [e for e, g in entry["gates"].items() if g["passed"]]
                                                          for v, entry in manifest["variants"].items() if v != "sha256"}}))
    return 0
