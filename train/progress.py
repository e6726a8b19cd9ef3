"""Progress bars for the commands of the train extra (train, export, bench, parity, demo): tqdm.

Shown on a terminal only (tqdm's ``disable=None``), on stderr, and removed when
done so that the command's own summary line follows. The edge commands, which
must run on the base install, keep their dependency-free line
(``medge.edge.progress``).

Usage: for item in progress(items, desc="preprocessing"): ...
"""
from __future__ import annotations

import sys


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True):
    """A tqdm bar over ``iterable`` (or a manual one with ``total`` and ``.update(n)``); silent when not enabled
    or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=False,
                file=sys.stderr, dynamic_ncols=True)
