"""Options shared by the edge commands that load a bundle (predict, watch, serve, preview), loading it,
and the output files they write (names after the inputs, never overwriting by surprise).

One place for them, so that the commands do not import each other (Polygraphy's
``tools/args`` argument groups play this part there).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import ImageError, UsageError
from medge.edge.formats import DEFAULT_MAX_PIXELS
from medge.edge.image import write_image
from medge.edge.model import Model
from medge.edge.runtime import BACKENDS, ENGINES, engine_choices


def add_bundle_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --backend, --engine, --threads, --max-pixels."""
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder (model.onnx + model.json)")
    p.add_argument("--backend", choices=list(BACKENDS), default="cpu", help="cv2.dnn backend/target (default: %(default)s)")
    p.add_argument("--engine", choices=engine_choices(),
                   help=f"inference engine: auto = the fastest that passes the self-test on this box; this OpenCV has "
                        f"{', '.join(ENGINES)} (default: the bundle's, normally auto)")
    p.add_argument("--threads", type=int, help="cv2.setNumThreads for inference (default: OpenCV's choice)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default: %(default)s)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle arguments, plus --batch-size and --workers for commands that classify many files at once."""
    add_bundle_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, help="threads reading and preprocessing ahead (default: one per core)")


def add_strict_argument(p: argparse.ArgumentParser) -> None:
    """--strict: an input with warnings fails instead of being labelled."""
    p.add_argument("--strict", action="store_true",
                   help="refuse an input that has warnings (tiny, near-constant, a modality or statistics the model "
                        "never saw) instead of labelling it with its warnings")


def load_model(args: argparse.Namespace) -> Model:
    """Apply --threads, then load and verify the bundle named by --model."""
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    return Model.load(args.model, backend=args.backend, engine=args.engine)


def output_names(paths: list[str], suffix: str) -> list[str]:
    """One file name per input, after its stem: ``a.png`` -> ``a<suffix>``; repeated stems (same
    name in two folders) get ``a.1<suffix>``, ``a.2<suffix>``, ... in input order."""
    used, names = set(), []
    for path in paths:
        stem = Path(path).stem
        name, i = f"{stem}{suffix}", 1
        while name in used:
            name, i = f"{stem}.{i}{suffix}", i + 1
        used.add(name)
        names.append(name)
    return names


def check_output_folder(folder: Path, names: list[str], overwrite: bool, option: str = "--out") -> None:
    """Before any work: ``folder`` must be a folder or not exist yet, and hold none of ``names`` unless ``overwrite``.

    Raises:
        UsageError: (exit 2) it is a file, or files would be overwritten (the first few are named).
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder")
    taken = [n for n in names if (folder / n).exists()] if folder.is_dir() else []
    if taken and not overwrite:
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        raise UsageError(f"{folder}: would overwrite {', '.join(taken[:3])}{more} (use --overwrite to replace them)")


def make_folder(folder: Path) -> None:
    """Create an output folder and its parents; UsageError (exit 2) when that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{folder}: cannot create the folder: {e.strerror or e}") from None


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Write through a hidden temporary name and rename: a killed run never leaves half a PNG under the real name."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")  # the suffix picks the encoder
    try:
        write_image(tmp, image)
        os.replace(tmp, path)
    except OSError as e:
        raise ImageError(path, f"cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
