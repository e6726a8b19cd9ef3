"""The training loop: data from the shared preprocessing, batch-wise augmentation on the
device, validation every epoch, atomic checkpoints, exact resume, optional DDP.

Usage: medge train --data data/xray --arch resnet18 --epochs 10 --out runs/xray
       torchrun --standalone --nproc_per_node 2 -m train --data data/xray --out runs/xray-ddp

Reproducibility: every random draw of epoch e (data order, augmentation,
dropout) is seeded from (seed, e), so a run resumed after epoch e continues
exactly as the uninterrupted run would; no RNG state needs to be carried.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import DataError, MedgeError
from edge.preprocess import PreprocessConfig
from edge.runtime import softmax
from train import data as D
from train.checkpoint import library_versions, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.metrics import HIGHER_IS_BETTER, classification_metrics
from train.models import build_model

# ----------------------------------------------------------------------------- devices and DDP


def _rank_world() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def select_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise MedgeError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", _rank_world()[2])
    return torch.device("cpu")


def _amp_dtype(cfg: TrainConfig, device: torch.device):
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


def _batches(split: D.Split, order: np.ndarray, batch_size: int):
    """Yield (uint8 images, labels) in ``order``, loading the next batch in a background thread."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()  # batch norm cannot train on a batch of one
    load = lambda idx: (torch.from_numpy(D.load_uint8(split, idx)), torch.tensor([split.labels[i] for i in idx]))
    box: dict = {}
    for k, idx in enumerate(chunks):
        nxt = None
        if k + 1 < len(chunks):
            nxt = threading.Thread(target=lambda j=chunks[k + 1]: box.__setitem__("next", load(j)))
            nxt.start()
        yield box.pop("cur") if "cur" in box else load(idx)
        if nxt is not None:
            nxt.join()
            box["cur"] = box.pop("next")


def _to_input(u8: torch.Tensor, pcfg: PreprocessConfig, device, channels_last: bool) -> torch.Tensor:
    x = u8.to(device, non_blocking=True).float().div_(255.0)[:, None]
    return x.expand(-1, pcfg.channels, -1, -1) if pcfg.channels > 1 else x


def _normalize(x: torch.Tensor, pcfg: PreprocessConfig, channels_last: bool) -> torch.Tensor:
    x = (x - pcfg.mean) / pcfg.std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


@torch.inference_mode()
def evaluate(model: nn.Module, split: D.Split, pcfg: PreprocessConfig, device, batch_size: int = 32,
             rank: int = 0, world: int = 1, amp_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a split; inputs are exactly ``edge.preprocess`` of each file.

    With DDP every rank evaluates a shard and all ranks get the whole result.
    """
    model.eval()
    idx = np.arange(len(split))[rank::world]
    logits = []
    for i in range(0, len(idx), batch_size):
        x = torch.from_numpy(D.load_normalized(split, idx[i : i + batch_size], pcfg)).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits.append(model(x).float().cpu().numpy())
    parts = _all_gather((idx, np.concatenate(logits) if logits else None), world)
    out = np.concatenate([p[1] for p in parts if p[1] is not None])
    full = np.empty_like(out)
    full[np.concatenate([p[0] for p in parts if p[1] is not None])] = out
    return full, np.asarray(split.labels)


# ----------------------------------------------------------------------------- the loop


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


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


def train_step(net, x, y, criterion, opt, scaler, amp_dtype) -> torch.Tensor:
    """One optimisation step (autocast when amp_dtype is set; the scaler is a no-op unless fp16)."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(net(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def _better(value: float, best: dict | None, metric: str) -> bool:
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if best["value"] is None or not math.isfinite(best["value"]):
        return True
    return value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"]


def train(cfg: TrainConfig, pcfg: PreprocessConfig = PreprocessConfig(), resume: bool = False) -> dict:
    """Train a classifier; write checkpoints and metrics to ``cfg.out``.

    Args:
        cfg: the training configuration (``cfg.out`` is the run folder).
        pcfg: the preprocessing; ignored on resume (the checkpoint's is used).
        resume: continue the run in ``cfg.out`` from its ``last.pt``; ``cfg.epochs``,
            ``device``, ``workers`` and ``cache_dir`` may change, the rest is the run's.

    Returns:
        summary dict: run folder, best epoch and metric, its val (and test) metrics,
        classes, skipped images.

    Raises:
        DataError, CheckpointError, ConfigError, MedgeError: with a message for the user.
        KeyboardInterrupt: after saying where the resumable checkpoint is.
    """
    rank, world, _ = _rank_world()
    device = select_device(cfg.device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    try:
        return _train(cfg, pcfg, resume, device, rank, world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _prepare_splits(cfg, pcfg, rank, world):
    classes, splits = D.discover(cfg.data, cfg.val_fraction, cfg.seed)
    cache_dir = cfg.cache_dir or D.default_cache_dir()
    prepared = {}
    for turn in range(2 if world > 1 else 1):  # rank 0 fills the cache, then the others read it
        if (rank == 0) == (turn == 0):
            prepared = {n: D.prepare(s, pcfg, cache_dir, cfg.workers, n, verbose=rank == 0) for n, s in splits.items()}
        if world > 1:
            torch.distributed.barrier()
    for name, split in prepared.items():
        D.check_usable(split, classes, name)
    return classes, prepared


def _train(cfg, pcfg, resume, device, rank, world):
    out, main = Path(cfg.out), rank == 0
    state, best_state, start_epoch, history, best = None, None, 1, [], None
    if resume:
        state = load_checkpoint(out / "last.pt")
        saved = TrainConfig.from_dict(state["train_config"])
        cfg = dataclasses.replace(saved, epochs=cfg.epochs, device=cfg.device, workers=cfg.workers,
                                  cache_dir=cfg.cache_dir, out=cfg.out)
        pcfg = state["preprocess_config"]
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        best_state = load_checkpoint(out / "best.pt")["model"]
    elif (out / "last.pt").exists():
        raise MedgeError(f"{out} holds a run already: continue it with --resume {out}, or choose another --out")

    classes, splits = _prepare_splits(cfg, pcfg, rank, world)
    if state is not None and classes != state["classes"]:
        raise DataError(f"the data's classes {classes} differ from the run's {state['classes']}")
    train_split, val_split = splits["train"], splits["val"]

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, pcfg.channels, len(classes), cfg.pretrained and state is None).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.schedule == "cosine" else None
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    weight = None
    if cfg.class_weights:
        counts = np.bincount(train_split.labels, minlength=len(classes))
        weight = torch.tensor(len(train_split) / (len(classes) * counts), dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weight)

    skipped = {n: s.failures for n, s in splits.items()}
    versions = library_versions()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        report = {n: {"images": len(s), "per_class": dict(zip(classes, np.bincount(s.labels, minlength=len(classes)).tolist())),
                      "skipped": [{"path": p, "reason": r} for p, r in s.failures]} for n, s in splits.items()}
        (out / "data_report.json").write_text(json.dumps(report, indent=2))
        (out / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "preprocess": pcfg.to_dict(),
                                                     "classes": classes, "versions": versions}, indent=2))
        print(f"{cfg.arch} on {device}{f' x{world}' if world > 1 else ''}: {len(train_split)} train, "
              f"{len(val_split)} val images, classes {classes}", flush=True)

    common = lambda epoch, metrics: {
        "arch": cfg.arch, "classes": classes, "train_config": cfg.to_dict(), "preprocess": pcfg.to_dict(),
        "epoch": epoch, "metrics": jsonable(metrics), "versions": versions, "history": history, "best": best,
    }
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_split))
            if world > 1:  # every rank gets the same number of samples, or DDP would wait forever
                order = np.resize(order, math.ceil(len(order) / world) * world)[rank::world]
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
            gen = torch.Generator(device=device)
            gen.manual_seed(cfg.seed * 100_003 + epoch)
            net.train()
            seen, loss_sum = 0, 0.0
            progress = _Progress(main, epoch, cfg.epochs, len(order))
            for u8, y in _batches(train_split, order, cfg.batch_size):
                x = augment(_to_input(u8, pcfg, device, channels_last), cfg.hflip, cfg.rotate_deg, gen)
                x, y = _normalize(x, pcfg, channels_last), y.to(device, non_blocking=True)
                loss = train_step(net, x, y, criterion, opt, scaler, amp_dtype)
                seen += len(y)
                loss_sum += loss.item() * len(y)
                progress.update(seen, loss_sum / seen)
            train_s = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            totals = _all_gather((seen, loss_sum), world)
            seen_all, loss_all = sum(t[0] for t in totals), sum(t[1] for t in totals)
            logits, labels = evaluate(model, val_split, pcfg, device, 2 * cfg.batch_size, rank, world, amp_dtype)
            m = classification_metrics(labels, softmax(logits), classes)
            m["loss"] = _cross_entropy(logits, labels)
            improved = _better(m[cfg.best_metric], best, cfg.best_metric)
            if improved:
                best = {"epoch": epoch, "metric": cfg.best_metric, "value": jsonable(m[cfg.best_metric])}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            record = {"epoch": epoch, "train_loss": loss_all / max(seen_all, 1), "lr": lr,
                      "train_images_per_s": seen_all / train_s, "time_s": time.perf_counter() - t0, "val": m}
            history.append(jsonable(record))
            if main:
                if improved:
                    save_checkpoint(out / "best.pt", {**common(epoch, {"val": m}), "model": best_state})
                save_checkpoint(out / "last.pt", {
                    **common(epoch, {"val": m}), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None, "scaler": scaler.state_dict()})
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(jsonable(record)) + "\n")
                print(f"epoch {epoch}/{cfg.epochs}  train_loss {record['train_loss']:.4f}  val_loss {m['loss']:.4f}  "
                      f"acc {m['accuracy']:.3f}  bal_acc {m['balanced_accuracy']:.3f}  auc {m['auc']:.3f}"
                      f"{'  *best' if improved else ''}  {record['time_s']:.1f} s ({record['train_images_per_s']:.0f} img/s)",
                      flush=True)
    except KeyboardInterrupt:
        if main:
            done = history[-1]["epoch"] if history else 0
            hint = f"{out / 'last.pt'} holds epoch {done}: continue with --resume {out}" if done else "no epoch was completed"
            print(f"\ninterrupted during epoch {epoch}; {hint}", file=sys.stderr, flush=True)
        raise

    summary = {"out": str(out), "best": best, "classes": classes, "val": history[-1]["val"] if history else None,
               "skipped": {n: len(f) for n, f in skipped.items()}}
    if best_state is not None and best is not None:
        summary["val"] = next(h["val"] for h in history if h["epoch"] == best["epoch"])
        if "test" in splits:
            model.load_state_dict(best_state)
            logits, labels = evaluate(model, splits["test"], pcfg, device, 2 * cfg.batch_size, rank, world, amp_dtype)
            summary["test"] = jsonable({**classification_metrics(labels, softmax(logits), classes),
                                        "loss": _cross_entropy(logits, labels)})
            if main:
                ck = load_checkpoint(out / "best.pt")
                ck["metrics"]["test"] = summary["test"]
                ck.pop("preprocess_config")
                save_checkpoint(out / "best.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    n_skipped = sum(summary["skipped"].values())
    if main:
        (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
        if n_skipped:
            print(f"skipped {n_skipped} unreadable image(s): see {out / 'data_report.json'}", file=sys.stderr)
    return summary
