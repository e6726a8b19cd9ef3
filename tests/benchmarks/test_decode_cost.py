"""The decode-cost benchmark: its stages are the edge's, its contenders give the edge's tensor, and its record renders."""
import json

import numpy as np
import pytest

from medge.benchmarks import decode_cost
from medge.edge.preprocess import PreprocessConfig


def test_stages_reproduce_the_edge_tensor(tmp_path):
    files = decode_cost.make_files(tmp_path, 96)
    cfg = PreprocessConfig(size=32)
    clahe = decode_cost.cv2.createCLAHE(clipLimit=cfg.clahe_clip_limit, tileGridSize=(cfg.clahe_tile_grid,) * 2)
    for kind, path in files.items():
        for name, (decode, _) in decode_cost.contenders(kind).items():
            stages, tensor = decode_cost.run_stages(path, cfg, decode, clahe)
            assert list(stages) == list(decode_cost.STAGES)
            np.testing.assert_array_equal(tensor, decode_cost._edge_tensor(path, cfg), err_msg=f"{kind} {name}")


def test_record_and_table(tmp_path, capsys):
    pytest.importorskip("pydicom", reason="the dicom extra is not installed")
    out = tmp_path / "r.json"
    assert decode_cost.main(["--size", "128", "--rounds", "2", "--files", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["stages"]) == {"png16", "png8", "dicom"}
    assert set(rec["stages"]["dicom"]) == {"edge", "edge, 1 thread", "pydicom pixel_array"}
    from medge.edge.inputs import png
    if png.available():  # before and after: OpenCV's own PNG decoding beside the edge's
        assert "OpenCV's PNG decoder" in rec["stages"]["png16"] and rec["inflate"]["png16"]["libdeflate_p50_ms"] > 0
    for by_name in rec["stages"].values():
        for r in by_name.values():
            assert r["identical_to_edge"] is True and r["total"]["n"] == 2
    assert set(rec["inflate"]) == {"png16", "png8"} and rec["env"]["cpu"]
    assert all(r["files_per_s_2_threads"] > 0 for r in rec["ideal"].values())
    table = capsys.readouterr().out
    assert "**dicom**" in table and "| clahe |" in table and "NO" not in table


def test_idat_is_the_png_pixel_stream(tmp_path):
    import zlib

    files = decode_cost.make_files(tmp_path, 40)
    raw = zlib.decompress(decode_cost._idat(decode_cost.read_bytes(files["png8"])))
    assert len(raw) == 40 * (40 + 1)  # one filter byte a row


def test_from_record_fills_the_readme_section(tmp_path, capsys):
    out, readme = tmp_path / "r.json", tmp_path / "README.md"
    assert decode_cost.main(["--size", "64", "--rounds", "1", "--files", "2", "--out", str(out)]) == 0
    readme.write_text("before\\n<!-- decode-cost:start -->\\nold\\n<!-- decode-cost:end -->\\nafter\\n")
    assert decode_cost.main(["--from", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| total |" in text and text.startswith("before") and text.endswith("after\\n")
    assert f"--from {out}" in text
