"""Output files and folders: nothing lost, nothing replaced by surprise.

Every medge command that writes files goes through this module, so that all of
them behave alike:

- ``check_output_file`` / ``check_output_dir`` run before any work starts: an
  existing output (a file, or the files a command will write into a folder, named
  after its inputs by ``output_names``) is refused without ``overwrite``, a path of
  the wrong kind (a folder where a file is wanted, or the reverse) is named as
  such, and a parent that cannot be created or written is reported. All are
  ``UsageError`` (exit 2), so minutes of measuring are never thrown away at the end.
- ``open_atomic``, ``atomic_write_text``, ``atomic_write_bytes`` create missing
  parent folders and write to a hidden temporary file beside the target, flush it
  to disk, then rename it over the target: a reader never sees half a file, and a
  crash leaves the previous version intact.
- ``atomic_dir`` does the same for a folder built file by file (a bundle, a data set).
- ``make_output_dir`` creates a checked output folder once the inputs and the model are known good.
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
from medge.edge.paths import TEXT_ERRORS, shown


def _temp_name(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _check_creatable(path: Path) -> None:
    """The first existing ancestor of ``path`` must be a folder this process can write into."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(shown(f"{path}: cannot create it: {ancestor} is a file, not a folder"))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(shown(f"{path}: cannot write into {ancestor}: permission denied"))


def check_report_files(out: str, beside: dict[str, str], overwrite: bool, what: str) -> dict[str, Path]:
    """A JSON report and the files written beside it (``{"summary": ".md", ...}``: NAME + suffix), each checked
    before any work as ``check_output_file`` does; returns ``{"report": path, **{key: path}}``.

    Raises:
        UsageError: ``out`` is not a .json name, or a file exists (without ``overwrite``) or is a folder.
    """
    report = Path(out)
    if report.suffix.lower() != ".json":
        raise UsageError(f"--out {out}: give a .json file name (the summary and plots are written beside it)")
    stem = report.with_suffix("")
    paths = {"report": report, **{k: Path(f"{stem}{suffix}") for k, suffix in beside.items()}}
    for key, path in paths.items():
        check_output_file(path, overwrite, f"{what} {key}")
    return paths


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
        raise UsageError(f"{shown(p)}: is a folder: give a file name for the {what}")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise UsageError(f"{shown(p)}: exists already (use --overwrite to replace it)")
    _check_creatable(p)
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output", names: list[str] | tuple[str, ...] = (),
                     overwrite: bool = False) -> Path:
    """Check, before any work, that ``path`` is a folder or can be created as one.

    Args:
        path: the folder.
        what: what goes in it, for the message ("heatmaps", "bundle", ...).
        names: the files the command will write into it; those that exist already are
            refused without ``overwrite`` (the first few are named). Whether other
            content may be replaced is the caller's rule (a bundle, a run folder and a
            data set each have their own).
        overwrite: allow replacing the files in ``names``.

    Returns:
        ``path`` as a Path.

    Raises:
        UsageError: the path is a file, it cannot be created or written, or files in
            ``names`` exist and ``overwrite`` is off.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{shown(p)}: is a file: give a folder for the {what}")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{shown(p)}: cannot write into it: permission denied")
        taken = [n for n in names if (p / n).exists() or (p / n).is_symlink()]
        if taken and not overwrite:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            raise UsageError(shown(f"{p}: would overwrite {', '.join(taken[:3])}{more} (use --overwrite to replace them)"))
    else:
        _check_creatable(p)
    return p


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create an output folder and its parents (after ``check_output_dir``); UsageError when that is impossible."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{shown(p)}: cannot create the folder: {e.strerror or e}") from None
    return p


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


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None,
                keep_partial: bool = False, errors: str = TEXT_ERRORS):
    """Open a temporary file beside ``path`` for writing; on success it is flushed to disk and renamed over ``path``.

    Missing parent folders are created. Text that cannot be encoded (a file name that
    is not UTF-8) is written as ``\\udcXX`` (``medge.edge.paths``), never an error. On an exception the temporary file is
    removed, unless ``keep_partial``: then it is kept as ``.NAME.partial`` (results
    computed before a crash or Ctrl-C are not lost) and its path is added to the
    exception's notes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial") if keep_partial else _temp_name(path)
    binary = "b" in mode
    f = open(tmp, mode if keep_partial else mode.replace("w", "x"), encoding=None if binary else encoding,
             newline=None if binary else newline, errors=None if binary else errors)
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
    print(f"wrote {what + ': ' if what else ''}{shown(path)}", file=sys.stderr, flush=True)
