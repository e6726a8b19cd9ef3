"""Decode cost: where each millisecond of reading and preprocessing one image goes on the edge.

Usage: python -m medge.benchmarks.decode_cost --out decode_cost.json
       python -m medge.benchmarks.decode_cost --size 1024 --rounds 5 --files 8
       python -m medge.benchmarks.decode_cost --from decode_cost.json [--readme benchmarks/results/README.md]

Writes one synthetic radiograph (``medge.train.synth``) of --size x --size pixels as a 16-bit PNG
(12-bit values), an 8-bit PNG and an uncompressed DICOM (12 bits stored, Explicit VR Little Endian;
needs the dicom extra), and times each stage of the edge's path for one file
(``medge.edge.execution.run.prepare``): read (the file's bytes), decode (``decode_image``: header,
cv2.imdecode or pydicom, to gray), to_uint8 (the 8-bit rule), blur, CLAHE, resize, normalize and
stats (the input checks' ``image_stats``), and their sum. The stages are the edge's own calls, and
each run's tensor is checked to equal ``preprocess_stages`` on ``load_image`` bit for bit.

Contenders, interleaved over --rounds (the order rotates; median and p90): ``edge`` (as it is),
``edge, 1 thread`` (OpenCV limited to one thread) and, for DICOM, ``pydicom pixel_array`` (the
pixels decoded by pydicom as medge did before the view, ``decode_dicom(pixel_view=False)``). For
the PNGs the record also times zlib's inflate of the file's IDAT stream alone: the floor that no
OpenCV flag can go below. The decode-bound ideal is the files/s of read + decode + preprocess +
stats alone, --files files on 1 and on 2 threads in parallel (OpenCV releases the GIL): the end
to end figure of a model can be stated as a fraction of it.
"""
from __future__ import annotations

import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, environment, opencv_png, research_parser, save_record
from medge.edge.inputs import png
from medge.edge.inputs.dicom import decode_dicom
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import decode_image, load_image, read_bytes, to_gray, write_image
from medge.edge.inputs.profile import image_stats
from medge.edge.numeric import latency_summary
from medge.edge.preprocess import INTERPOLATIONS, PreprocessConfig, normalize, preprocess_stages, to_uint8

STAGES = ("read", "decode", "to_uint8", "blur", "clahe", "resize", "normalize", "stats")


def make_files(folder: Path, size: int) -> dict[str, str]:
    """The one synthetic radiograph as png16, png8 and (with pydicom) dicom files in ``folder``."""
    from medge.train.synth import SynthConfig, make_image, write_dicom

    image = make_image(0, True, SynthConfig(size=size, seed=9))
    twelve_bit = np.round(image * 4095).astype(np.uint16)
    files = {"png16": str(folder / "a16.png"), "png8": str(folder / "a8.png")}
    write_image(files["png16"], twelve_bit)
    write_image(files["png8"], np.round(image * 255).astype(np.uint8))
    try:
        files["dicom"] = write_dicom(folder / "a.dcm", twelve_bit)
    except ImportError:
        pass
    return files


def _decode_dicom_by_pydicom(data: bytes, path: str):
    return decode_dicom(data, path, DEFAULT_MAX_PIXELS, pixel_view=False)


def _decode_png_by_opencv(data: bytes, path: str):
    with opencv_png():
        return decode_image(data, path)


def contenders(kind: str) -> dict[str, tuple]:
    """name -> (decode function, OpenCV threads or None for OpenCV's choice)."""
    out = {"edge": (decode_image, None), "edge, 1 thread": (decode_image, 1)}
    if kind.startswith("png") and png.available():
        out["OpenCV's PNG decoder"] = (_decode_png_by_opencv, None)
    if kind == "dicom":
        out["pydicom pixel_array"] = (_decode_dicom_by_pydicom, None)
    return out


def run_stages(path: str, cfg: PreprocessConfig, decode, clahe) -> tuple[dict[str, float], np.ndarray]:
    """One file through the edge's stages, each timed (ms); and the tensor."""
    marks = [time.perf_counter()]
    data = read_bytes(path)
    marks.append(time.perf_counter())
    image, info = decode(data, path)
    marks.append(time.perf_counter())
    gray = to_uint8(to_gray(image), cfg, info.display_range)
    marks.append(time.perf_counter())
    k = cfg.blur_ksize
    blurred = cv2.GaussianBlur(gray, (k, k), cfg.blur_sigma) if k > 1 else gray
    marks.append(time.perf_counter())
    equalized = clahe.apply(blurred)
    marks.append(time.perf_counter())
    resized = cv2.resize(equalized, (cfg.size, cfg.size), interpolation=INTERPOLATIONS[cfg.interpolation])
    marks.append(time.perf_counter())
    tensor = normalize(resized, cfg)
    marks.append(time.perf_counter())
    image_stats(gray, resized)
    marks.append(time.perf_counter())
    return {s: 1000 * (b - a) for s, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}, tensor


def _edge_tensor(path: str, cfg: PreprocessConfig) -> np.ndarray:
    image, info = load_image(path)
    return preprocess_stages(image, cfg, info.display_range)["tensor"]


def measure_stages(files: dict[str, str], cfg: PreprocessConfig, rounds: int, warmup: int = 2) -> dict:
    """Per format and contender: each stage's and the total's summary, interleaved over rounds."""
    clahe = cv2.createCLAHE(clipLimit=float(cfg.clahe_clip_limit), tileGridSize=(cfg.clahe_tile_grid,) * 2)
    default_threads = cv2.getNumThreads()
    plan = [(kind, name, fn, threads) for kind in files for name, (fn, threads) in contenders(kind).items()]
    times = {(kind, name): {s: [] for s in (*STAGES, "total")} for kind, name, _, _ in plan}
    identical = {}
    for r in range(warmup + rounds):
        for kind, name, fn, threads in plan[r % len(plan):] + plan[:r % len(plan)]:  # the order rotates
            cv2.setNumThreads(default_threads if threads is None else threads)
            stages, tensor = run_stages(files[kind], cfg, fn, clahe)
            cv2.setNumThreads(default_threads)
            if r == 0:
                identical[(kind, name)] = bool(np.array_equal(tensor, _edge_tensor(files[kind], cfg)))
            if r >= warmup:
                for s, ms in stages.items():
                    times[(kind, name)][s].append(ms)
                times[(kind, name)]["total"].append(sum(stages.values()))
    out = {}
    for (kind, name), by_stage in times.items():
        out.setdefault(kind, {})[name] = {"identical_to_edge": identical[(kind, name)],
                                          **{s: latency_summary(v) for s, v in by_stage.items()}}
    return out


def _idat(data: bytes) -> bytes:
    """The concatenated IDAT chunks of a PNG: its one zlib stream."""
    return png.idat_stream(data, png.walk(data))


def inflate_floor(path: str, repeats: int) -> dict:
    """zlib's inflate of a PNG's pixel stream alone (Python's zlib), the bulk of its decode; and libdeflate's
    (``libdeflate_p50_ms``) where the ``png`` extra is installed."""
    stream = _idat(read_bytes(path))
    size = len(zlib.decompress(stream))
    inflaters = {"zlib": zlib.decompress}
    if png.available():
        import deflate

        inflaters["libdeflate"] = lambda s: deflate.zlib_decompress(s, size)
    times = {name: [] for name in inflaters}
    for _ in range(repeats):
        for name, inflate in inflaters.items():
            t0 = time.perf_counter()
            inflate(stream)
            times[name].append(1000 * (time.perf_counter() - t0))
    out = {"zlib": zlib.ZLIB_RUNTIME_VERSION, "compressed_bytes": len(stream), **latency_summary(times["zlib"])}
    if "libdeflate" in times:
        out["libdeflate_p50_ms"] = latency_summary(times["libdeflate"])["p50_ms"]
    return out


def _prepare(path: str, cfg: PreprocessConfig) -> None:
    image, info = load_image(path)
    stages = preprocess_stages(image, cfg, info.display_range)
    image_stats(stages["gray"], stages["resized"])


def decode_bound(path: str, cfg: PreprocessConfig, files: int, workers: int) -> float:
    """Files/s of read, decode, preprocess and stats alone: ``files`` reads of ``path`` on ``workers`` threads."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: _prepare(path, cfg), range(workers)))  # warm each thread
        t0 = time.perf_counter()
        list(pool.map(lambda _: _prepare(path, cfg), range(files)))
        return files / (time.perf_counter() - t0)


def measure_ideal(files: dict[str, str], cfg: PreprocessConfig, n: int, rounds: int) -> dict:
    """Median files/s on 1 and 2 threads per format, interleaved over rounds; and the 2-thread speed-up."""
    rates = {kind: {1: [], 2: []} for kind in files}
    for _ in range(rounds):
        for kind, path in files.items():
            for workers in (1, 2):
                rates[kind][workers].append(decode_bound(path, cfg, n, workers))
    return {kind: {"files_per_s_1_thread": float(np.median(r[1])), "files_per_s_2_threads": float(np.median(r[2])),
                   "speedup": float(np.median(r[2]) / np.median(r[1]))} for kind, r in rates.items()}


def _inflate_note(floor: dict) -> str:
    note = f" (zlib {floor['zlib']} inflate of its pixel stream alone: {floor['p50_ms']:.1f} ms"
    if "libdeflate_p50_ms" in floor:
        note += f"; libdeflate's: {floor['libdeflate_p50_ms']:.1f} ms"
    return note + ")"


def markdown(rec: dict) -> str:
    env = rec["env"]
    lines = [f"Machine: {env.get('cpu')}, {env.get('cores')} cores, OpenCV {env.get('opencv')} "
             f"({env.get('opencv_threads')} threads by default); {rec['size']}x{rec['size']} pixels, "
             f"{rec['rounds']} interleaved rounds; ms per file, p50 (p90)."]
    for kind, by_name in rec["stages"].items():
        names = list(by_name)
        lines += ["", f"**{kind}**" + (_inflate_note(rec["inflate"][kind]) if kind in rec["inflate"] else ""),
                  "", "| stage | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        for stage in (*STAGES, "total"):
            cells = [f"{by_name[n][stage]['p50_ms']:.2f} ({by_name[n][stage]['p90_ms']:.2f})" for n in names]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("| tensor equals the edge's | " + " | ".join("yes" if by_name[n]["identical_to_edge"] else "NO"
                                                                for n in names) + " |")
    lines += ["", f"Decode-bound ideal (read + decode + preprocess + stats alone, {rec['ideal_files']} files, "
                  "median of rounds):", "", "| input | files/s, 1 thread | files/s, 2 threads | speed-up |",
              "| --- | ---: | ---: | ---: |"]
    for kind, r in rec["ideal"].items():
        lines.append(f"| {kind} | {r['files_per_s_1_thread']:.1f} | {r['files_per_s_2_threads']:.1f} | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


def measure(size: int, rounds: int, files_per_run: int) -> dict:
    """The whole record: stages, inflate floors and the decode-bound ideal, on files written to a temporary folder."""
    cfg = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), size)
        return {"benchmark": "medge decode cost", "size": size, "rounds": rounds, "ideal_files": files_per_run,
                "preprocess": cfg.to_dict(), "stages": measure_stages(files, cfg, rounds),
                "inflate": {k: inflate_floor(path, rounds) for k, path in files.items() if k.startswith("png")},
                "ideal": measure_ideal(files, cfg, files_per_run, max(1, rounds // 5)), "env": environment()}


def main(argv=None) -> int:
    import json

    from medge.benchmarks.report import replace_section

    p = research_parser(__doc__)
    p.add_argument("--size", type=int, default=2048, help="image side in pixels (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds of every contender (default: %(default)s)")
    p.add_argument("--files", type=int, default=16, help="files per decode-bound run (default: %(default)s)")
    p.add_argument("--from", dest="from_record", help="print the table of a record instead of measuring")
    p.add_argument("--readme", help="with --from: replace the decode-cost section of this README with the table")
    add_out_arguments(p)
    a = p.parse_args(argv)
    if a.from_record:
        rec = json.loads(Path(a.from_record).read_text(encoding="utf-8"))
        print(markdown(rec))
        if a.readme:
            replace_section(Path(a.readme), "decode-cost", markdown(rec),
                            f"python -m medge.benchmarks.decode_cost --from {a.from_record} --readme {a.readme}")
        return 0
    status = check_outputs("decode_cost", a.overwrite, {"record": a.out})
    if status:
        return status
    rec = measure(a.size, a.rounds, a.files)
    print(markdown(rec))
    save_record(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
