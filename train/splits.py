"""Splits by patient: no patient in two splits, stratified by finding as far as the grouping allows.

Splitting by image puts images of one patient in training and in validation:
the model recognises the patient (anatomy, exposure, a device) rather than the
finding, and every validation figure the go-live check relies on is inflated.
``split_by_patient`` therefore assigns whole patients (groups) to splits.

The rule (a greedy multi-label stratification over groups, after Sechidis et
al., "On the stratification of multi-label data", 2011):

1. Each group's positives per finding are counted (a masked target, nan, counts
   as no positive). Each split wants ``fraction`` of the images and of the
   positives of every finding.
2. Groups are taken in order of their rarest finding (the finding with the
   fewest positives in the whole set that the group holds), groups without any
   positive last; ties in a seeded random order, so the result depends only on
   the inputs and the seed.
3. A group goes to the split that still wants most of the positives of that
   rarest finding; a group without positives to the split that still wants
   most images; ties to the one that wants most images.

An image without a patient id is a group of its own. Images with a split
already (``fixed``, an index's own split column) keep it, and every other image
of their patient follows them; only the rest is assigned, and the wants of
step 1 count what is already fixed. A patient fixed to two splits is an error.

Tested by: tests/train/test_splits.py
"""
from __future__ import annotations

import numpy as np

from medge.edge.errors import DataError

SPLITS = ("train", "val", "test")


def fractions_of(val_fraction: float, test_fraction: float = 0.0) -> dict[str, float]:
    """{"train", "val"[, "test"]: share}: a test split only when ``test_fraction`` > 0."""
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1), "
                        f"val above 0, their sum below 1")
    shares = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    return {k: v for k, v in shares.items() if v > 0}


def group_ids(groups, n: int) -> np.ndarray:
    """(n,) int group number per image: equal ids share a number; an image without an id (None, "") has its own."""
    if groups is None:
        return np.arange(n)
    keys = [("p", str(g)) if g not in (None, "") else ("i", str(i)) for i, g in enumerate(groups)]
    if len(keys) != n:
        raise DataError(f"{len(keys)} patient ids for {n} images")
    index: dict[tuple[str, str], int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def split_by_patient(targets, groups=None, fractions=None, seed: int = 0, fixed=None, optional=(), hint: str = ""
                     ) -> np.ndarray:
    """The split of each image, whole patients at a time (see the module docstring for the rule).

    Args:
        targets: (N, K) 1.0 / 0.0 / nan (masked), or (N,) class indices of a single-label set.
        groups: (N,) patient ids (None: every image its own group).
        fractions: {split name: share}, shares summing to 1 (default: train 0.8, val 0.2).
        seed: the tie-breaking order.
        fixed: (N,) split names already given (None where not).
        optional: the splits that may end without any patient (the caller leaves them out); any other split with
            a share that ends empty is an error.
        hint: said after that error (what the user can change).

    Returns:
        (N,) array of split names.
    """
    y = _as_matrix(targets)
    n = y.shape[0]
    fractions = dict(fractions or {"train": 0.8, "val": 0.2})
    names = list(fractions)
    share = np.array([fractions[s] for s in names], dtype=np.float64)
    if abs(share.sum() - 1) > 1e-6 or (share < 0).any():
        raise DataError(f"split fractions {fractions} must be >= 0 and sum to 1")
    gid = group_ids(groups, n)
    n_groups = int(gid.max()) + 1 if n else 0
    pos = np.zeros((n_groups, y.shape[1]))
    np.add.at(pos, gid, np.nan_to_num(y, nan=0.0) == 1.0)
    size = np.bincount(gid, minlength=n_groups).astype(np.float64)
    assigned = _fixed_groups(gid, n_groups, fixed, names)
    want_pos = share[:, None] * pos.sum(0)[None, :]  # (splits, K)
    want_img = share * n
    for g in np.flatnonzero(assigned >= 0):
        want_pos[assigned[g]] -= pos[g]
        want_img[assigned[g]] -= size[g]
    order, rarest = _order(pos, size, assigned, seed)
    for g, k in zip(order, rarest, strict=True):
        s = _choose(k, want_pos, want_img, share)
        assigned[g] = s
        want_pos[s] -= pos[g]
        want_img[s] -= size[g]
    if len(order):  # an index that gives every image its split is used as it is
        _check_no_empty(assigned, [s if s not in optional else "" for s in names], share, n_groups, hint)
    return np.array(names, dtype=object)[assigned[gid]].astype(str) if n else np.array([], dtype=str)


def _as_matrix(targets) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1:  # single-label class indices: one-hot, so that each class is a finding to stratify
        classes = np.unique(y[~np.isnan(y)]).tolist()
        return (y[:, None] == np.array(classes, dtype=np.float64)[None, :]).astype(np.float64)
    if y.ndim != 2:
        raise DataError(f"targets must be (N, K) or (N,), got shape {y.shape}")
    return y


def _fixed_groups(gid: np.ndarray, n_groups: int, fixed, names: list[str]) -> np.ndarray:
    """(groups,) split number given by ``fixed`` (-1: to assign); a group fixed to two splits is an error."""
    assigned = np.full(n_groups, -1, dtype=np.int64)
    if fixed is None:
        return assigned
    for i, s in enumerate(fixed):
        if s in (None, ""):
            continue
        if s not in names:
            raise DataError(f"image {i}: split {s!r} is not one of {', '.join(names)}")
        k = names.index(s)
        if assigned[gid[i]] not in (-1, k):
            raise DataError(f"image {i}: its patient is in the {names[assigned[gid[i]]]} and the {s} split: "
                            f"a patient must be in one split only")
        assigned[gid[i]] = k
    return assigned


def _order(pos: np.ndarray, size: np.ndarray, assigned: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the groups still to assign, the rarest finding of each, -1 for none): rarest finding first, larger groups
    first among those, groups without positives last, ties in a seeded order."""
    todo = np.random.default_rng(seed).permutation(np.flatnonzero(assigned < 0))
    held = np.where(pos[todo] > 0, pos.sum(0)[None, :], np.inf)  # (todo, K): the set's positives of findings held
    rarity = held.min(1) if pos.shape[1] else np.full(len(todo), np.inf)
    rarest = np.where(np.isfinite(rarity), held.argmin(1) if pos.shape[1] else -1, -1)
    order = np.lexsort((-size[todo], rarity))  # lexsort is stable: among equals the seeded order stays
    return todo[order], rarest[order]


def _choose(k: int, want_pos: np.ndarray, want_img: np.ndarray, share: np.ndarray) -> int:
    """The split for one group: most wanted positives of its rarest finding ``k`` (if any), then most wanted images."""
    img = np.where(share > 0, want_img, -np.inf)
    if k < 0:
        return int(np.argmax(img))
    need = np.where(share > 0, want_pos[:, k], -np.inf)
    best = np.flatnonzero(need == need.max())
    return int(best[np.argmax(img[best])])


def _check_no_empty(assigned: np.ndarray, names: list[str], share: np.ndarray, n_groups: int, hint: str = ""
                    ) -> None:
    """DataError when a named split (an optional one's name is "") with a share ends without a patient."""
    used = np.bincount(assigned[assigned >= 0], minlength=len(names)) if n_groups else np.zeros(len(names), int)
    empty = [s for s, u, f in zip(names, used, share, strict=True) if s and f > 0 and u == 0]
    if empty:
        raise DataError(f"{n_groups} patient(s): too few to give the {', '.join(empty)} split(s) any patient"
                        + (f": {hint}" if hint else ""))
