"""Finding the inputs in files and folders by their content, and skipping nothing in silence.

A PACS export is mostly files without an extension (``IM000001``, UID names), a
DICOMDIR, perhaps a PDF report; a Windows share adds ``Thumbs.db``. A folder
scan therefore takes every regular file whose name ends in an image or DICOM
suffix, or whose first bytes say DICOM (``DICM`` at offset 128), PNG, JPEG,
TIFF or BMP, and accounts for everything else:

- ``Scan.entries``: one per input, in order (folders depth first, names
  sorted). An entry that cannot be read (a folder medge may not list, a named
  pipe, a device, a broken link, a symbolic-link loop) carries its ``error``,
  so that it gets a record of its own instead of vanishing.
- ``Scan.skipped``: (path, reason) for files that are not images (text, PDF,
  a DICOMDIR or structured report), counted in the summary.

A path given explicitly is always an entry, whatever it holds (so ``medge
predict notes.txt`` says why notes.txt is not an image); an explicitly given
folder with no input in it is an entry with an error.

A scan may keep one shard of the inputs (``Shard``, ``medge predict --shard K/N``,
for job arrays): a stable split by a hash of each file's path relative to the
folder given (a path given explicitly: as given), so that the same archive mounted
elsewhere splits the same way and the N shards hold each input exactly once.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

from medge.edge.errors import UsageError
from medge.edge.inputs.formats import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    SNIFF_BYTES,
    describe_bytes,
    dicom_sop_class,
    non_image_reason,
    sniff_format,
)
from medge.edge.inputs.image import os_error_reason, special_file_kind

SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


@dataclass(frozen=True)
class Entry:
    """One input: a path to read, or a path that cannot be read and why."""

    path: str
    error: str | None = None  # set for folders that cannot be listed, special files, broken links, loops


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``$SLURM_ARRAY_TASK_ID`` runs from 1 to N with ``--array=1-N``)."""

    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise UsageError(f"shard {self.index}/{self.count}: K/N needs 1 <= K <= N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` as a Shard; UsageError for anything else."""
        k, sep, n = text.partition("/")
        if not (sep and k.strip().isdigit() and n.strip().isdigit()):
            raise UsageError(f"shard {text!r}: give K/N, e.g. 3/10 (shard 3 of 10)")
        return cls(int(k), int(n))

    def holds(self, key: str) -> bool:
        """Whether the input of this key (``shard_key``) is in this shard: SHA-256 of the key, modulo ``count``."""
        digest = hashlib.sha256(os.fsencode(key)).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_key(path: str, root: str | None) -> str:
    """What a shard is chosen by: the path relative to the folder given (``root``), else the path as given, normalised."""
    return os.path.relpath(path, root) if root is not None else os.path.normpath(path)


@dataclass
class Scan:
    """What a scan of the given paths found."""

    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is not an input)

    @property
    def paths(self) -> list[str]:
        """The entries without an error: the files to read."""
        return [e.path for e in self.entries if e.error is None]

    def skipped_summary(self) -> str:
        """e.g. "3 skipped: 2 not images, 1 DICOMDIR (the index of a PACS export or CD)"; "" when none."""
        if not self.skipped:
            return ""
        counts: dict[str, int] = {}
        for _, why in self.skipped:
            key = "not images" if why.startswith("not an image") else why
            counts[key] = counts.get(key, 0) + 1
        return f"{len(self.skipped)} skipped: " + ", ".join(f"{n} {k}" for k, n in counts.items())


def classify_file(path: str) -> tuple[str, str | None]:
    """Whether a regular file found in a folder is an input: ("input", None), ("skip", why) or ("error", why).

    Reads at most ``SNIFF_BYTES`` bytes. A file whose name has an image or DICOM
    suffix is an input whatever it holds (its reader says what is wrong with it),
    except a DICOM object that never holds an image (a DICOMDIR, a report).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        if os.path.splitext(path)[1].lower() in SUFFIXES:
            return "input", None  # its reader reports the same error, in the same words
        return "error", os_error_reason(path, e)
    fmt = sniff_format(head)
    if fmt == "dicom":
        what = non_image_reason(dicom_sop_class(head))
        return ("skip", what) if what else ("input", None)
    if fmt is not None or os.path.splitext(path)[1].lower() in SUFFIXES:
        return "input", None
    return "skip", f"not an image ({describe_bytes(head)})"


def scan_inputs(paths, shard: Shard | None = None) -> Scan:
    """Expand folders (recursively, by content) and keep other paths as given; see the module docstring.

    With ``shard``, only the inputs (and skipped files) of that shard are kept; a folder is reported
    empty or without images only when it is, not when its images are all in other shards.
    """
    scan = Scan()
    mine = (lambda path, root: True) if shard is None else (lambda path, root: shard.holds(shard_key(path, root)))
    for p in paths:
        path = os.fspath(p)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            is_dir = False  # missing, broken link, loop: its reader names the problem
        if not is_dir:
            if mine(path, None):
                scan.entries.append(Entry(path))
            continue
        inputs, others = 0, 0
        for kind, found, why in walk(path):
            if kind == "file":
                kind, why = classify_file(found)
            inputs, others = inputs + (kind != "skip"), others + (kind == "skip")
            if not mine(found, path):
                continue
            if kind == "skip":
                scan.skipped.append((found, why))
            else:
                scan.entries.append(Entry(found, why))
        if not inputs and mine(path, None):
            why = f"no image in this folder ({others} other file(s) skipped)" if others else "the folder is empty"
            scan.entries.append(Entry(path, why))
    return scan


def walk(folder: str):
    """Yield ("file", path, None) for each regular file under ``folder``, depth first, names sorted, and
    ("error", path, why) for each entry that cannot be read, ("skip", path, why) for a folder seen twice.

    Symbolic links to files and folders are followed; a link that leads back into
    a folder being walked is an error (a loop), a folder reached a second time
    through another link is skipped.
    """
    yield from _walk(os.fspath(folder), [], {})


def _walk(folder: str, ancestors: list[tuple[int, int]], visited: dict):
    try:
        st = os.stat(folder)
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            yield "error", folder, "symbolic link loop: this folder leads back into a folder that contains it"
            return
        if ident in visited:
            yield "skip", folder, f"folder already scanned as {visited[ident]}"
            return
        visited[ident] = folder
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it)
    except OSError as e:
        yield "error", folder, f"cannot open this folder: {os_error_reason(folder, e)}"
        return
    for name in names:
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
        except OSError as e:
            yield "error", path, os_error_reason(path, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, [*ancestors, ident], visited)
        elif stat.S_ISREG(st.st_mode):
            yield "file", path, None
        else:
            yield "error", path, f"not a regular file but {special_file_kind(st.st_mode)}: nothing to read as an image"
