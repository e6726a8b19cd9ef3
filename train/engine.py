"""The training loop: data from the shared preprocessing, batch-wise augmentation on the
device, validation every epoch, atomic checkpoints, exact resume, optional DDP.

Usage: medge train --data data/xray --arch resnet18 --epochs 10 --out runs/xray
       medge train --resume runs/xray --epochs 15
       torchrun --standalone --nproc_per_node 2 -m medge.train --data data/xray --out runs/xray-ddp

``train`` (a new run) and ``resume`` read as their steps: open the run (new, or
reopened from ``last.pt``), prepare the data (class folders, or an index CSV split
by patient), build the model and optimiser,
then per epoch ``train_one_epoch``, ``recalibrate_bn``, ``validation_metrics``
and ``save_epoch``, and finally ``finish`` (test split, summary).

Two tasks: "single" (one class per image, softmax and cross-entropy, as class
folders give) and "multilabel" (an index whose images hold any number of
findings: one logit per finding, binary cross-entropy masked where the label is
uncertain and left out, per-finding AUC, best epoch by their mean).

Reproducibility: every random draw of epoch e (data order, augmentation,
dropout) is seeded from (seed, e), and the learning rate is a function of the
position in the run alone (``learning_rate``), so a run resumed after epoch e
continues exactly as the uninterrupted run would; no RNG or scheduler state
needs to be carried.

Resume never surprises: a finished run is reported and left untouched; one
stopped early continues to its own epoch count; ``epochs`` larger than the
run's extends it (the cosine schedule is then that of a run planned for the
new count, followed from where the run stands). Paths are stored absolute, and
the data is checked against the run's fingerprint, so a run resumes from any
working folder, with its data moved elsewhere if need be.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medge.edge.errors import DataError, UsageError
from medge.edge.outputs import atomic_write_text, check_output_dir
from medge.edge.preprocess import PreprocessConfig
from medge.train import data as D
from medge.train.checkpoint import file_sha256, library_versions, load_checkpoint, membership_sha256, save_checkpoint
from medge.train.config import MAX_POS_WEIGHT, TrainConfig
from medge.train.metrics import HIGHER_IS_BETTER, TASK_METRICS, logit_metrics, multilabel_metrics
from medge.train.models import build_model

# ----------------------------------------------------------------------------- devices and DDP


def rank_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def select_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", rank_world()[2])
    return torch.device("cpu")


def amp_dtype(cfg: TrainConfig, device: torch.device):
    """The autocast dtype for ``cfg.amp`` on ``device`` (None: full precision; always None on the CPU)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def _all_gather(obj, world: int):
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- batches


def augment(x: torch.Tensor, hflip: float, rotate_deg: float, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and rotation, per sample, batch-wise on x's device.

    Args:
        x: (N, C, H, W) float in [0, 1]; corners uncovered by a rotation become 0 (black).
        hflip: flip probability. rotate_deg: maximum absolute angle. gen: on x's device.
    """
    n = x.shape[0]
    if hflip > 0:
        flip = torch.rand(n, generator=gen, device=x.device) < hflip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if rotate_deg > 0:
        angle = (torch.rand(n, generator=gen, device=x.device) * 2 - 1) * math.radians(rotate_deg)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def _load_batch(split: D.Split, idx) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(D.load_uint8(split, idx)), torch.tensor([split.labels[i] for i in idx])


def _chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    return chunks


def batches(split: D.Split, order: np.ndarray, batch_size: int):
    """Yield (uint8 images (N, H, W), labels) in ``order``, loading the next batch in a background thread.

    A last batch of one image is dropped: batch norm cannot train on it.
    """
    chunks = _chunks(order, batch_size)
    ahead: dict = {}

    def load_next(idx):
        ahead["batch"] = _load_batch(split, idx)

    current = _load_batch(split, chunks[0]) if chunks else None
    for k in range(len(chunks)):
        loader = None
        if k + 1 < len(chunks):
            loader = threading.Thread(target=load_next, args=(chunks[k + 1],))
            loader.start()
        yield current
        if loader is not None:
            loader.join()
            current = ahead.pop("batch")


def to_input(u8: torch.Tensor, pcfg: PreprocessConfig, device) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, C, H, W) float in [0, 1] on ``device`` (gray repeated for C = 3)."""
    x = u8.to(device, non_blocking=True).float().div_(255.0)[:, None]
    return x.expand(-1, pcfg.channels, -1, -1) if pcfg.channels > 1 else x


def normalize(x: torch.Tensor, pcfg: PreprocessConfig, channels_last: bool) -> torch.Tensor:
    """``(x - mean) / std`` as ``edge.normalize`` does, in the memory format the model runs in."""
    x = (x - pcfg.mean) / pcfg.std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps`` in epoch ``epoch`` (1-based).

    Linear warm-up over the first ``cfg.warmup_epochs`` (at most a quarter of the run; per step, from lr/steps),
    then constant (``schedule="none"``) or a half cosine from ``cfg.lr`` down to 0 at
    the end of epoch ``cfg.epochs``. It depends on the position alone, never on
    what ran before: a resumed run continues exactly, and a run extended from E to
    M epochs continues on the curve of a run planned for M epochs (its learning
    rate rises again, from about 0 at the end of epoch E to the M-epoch curve's value
    there, e.g. 0.29 x lr at epoch 9 of 12 with the 1-epoch warm-up, and decays to 0 at the end of epoch M).
    """
    warmup = min(cfg.warmup_epochs, cfg.epochs / 4)  # never more than a quarter of the run
    start = epoch - 1 + step / steps  # epochs done when this step starts
    end = start + 1 / steps
    if end <= warmup:
        return cfg.lr * end / warmup
    if cfg.schedule == "none":
        return cfg.lr
    done = max(0.0, start - warmup) / (cfg.epochs - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: D.Split, run: "RunState", device, amp=None, channels_last: bool = False) -> int:
    """Re-estimate every batch-norm layer's running statistics on training images, without augmentation.

    During training, BN's running averages trail weights that change fast (Adam,
    batch 16), so evaluation mode normalises with statistics of older weights and
    validation loss jumps from epoch to epoch. Recomputing them with the current
    weights ("precise BN", Wu and Johnson 2021, arXiv:2105.07576) removes that
    lag. The same ``cfg.bn_recalibration`` images (a seeded choice) serve every
    epoch and every DDP rank, so all ranks hold the same statistics. Only the
    buffers change: the training itself is not affected. Returns the images used.
    """
    cfg, pcfg = run.cfg, run.pcfg
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = min(cfg.bn_recalibration, len(split))
    if not bns or n < 2:
        return 0
    idx = np.sort(np.random.default_rng([cfg.seed, 0xB2]).permutation(len(split))[:n])
    momenta = [m.momentum for m in bns]
    was_training = model.training
    model.eval()  # dropout and stochastic depth off ...
    for m in bns:  # ... while batch norm accumulates a plain average over the batches
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for chunk in _chunks(idx, 2 * cfg.batch_size):
            x = normalize(to_input(torch.from_numpy(D.load_uint8(split, chunk)), pcfg, device), pcfg, channels_last)
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                model(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return n


@torch.inference_mode()
def evaluate(model: nn.Module, split: D.Split, pcfg: PreprocessConfig, device, batch_size: int = 32,
             rank: int = 0, world: int = 1, amp=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a split; inputs are exactly ``edge.preprocess`` of each file.

    With DDP every rank evaluates a shard and all ranks get the whole result.
    """
    model.eval()
    idx = np.arange(len(split))[rank::world]
    logits = []
    for i in range(0, len(idx), batch_size):
        x = torch.from_numpy(D.load_normalized(split, idx[i : i + batch_size], pcfg)).to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits.append(model(x).float().cpu().numpy())
    parts = _all_gather((idx, np.concatenate(logits) if logits else None), world)
    out = np.concatenate([p[1] for p in parts if p[1] is not None])
    full = np.empty_like(out)
    full[np.concatenate([p[0] for p in parts if p[1] is not None])] = out
    return full, np.asarray(split.labels)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the entries whose target is not NaN.

    A NaN target (an uncertain label under ``--uncertain ignore``) contributes nothing: neither to the sum nor
    to the count. ``pos_weight`` (K,) multiplies the positive term of each finding, as in
    ``torch.nn.BCEWithLogitsLoss``. A batch with every entry masked gives 0 (and no gradient).
    """
    known = ~torch.isnan(targets)
    t = torch.where(known, targets, torch.zeros_like(targets)).to(torch.float32)
    loss = F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=pos_weight, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


class MaskedBCE(nn.Module):
    """``masked_bce`` as the criterion of a multi-label run (its pos_weight a buffer on the model's device)."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return masked_bce(logits, targets, self.pos_weight)


def positive_weights(targets, max_weight: float = MAX_POS_WEIGHT) -> np.ndarray:
    """Per finding: negatives / positives among the known (non-NaN) targets, clipped to [1 / max, max];
    a finding without positives gets ``max_weight``.

    Args:
        targets: (N, K) 1.0, 0.0 or NaN.
    """
    y = np.asarray(targets, np.float64)
    pos, neg = (y == 1).sum(0), (y == 0).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(pos > 0, neg / np.maximum(pos, 1), max_weight)
    return np.clip(w, 1 / max_weight, max_weight)


def train_step(net, x, y, criterion, opt, scaler, amp) -> torch.Tensor:
    """One optimisation step (autocast when ``amp`` is a dtype; the scaler is a no-op unless fp16)."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        loss = criterion(net(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


# ----------------------------------------------------------------------------- the run's parts


def jsonable(x):
    """Replace NaN/inf by None so that files are strict JSON."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class _Progress:
    """Within-epoch progress on stderr: a rewritten line on a terminal, a line every 10 s otherwise."""

    def __init__(self, show: bool, epoch: int, epochs: int, total: int):
        self.show, self.head, self.total = show, f"epoch {epoch}/{epochs}", total
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()

    def update(self, seen: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.show or now - self.last < (1.0 if self.tty else 10.0):
            return
        self.last = now
        print(f"{self.head} [{seen}/{self.total}] loss {loss:.4f} {seen / (now - self.t0):.1f} img/s",
              end="\r" if self.tty else "\n", file=sys.stderr, flush=True)


@dataclass
class RunState:
    """What a run carries from epoch to epoch, and what ``last.pt`` stores to resume it."""

    cfg: TrainConfig
    pcfg: PreprocessConfig
    start_epoch: int = 1
    history: list = field(default_factory=list)  # one record per finished epoch
    best: dict | None = None  # {"epoch", "metric", "value"} of the best epoch so far
    best_weights: dict | None = None  # its state dict, on the CPU
    resume_from: dict | None = None  # last.pt's payload when resuming
    data: dict | None = None  # the data's fingerprint (train.data.fingerprint); a resumed run's must match
    data_profile: dict | None = None  # what the training images look like (edge.inputs.profile), for the bundle
    task: str = "single"  # "single" or "multilabel", resolved from cfg.task and the data (resolve_task)
    split_summary: dict | None = None  # index data: patients and images per split (train.data.split_summary)
    pos_weight: dict | None = None  # multilabel with cfg.pos_weight: {finding: weight of its positives}
    index_hashes: dict | None = None  # index data: index_sha256 and split_sha256 (index_hashes), for export's check
    train_patients: list | None = None  # index data: the train split's patient ids, sorted (data_report.json)

    @property
    def best_metric(self) -> str:
        """cfg.best_metric as this task names it ("auc" of a multi-label run is its "mean_auc")."""
        name = TASK_METRICS[self.task].get(self.cfg.best_metric)
        if name is None:
            raise UsageError(f"--best-metric {self.cfg.best_metric}: a multi-label run keeps best.pt by "
                             f"{' or '.join(TASK_METRICS['multilabel'])} (auc = the mean of the per-finding AUCs)")
        return name

    @property
    def finished(self) -> bool:
        return self.start_epoch > self.cfg.epochs


@dataclass(frozen=True)
class ResumeOptions:
    """What may change when a run is continued; None keeps the run's own value."""

    run_dir: str
    epochs: int | None = None  # more than the run's extends it; None: the run's own count
    data: str | None = None  # the run's data in another place (it must have the same fingerprint)
    labels: str | None = None  # an index run's index in another place (same fingerprint)
    images: str | None = None  # an index run's images in another place
    device: str | None = None
    workers: int | None = None
    cache_dir: str | None = None


@dataclass
class Training:
    """The model and everything that updates it."""

    model: nn.Module  # the plain module (checkpoints, evaluation)
    net: nn.Module  # what the forward pass runs: the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    amp: object | None  # autocast dtype, None = full precision
    channels_last: bool


def _absolute(path: str) -> str:
    return os.path.abspath(path) if path else ""


def open_run(cfg: TrainConfig, pcfg: PreprocessConfig) -> RunState:
    """A new run in ``cfg.out``, refusing a folder that holds one; paths are made absolute."""
    out = check_output_dir(cfg.out, "run")
    if (out / "last.pt").exists():
        raise UsageError(f"{out} holds a run already: continue it with --resume {out}, or choose another --out")
    return RunState(dataclasses.replace(cfg, data=_absolute(cfg.data), out=_absolute(cfg.out),
                                        cache_dir=_absolute(cfg.cache_dir), labels=_absolute(cfg.labels),
                                        images=_absolute(cfg.images)), pcfg)


def reopen_run(opts: ResumeOptions) -> RunState:
    """The run in ``opts.run_dir`` as its last.pt left it, with the changes ``opts`` asks for.

    Raises:
        UsageError: no run there, or ``opts.epochs`` fewer than the epochs already trained.
    """
    run_dir = Path(opts.run_dir)
    if run_dir.is_file():
        raise UsageError(f"{run_dir}: is a file: give the run folder (the one that holds last.pt)")
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: run folder not found")
    if not (run_dir / "last.pt").is_file():
        raise UsageError(f"{run_dir}: no last.pt: not a run folder, or no epoch of its run finished "
                         "(start it again without --resume)")
    state = load_checkpoint(run_dir / "last.pt")
    old, done = state.train_config, state.epoch
    epochs = old.epochs if opts.epochs is None else opts.epochs
    if epochs < done:
        raise UsageError(f"{run_dir} has trained {done} epochs already; --epochs {epochs} cannot undo them "
                         f"(give more than {done} to extend the run)")
    if old.labels and opts.data:
        raise UsageError(f"{run_dir} was trained on an index ({old.labels}): give its new place with --labels "
                         "(and --images), not --data")
    if old.data and (opts.labels or opts.images):
        raise UsageError(f"{run_dir} was trained on class folders ({old.data}): give their new place with --data")
    cfg = dataclasses.replace(
        old, epochs=epochs, out=_absolute(str(run_dir)), device=opts.device or old.device, workers=opts.workers or old.workers,
        data=_absolute(opts.data) if opts.data else old.data,
        labels=_absolute(opts.labels) if opts.labels else old.labels,
        images=_absolute(opts.images) if opts.images else old.images,
        cache_dir=_absolute(opts.cache_dir) if opts.cache_dir is not None else old.cache_dir)
    run = RunState(cfg, state.preprocess, start_epoch=done + 1, history=list(state["history"]), best=state["best"],
                   data=state.payload.get("data"))
    if not run.finished:
        run.resume_from = state.payload
        run.best_weights = load_checkpoint(run_dir / "best.pt")["model"]
    return run


def resolve_task(task: str, findings: list[str], labels) -> str:
    """"single" or "multilabel": as given, or for "auto" multilabel when the index has more than one finding or
    an image has more than one positive. ``labels``: an index's (N, K) targets, or None for class folders."""
    if labels is None:
        if task == "multilabel":
            raise UsageError("--task multilabel needs an index (--labels INDEX.csv): class folders give one class "
                             "per image")
        return "single"
    if task != "auto":
        return task
    many = len(findings) > 1 or bool(len(labels) and (np.asarray(labels, np.float64) == 1).sum(1).max() > 1)
    return "multilabel" if many else "single"


def single_label_splits(findings: list[str], splits: dict) -> tuple[list[str], dict]:
    """An index's splits for a softmax model: classes "No Finding" (when an image has no finding) and the
    findings, each image labelled with its one positive finding.

    Raises:
        DataError: an image with more than one finding or an uncertain (masked) label, or fewer than 2 classes.
    """
    rows = [(p, np.asarray(t, np.float64)) for s in splits.values() for p, t in zip(s.paths, s.labels, strict=True)]
    bad = [(p, "more than one finding" if (t == 1).sum() > 1 else "an uncertain label")
           for p, t in rows if (t == 1).sum() > 1 or np.isnan(t).any()]
    if bad:
        raise DataError(f"--task single: {len(bad)} image(s) cannot take one class, e.g. {bad[0][0]}: {bad[0][1]}; "
                        "train them with --task multilabel (or --uncertain zeros|ones for uncertain labels)")
    classes = (["No Finding"] if any((t == 1).sum() == 0 for _, t in rows) else []) + list(findings)
    if len(classes) < 2:
        raise DataError(f"--task single: the index gives one class only ({classes}); a classifier needs two")
    out = {}
    for name, s in splits.items():
        labels = [classes.index(findings[int(np.argmax(t))]) if (np.asarray(t) == 1).any() else 0 for t in s.labels]
        out[name] = dataclasses.replace(s, labels=labels)
    return classes, out


def find_data(run: RunState) -> tuple[list[str], dict, dict]:
    """(classes, splits not yet preprocessed, fingerprint) of the run's class folders or index; sets ``run.task``."""
    cfg, resuming = run.cfg, run.resume_from is not None
    if not cfg.labels:
        if resuming and not Path(cfg.data).is_dir():
            raise UsageError(f"{cfg.data}: the run's data folder is not there (moved?); give its place with --data")
        run.task = resolve_task(cfg.task, [], None)
        classes, splits = D.discover(cfg.data, cfg.val_fraction, cfg.seed)
        return classes, splits, D.fingerprint(cfg.data, classes, splits)
    if resuming and not Path(cfg.labels).is_file():
        raise UsageError(f"{cfg.labels}: the run's index is not there (moved?); give its place with --labels "
                         "(and the images' with --images)")
    run.task, classes, splits = index_splits(cfg)
    run.index_hashes = index_hashes(cfg, splits)
    run.train_patients = sorted({p for p in splits["train"].patients if p is not None})
    return classes, splits, D.fingerprint(cfg.images or os.path.dirname(cfg.labels), classes, splits)


def index_splits(cfg: TrainConfig) -> tuple[str, list[str], dict]:
    """The splits of an index run, as the run made them: read ``cfg.labels`` (``edge.inputs.index.read_index``),
    split by patient with the run's fractions and seed (``train.data.discover_index``), the task resolved.
    Export rebuilds a checkpoint's validation split with it (from the checkpoint's TrainConfig).

    Returns:
        (task, classes or findings, {"train", "val"[, "test"]: Split}), the splits not yet preprocessed.
    """
    from medge.edge.inputs.index import read_index

    index = read_index(cfg.labels, cfg.images or os.path.dirname(cfg.labels), cfg.labels_format, cfg.uncertain)
    findings, splits = D.discover_index(index, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    task = resolve_task(cfg.task, findings, [t for s in splits.values() for t in s.labels])
    classes, splits = (list(findings), splits) if task == "multilabel" else single_label_splits(findings, splits)
    return task, classes, splits


def index_hashes(cfg: TrainConfig, splits: dict) -> dict:
    """What export checks its rebuilt split against: the SHA-256 of the index file's bytes and of each split's
    membership (``train.checkpoint.membership_sha256``: paths relative to the images folder, as the index names them)."""
    root = cfg.images or os.path.dirname(cfg.labels)
    return {"index_sha256": file_sha256(cfg.labels),
            "split_sha256": {name: membership_sha256(s.paths, root) for name, s in splits.items()}}


def prepare_splits(run: RunState, rank: int, world: int) -> tuple[list[str], dict]:
    """Discover the data, check it is the run's (when resuming), and fill the preprocessing cache
    (rank 0 first under DDP, then the others read it). Sets ``run.data`` to the data's fingerprint."""
    cfg, pcfg = run.cfg, run.pcfg
    classes, splits, found = find_data(run)
    run.best_metric  # noqa: B018 (a best metric this task cannot use is refused before any preprocessing)
    if run.resume_from is not None and run.data is not None:
        why = D.fingerprint_difference(run.data, found)
        if why:
            given = f"--labels {cfg.labels}" if cfg.labels else f"--data {cfg.data}"
            raise UsageError(f"{given}: not the data this run was trained on: {why}; give the run's own data "
                             f"with {given.split()[0]}, or start a new run")
    run.data = found
    cache_dir = cfg.cache_dir or D.default_cache_dir()
    prepared = {}
    for turn in range(2 if world > 1 else 1):
        if (rank == 0) == (turn == 0):
            prepared = {n: D.prepare(s, pcfg, cache_dir, cfg.workers, n, verbose=rank == 0) for n, s in splits.items()}
        if world > 1:
            torch.distributed.barrier()
    for name, split in prepared.items():
        D.check_usable(split, classes, name)
    if cfg.labels or any(s.patients for s in prepared.values()):  # index data, or DICOMs with a PatientID:
        # what the run records of each split, the images it can use and their patients
        run.split_summary = D.split_summary(prepared)
    return classes, prepared


def build_training(run: RunState, classes: list[str], train_split: D.Split, device: torch.device,
                   world: int) -> Training:
    """Model, optimiser, scaler and loss; restored from last.pt when resuming (the schedule has no state)."""
    cfg, pcfg, state = run.cfg, run.pcfg, run.resume_from
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, pcfg.channels, len(classes), cfg.pretrained and state is None,
                        cfg.zero_init_residual).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Training(model, net, opt, scaler, build_criterion(run, classes, train_split, device), amp, channels_last)


def build_criterion(run: RunState, classes: list[str], train_split: D.Split, device) -> nn.Module:
    """Cross-entropy (class weights optional) for one class per image; masked BCE (pos_weight optional, recorded
    in ``run.pos_weight``) for multi-label."""
    cfg = run.cfg
    if run.task == "multilabel":
        if cfg.class_weights:
            raise UsageError("--class-weights weighs the classes of a single-label run; a multi-label run weighs "
                             "each finding's positives with --pos-weight")
        if not cfg.pos_weight:
            return MaskedBCE().to(device)
        w = positive_weights(np.asarray(train_split.labels, np.float64).reshape(-1, len(classes)))
        run.pos_weight = dict(zip(classes, (round(float(v), 6) for v in w), strict=True))
        return MaskedBCE(torch.tensor(w, dtype=torch.float32)).to(device)
    if cfg.pos_weight:
        raise UsageError("--pos-weight weighs the findings of a multi-label run; a single-label run weighs its "
                         "classes with --class-weights")
    weight = None
    if cfg.class_weights:
        counts = np.bincount(train_split.labels, minlength=len(classes))
        weight = torch.tensor(len(train_split) / (len(classes) * counts), dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight)


def _split_report(run: RunState, classes: list[str], split: D.Split) -> dict:
    """data_report.json's entry of one split: images, per class (or per finding: positives, negatives, masked)."""
    if run.task == "multilabel":
        y = np.asarray(split.labels, np.float64).reshape(-1, len(classes))
        per = {"per_finding": {f: {"positives": int((y[:, k] == 1).sum()), "negatives": int((y[:, k] == 0).sum()),
                                   "masked": int(np.isnan(y[:, k]).sum())} for k, f in enumerate(classes)}}
    else:
        per = {"per_class": dict(zip(classes, np.bincount(split.labels, minlength=len(classes)).tolist(), strict=True))}
    return {"images": len(split), **per, "skipped": [{"path": p, "reason": r} for p, r in split.failures]}


def index_record(run: RunState) -> dict:
    """What an index run adds to config.json, summary.json and its checkpoints: the task, where the data came from
    (everything export needs to rebuild the validation split), patients and images per split, pos_weight."""
    cfg = run.cfg
    if not cfg.labels:  # class folders: their patients per split where the files are DICOM with a PatientID
        return {} if run.split_summary is None else {"splits": run.split_summary}
    source = {"index": cfg.labels, "images": cfg.images, "format": cfg.labels_format, "uncertain": cfg.uncertain,
              "seed": cfg.seed, "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
              **(run.index_hashes or {})}
    return {"task": run.task, "data_source": source, "splits": run.split_summary, "pos_weight": run.pos_weight}


def write_run_files(run: RunState, classes: list[str], splits: dict, versions: dict) -> None:
    """config.json, data_report.json and data_profile.json in the run folder (rank 0 only)."""
    out = Path(run.cfg.out)
    report = {n: _split_report(run, classes, s) for n, s in splits.items()}
    if run.split_summary is not None:
        report = {"splits": run.split_summary, **report}
    if run.train_patients is not None:  # export warns when a calibration index shares patients with training
        report["train_patients"] = run.train_patients
    atomic_write_text(out / "data_report.json", json.dumps(jsonable(report), indent=2) + "\n")
    atomic_write_text(out / "config.json", json.dumps(jsonable({
        "train": run.cfg.to_dict(), "preprocess": run.pcfg.to_dict(), "classes": classes, "data": run.data,
        **index_record(run), "versions": versions}), indent=2) + "\n")
    atomic_write_text(out / "data_profile.json", json.dumps(run.data_profile, indent=2) + "\n")


def train_one_epoch(t: Training, split: D.Split, run: RunState, epoch: int, device: torch.device, rank: int,
                    world: int) -> tuple[int, float, list[float]]:
    """One pass over this rank's shard of the training split; returns (images seen, summed loss,
    learning rates of the first and last step)."""
    cfg, pcfg = run.cfg, run.pcfg
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split))
    if world > 1:  # every rank gets the same number of samples, or DDP would wait forever
        order = np.resize(order, math.ceil(len(order) / world) * world)[rank::world]
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 100_003 + epoch)
    t.net.train()
    seen, loss_sum, lrs = 0, 0.0, []
    steps = len(_chunks(order, cfg.batch_size))
    progress = _Progress(rank == 0, epoch, cfg.epochs, len(order))
    for step, (u8, y) in enumerate(batches(split, order, cfg.batch_size)):
        lr = learning_rate(cfg, epoch, step, steps)
        for group in t.opt.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        x = augment(to_input(u8, pcfg, device), cfg.hflip, cfg.rotate_deg, gen)
        x, y = normalize(x, pcfg, t.channels_last), y.to(device, non_blocking=True)
        loss = train_step(t.net, x, y, t.criterion, t.opt, t.scaler, t.amp)
        seen += len(y)
        loss_sum += loss.item() * len(y)
        progress.update(seen, loss_sum / seen)
    return seen, loss_sum, [lrs[0], lrs[-1]] if lrs else [cfg.lr, cfg.lr]


def validation_metrics(t: Training, split: D.Split, run: RunState, classes: list[str], device, rank: int,
                       world: int) -> dict:
    """classification_metrics of the validation split, plus its cross-entropy loss; multi-label: per-finding
    AUC, their mean and the masked BCE (``train.metrics.multilabel_metrics``)."""
    logits, labels = evaluate(t.model, split, run.pcfg, device, 2 * run.cfg.batch_size, rank, world, t.amp)
    return split_metrics(run, labels, logits, classes)


def split_metrics(run: RunState, labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict:
    """The metrics of the run's task for one split's labels and logits."""
    if run.task == "multilabel":
        return multilabel_metrics(labels, logits, classes)
    return logit_metrics(labels, logits, classes)


def is_better(value: float, best: dict | None, metric: str) -> bool:
    """Whether ``value`` of ``metric`` beats the best so far (NaN never does; anything beats NaN)."""
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if best["value"] is None or not math.isfinite(best["value"]):
        return True
    return value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"]


def checkpoint_payload(run: RunState, classes: list[str], epoch: int, metrics: dict, versions: dict) -> dict:
    """What best.pt and last.pt share: everything export and the edge need, and the run's history."""
    payload = {"arch": run.cfg.arch, "classes": classes, "train_config": run.cfg.to_dict(),
               "preprocess": run.pcfg.to_dict(), "epoch": epoch, "metrics": jsonable(metrics), "versions": versions,
               "history": run.history, "best": run.best, "data": run.data, "data_profile": run.data_profile}
    if run.task == "multilabel":  # a single-label checkpoint stays as it was: no task key means single
        payload["task"] = "multilabel"
    if run.cfg.labels:
        payload["data_source"] = index_record(run)["data_source"]
    return payload


def save_epoch(t: Training, run: RunState, classes: list[str], epoch: int, record: dict, improved: bool,
               versions: dict) -> None:
    """best.pt when the epoch improved, last.pt (resumable) always, metrics.jsonl rewritten from the
    history (so it always agrees with last.pt, whatever was cut short before); rank 0 only."""
    out = Path(run.cfg.out)
    common = checkpoint_payload(run, classes, epoch, {"val": record["val"]}, versions)
    if improved:
        save_checkpoint(out / "best.pt", {**common, "model": run.best_weights})
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(jsonable(h)) + "\n" for h in run.history))
    save_checkpoint(out / "last.pt", {
        **common, "model": t.model.state_dict(), "optimizer": t.opt.state_dict(), "scaler": t.scaler.state_dict()})
    m = record["val"]
    print(f"epoch {epoch}/{run.cfg.epochs}  train_loss {record['train_loss']:.4f}  val_loss {m['loss']:.4f}  "
          f"{metrics_line(m)}{'  *best' if improved else ''}  {record['time_s']:.1f} s "
          f"({record['train_images_per_s']:.0f} img/s)", flush=True)


def _figure(v) -> str:
    return "null" if v is None or not math.isfinite(v) else f"{v:.3f}"


def metrics_line(m: dict) -> str:
    """The headline figures of one split's metrics (either task), for the console."""
    if "per_finding" in m:
        return f"mean_auc {_figure(m['mean_auc'])} (" + ", ".join(
            f"{f} {_figure(p['auc'])}" for f, p in m["per_finding"].items()) + ")"
    return f"acc {m['accuracy']:.3f}  bal_acc {m['balanced_accuracy']:.3f}  auc {m['auc']:.3f}"


def finish(t: Training, run: RunState, classes: list[str], splits: dict, device, rank: int, world: int) -> dict:
    """Score the test split (if any) with the best weights, write summary.json; returns the summary."""
    out, main = Path(run.cfg.out), rank == 0
    summary = {"out": str(out), "epochs": run.cfg.epochs, "best": run.best, "classes": classes,
               "val": run.history[-1]["val"] if run.history else None,
               "skipped": {n: len(s.failures) for n, s in splits.items()}, **index_record(run)}
    if run.best_weights is not None and run.best is not None:
        summary["val"] = next(h["val"] for h in run.history if h["epoch"] == run.best["epoch"])
        if "test" in splits:
            t.model.load_state_dict(run.best_weights)
            logits, labels = evaluate(t.model, splits["test"], run.pcfg, device, 2 * run.cfg.batch_size, rank, world, t.amp)
            summary["test"] = jsonable(split_metrics(run, labels, logits, classes))
            if main:
                best = load_checkpoint(out / "best.pt").payload
                best["metrics"] = {**best["metrics"], "test": summary["test"]}
                save_checkpoint(out / "best.pt", {k: v for k, v in best.items() if k not in ("format", "version")})
    if main:
        atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2) + "\n")
        n_skipped = sum(summary["skipped"].values())
        if n_skipped:
            print(f"skipped {n_skipped} file(s), unreadable or not images: see {out / 'data_report.json'}",
                  file=sys.stderr)
    return summary


def finished_summary(run: RunState) -> dict:
    """A finished run's summary.json (or what its last.pt says), marked ``finished``; nothing is written."""
    path = Path(run.cfg.out) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {"out": run.cfg.out, "best": run.best, "val": run.history[-1]["val"] if run.history else None}
    return {**summary, "out": run.cfg.out, "epochs": run.cfg.epochs, "finished": True}


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, pcfg: PreprocessConfig = PreprocessConfig()) -> dict:
    """Train a new classifier; write checkpoints and metrics to ``cfg.out``.

    Args:
        cfg: the training configuration (``cfg.out`` is the run folder; it must not hold a run).
        pcfg: the preprocessing, saved with the model.

    Returns:
        summary dict: run folder, best epoch and metric, its val (and test) metrics,
        classes, skipped images.

    Raises:
        DataError, CheckpointError, ConfigError, UsageError, MedgeError: with a message for the user.
        KeyboardInterrupt: after saying where the resumable checkpoint is.
    """
    return _launch(open_run(cfg, pcfg))


def resume(opts: ResumeOptions) -> dict:
    """Continue the run in ``opts.run_dir`` (see the module docstring for what that means).

    Returns:
        the summary, as ``train``; for a run that had finished already (and was
        left untouched) its summary with ``finished: True``.

    Raises:
        UsageError: no run there, fewer epochs than trained, or data that is not the run's.
    """
    run = reopen_run(opts)
    if run.finished:
        return finished_summary(run)
    return _launch(run)


def _launch(run: RunState) -> dict:
    rank, world, _ = rank_world()
    device = select_device(run.cfg.device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    try:
        return _run(run, device, rank, world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def split_line(summary: dict) -> str:
    """``train.data.split_summary``'s patients and images per split, in one line."""
    return "; ".join(f"{name} {v.get('patients')} patients, {v.get('images')} images"
                     for name, v in summary.items() if isinstance(v, dict))


def _announce(run: RunState, device, world: int, classes: list[str], splits: dict) -> None:
    cfg = run.cfg
    what = f"findings {classes} (multi-label)" if run.task == "multilabel" else f"classes {classes}"
    print(f"{cfg.arch} on {device}{f' x{world}' if world > 1 else ''}: {len(splits['train'])} train, "
          f"{len(splits['val'])} val images, {what}", flush=True)
    if run.split_summary is not None:
        print("split by patient: " + split_line(run.split_summary), flush=True)
    if run.pos_weight is not None:
        print("pos_weight (negatives/positives in train, at most "
              f"{MAX_POS_WEIGHT:g}): " + ", ".join(f"{f} {w:.3g}" for f, w in run.pos_weight.items()), flush=True)
    if run.resume_from is not None:
        planned = TrainConfig.from_dict(run.resume_from["train_config"]).epochs
        if cfg.epochs > planned:
            how = (f"the cosine schedule now spans {cfg.epochs} epochs: epoch {run.start_epoch} starts at lr "
                   f"{learning_rate(cfg, run.start_epoch, 0, 1):.2g}, decaying to 0 at the end of epoch {cfg.epochs}"
                   if cfg.schedule == "cosine" else f"constant lr {cfg.lr:g}")
            print(f"extending {cfg.out} from {planned} to {cfg.epochs} epochs; {how}", flush=True)
        else:
            print(f"resuming {cfg.out} at epoch {run.start_epoch} of {cfg.epochs}", flush=True)


def _run(run: RunState, device: torch.device, rank: int, world: int) -> dict:
    main = rank == 0
    classes, splits = prepare_splits(run, rank, world)
    # An index's data set is the index's folder: medge synth writes its marker there.
    run.data_profile = D.data_profile(splits["train"], os.path.dirname(run.cfg.labels) or "." if run.cfg.labels
                                      else run.cfg.data)
    if run.resume_from is not None and classes != run.resume_from["classes"]:
        raise DataError(f"the data's classes {classes} differ from the run's {run.resume_from['classes']}")
    t = build_training(run, classes, splits["train"], device, world)
    versions = library_versions()
    if main:
        write_run_files(run, classes, splits, versions)
        _announce(run, device, world, classes, splits)
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch, run.cfg.epochs + 1):
            t0 = time.perf_counter()
            seen, loss_sum, lrs = train_one_epoch(t, splits["train"], run, epoch, device, rank, world)
            train_s = time.perf_counter() - t0
            seen_all, loss_all = (sum(v) for v in zip(*_all_gather((seen, loss_sum), world), strict=True))
            if run.cfg.bn_recalibration:
                recalibrate_bn(t.model, splits["train"], run, device, t.amp, t.channels_last)
            m = validation_metrics(t, splits["val"], run, classes, device, rank, world)
            metric = run.best_metric
            improved = is_better(m[metric], run.best, metric)
            if improved:
                run.best = {"epoch": epoch, "metric": metric, "value": jsonable(m[metric])}
                run.best_weights = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
            record = {"epoch": epoch, "train_loss": loss_all / max(seen_all, 1), "lr": lrs[0], "lr_last_step": lrs[1],
                      "train_images_per_s": seen_all / train_s, "time_s": time.perf_counter() - t0, "val": m}
            run.history.append(jsonable(record))
            if main:
                save_epoch(t, run, classes, epoch, record, improved, versions)
    except KeyboardInterrupt:
        if main:
            out = Path(run.cfg.out)
            done = run.history[-1]["epoch"] if run.history else 0
            hint = f"{out / 'last.pt'} holds epoch {done}: continue with --resume {out}" if done else "no epoch was completed"
            print(f"\ninterrupted during epoch {epoch}; {hint}", file=sys.stderr, flush=True)
        raise
    return finish(t, run, classes, splits, device, rank, world)
