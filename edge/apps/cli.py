"""The ``medge`` command: one entry point, one subcommand per job.

Usage: medge --help

Edge subcommands live in ``medge.edge.apps`` and need only numpy and OpenCV.
Subcommands of the other packages (train, export, benchmarks) are found through
the ``medge.commands`` entry points declared in pyproject.toml, so ``medge.edge``
never imports them. Every subcommand module has ``add_parser(subparsers)`` and
``run(args) -> int``; heavy libraries are imported inside ``run``, and a missing
one exits 2 with the name of the extra that provides it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from importlib.metadata import entry_points

from medge import __version__
from medge.edge.errors import MedgeError, MissingExtraError

EDGE_COMMANDS = ("medge.edge.apps.check", "medge.edge.apps.predict", "medge.edge.apps.preview", "medge.edge.apps.watch",
                 "medge.edge.apps.serve", "medge.edge.apps.node", "medge.edge.apps.batch",
                 "medge.edge.apps.validate", "medge.edge.apps.monitor")
# Optional module -> the extra that installs it.
EXTRAS = {"torch": "train", "torchvision": "train", "onnx": "train", "onnxsim": "train", "tqdm": "train",
          "pydicom": "dicom", "fastapi": "serve", "fastapi_offline": "serve", "starlette": "serve", "uvicorn": "serve",
          "gradio": "serve", "python_multipart": "serve", "pynetdicom": "node", "highdicom": "node",
          "ray": "ray", "pyarrow": "ray"}


def _command_modules():
    modules = [importlib.import_module(name) for name in EDGE_COMMANDS]
    for ep in sorted(entry_points(group="medge.commands"), key=lambda e: e.name):
        modules.append(ep.load())
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medge",
        description="Train, export and run grayscale medical image classifiers on CPU edge boxes with OpenCV DNN.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option of a subcommand is reported with that subcommand's usage.

    (argparse's subparsers hand unrecognised arguments back to the top-level parser,
    whose usage line says nothing about the subcommand's options.)
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


EXIT_STATUS_HELP = """exit status:
  0  every input classified (possibly with warnings) / the job done
  1  some inputs failed (each is reported; with --strict, inputs with warnings fail), or a step of the job failed
  2  usage or configuration error: bad option, missing or invalid bundle, existing output, missing extra
  3  unexpected internal error (a bug: the traceback is printed; please report it)
"""


def main(argv: list[str] | None = None) -> int:
    """Run one ``medge`` command; returns its exit status (see EXIT_STATUS_HELP)."""
    parser = build_parser()
    args = parse(parser, argv)
    prog = f"medge {args.command}"
    try:
        return int(args._run(args) or 0)
    except MissingExtraError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_status
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root not in EXTRAS:
            return _internal_error(prog, e)
        error = MissingExtraError(EXTRAS[root], root, prog)
        print(f"{prog}: {error}", file=sys.stderr)
        return error.exit_status
    except MedgeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):  # where the work done so far is (edge.outputs.open_atomic)
            print(f"{prog}: {note}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `medge predict ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # a bug: say so, keep the traceback for the report, exit 3
        return _internal_error(prog, e)


def _internal_error(prog: str, e: BaseException) -> int:
    traceback.print_exc(file=sys.stderr)
    print(f"{prog}: internal error ({type(e).__name__}: {e}); this is a bug in medge, please report it "
          "with the traceback above", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
