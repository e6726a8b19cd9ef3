"""``medge bench``: PyTorch vs cv2.dnn vs onnxruntime on this machine, and medge's pipeline end to end, as a record.

Usage: medge bench --model bundles/xray --checkpoint runs/xray/best.pt --busy-cores 1 --out bench.json

In one run, with progress on stderr: the box's load (/proc/loadavg, other processes' busy cores) before and
after; cold start; forward-pass latency, the runtimes interleaved in short blocks (5 timed calls each, the
order rotating, the first call of each block untimed) so that machine drift hits all alike and no runtime
pays for another's spinning threads, for each thread count (default 1 and all cores) and batch size
(default 1 and 8), each row with its spread (p50 / min, p90 / p50) and the cores other processes kept busy
while it was measured; the box's FP32 peak (``benchmarks.peak``) and the fraction of it each runtime
reaches; read and preprocessing times; end-to-end images/s on generated 2048x2048 files (medge's pipeline on
cv2.dnn and on onnxruntime, the sequential loops), also with ``--busy-cores`` cores kept busy by background
processes.

A row whose spread or load says another process distorted it is flagged busy by the rule of
``benchmarks.trust`` (p50 > 1.5x min, p90 > 1.5x p50, or other processes' load beyond the cores its threads
leave idle); its case is measured again, all runtimes interleaved, after the others, at most twice. The
report's first line, the headline (``headline``), gives cv2.dnn's p50 against each other runtime's at
batch 1 and all threads; a run that still has a flagged row gives the warning instead and no ratio. The
record keeps every attempt's figures and flags.

What each figure includes is in ``FIGURES``, copied into the record ("figures")
and printed under each Markdown table. The JSON record holds every figure and
the environment; the Markdown goes to stdout; a PNG plot is written next to
--out when matplotlib is installed. Both outputs are checked before measuring
starts (an existing one needs --overwrite), and written atomically. They hold the user's figures only: the
project's speed goals are ratios of these figures that ``benchmarks.goals`` renders on the project's results
page.

With --checkpoint it first says whether that checkpoint holds the weights the
bundle was exported from; latency does not depend on the weights, so a
different one is noted in the record and the measuring goes on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medge.benchmarks import trust


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple = (1, 8)
    threads: tuple = (1, os.cpu_count() or 1)
    warmup: int = 10  # untimed calls per runtime before each measurement (PyTorch's first ~9 calls are slow)
    repeats: int = 50  # timed calls per runtime, batch size and thread count
    block: int = 5  # timed calls in a row per runtime before the next one's turn
    preprocess_repeats: int = 10  # timed reads/preprocessings per image kind
    e2e_images: int = 16  # 2048x2048 files for the end-to-end comparison (0 = skip)
    e2e_rounds: int = 3
    image_size: int = 2048  # side of the generated files
    busy_cores: int = 1  # end to end again with this many cores busy with background work (0 = skip)
    first_calls: int = 12  # calls timed one by one right after load (the warm-up curve)
    peak_size: int = 4096  # side of the square FP32 matrices of the peak measurement (benchmarks.peak)
    max_repeats: int = trust.MAX_REPEATS  # measurements again of a latency case with a row flagged busy (benchmarks.trust)


FIGURES = {
    "cold_start_ms": "a fresh runtime: load the model (medge: SHA-256, golden self-test, engine choice; PyTorch: the "
                     "checkpoint) plus the first forward pass on a ready blob",
    "first_calls_ms": "the first calls after load, one by one, on a ready blob: how long the warm-up lasts",
    "latency": "one forward pass on a ready blob in memory, after warm-up; no reading, no preprocessing, no softmax",
    "peak": "FP32 matrix product of the library with the best kernel (numpy, PyTorch, onnxruntime), each in a fresh "
            "subprocess; % of peak = model FLOPs x batch / p50 latency / that peak at the same thread count",
    "preprocessing": "read: file to gray array (decode, bit-depth rule); preprocess: edge.preprocess (blur, CLAHE, "
                     "resize, normalize), one image at a time, OpenCV on one thread (as each of medge's pipeline threads "
                     "runs them)",
    "end_to_end": "file on disk to logits: read + preprocess + forward for every file; medge = Model.predict_iter "
                  "with its thread budget; the loops go one image at a time with the runtime's default threads",
    "under_load": "end to end again while background processes each keep one core busy",
    "decisions": "each runtime's logits on the latency inputs against cv2.dnn fp32's: max |logit difference| and the "
                 "decisions that differ at the bundle's operating point (temperature + threshold; argmax without one)",
}

def model_flops(arch: str, chw) -> float | None:
    """FLOPs of one forward pass (2 x multiply-adds of Conv2d and Linear layers), via torch hooks."""
    try:
        import torch

        from medge.train.models import build_model
    except ImportError:
        return None
    net = build_model(arch, chw[0], 2).eval()
    macs = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            macs.append(out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            macs.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        net(torch.zeros(1, *chw))
    for h in handles:
        h.remove()
    return 2.0 * sum(macs)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_dicom_files(folder: str, n: int, size: int) -> list[str]:
    try:
        from medge.train.synth import SynthConfig, make_image, write_dicom
    except ImportError:
        return []
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return []
    cfg = SynthConfig(size=size, seed=9)
    return [write_dicom(os.path.join(folder, f"d{i}.dcm"), np.round(make_image(i, i % 2 == 1, cfg) * 4095).astype(np.uint16))
            for i in range(n)]


def time_preprocessing(files: dict[str, list[str]], cfg, repeats: int) -> dict:
    from medge.edge.execution.budget import opencv_threads
    from medge.edge.inputs.image import load_image
    from medge.edge.numeric import latency_summary
    from medge.edge.preprocess import preprocess

    out = {}
    for kind, paths in files.items():
        if not paths:
            continue
        read_ms, prep_ms = [], []
        with opencv_threads(1):  # the cost on one core: what each of the pipeline's threads pays (decode_bound)
            for i in range(repeats):
                p = paths[i % len(paths)]
                t0 = time.perf_counter()
                img, info = load_image(p)
                t1 = time.perf_counter()
                preprocess(img, cfg, info.display_range)
                t2 = time.perf_counter()
                read_ms.append(1000 * (t1 - t0))
                prep_ms.append(1000 * (t2 - t1))
        out[kind] = {"read": latency_summary(read_ms), "preprocess": latency_summary(prep_ms), "opencv_threads": 1}
    return out


def measure_latency(runners: list, inputs: np.ndarray, cfg: BenchConfig, log=print) -> list[dict]:
    """Forward-pass latencies for every thread count and batch size, each case's runtimes interleaved in blocks;
    the cases with a row flagged busy (``benchmarks.trust``) measured again after the others, at most
    ``cfg.max_repeats`` times."""
    from medge.benchmarks.trust import measure_until_quiet
    from medge.edge.system import usable_cores
    from medge.train.progress import progress

    cases = [(threads, batch) for threads in cfg.threads for batch in cfg.batch_sizes]
    bar = progress(total=len(cases) * len(runners) * cfg.repeats, desc="latency", unit="call")
    done = []

    def measure(case):
        done.append(case)
        if len(done) > len(cases):  # a repeat: the bar grows by one case
            bar.total += len(runners) * cfg.repeats
        return measure_case(runners, inputs, case, cfg, bar.update)

    rows = measure_until_quiet(cases, measure, usable_cores(), cfg.max_repeats, log)
    bar.close()
    return rows


def measure_case(runners: list, inputs: np.ndarray, case: tuple[int, int], cfg: BenchConfig, tick=lambda: None) -> list[dict]:
    """One case, (threads, batch): each runtime warmed up, then all interleaved (``interleave``) while the
    box's load is read; the rows judged by ``benchmarks.trust``'s rule."""
    from medge.benchmarks.trust import CpuReading, judge, others_cores
    from medge.edge.numeric import latency_summary
    from medge.edge.system import usable_cores

    threads, batch = case
    blob = np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])
    for r in runners:
        r.set_threads(threads)
        for _ in range(cfg.warmup):
            r.infer(blob)
    start = CpuReading.now()
    times = interleave(runners, blob, cfg, tick)
    others = others_cores(start, CpuReading.now())
    rows = [{"runtime": r.name, "threads": threads, "batch": batch, **latency_summary(times[r.name], batch),
             "samples_ms": times[r.name]} for r in runners]
    return judge(rows, usable_cores(), others)


def interleave(runners: list, blob: np.ndarray, cfg: BenchConfig, tick=lambda: None) -> dict[str, list[float]]:
    """``cfg.repeats`` timed calls per runtime, ms, in turns of ``cfg.block`` calls (the order rotates).

    The first call of each turn is not timed: thread pools that spin after a call (PyTorch's OpenMP,
    onnxruntime) would otherwise tax whichever runtime runs right after them.
    """
    times = {r.name: [] for r in runners}
    turn = 0
    while min(len(t) for t in times.values()) < cfg.repeats:
        for r in runners[turn % len(runners):] + runners[: turn % len(runners)]:
            r.infer(blob)  # untimed: settles this runtime's threads
            for _ in range(min(cfg.block, cfg.repeats - len(times[r.name]))):
                t0 = time.perf_counter()
                r.infer(blob)
                times[r.name].append(1000 * (time.perf_counter() - t0))
                tick()
        turn += 1
    return times


@dataclass
class Contenders:
    """The runtimes under test; absent ones are None (and said so in the record's notes)."""

    dnn: object
    torch_cpu: object | None = None
    ort: object | None = None
    all: list = field(default_factory=list)  # in the order they are interleaved


def load_runners(bundle: str, checkpoint: str | None, probe: np.ndarray, record: dict, first_calls: int = 0) -> Contenders:
    """Load every available runtime, timing its cold start (load + first inference), its next ``first_calls``
    calls one by one, and the RSS after it."""
    from medge.benchmarks.common import rss_mb
    from medge.benchmarks.runners import DnnRunner, TorchRunner, offered_pairs, optional_ort, runner_name

    loaded = []

    def add(make, name):
        t0 = time.perf_counter()
        r = make()
        if r is None:
            record["notes"].append(f"{name}: not installed, skipped")
            return None
        r.infer(probe)
        record["cold_start_ms"][r.name] = 1000 * (time.perf_counter() - t0)
        record["first_calls_ms"][r.name] = [1000 * _time(lambda: r.infer(probe)) for _ in range(first_calls)]
        record["rss_mb_after_load"][r.name] = rss_mb()
        loaded.append(r)
        return r

    dnn = add(lambda: DnnRunner(bundle), "cv2.dnn")
    torch_cpu = None
    if checkpoint:
        torch_cpu = add(lambda: TorchRunner(checkpoint, "cpu"), "pytorch")
        if _cuda_available():
            add(lambda: TorchRunner(checkpoint, "cuda"), "pytorch-cuda")
    else:
        record["notes"].append("no --checkpoint: PyTorch not measured")
    ort = add(lambda: optional_ort(dnn.model.onnx_bytes), "onnxruntime")
    for engine, variant in offered_pairs(dnn.model):  # medge's other engines and the gated fast variants
        add(lambda e=engine, v=variant: DnnRunner(bundle, engine=e, variant=v), runner_name(engine, variant))
    return Contenders(dnn, torch_cpu, ort, loaded)


def decision_agreement(runners: Contenders, inputs: np.ndarray) -> dict:
    """Each runtime against cv2.dnn fp32 on the same inputs: logit drift and decisions flipped at the operating point
    (a multi-label bundle's: each decided finding's, ``runners.flipped_decisions``)."""
    from medge.benchmarks.runners import flipped_decisions

    dnn = runners.dnn.model
    reference = runners.dnn.infer(inputs).astype(np.float64)
    names = [str(i) for i in range(len(inputs))]
    out = {}
    for r in runners.all:
        logits = np.asarray(r.infer(inputs), np.float64).reshape(len(inputs), -1)
        model = getattr(r, "model", dnn)  # a variant may decide by its own operating point
        out[r.name] = {"inputs": int(len(inputs)), "max_abs_logit": float(np.abs(logits - reference).max()),
                       "flips": len(flipped_decisions(dnn, model, reference, logits, names))}
    return out


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def bench_inputs(data: str | None, pcfg, count: int) -> np.ndarray:
    """The data's val images (up to 16) through the edge preprocessing, else golden-style inputs."""
    from medge.edge.inputs.scanning import scan_inputs
    from medge.edge.preprocess import preprocess_file
    from medge.edge.runtime.bundle import golden_inputs

    if not data:
        return golden_inputs(2, count, pcfg)
    folder = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
    return np.stack([preprocess_file(p, pcfg) for p in scan_inputs([folder]).paths[:16]])


def measure_compute(latency: list[dict], arch: str, chw, cfg: BenchConfig, log=print) -> dict:
    """The model's FLOPs, the box's FP32 peak (``benchmarks.peak``) and the fraction of it each latency row
    reaches (rows are annotated; a row above the peak marks it unreliable instead)."""
    from medge.benchmarks.peak import apply_peak, measure_peak

    flops = model_flops(arch, chw)
    peak = measure_peak(cfg.threads, cfg.peak_size, log=log)
    apply_peak(peak, latency, flops)
    return {"model_gflops": flops / 1e9 if flops else None, "peak": peak}


def measure_files(bundle: str, pcfg, runners: Contenders, cfg: BenchConfig, record: dict, log=print) -> None:
    """Preprocessing (read and edge.preprocess apart) and end to end, on generated large files."""
    from medge.benchmarks import edge_throughput

    with tempfile.TemporaryDirectory() as tmp:
        n = max(cfg.e2e_images, 2)
        log(f"writing {n} PNG and up to 4 DICOM test files")
        pngs = edge_throughput.make_images(tmp, n, cfg.image_size)
        files = {"png8": pngs[0::2], "png16": pngs[1::2], "dicom": write_dicom_files(tmp, min(4, n), cfg.image_size)}
        log("timing read and preprocessing")
        if not files["dicom"]:
            record["notes"].append("pydicom not installed: DICOM not measured")
        record["preprocessing"] = time_preprocessing(files, pcfg, cfg.preprocess_repeats)
        if cfg.e2e_images:
            others = {"onnxruntime": runners.ort} if runners.ort else {}
            if runners.torch_cpu:
                others["pytorch"] = runners.torch_cpu
            e2e = edge_throughput.measure(bundle, pngs[: cfg.e2e_images] + files["dicom"], cfg.e2e_rounds, others=others,
                                          busy_cores=cfg.busy_cores, log=log)
            e2e.pop("env")
            kinds = {"png8": len(pngs[: cfg.e2e_images][0::2]), "png16": len(pngs[: cfg.e2e_images][1::2]),
                     "dicom": len(files["dicom"])}
            e2e["decode_bound"] = decode_bound(record["preprocessing"], kinds, e2e["images_per_s"])
            record["end_to_end"] = e2e


def decode_bound(prep: dict, kinds: dict[str, int], ips: dict) -> dict:
    """The decode-bound ideal of the end-to-end mix: files/s if reading and preprocessing (one file at a time per
    core, every core busy with it, at its one-thread cost from ``time_preprocessing``) were the only work and
    inference free; each pipeline's fraction of it. Older records timed preprocessing on OpenCV's default threads
    (their ``preprocessing`` has no ``opencv_threads``): their ideal is higher than one file per core reaches."""
    n = sum(c for k, c in kinds.items() if k in prep)
    ms = sum(c * (prep[k]["read"]["p50_ms"] + prep[k]["preprocess"]["p50_ms"]) for k, c in kinds.items() if k in prep) / n
    cores = os.cpu_count() or 1
    ideal = cores * 1000.0 / ms
    return {"files": {k: c for k, c in kinds.items() if k in prep}, "read_preprocess_ms_per_file": ms, "cores": cores,
            "one_thread_costs": all(prep[k].get("opencv_threads") == 1 for k in kinds if k in prep),
            "ideal_images_per_s": ideal, "fraction": {name: v / ideal for name, v in ips.items()}}


def variant_gates(manifest: dict) -> dict:
    """The bundle's fast variants as gated at export: variant -> engine -> passed, flips, max |delta logit|, reason."""
    out = {}
    for variant, entry in (manifest.get("variants") or {}).items():
        if variant == "sha256":
            continue
        out[variant] = {e: {"passed": g["passed"], "flips": g["flips"], "images": g.get("decisions", g["images"]),
                            "max_abs_logit": g["logit_drift"]["max"], "reason": g["reason"],
                            "max_abs_probability": g.get("max_abs_probability"),
                            "max_probability_change": g.get("max_probability_change"),
                            "own_operating_point": g.get("operating_point") is not None} for e, g in entry["gates"].items()}
    return out


def run_bench(bundle: str, checkpoint: str | None = None, data: str | None = None, cfg: BenchConfig = BenchConfig(),
              log=print) -> dict:
    """Measure everything described in the module docstring; returns the record."""
    from medge.benchmarks.common import checkpoint_link, environment, link_line, peak_rss_mb, rss_mb
    from medge.benchmarks.trust import box_load
    from medge.edge.preprocess import PreprocessConfig
    from medge.edge.runtime.bundle import golden_inputs, read_manifest

    record: dict = {"benchmark": "medge bench", "config": asdict(cfg), "bundle": str(bundle), "checkpoint": checkpoint,
                    "figures": FIGURES, "load": {"before": box_load()}, "cold_start_ms": {}, "first_calls_ms": {},
                    "rss_mb_after_load": {"start": rss_mb()}, "notes": []}
    manifest = read_manifest(bundle)
    if checkpoint:
        record["checkpoint_link"] = link = checkpoint_link(manifest, checkpoint)
        log(link_line(link, bundle) + ("; latency does not depend on the weights, measuring anyway"
                                       if link["matches"] is False else ""))
        if link["matches"] is False:
            record["notes"].append("the checkpoint is not the one the bundle was exported from")
    pcfg = PreprocessConfig.from_dict(manifest["preprocess"])
    log("cold start: loading each runtime and timing its first calls")
    runners = load_runners(bundle, checkpoint, golden_inputs(1, 1, pcfg), record, cfg.first_calls)
    inputs = bench_inputs(data, pcfg, max(cfg.batch_sizes))
    log(f"latency: {', '.join(r.name for r in runners.all)}; threads {list(cfg.threads)}; "
        f"batches {list(cfg.batch_sizes)}; {cfg.warmup} warm-up + {cfg.repeats} timed calls per case")
    record["latency"] = measure_latency(runners.all, inputs, cfg, log)
    record["decisions"] = decision_agreement(runners, inputs)
    log("compute floor: the model's FLOPs and the FP32 peak (large matrix products, benchmarks.peak)")
    record["compute"] = measure_compute(record["latency"], manifest["model"].get("arch", "resnet18"),
                                        tuple(manifest["model"]["input_shape"][1:]), cfg, log)
    for r in runners.all:  # restore the default thread count for what follows
        r.set_threads(os.cpu_count() or 1)
    log(f"preprocessing and end to end on {cfg.image_size}x{cfg.image_size} files")
    measure_files(bundle, pcfg, runners, cfg, record, log)
    record["peak_rss_mb"] = peak_rss_mb()
    record["env"] = environment()
    record["cv2_engine"] = runners.dnn.model.engine_choice.to_dict()  # which engine "cv2.dnn" is, and why
    record["variants"] = variant_gates(manifest)
    record["arch"], record["input"] = manifest["model"].get("arch"), manifest["model"]["input_shape"][1:]
    record["load"]["after"] = box_load()
    record["headline"] = headline(record)
    log(record["headline"])
    return record


def _fmt(v, digits=2):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def headline(record: dict) -> str:
    """The report's first line: cv2.dnn's p50 against each other runtime's at the smallest batch and the most
    threads, as ratios. Where any latency row is still flagged busy (``benchmarks.trust``): the warning
    instead, and no ratio at all."""
    rows = record["latency"]
    busy = trust.flagged(rows, trust.record_cores(record))
    if busy:
        worst = max(busy, key=lambda r: trust.spread(r)["p50_over_min"])
        return (f"The box was busy during this run: ratios not reported; rerun on a quiet box. {len(busy)} of "
                f"{len(rows)} latency rows flagged busy (e.g. {worst['runtime']}, batch {worst['batch']}, "
                f"{worst['threads']} thread(s), measured {worst.get('attempts', 1)} time(s): "
                f"{trust.reasons_of(worst, trust.record_cores(record))[0]}).")
    threads, batch = max(r["threads"] for r in rows), min(r["batch"] for r in rows)
    p50 = {r["runtime"]: r["p50_ms"] for r in rows if (r["threads"], r["batch"]) == (threads, batch)}
    text = f"Forward pass p50, batch {batch}, {threads} thread(s): "
    ref = p50.pop("cv2.dnn", None)
    if ref is None:
        return text + ", ".join(f"{k} {_fmt(v, 1)} ms" for k, v in p50.items()) + "."
    others = "".join(f"; {k} {_fmt(v, 1)} ms (cv2.dnn / {k} = {_fmt(ref / v)})" for k, v in p50.items())
    return text + f"cv2.dnn {_fmt(ref, 1)} ms{others}" + (" (below 1: cv2.dnn is faster)." if p50 else ".")


def _peak_lines(record: dict) -> list[str]:
    c = record["compute"]
    peak = c.get("peak")
    if peak is None:  # an older record: a 1024x1024 torch.mm, known to be too low
        return ["", "This record's peak (a 1024x1024 matrix product) is too low to compare with and is not shown."]
    lines = ["", f"Model: {_fmt(c['model_gflops'])} GFLOPs per image. FP32 peak ({peak['method']}):", ""]
    for t, p in peak["by_threads"].items():
        paper = p["paper"]
        paper_text = (f"paper {_fmt(paper['gflops'], 0)} ({paper['isa']}, {paper['fp32_lanes']} lanes x 2 x "
                      f"{paper['fma_units_assumed']} FMA units x {_fmt(paper['clock_ghz'])} GHz from {paper['clock_source']})"
                      if paper["gflops"] else "paper peak unknown")
        state = "" if p["reliable"] else " **unreliable: no % of peak given**"
        lines.append(f"- {t} thread(s): {_fmt(p['gflops'], 0)} GFLOP/s ({p['kernel']}); {paper_text}.{state}"
                     + "".join(f" {n}." for n in p["notes"]))
    return lines


def markdown(record: dict) -> str:
    """Render the record as Markdown tables (generated, never typed by hand): the user's figures, no goals."""
    env = record["env"]
    fig = record.get("figures", FIGURES)
    lines = [record.get("headline") or headline(record), "",
             f"Machine: {env['cpu']}, {env['cores']} cores; OpenCV {env['opencv']} "
             f"({env['opencv_build'].get('Parallel framework', '?')}), torch {env.get('torch')}, "
             f"onnxruntime {env.get('onnxruntime')}; git {env.get('git_revision')}.", "",
             f"Forward pass, interleaved ({fig['latency']}):", "",
             "| runtime | threads | batch | p50 ms | p90 ms | p99 ms | mean ms | min ms | images/s | GFLOP/s | % of peak "
             "| p50/min | p90/p50 | busy (tries) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    cores = trust.record_cores(record)
    for r in record["latency"]:
        frac, s = r.get("fraction_of_peak"), trust.spread(r)
        busy = trust.reasons_of(r, cores)
        lines.append(f"| {r['runtime']} | {r['threads']} | {r['batch']} | {_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['mean_ms'])} | {_fmt(r['min_ms'])} | {_fmt(r['images_per_s'], 1)} | "
                     f"{_fmt(r.get('achieved_gflops'), 0)} | {_fmt(100 * frac, 0) if frac else '-'} | "
                     f"{_fmt(s['p50_over_min'])} | {_fmt(s['p90_over_p50'])} | "
                     f"{'**yes**' if busy else 'no'} ({r.get('attempts', 1)}) |")
    lines += _trust_lines(record)
    lines += _peak_lines(record)
    lines += ["", f"Cold start, ms ({fig['cold_start_ms']}): "
              + ", ".join(f"{k} {_fmt(v, 0)}" for k, v in record["cold_start_ms"].items())
              + f"; peak RSS {_fmt(record['peak_rss_mb'], 0)} MB."]
    first = {k: v for k, v in record.get("first_calls_ms", {}).items() if v}
    if first:
        lines += ["", f"First calls after load, ms ({fig['first_calls_ms']}): "
                  + "; ".join(f"{k} " + " ".join(_fmt(x, 0) for x in v) for k, v in first.items()) + "."]
    lines.append("")
    if record.get("preprocessing"):
        lines += [f"Reading and preprocessing ({fig['preprocessing']}):", "",
                  "| input | read p50 ms | preprocess p50 ms |", "| --- | ---: | ---: |"]
        for kind, v in record["preprocessing"].items():
            lines.append(f"| {kind} | {_fmt(v['read']['p50_ms'])} | {_fmt(v['preprocess']['p50_ms'])} |")
        lines.append("")
    lines += _decision_lines(record, fig) + _e2e_lines(record, fig)
    if record.get("notes"):
        lines += ["", "Notes: " + "; ".join(record["notes"]) + "."]
    return "\n".join(lines)


def _load_text(load: dict | None) -> str:
    if not load:
        return "not recorded"
    avg, others = load.get("loadavg"), load.get("others_cores")
    return (f"load average {'/'.join(f'{v:.2f}' for v in avg) if avg else '-'} (1/5/15 min), other processes "
            f"{'-' if others is None else f'{others:.2f}'} core(s) busy over {load.get('window_s')} s")


def _trust_lines(record: dict) -> list[str]:
    """Under the latency table: the busy rule, the cases measured again, and the box's load before and after."""
    rows, load = record["latency"], record.get("load") or {}
    again = sum(r.get("attempts", 1) > 1 for r in rows)
    done = (f"{again} of {len(rows)} rows measured more than once." if all("busy" in r for r in rows) else
            "This record predates the rule: its rows are judged by their spreads alone, and none was measured again.")
    lines = ["", f"Busy rule (benchmarks.trust): a row is flagged busy when p50 > {trust.P50_OVER_MIN:g}x min, "
             f"p90 > {trust.P90_OVER_P50:g}x p50, or other processes kept more than {trust.OTHERS_SLACK:g} core busy "
             f"beyond the cores the row's threads leave idle; a case with a flagged row is measured again, all "
             f"runtimes interleaved, at most {record.get('config', {}).get('max_repeats', trust.MAX_REPEATS)} times, "
             f"and a run that ends with one states no ratio. {done}"]
    if load:
        lines += ["", f"Box load before the run: {_load_text(load.get('before'))}; after: {_load_text(load.get('after'))}."]
    return lines


def _decision_lines(record: dict, fig: dict) -> list[str]:
    """Each runtime's drift and decision flips against cv2.dnn fp32 (records before variants have none)."""
    d = record.get("decisions")
    if not d:
        return []
    lines = [f"Agreement with cv2.dnn fp32 ({fig.get('decisions', '')}):", "",
             "| runtime | inputs | max abs logit difference | decisions flipped |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {v['inputs']} | {v['max_abs_logit']:.2e} | {v['flips']} |" for name, v in d.items()]
    return lines + [""]


def _bound_caveat(bound: dict) -> str:
    """What an older record's ideal overstates (its preprocessing was timed on OpenCV's default threads)."""
    return "" if bound.get("one_thread_costs") else (" (from costs timed on OpenCV's default threads: above what one "
                                                     "file per core reaches)")


def _e2e_lines(record: dict, fig: dict) -> list[str]:
    """The end-to-end table, the figures under load and the thread budget."""
    lines: list[str] = []
    e2e = record.get("end_to_end")
    if e2e:
        lines += [f"End to end, {e2e['images']} files, median of {e2e['rounds']} interleaved rounds ({fig['end_to_end']}):",
                  "", "| pipeline | images/s | ms/image | medge speed-up | max abs logit vs sequential |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, ips in e2e["images_per_s"].items():
            sp = e2e["speedup_of_medge"].get(name)
            lines.append(f"| {name} | {_fmt(ips, 1)} | {_fmt(1000 / ips, 1)} | {_fmt(sp) + 'x' if sp else '-'} | "
                         f"{e2e['max_abs_logit_vs_sequential'][name]:.1e} |")
        load = e2e.get("under_load")
        if load:
            lines += ["", f"With {load['busy_cores']} core(s) busy ({fig.get('under_load', '')}): "
                      + ", ".join(f"{n} {_fmt(v, 1)} images/s" for n, v in load["images_per_s"].items()) + "."]
        budget = e2e.get("thread_budget")
        if budget:
            lines += ["", f"medge's thread budget: {budget['reason']}."]
        auto = e2e.get("auto")
        if auto:
            lines += ["", f"medge (auto) ran the {auto['engine']} engine, {auto['variant']} variant: {auto['reason']}."]
        bound = e2e.get("decode_bound")
        if bound:
            lines += ["", f"Decode-bound ideal of this mix ({', '.join(f'{n} {k}' for k, n in bound['files'].items())}): "
                      f"{_fmt(bound['ideal_images_per_s'], 1)} "
                      f"images/s ({_fmt(bound['read_preprocess_ms_per_file'], 1)} ms of reading and preprocessing per file "
                      f"on each of {bound['cores']} cores, inference free{_bound_caveat(bound)}); reached: "
                      + ", ".join(f"{n} {_fmt(100 * f, 0)}%" for n, f in bound["fraction"].items()) + "."]
    return lines


def variant_summary(records: list[dict]) -> str:
    """The fast-variant table of several bench records (one per architecture): forward passes at 1 and all threads
    against cv2.dnn fp32, each one's decisions flipped, its export gate, and end to end with the decode-bound ideal."""
    out = []
    for rec in records:
        env, lat, gates = rec["env"], rec["latency"], rec.get("variants") or {}
        threads = sorted({r["threads"] for r in lat})
        p50 = {(r["runtime"], r["threads"]): r["p50_ms"] for r in lat if r["batch"] == 1}
        out += [f"**{rec.get('arch')}** ({'x'.join(map(str, rec.get('input', [])))}), {env['cpu']}, {env['cores']} cores, "
                f"OpenCV {env['opencv']}, batch 1, interleaved, medians:", "",
                "| runtime | " + " | ".join(f"{t} thread(s) ms | x cv2.dnn" for t in threads)
                + " | max abs logit vs cv2.dnn | decisions flipped | export gate |",
                "| --- |" + " ---: | ---: |" * len(threads) + " ---: | ---: | --- |"]
        for name in dict.fromkeys(r["runtime"] for r in lat if r["batch"] == 1):
            cells = [f"{_fmt(p50[(name, t)])} | {_fmt(p50[('cv2.dnn', t)] / p50[(name, t)], 1)}x" for t in threads]
            d = rec.get("decisions", {}).get(name, {})
            out.append(f"| {name} | " + " | ".join(cells) + f" | {d.get('max_abs_logit', float('nan')):.2e} | "
                       f"{d.get('flips', '-')}/{d.get('inputs', '-')} | {_gate_cell(name, gates)} |")
        refused = [f"{v} on {e} ({g['flips']}/{g['images']} decisions flipped, max abs logit difference "
                   f"{g['max_abs_logit']:.3g}{_probability_note(g)})" for v, engines in gates.items()
                   for e, g in engines.items() if not g["passed"]]
        if refused:
            out += ["", "Refused by the export gate, so never run: " + "; ".join(refused) + "."]
        out += [""] + _variant_e2e_lines(rec.get("end_to_end")) + [""]
    return "\n".join(out).rstrip()


def _gate_cell(runtime: str, gates: dict) -> str:
    """edge-ENGINE-VARIANT's export gate in a few words ("-" for fp32 runtimes)."""
    for variant, engines in gates.items():
        for engine, g in engines.items():
            if runtime == f"edge-{engine}-{variant}":
                own = ", its own threshold" if g.get("own_operating_point") else ""
                return (f"offered ({g['flips']}/{g['images']} flips{own})" if g["passed"]
                        else f"refused: {g['flips']}/{g['images']} flips")
    return "-"


def _probability_note(g: dict) -> str:
    """A refused pair's probability change, where its gate bounded it and it went past the bound."""
    moved, limit = g.get("max_abs_probability"), g.get("max_probability_change")
    if moved is None or limit is None or moved <= limit:
        return ""
    return f", a calibrated probability moved by {moved:.2f} (at most {limit:g})"


def _variant_e2e_lines(e2e: dict | None) -> list[str]:
    if not e2e:
        return []
    ips, bound = e2e["images_per_s"], e2e.get("decode_bound") or {}
    auto = e2e.get("auto") or {}
    files = ", ".join(f"{n} {k}" for k, n in bound.get("files", {}).items())
    line = f"End to end on {e2e['images']} 2048x2048 files ({files}): "
    if "medge (before)" in ips:
        line += (f"medge as it was (cv2.dnn fp32, PNGs decoded by OpenCV) {_fmt(ips['medge (before)'], 1)} images/s, "
                 f"with PNGs inflated by libdeflate {_fmt(ips.get('medge'), 1)} images/s")
    else:
        line += f"medge on cv2.dnn fp32 {_fmt(ips.get('medge'), 1)} images/s"
    if "medge (auto)" in ips:
        base = ips.get("medge (before)", ips["medge"])
        line += (f", medge (auto: {auto.get('engine')}/{auto.get('variant')}) {_fmt(ips['medge (auto)'], 1)} images/s "
                 f"({_fmt(ips['medge (auto)'] / base)}x)")
    if bound:
        line += (f"; decode-bound ideal {_fmt(bound['ideal_images_per_s'], 1)} images/s{_bound_caveat(bound)}, reached "
                 f"{_fmt(100 * bound['fraction'].get('medge (auto)', bound['fraction']['medge']), 0)}%")
    return [line + "."]


def plot(record: dict, path: str) -> str | None:
    """Latency distributions per runtime and batch size (all-cores rows) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from medge.edge.outputs import open_atomic

    fig = latency_figure(record)
    with open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def latency_figure(record: dict):
    """The plot's figure: one horizontal box per runtime and batch size, on a log axis; each label names the
    row, its median and, where flagged, "busy", so no number is drawn among the boxes."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cores = trust.record_cores(record)
    rows = [r for r in record["latency"] if r["threads"] == max(x["threads"] for x in record["latency"])]
    rows = sorted(rows, key=lambda r: (-r["batch"], -r["p50_ms"]))  # from the bottom up: the slowest first, per batch
    labels = [f"{r['runtime']}, batch {r['batch']}: {r['p50_ms']:.1f} ms" + (" (busy)" if trust.reasons_of(r, cores) else "")
              for r in rows]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(rows)))  # one row per runtime and batch: labels never overlap
    ax.boxplot([r["samples_ms"] for r in rows], orientation="horizontal", widths=0.6, showfliers=False,
               tick_labels=labels)
    ax.set_xscale("log")  # 2 ms variants and 40 ms fp32 on one readable axis
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ms per forward pass (log scale; box: middle half of the calls, line: median)")
    busy = ": the box was busy (rows marked busy)" if trust.flagged(rows, cores) else ""
    ax.set_title(f"latency, {rows[0]['threads']} threads{busy}")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_path(out: str) -> str | None:
    """Where the plot of a record written to ``out`` goes; None without matplotlib (no plot then)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return str(Path(out).with_suffix(".png"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = BenchConfig()
    p = sub.add_parser("bench", help="measure PyTorch, cv2.dnn, onnxruntime and medge's pipeline here (extra: bench)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder")
    p.add_argument("--checkpoint", help="training checkpoint, to measure PyTorch")
    p.add_argument("--data", help="data folder; its val images are the inputs (default: generated)")
    p.add_argument("--out", help="write the JSON record here, and a PNG plot beside it (parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing record and plot")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(d.batch_sizes), help="default: %(default)s")
    p.add_argument("--threads", type=int, nargs="+", default=list(d.threads), help="default: %(default)s")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per case (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls per case (default: %(default)s)")
    p.add_argument("--e2e-images", type=int, default=d.e2e_images, help="files for end to end, 0 = skip (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="side of generated files (default: %(default)s)")
    p.add_argument("--busy-cores", type=int, default=d.busy_cores,
                   help="end to end again with this many cores kept busy by background processes, 0 = skip "
                        "(default: %(default)s)")
    p.add_argument("--smoke", action="store_true",
                   help="few repeats and small files: checks the command, measures nothing useful")
    return p


def run(args: argparse.Namespace) -> int:
    from medge.edge.outputs import atomic_write_text, check_output_file, wrote

    png = None
    if args.out:  # before minutes of measuring
        check_output_file(args.out, args.overwrite, "record")
        png = plot_path(args.out)
        if png:
            if Path(png) == Path(args.out):
                from medge.edge.errors import UsageError

                raise UsageError(f"{args.out}: the record needs another suffix than .png (the plot is written beside it)")
            check_output_file(png, args.overwrite, "plot")
    if args.smoke:
        cfg = BenchConfig(batch_sizes=(1, 2), threads=(1,), warmup=1, repeats=3, preprocess_repeats=2, e2e_images=2,
                          e2e_rounds=1, image_size=256, peak_size=256, busy_cores=args.busy_cores, first_calls=2)
    else:
        cfg = BenchConfig(tuple(args.batch_sizes), tuple(args.threads), args.warmup, args.repeats,
                          e2e_images=args.e2e_images, image_size=args.image_size, busy_cores=args.busy_cores)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    record = run_bench(args.model, args.checkpoint, args.data, cfg, log)
    print(markdown(record))
    if args.out:
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
        wrote(args.out, "record")
        if png:
            wrote(plot(record, png), "plot")
        else:
            log("matplotlib not installed: no plot")
    return 0
