"""What every benchmark shares: the environment, and the arguments and output of the
research scripts (``research_parser``, ``add_out_arguments``, ``check_outputs``, ``save_record``/``emit``)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from contextlib import contextmanager

from medge.edge import system
from medge.edge.inputs import png


def rss_mb() -> float:
    """Current resident set size of this process (Linux), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """The edge's environment record (``medge.edge.system.environment``: CPU, cores, OpenCV threads and build,
    versions) with what benchmarks add: the git revision, thread variables, torch and ONNX versions, the GPU."""
    env = {**system.environment(), "git_revision": _git_revision(),
           "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                          if k in os.environ},
           "png_decoder": png.decoder_name("numpy") if png.available() else "opencv (libpng)"}
    for mod in ("torch", "torchvision", "onnx", "onnxruntime"):
        try:
            m = __import__(mod)
            env[mod] = str(m.__version__)
        except ImportError:
            env[mod] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


@contextmanager
def opencv_png():
    """PNGs decoded by OpenCV alone while the block runs (``MEDGE_PNG_DECODER=opencv``), as without the png extra:
    the "before" of a comparison."""
    before = os.environ.get(png.DECODER_ENV)
    os.environ[png.DECODER_ENV] = "opencv"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(png.DECODER_ENV, None)
        else:
            os.environ[png.DECODER_ENV] = before


def research_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of a research script (``python -m medge.benchmarks.NAME``): its module docstring, Usage
    line first, is the description that --help shows as written."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def check_outputs(prog: str, overwrite: bool, outputs: dict[str, str | None]) -> int:
    """Check, before any measuring, the files a script will write (``{what: path}``; None: not asked for).

    Returns:
        0 when all may be written; else the exit status (2: an existing file without --overwrite, a
        folder in the way) after saying why on stderr.
    """
    from medge.edge.errors import MedgeError
    from medge.edge.outputs import check_output_file

    try:
        for what, path in outputs.items():
            if path:
                check_output_file(path, overwrite, what)
    except MedgeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_status
    return 0


def add_out_arguments(p, what: str = "JSON record") -> None:
    """--out and --overwrite, as every command that writes a file has them."""
    p.add_argument("--out", help=f"write the {what} here too (parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def save_record(record: dict, out: str | None, what: str = "record") -> None:
    """With ``out``, write a record there as JSON (atomically, saying where; check ``out`` first
    with ``medge.edge.outputs.check_output_file``, before the measuring)."""
    import json

    from medge.edge.outputs import atomic_write_text, wrote

    if out:
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        wrote(out, what)


def emit(record: dict, out: str | None) -> None:
    """Print a record as JSON and, with ``out``, write it there too (``save_record``)."""
    import json

    print(json.dumps(record, indent=2))
    save_record(record, out)


def checkpoint_link(manifest: dict, checkpoint: str) -> dict:
    """Whether ``checkpoint`` holds the weights the bundle was exported from.

    The manifest records the SHA-256 of the exported weights (``training.weights_sha256``);
    ``matches`` is None for a bundle that predates it.
    """
    from medge.train.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    training = manifest.get("training", {})
    expected = training.get("weights_sha256")
    return {"checkpoint": str(checkpoint), "epoch": ck.epoch, "weights_sha256": ck.weights_sha256,
            "bundle_checkpoint": training.get("checkpoint"), "bundle_epoch": training.get("epoch"),
            "bundle_weights_sha256": expected, "matches": None if expected is None else ck.weights_sha256 == expected}


def link_line(link: dict, bundle: str) -> str:
    """The first thing parity and bench say: is the checkpoint the bundle's own?"""
    ck = f"checkpoint {link['checkpoint']} (epoch {link['epoch']}, weights sha256 {link['weights_sha256'][:12]})"
    if link["matches"] is None:
        return (f"{ck}: cannot tell whether bundle {bundle} was exported from it "
                "(the bundle records no weights hash: it was exported by an older medge)")
    if link["matches"]:
        return f"{ck}: the weights bundle {bundle} was exported from"
    return (f"{ck} is NOT the checkpoint bundle {bundle} was exported from (that was {link['bundle_checkpoint']}, "
            f"epoch {link['bundle_epoch']}, weights sha256 {link['bundle_weights_sha256'][:12]})")
