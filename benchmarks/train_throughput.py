"""Training throughput: is the data pipeline or the training step the limit?

Usage: python -m medge.benchmarks.train_throughput --data data/xray --arch resnet18 --batch-size 64 --out train_tp.json

Measures, on the same data and device:
  pipeline  images/s of the data path alone: cached uint8 batches -> device ->
            augmentation -> normalisation (what feeds the model), no model;
  step      images/s of training steps alone (forward, backward, Adam) on a
            batch already on the device;
  cold      images/s of the first preprocessing pass (decode + blur + CLAHE +
            resize, with the configured worker threads), which only epoch 1 pays.
Prints a JSON record with the environment; ``--out`` also writes it.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, emit, environment, research_parser


def _timeit(fn, warmup: int, repeats: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def measure(data: str, arch: str = "resnet18", batch_size: int = 64, img_size: int = 224, device: str = "auto",
            amp: str = "auto", repeats: int = 20, workers: int = 2) -> dict:
    import torch

    from medge.edge.preprocess import PreprocessConfig
    from medge.train import engine
    from medge.train.checkpoint import library_versions
    from medge.train.config import TrainConfig

    cfg = TrainConfig(data=data, arch=arch, batch_size=batch_size, device=device, amp=amp, workers=workers)
    pcfg = PreprocessConfig(size=img_size)
    dev = engine.select_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    channels_last = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, cold, pipe_ips = _measure_input_pipeline(cfg, pcfg, dev, channels_last, repeats, sync)
    step_times, amp_dtype = _measure_train_step(cfg, pcfg, dev, channels_last, repeats, sync)
    step_ips = batch_size / float(np.median(step_times))
    return {
        "benchmark": "train_throughput",
        "arch": arch, "batch_size": batch_size, "img_size": img_size, "device": str(dev),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "channels_last": channels_last,
        "images": images, "workers": workers,
        "cold_preprocess_images_per_s": cold,
        "pipeline_images_per_s": pipe_ips,
        "step_images_per_s": step_ips,
        "step_ms_median": 1000 * float(np.median(step_times)),
        "limit": "pipeline" if pipe_ips < step_ips else "step",
        "env": {**environment(), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                **library_versions()},
    }


def _measure_input_pipeline(cfg, pcfg, dev, channels_last: bool, repeats: int, sync) -> tuple[int, float, float]:
    """(images, cold preprocessing images/s, input pipeline images/s) of the train split: read from the
    cache, batched, augmented and normalized on ``dev``."""
    import torch

    from medge.train import data as D
    from medge.train import engine

    _, splits = D.discover(cfg.data)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        split = D.prepare(splits["train"], pcfg, cache, cfg.workers, "train")
        cold = len(splits["train"]) / (time.perf_counter() - t0)
        order = np.arange(len(split))
        gen = torch.Generator(device=dev)
        gen.manual_seed(0)

        def pipeline():
            for u8, y in engine.batches(split, order, cfg.batch_size):
                x = engine.augment(engine.to_input(u8, pcfg, dev), cfg.hflip, cfg.rotate_deg, gen)
                engine.normalize(x, pcfg, channels_last)
                y.to(dev)

        pipe_times = _timeit(pipeline, 1, max(3, repeats // 5), sync)
        return len(split), cold, len(split) / float(np.median(pipe_times))


def _measure_train_step(cfg, pcfg, dev, channels_last: bool, repeats: int, sync):
    """(seconds per training step on one random batch, the AMP dtype used)."""
    import torch

    from medge.train import engine
    from medge.train.models import build_model

    model = build_model(cfg.arch, pcfg.channels, 2).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp_dtype = engine.amp_dtype(cfg, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    x = engine.normalize(torch.rand(cfg.batch_size, pcfg.channels, pcfg.size, pcfg.size, device=dev), pcfg, channels_last)
    y = torch.randint(0, 2, (cfg.batch_size,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        engine.train_step(model, x, y, loss_fn, opt, scaler, amp_dtype)

    model.train()
    return _timeit(step, 3, repeats, sync), amp_dtype


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    add_out_arguments(p)
    a = p.parse_args(argv)
    status = check_outputs("train_throughput", a.overwrite, {"record": a.out})
    if status:
        return status
    rec = measure(a.data, a.arch, a.batch_size, a.img_size, a.device, a.amp, a.repeats, a.workers)
    emit(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
