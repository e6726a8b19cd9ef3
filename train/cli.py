"""``medge train``: train a grayscale classifier on an image folder.

Usage: medge train --data data/xray --arch resnet18 --epochs 10 --out runs/xray
       medge train --labels data/nih/Data_Entry.csv --images data/nih/images --labels-format nih --out runs/nih
       medge train --resume runs/xray                # finish an interrupted run
       medge train --resume runs/xray --epochs 15    # extend a run to 15 epochs
       torchrun --standalone --nproc_per_node 2 -m medge.train --data data/xray --out runs/xray-ddp

The run folder gets config.json, data_report.json, data_profile.json (what the
training images look like, for the bundle's input checks), metrics.jsonl (one line
per epoch), best.pt (the best epoch by --best-metric), last.pt (resumable) and
summary.json.

--labels INDEX.csv trains on an index instead of class folders (NIH, CheXpert or
a generic CSV: see docs/datasets.md), split by patient; with more than one
finding the task is multi-label (one sigmoid per finding, --task to choose), and
the run files record the patients and images of each split.

--resume continues the run as it was configured: without --epochs an
interrupted run trains to its own epoch count, and a finished one is reported
and left untouched; --epochs N (more than the run has) extends it. It works from
any folder; --data (or --labels and --images) gives the run's data in a new
place (checked against the run's data fingerprint); --device, --workers and
--cache-dir may change; any other option that differs from the run's is refused.
"""
from __future__ import annotations

import argparse
import os

from medge.edge.preprocess import HIGH_BIT_RULES, INTERPOLATIONS, PreprocessConfig

# Options a resumed run may change; every other training option is the run's.
RESUMABLE = ("epochs", "data", "labels", "images", "device", "workers", "cache_dir")
# Options that describe an index: meaningless with --data.
INDEX_OPTIONS = ("images", "labels_format", "uncertain", "test_fraction")
# --option -> TrainConfig field, where the names differ.
FIELD = {"rotate": "rotate_deg"}
PREPROCESS = {"img_size": "size", "channels": "channels", "interpolation": "interpolation",
              "high_bit_rule": "high_bit_rule"}


def _default_help(text: str, value) -> str:
    return f"{text} (default: {value})"


def _add_index_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a run on an index CSV (instead of --data)."""
    from medge.train.config import LABEL_FORMATS, MAX_POS_WEIGHT, TASKS, UNCERTAIN, TrainConfig

    t, h = TrainConfig, _default_help
    g = p.add_argument_group("data from an index (instead of --data)")
    g.add_argument("--labels", metavar="INDEX.csv", help="an index CSV naming the images and their findings; "
                   "split by patient")
    g.add_argument("--images", metavar="DIR", help=h("the folder the index's paths are relative to",
                                                     "the index's folder"))
    g.add_argument("--labels-format", choices=LABEL_FORMATS, help=h("the index's layout", t.labels_format))
    g.add_argument("--uncertain", choices=UNCERTAIN,
                   help=h("uncertain labels (-1): ignore = masked out of loss and metrics, or read as 0 or 1",
                          t.uncertain))
    g.add_argument("--task", choices=TASKS, help=h("auto = multilabel for an index of more than one finding",
                                                   t.task))
    g.add_argument("--pos-weight", action=argparse.BooleanOptionalAction,
                   help=h("multilabel: weigh each finding's positives by its negatives/positives in train "
                          f"(at most {MAX_POS_WEIGHT:g})", t.pos_weight))
    g.add_argument("--test-fraction", type=float,
                   help=h("share of patients held out for test, 0 = none", t.test_fraction))


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Every default is None here, so that run() knows what was given (a resumed run refuses changes);
    # the values shown come from the dataclasses, so the help cannot drift from the code.
    from medge.train.config import ARCHS, SCHEDULES, TrainConfig
    from medge.train.metrics import HIGHER_IS_BETTER

    t, pp, h = TrainConfig, PreprocessConfig(), _default_help
    g = p.add_argument_group("data and run")
    g.add_argument("--data", help="data folder: ROOT/train/<class>/*, ROOT/val/<class>/* [ROOT/test/...], or ROOT/<class>/*")
    g.add_argument("--out", help=h("run folder", t.out))
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt (see above)")
    g.add_argument("--val-fraction", type=float, help=h("val share when the data has no val/", t.val_fraction))
    g.add_argument("--cache-dir", help=h("preprocessed-image cache", "~/.cache/medge/preprocess"))
    g.add_argument("--workers", type=int, help=h("threads that decode and preprocess", t.workers))
    _add_index_arguments(p)
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", choices=ARCHS, help=h("torchvision architecture", t.arch))
    g.add_argument("--pretrained", action="store_true", default=None,
                   help="start from torchvision's ImageNet weights (cached or downloaded)")
    g.add_argument("--epochs", type=int, help=h("epochs in all; with --resume, more than the run's extends it", t.epochs))
    g.add_argument("--batch-size", type=int, help=h("images per step and process", t.batch_size))
    g.add_argument("--lr", type=float, help=h("Adam learning rate", t.lr))
    g.add_argument("--weight-decay", type=float, help=h("Adam weight decay (L2)", t.weight_decay))
    g.add_argument("--schedule", choices=SCHEDULES, help=h("learning-rate schedule, per step", t.schedule))
    g.add_argument("--warmup-epochs", type=float, help=h("linear learning-rate warm-up, 0 = off", t.warmup_epochs))
    g.add_argument("--bn-recalibration", type=int, metavar="IMAGES",
                   help=h("training images that re-estimate batch-norm statistics before each validation, 0 = off",
                          t.bn_recalibration))
    g.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction,
                   help=h("resnets from scratch: every residual branch starts at zero", t.zero_init_residual))
    g.add_argument("--class-weights", action="store_true", default=None,
                   help="weight the loss by inverse class frequency (imbalanced data)")
    g.add_argument("--best-metric", choices=list(HIGHER_IS_BETTER),
                   help=h("keep best.pt by this (multilabel: auc = mean_auc, the mean per-finding AUC, or loss)",
                          t.best_metric))
    g.add_argument("--seed", type=int, help=h("random seed; same seed on CPU = same metrics", t.seed))
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help=h("auto = cuda when available", t.device))
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help=h("mixed precision on CUDA", t.amp))
    g = p.add_argument_group("augmentation (training only, after the deterministic preprocessing)")
    g.add_argument("--hflip", type=float,
                   help=h("horizontal-flip probability, 0 = off; a flip swaps left/right anatomy", t.hflip))
    g.add_argument("--rotate", type=float, help=h("random rotation range in degrees, 0 = off", t.rotate_deg))
    g = p.add_argument_group("preprocessing (saved with the model; the edge applies the same)")
    g.add_argument("--img-size", type=int, help=h("network input side in pixels", pp.size))
    g.add_argument("--channels", type=int, choices=[1, 3], help=h("1 = gray; 3 = gray repeated", pp.channels))
    g.add_argument("--interpolation", choices=list(INTERPOLATIONS), help=h("resize method", pp.interpolation))
    g.add_argument("--high-bit-rule", choices=list(HIGH_BIT_RULES),
                   help=h("how 16-bit images and DICOM without a window become 8-bit: percentile (0.5/99.5, robust to "
                          "hot pixels) or minmax (the rule of medge 0.2)", pp.high_bit_rule))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a classifier on an image folder (extra: train)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def _given(args: argparse.Namespace) -> tuple[dict, dict]:
    """(TrainConfig fields, PreprocessConfig fields) given on the command line."""
    train, pre = {}, {}
    for name, value in vars(args).items():
        if value is None or name.startswith("_") or name in ("command", "resume"):
            continue
        if name in PREPROCESS:
            pre[PREPROCESS[name]] = value
        else:
            train[FIELD.get(name, name)] = value
    return train, pre


def _refuse_changes(args: argparse.Namespace, train: dict, pre: dict) -> None:
    """On resume, options other than RESUMABLE must be absent or equal to the run's."""
    from medge.edge.errors import UsageError
    from medge.train.checkpoint import load_checkpoint

    last = os.path.join(args.resume, "last.pt")
    if not os.path.isfile(last):
        return  # resume() says what is wrong with the folder
    ck = load_checkpoint(last)
    run_train, run_pre = ck.train_config.to_dict(), ck.preprocess.to_dict()
    changed = [f"{k}={v!r} (the run's: {run_train[k]!r})" for k, v in train.items()
               if k not in RESUMABLE and k != "out" and v != run_train[k]]
    changed += [f"{k}={v!r} (the run's: {run_pre[k]!r})" for k, v in pre.items() if v != run_pre[k]]
    if "out" in train:
        changed.append("--out (the run folder is --resume's)")
    if changed:
        raise UsageError(f"--resume {args.resume}: a resumed run keeps its configuration; cannot change "
                         + ", ".join(changed) + f". Resume may change only {', '.join(RESUMABLE)}; "
                         "for other settings start a new run")


def _check_data_options(train: dict) -> None:
    """A new run reads class folders (--data) or an index (--labels): one of them, and no index option without
    --labels."""
    from medge.edge.errors import UsageError

    if train.get("data") and train.get("labels"):
        raise UsageError("give --data DIR (class folders) or --labels INDEX.csv (an index), not both")
    if not train.get("data") and not train.get("labels"):
        raise UsageError("give --data DIR (class folders) or --labels INDEX.csv --images DIR (an index), "
                         "or --resume RUN_DIR")
    stray = [f"--{k.replace('_', '-')}" for k in INDEX_OPTIONS if k in train and not train.get("labels")]
    if stray:
        raise UsageError(f"{', '.join(stray)}: options of an index; give it with --labels INDEX.csv "
                         "(--data reads class folders)")


def run(args: argparse.Namespace) -> int:
    from medge.train.config import TrainConfig
    from medge.train.engine import ResumeOptions, metrics_line, resume, split_line, train  # imports torch

    train_fields, pre_fields = _given(args)
    if args.resume:
        _refuse_changes(args, train_fields, pre_fields)
        summary = resume(ResumeOptions(args.resume, **{k: train_fields.get(k) for k in RESUMABLE}))
    else:
        _check_data_options(train_fields)
        summary = train(TrainConfig(**train_fields), PreprocessConfig(**pre_fields))
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    if summary.get("finished"):
        b = summary.get("best") or {}
        print(f"{summary['out']}: finished already ({summary['epochs']} of {summary['epochs']} epochs"
              + (f"; best epoch {b['epoch']}: {b['metric']} {b['value']}" if b else "") + "); nothing to do, nothing "
              f"changed. To train further: medge train --resume {args.resume} --epochs N (N > {summary['epochs']})")
        return 0
    if summary["best"]:
        b = summary["best"]
        print(f"best epoch {b['epoch']}: {b['metric']} {b['value']}; checkpoint {os.path.join(summary['out'], 'best.pt')}")
    if summary.get("splits"):
        print(f"split by patient: {split_line(summary['splits'])}")
    if "test" in summary:
        t = summary["test"]
        if "per_finding" in t:
            print(f"test: {metrics_line(t)}")
        else:
            auc = t["auc"] if t["auc"] is None else round(t["auc"], 3)
            print(f"test: acc {t['accuracy']:.3f}  bal_acc {t['balanced_accuracy']:.3f}  auc {auc}")
    return 0
