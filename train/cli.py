"""``medge train``: train a grayscale classifier on an image folder.

Usage: medge train --data data/xray --arch resnet18 --epochs 10 --out runs/xray
       medge train --resume runs/xray --epochs 20
       torchrun --standalone --nproc_per_node 2 -m train --data data/xray --out runs/xray-ddp

The run folder gets config.json, data_report.json, metrics.jsonl (one line per
epoch), best.pt (the best epoch by --best-metric) and last.pt (resumable).
"""
from __future__ import annotations

import argparse
import os

from medge.edge.preprocess import HIGH_BIT_RULES, INTERPOLATIONS, PreprocessConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults are taken from the dataclasses, so the help cannot drift from the code.
    from medge.train.config import ARCHS, TrainConfig
    from medge.train.metrics import HIGHER_IS_BETTER

    t, pp = TrainConfig, PreprocessConfig()
    g = p.add_argument_group("data and run")
    g.add_argument("--data", help="data folder: ROOT/train/<class>/*, ROOT/val/<class>/* [ROOT/test/...], or ROOT/<class>/*")
    g.add_argument("--out", default=t.out, help="run folder (default: %(default)s)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    g.add_argument("--val-fraction", type=float, default=t.val_fraction,
                   help="val share when the data has no val/ (default: %(default)s)")
    g.add_argument("--cache-dir", default=t.cache_dir, help="preprocessed-image cache (default: ~/.cache/medge/preprocess)")
    g.add_argument("--workers", type=int, default=t.workers, help="threads that decode and preprocess (default: %(default)s)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", choices=ARCHS, default=t.arch, help="torchvision architecture (default: %(default)s)")
    g.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights (cached or downloaded)")
    g.add_argument("--epochs", type=int, default=t.epochs, help="epochs in all (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=t.batch_size, help="images per step and process (default: %(default)s)")
    g.add_argument("--lr", type=float, default=t.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=t.weight_decay,
                   help="Adam weight decay (default: %(default)s)")
    g.add_argument("--schedule", choices=["none", "cosine"], default=t.schedule,
                   help="learning-rate schedule (default: %(default)s)")
    g.add_argument("--class-weights", action="store_true",
                   help="weight the loss by inverse class frequency (imbalanced data)")
    g.add_argument("--best-metric", choices=list(HIGHER_IS_BETTER), default=t.best_metric,
                   help="keep best.pt by this (default: %(default)s)")
    g.add_argument("--seed", type=int, default=t.seed,
                   help="random seed; same seed on CPU = same metrics (default: %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=t.device,
                   help="auto = cuda when available (default: %(default)s)")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=t.amp,
                   help="mixed precision on CUDA (default: %(default)s)")
    g = p.add_argument_group("augmentation (training only, after the deterministic preprocessing)")
    g.add_argument("--hflip", type=float, default=t.hflip,
                   help="horizontal-flip probability, 0 = off; a flip swaps left/right anatomy (default: %(default)s)")
    g.add_argument("--rotate", type=float, default=t.rotate_deg,
                   help="random rotation range in degrees, 0 = off (default: %(default)s)")
    g = p.add_argument_group("preprocessing (saved with the model; the edge applies the same)")
    g.add_argument("--img-size", type=int, default=pp.size, help="network input side in pixels (default: %(default)s)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=pp.channels,
                   help="1 = gray; 3 = gray repeated (default: %(default)s)")
    g.add_argument("--interpolation", choices=list(INTERPOLATIONS), default=pp.interpolation,
                   help="resize method (default: %(default)s)")
    g.add_argument("--high-bit-rule", choices=list(HIGH_BIT_RULES), default=pp.high_bit_rule,
                   help="how 16-bit images and DICOM without a window become 8-bit: percentile (0.5/99.5, robust to "
                        "hot pixels) or minmax (the rule of medge 0.2) (default: %(default)s)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a classifier on an image folder (extra: train)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from medge.edge.errors import MedgeError
    from medge.train.config import TrainConfig
    from medge.train.engine import train  # imports torch

    if not args.data and not args.resume:
        raise MedgeError("give --data DIR (or --resume RUN_DIR)")
    cfg = TrainConfig(
        data=args.data or "", out=args.resume or args.out, arch=args.arch, pretrained=args.pretrained,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, class_weights=args.class_weights, hflip=args.hflip, rotate_deg=args.rotate,
        val_fraction=args.val_fraction, best_metric=args.best_metric, seed=args.seed, device=args.device,
        amp=args.amp, workers=args.workers, cache_dir=args.cache_dir,
    )
    pcfg = PreprocessConfig(size=args.img_size, channels=args.channels, interpolation=args.interpolation,
                            high_bit_rule=args.high_bit_rule)
    summary = train(cfg, pcfg, resume=bool(args.resume))
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    if summary["best"]:
        b = summary["best"]
        print(f"best epoch {b['epoch']}: {b['metric']} {b['value']}; checkpoint {summary['out']}/best.pt")
    if "test" in summary:
        t = summary["test"]
        auc = t["auc"] if t["auc"] is None else round(t["auc"], 3)
        print(f"test: acc {t['accuracy']:.3f}  bal_acc {t['balanced_accuracy']:.3f}  auc {auc}")
    return 0
