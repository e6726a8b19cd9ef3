import pytest

from medge.benchmarks.peak import apply_peak, measure_kernel, paper_peak, probe

CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse avx avx2 fma\nprocessor\t: 1\ncpu MHz\t\t: 3000.000\n"


def _peak(gflops_by_threads: dict) -> dict:
    return {"by_threads": {str(t): {"gflops": g, "reliable": True, "notes": []} for t, g in gflops_by_threads.items()}}


def test_paper_peak_is_lanes_times_fma_times_clock_times_threads(tmp_path):
    p = paper_peak(2, CPUINFO, cpufreq=str(tmp_path / "absent"))
    assert (p["isa"], p["fp32_lanes"], p["clock_ghz"]) == ("AVX2+FMA", 8, 3.0)  # the highest clock listed
    assert p["gflops"] == pytest.approx(8 * 2 * 2 * 3.0 * 2)
    (tmp_path / "max").write_text("3500000\n")  # cpufreq's maximum (kHz) wins over the current clocks
    assert paper_peak(1, CPUINFO.replace("avx2", "avx512f avx2"), cpufreq=str(tmp_path / "max"))["gflops"] == \
        pytest.approx(16 * 2 * 2 * 3.5)
    assert paper_peak(1, "flags : sse sse2\n", cpufreq=str(tmp_path / "absent"))["gflops"] is None


@pytest.mark.parametrize("family, model, lanes", [(23, 1, 4), (23, 8, 4), (23, 49, 8), (25, 1, 8)])
def test_zen1_fma_units_are_128_bits_wide(tmp_path, family, model, lanes):
    amd = f"vendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n" + CPUINFO
    p = paper_peak(1, amd, cpufreq=str(tmp_path / "absent"))
    assert p["fp32_lanes"] == lanes and p["gflops"] == pytest.approx(lanes * 2 * 2 * 3.0)
    intel = amd.replace("AuthenticAMD", "GenuineIntel")  # Intel family 6 models are not AMD's
    assert paper_peak(1, intel, cpufreq=str(tmp_path / "absent"))["fp32_lanes"] == 8


def test_a_runtime_above_the_peak_marks_it_unreliable_instead_of_a_ratio():
    rows = [{"runtime": "onnxruntime", "threads": 2, "batch": 1, "p50_ms": 10.0},  # 1 GFLOP / 10 ms = 100 GFLOP/s
            {"runtime": "cv2.dnn", "threads": 2, "batch": 8, "p50_ms": 400.0},  # 20 GFLOP/s
            {"runtime": "cv2.dnn", "threads": 1, "batch": 1, "p50_ms": 20.0}]  # 50 GFLOP/s
    peak = _peak({1: 80.0, 2: 90.0})
    apply_peak(peak, rows, flops=1e9)
    assert [r["achieved_gflops"] for r in rows] == pytest.approx([100.0, 20.0, 50.0])
    two, one = peak["by_threads"]["2"], peak["by_threads"]["1"]
    assert not two["reliable"] and "onnxruntime batch 1 reached 100 GFLOP/s" in two["notes"][0]
    assert rows[0]["fraction_of_peak"] is None and rows[1]["fraction_of_peak"] is None  # no ratio at that count
    assert one["reliable"] and rows[2]["fraction_of_peak"] == pytest.approx(50 / 80)


def test_sgemm_probe_in_this_process_and_in_a_fresh_one():
    assert probe("numpy", 64, 1, warmup=1, repeats=2)["gflops"] > 0
    fresh = measure_kernel("numpy", 64, 1, repeats=2)
    assert fresh["kernel"] == "numpy" and fresh["gflops"] > 0
