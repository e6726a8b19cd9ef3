"""Options shared by the edge commands that load a bundle (predict, watch, serve, preview), and loading it.
(Their output files go through ``medge.edge.outputs``, as every command's do.)

One place for them, so that the commands do not import each other (Polygraphy's
``tools/args`` argument groups play this part there).
"""
from __future__ import annotations

import argparse
import sys

import cv2

from medge.edge.errors import UsageError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.profile import profile_notes
from medge.edge.inputs.scanning import Shard
from medge.edge.model import Model
from medge.edge.runtime.engines import AUTO, BACKENDS, ENGINES, engine_choices
from medge.edge.runtime.variants import KNOWN


def add_bundle_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --backend, --engine, --variant, --threads, --max-pixels."""
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder (model.onnx + model.json)")
    p.add_argument("--backend", choices=list(BACKENDS), default="cpu", help="cv2.dnn backend/target (default: %(default)s)")
    p.add_argument("--engine", choices=engine_choices(),
                   help=f"inference engine: auto = the fastest that passes the self-test on this box; this OpenCV has "
                        f"{', '.join(ENGINES)} (default: the bundle's, normally auto)")
    p.add_argument("--variant", choices=[AUTO, *KNOWN],
                   help="the model's variant: auto = the fastest whose export gate passed and that passes its self-test "
                        "here (a fast variant only 1.1x faster than fp32); fp32 = the exported model, forbidding the fast "
                        "ones; bf16 or int8 to force one (docs/variants.md) (default: auto)")
    p.add_argument("--threads", type=at_least(1),
                   help="cores medge may use: cv2.setNumThreads, and the cores the pipeline's thread budget plans for "
                        "(default: OpenCV's choice, the cores this process may use)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default: %(default)s)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle arguments, plus --batch-size and --workers for commands that classify many files at once."""
    add_bundle_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=at_least(0),
                   help="threads of the pipeline, each reading, preprocessing or inferring, whichever is next; "
                        "0 = no pipeline: one file after the other in one thread (default: one per core)")
    p.add_argument("--streams", type=at_least(1),
                   help="at most this many forward passes at once in the pipeline, each with its own net "
                        "(default: the workers, at most 8)")


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_strict_argument(p: argparse.ArgumentParser) -> None:
    """--strict: an input with warnings fails instead of being labelled."""
    p.add_argument("--strict", action="store_true",
                   help="refuse an input that has warnings (tiny, near-constant, a modality, size or statistics the "
                        "model never saw; every input of a model trained on synthetic images) instead of labelling it "
                        "with its warnings")


def add_shard_argument(p: argparse.ArgumentParser) -> None:
    """--shard K/N: only shard K of N of the inputs (``edge.inputs.Shard``), for job arrays."""
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="only the inputs of shard K of N (1 <= K <= N): a stable split by a hash of each file's path "
                        "relative to the folder given; shards 1..N together hold each input exactly once (job arrays)")


def parse_shard(text: str) -> Shard:
    """An argparse type: ``K/N`` as a Shard."""
    try:
        return Shard.parse(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


parse_shard.__name__ = "K/N"


def load_model(args: argparse.Namespace) -> Model:
    """Apply --threads, then load and verify the bundle named by --model."""
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    model = Model.load(args.model, backend=args.backend, engine=args.engine, variant=args.variant)
    for name, v in model.bundle.variants.items():  # a damaged variant file: the bundle runs, said once
        if v.error:
            print(f"warning: {v.error}: the {name} variant is not used (running {model.engine}/{model.variant})",
                  file=sys.stderr)
    for note in profile_notes(model.data_profile):  # what the input checks cannot do with this bundle, said once
        print(f"note: {note}", file=sys.stderr)
    return model
