"""Heatmap cost: an explanation's time next to a plain classification of the same image, on the edge.

Usage: python -m medge.benchmarks.heatmap_cost --model bundles/xray --out heatmap_cost.json
       python -m medge.benchmarks.heatmap_cost --make resnet18 mobilenet_v3_small mobilenet_v3_large --size 224

For each bundle, one preprocessed image (the edge's read and preprocessing are not timed: they
are the same with or without a heatmap), in interleaved blocks so that drift on a shared machine
hits both alike: ``Model.infer`` (logits only) and ``Model.explain_blob`` (logits and the heatmap).
CAM costs its single forward pass (with the feature map as a second output) plus the map; occlusion
costs one forward pass per patch position, batched. ``--make`` exports untrained bundles of the
named architectures first (the weights do not change the speed; needs the train extra).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, environment, research_parser, save_record
from medge.edge.explain import OcclusionExplainer
from medge.edge.model import Model
from medge.edge.numeric import latency_summary
from medge.edge.preprocess import preprocess


def _image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.round(255 * (0.5 + 0.3 * np.sin(7 * xx) * np.cos(5 * yy))).astype(np.uint8)


def measure(bundle: str, repeats: int = 10, block: int = 5, warmup: int = 2) -> dict:
    """p50 of infer and explain on one image, interleaved in blocks; the heatmap's overhead and passes."""
    model = Model.load(bundle)
    model.require_heatmaps()
    blob = preprocess(_image(512), model.preprocess_config)[None]
    contenders = {"infer": lambda: model.infer(blob), "explain": lambda: model.explain_blob(blob)}
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    order = list(contenders)
    while len(times["explain"]) < repeats:
        for name in order:
            for _ in range(min(block, repeats - len(times[name]))):
                t0 = time.perf_counter()
                contenders[name]()
                times[name].append(1000 * (time.perf_counter() - t0))
        order.reverse()  # neither always goes first
    stats = {name: latency_summary(ts) for name, ts in times.items()}
    explainer = model.require_heatmaps()
    passes = explainer.passes_per_image if isinstance(explainer, OcclusionExplainer) else 1
    return {"bundle": str(bundle), "arch": model.manifest["model"]["arch"], "method": model.explain_method,
            "input_size": model.chw[1], "forward_passes": passes, "infer": stats["infer"], "explain": stats["explain"],
            "overhead_ms": stats["explain"]["p50_ms"] - stats["infer"]["p50_ms"],
            "ratio": stats["explain"]["p50_ms"] / stats["infer"]["p50_ms"]}


def make_bundles(archs: list[str], size: int, folder: Path, log=print) -> list[str]:
    """Export untrained bundles (random weights) of ``archs`` at ``size`` into ``folder``."""
    from medge.edge.preprocess import PreprocessConfig
    from medge.export.onnx_export import ExportConfig, export_bundle
    from medge.train.checkpoint import save_model_checkpoint
    from medge.train.models import build_model

    out = []
    for arch in archs:
        ckpt = save_model_checkpoint(folder / f"{arch}.pt", build_model(arch, 1, 2).eval(), arch, ["disease", "normal"],
                                     PreprocessConfig(size=size), {}, epoch=0)
        export_bundle(str(ckpt), str(folder / arch), cfg=ExportConfig(max_images=4), log=lambda m: None)
        log(f"exported {arch} at {size} px")
        out.append(str(folder / arch))
    return out


def markdown(rec: dict) -> str:
    rows = ["| model | heatmap | forward passes | classify p50 ms | classify + heatmap p50 ms | heatmap adds |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rec["bundles"]:
        rows.append(f"| {r['arch']} at {r['input_size']} px | {r['method']} | {r['forward_passes']} | "
                    f"{r['infer']['p50_ms']:.1f} | {r['explain']['p50_ms']:.1f} | "
                    f"{r['overhead_ms']:+.1f} ms ({r['ratio']:.1f}x) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--model", nargs="*", default=[], metavar="BUNDLE", help="bundles with heatmaps")
    p.add_argument("--make", nargs="*", default=[], metavar="ARCH", help="export untrained bundles of these first")
    p.add_argument("--size", type=int, default=224, help="input size of the --make bundles (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per contender (default: %(default)s)")
    p.add_argument("--threads", type=int, help="cv2.setNumThreads (default: OpenCV's choice)")
    add_out_arguments(p)
    a = p.parse_args(argv)
    status = check_outputs("heatmap_cost", a.overwrite, {"record": a.out})
    if status:
        return status
    if a.threads is not None:
        cv2.setNumThreads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = list(a.model) + (make_bundles(a.make, a.size, Path(tmp)) if a.make else [])
        if not bundles:
            p.error("give --model BUNDLE... and/or --make ARCH...")
        rec = {"benchmark": "medge heatmap cost", "repeats": a.repeats, "bundles": [measure(b, a.repeats) for b in bundles],
               "env": environment()}
    print(markdown(rec))
    save_record(rec, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
