"""One exception hierarchy for medge: every error raised on purpose is a MedgeError.

Callers (the CLI, a batch loop, a hot folder) catch ``MedgeError`` to report a
bad item and go on; anything else is a bug and is allowed to surface.

Each class carries the exit status the ``medge`` command returns for it:
0 all done, 1 some inputs (or a step of the job) failed, 2 a usage or
configuration error (bad option, missing or invalid bundle, existing output,
missing extra), 3 an unexpected internal error (a bug: the CLI prints its traceback).
"""
from __future__ import annotations

import os


class MedgeError(Exception):
    """Base class of every error medge raises on purpose."""

    exit_status = 1  # an input or a step of the job failed


class UsageError(MedgeError):
    """The command cannot start as asked: a bad option value, a path of the wrong kind, an existing output."""

    exit_status = 2


class ConfigError(MedgeError, ValueError):
    """A configuration (PreprocessConfig, TrainConfig, ...) is invalid."""

    exit_status = 2


class ImageError(MedgeError):
    """An input image cannot be used; names the file and the reason."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path or '<array>'}: {reason}")


class MissingExtraError(MedgeError):
    """An optional dependency is not installed; names the extra that provides it."""

    exit_status = 2

    def __init__(self, extra: str, module: str, what: str = ""):
        self.extra = extra
        self.module = module
        what = what or "this feature"
        super().__init__(
            f"{what} needs the '{extra}' extra ({module} is not installed): "
            f"pip install -c constraints.txt 'medge[{extra}]'"
        )


class BundleError(MedgeError):
    """A model bundle is missing, malformed or of an unknown format version."""

    exit_status = 2


class ModelIntegrityError(BundleError):
    """model.onnx does not match the SHA-256 recorded in its manifest."""


class SelfTestError(BundleError):
    """The bundle's golden self-test gave outputs beyond tolerance on this machine."""


class InferenceError(MedgeError):
    """cv2.dnn was given, or returned, something unusable (shape, dtype, NaN)."""


class CheckpointError(MedgeError):
    """A training checkpoint is corrupt, foreign or incomplete."""

    exit_status = 2


class DataError(MedgeError):
    """A data set folder is unusable (no images, an empty class, ...)."""


class ExportError(MedgeError):
    """A step of the ONNX export chain failed."""


class ParityError(MedgeError):
    """Two runtimes disagree beyond the tolerance."""
