"""Output files and folders: nothing lost, nothing replaced by surprise.

Every medge command that writes files goes through this module, so that all of
them behave alike (issue 13):

- ``check_output_file`` / ``check_output_dir`` run before any work starts: an
  existing output is refused without ``overwrite``, a path of the wrong kind (a
  folder where a file is wanted, or the reverse) is named as such, and a parent
  that cannot be created or written is reported. All are ``UsageError`` (exit 2),
  so minutes of measuring are never thrown away at the end.
- ``open_atomic``, ``atomic_write_text``, ``atomic_write_bytes`` create missing
  parent folders and write to a hidden temporary file beside the target, flush it
  to disk, then rename it over the target: a reader never sees half a file, and a
  crash leaves the previous version intact.
- ``atomic_dir`` does the same for a folder built file by file (a bundle, a data set).
- ``wrote`` says where a file went, in one format for every command.

The hazard guarded against: ``open(path, "w")`` truncates an existing file before
anything is written and fails on a missing parent folder only after the work is done.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from medge.edge.errors import UsageError


def _temp_name(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _check_creatable(path: Path) -> None:
    """The first existing ancestor of ``path`` must be a folder this process can write into."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{path}: cannot create it: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write into {ancestor}: permission denied")


def check_output_file(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written as a new file (or replaced, with ``overwrite``).

    Args:
        path: the file to write; missing parent folders are fine (they are created when writing).
        overwrite: allow replacing an existing file (never a folder).
        what: what the file is, for the message ("record", "results", ...).

    Returns:
        ``path`` as a Path.

    Raises:
        UsageError: the path is a folder, the file exists and ``overwrite`` is off, or
            its folder cannot be created or written.
    """
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a folder: give a file name for the {what}")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise UsageError(f"{p}: exists already (use --overwrite to replace it)")
    _check_creatable(p)
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that ``path`` is a folder or can be created as one.

    Whether an existing folder's content may be replaced is the caller's rule
    (a bundle, a run folder and a preview folder each have their own).

    Raises:
        UsageError: the path is a file, or it cannot be created or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{p}: is a file: give a folder for the {what}")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{p}: cannot write into it: permission denied")
    else:
        _check_creatable(p)
    return p


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None,
                keep_partial: bool = False):
    """Open a temporary file beside ``path`` for writing; on success it is flushed to disk and renamed over ``path``.

    Missing parent folders are created. On an exception the temporary file is
    removed, unless ``keep_partial``: then it is kept as ``.NAME.partial`` (results
    computed before a crash or Ctrl-C are not lost) and its path is added to the
    exception's notes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial") if keep_partial else _temp_name(path)
    binary = "b" in mode
    f = open(tmp, mode if keep_partial else mode.replace("w", "x"), encoding=None if binary else encoding,
             newline=None if binary else newline)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if keep_partial and tmp.exists():
            if hasattr(e, "add_note"):  # Python 3.11+
                e.add_note(f"what was written so far is in {tmp}")
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent folders; returns the path."""
    with open_atomic(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders; returns the path."""
    with open_atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False):
    """Yield a hidden temporary folder beside ``path``; on success it is renamed into place.

    With ``replace`` an existing folder at ``path`` is swapped out and removed only
    after the new one is in place; without it an existing ``path`` is a UsageError.
    The caller decides beforehand whether the old folder may be replaced.
    On an exception the temporary folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):  # flush to disk before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if target.exists():
            if not replace:
                raise UsageError(f"{target}: exists already (use --overwrite to replace it)")
            old = _temp_name(target, ".old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wrote(path: str | os.PathLike, what: str = "") -> None:
    """Say where a file or folder was written (stderr, one format for every command)."""
    print(f"wrote {what + ': ' if what else ''}{path}", file=sys.stderr, flush=True)
