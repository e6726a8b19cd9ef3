"""The FP32 peak of this box as the runtimes see it, and the check that makes a "% of peak" honest.

Usage: python -m medge.benchmarks.peak --threads 1 2 [--size 4096] [--out peak.json]

Measured peak: a large single-precision matrix product (``--size`` square, 2 n^3
FLOPs) with each library's own best kernel: numpy's BLAS, PyTorch's (MKL or
oneDNN), and onnxruntime's MLAS (a one-node MatMul graph; needs onnx to build it).
Each library runs in a fresh subprocess per thread count, its thread pools sized
by environment before import (a pool sized after import, or one left spinning by
the previous contender, measures the wrong thing). Warm-up calls, then the best
of ``repeats``; the peak is the best library. The product must be large enough
to fill the cores: with a smaller product (1024x1024) a runtime's resnet18 can "run"
at over 100 % of the peak, and 2048x2048 still measures below 4096x4096 on 2
threads, so the peak is taken from 4096x4096 products.

Paper peak: FP32 lanes of the widest FMA unit (8 with AVX2+FMA, 16 with AVX-512;
4 on AMD Zen 1, whose FMA units are 128 bits wide) x 2 FLOPs per FMA x 2 FMA units
per core (an assumption: true of most recent x86 server cores, not of all) x the
maximum clock (cpufreq, else /proc/cpuinfo's "cpu MHz", the current clock of a VM)
x threads. Stated with its
sources; it is a sanity check of the measured peak, not the reference.

The check: a runtime whose achieved GFLOP/s exceeds the measured peak at its
thread count proves the peak wrong for that count; ``apply_peak`` then marks it
unreliable and prints no ratio rather than a figure above 100 %.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

KERNELS = ("numpy", "torch", "onnxruntime")
CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"  # kHz, where the kernel exposes it
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _best_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _matmul(kernel: str, n: int, threads: int):
    """A zero-argument callable computing one n x n FP32 product with ``kernel``, or None when it is absent."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    if kernel == "numpy":
        return lambda: a @ b
    if kernel == "torch":
        try:
            import torch
        except ImportError:
            return None
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: torch.mm(ta, tb)
    if kernel == "onnxruntime":
        try:
            import onnxruntime as ort
            from onnx import TensorProto, helper
        except ImportError:
            return None
        shape = [n, n]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in ("a", "b")],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
        model.ir_version = 7
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"a": a, "b": b})
    raise ValueError(f"unknown kernel {kernel!r}")


def probe(kernel: str, n: int, threads: int, warmup: int = 2, repeats: int = 5) -> dict:
    """GFLOP/s of one kernel in this process (run it in a fresh one: see ``measure_kernel``)."""
    fn = _matmul(kernel, n, threads)
    if fn is None:
        return {"kernel": kernel, "gflops": None, "note": "not installed"}
    return {"kernel": kernel, "gflops": 2.0 * n**3 / _best_seconds(fn, warmup, repeats) / 1e9}


def measure_kernel(kernel: str, n: int, threads: int, repeats: int = 5, timeout_s: float = 300) -> dict:
    """``probe`` in a fresh subprocess whose thread pools are sized to ``threads`` before any import."""
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    cmd = [sys.executable, "-m", "medge.benchmarks.peak", "--probe", kernel, "--size", str(n), "--threads", str(threads),
           "--repeats", str(repeats)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"kernel": kernel, "gflops": None, "note": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"kernel": kernel, "gflops": None, "note": f"failed: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _max_clock_ghz(cpuinfo: str, cpufreq: str) -> tuple[float | None, str]:
    try:
        with open(cpufreq, encoding="ascii") as f:
            return int(f.read()) / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)]
    return (max(mhz) / 1000, "/proc/cpuinfo cpu MHz (current clock: boost may be higher)") if mhz else (None, "unknown")


def _is_zen1(cpuinfo: str) -> bool:
    """AMD family 17h models below 30h (Zen, Zen+: EPYC 7001, Ryzen 1000/2000) split every 256-bit AVX2
    instruction over two 128-bit halves, so their FMA units hold 4 FP32 lanes, not 8."""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, re.M)
    model = re.search(r"^model\s*:\s*(\d+)", cpuinfo, re.M)
    return bool(vendor and family and model and vendor.group(1) == "AuthenticAMD" and int(family.group(1)) == 0x17
                and int(model.group(1)) < 0x30)


def paper_peak(threads: int, cpuinfo: str | None = None, cpufreq: str = CPUFREQ_MAX) -> dict:
    """The FP32 peak on paper for ``threads`` cores, with what it assumes (see the module docstring)."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    found = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set()
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2+FMA") if {"avx2", "fma"} <= flags else (None, "unknown")
    if lanes == 8 and _is_zen1(cpuinfo):
        lanes, isa = 4, "AVX2+FMA on Zen 1 (128-bit FMA units: 4 FP32 lanes each)"
    ghz, clock_source = _max_clock_ghz(cpuinfo, cpufreq)
    fma_units = 2
    gflops = lanes * 2 * fma_units * ghz * threads if lanes and ghz else None
    return {"gflops": gflops, "isa": isa, "fp32_lanes": lanes, "fma_units_assumed": fma_units, "clock_ghz": ghz,
            "clock_source": clock_source, "threads": threads}


def measure_peak(threads: tuple[int, ...], n: int = 4096, repeats: int = 5, kernels=KERNELS, log=lambda msg: None) -> dict:
    """Measured and paper peak per thread count: ``{"size": n, "by_threads": {"2": {...}}}``."""
    out = {"method": f"best of {repeats} FP32 {n}x{n} matrix products per library, each in a fresh subprocess",
           "size": n, "by_threads": {}}
    for t in threads:
        runs = []
        for k in kernels:
            log(f"peak: {k} sgemm {n}x{n}, {t} thread(s)")
            runs.append(measure_kernel(k, n, t, repeats))
        ok = [r for r in runs if r.get("gflops")]
        best = max(ok, key=lambda r: r["gflops"]) if ok else None
        paper = paper_peak(t)
        notes = []
        fewer = [v for k, v in out["by_threads"].items() if v["gflops"] and best and v["gflops"] > best["gflops"]]
        if fewer:
            notes.append("lower than with fewer threads: other work held cores during the measurement")
        if best and paper["gflops"] and best["gflops"] > 1.1 * paper["gflops"]:
            notes.append(f"measured {best['gflops']:.0f} GFLOP/s is above the paper peak {paper['gflops']:.0f}: "
                         "the paper figure's clock or lanes are wrong for this CPU")
        out["by_threads"][str(t)] = {"gflops": best["gflops"] if best else None, "kernel": best["kernel"] if best else None,
                                     "kernels": runs, "paper": paper, "reliable": best is not None, "notes": notes}
    return out


def apply_peak(peak: dict, rows: list[dict], flops: float | None) -> None:
    """Annotate latency rows with achieved GFLOP/s and their fraction of the peak at their thread count.

    A row above the peak proves the peak wrong at that count: the count is marked unreliable (with the
    row that showed it) and no row at it gets a fraction.
    """
    if not flops:
        return
    for row in rows:
        row["achieved_gflops"] = flops * row["batch"] / (row["p50_ms"] / 1000) / 1e9
    for t, p in peak["by_threads"].items():
        at_t = [r for r in rows if str(r["threads"]) == t]
        over = [r for r in at_t if p["gflops"] and r["achieved_gflops"] > p["gflops"]]
        if over:
            worst = max(over, key=lambda r: r["achieved_gflops"])
            p["reliable"] = False
            p["notes"].append(f"{worst['runtime']} batch {worst['batch']} reached {worst['achieved_gflops']:.0f} GFLOP/s, "
                              f"above the measured peak {p['gflops']:.0f}: the peak is unreliable, no % of peak is given")
        for r in at_t:
            r["fraction_of_peak"] = r["achieved_gflops"] / p["gflops"] if p["reliable"] and p["gflops"] else None


def main(argv=None) -> int:
    from medge.benchmarks.common import add_out_arguments, check_outputs, emit, research_parser

    p = research_parser(__doc__)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--size", type=int, default=4096, help="side of the square matrices (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--probe", choices=KERNELS, help=argparse.SUPPRESS)  # one kernel in this process (measure_kernel)
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.probe, a.size, a.threads[0], repeats=a.repeats)))
        return 0
    status = check_outputs("peak", a.overwrite, {"record": a.out})
    if status:
        return status
    rec = measure_peak(tuple(a.threads), a.size, a.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    emit(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
