"""Report charts drawn with numpy + cv2: where the curves land, what the text does, how the PNG is written."""
import cv2
import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.golive import plots

FRAME = plots.FRAME
BLUE, GREY, RED, ORANGE = plots.BLUE, plots.GREY, plots.RED, plots.ORANGE


def near(img, pixel, colour, radius=2, tol=40) -> bool:
    """Whether a pixel within ``radius`` of ``pixel`` (column, row) has ``colour``, channel by channel within ``tol``."""
    col, row = pixel
    patch = img[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1].astype(int)
    return bool((np.abs(patch - np.array(colour)).max(axis=2) <= tol).any())


def roc(fpr, tpr, label="site"):
    return {"fpr": fpr, "tpr": tpr, "label": label}


def calibrated_bins(fraction=lambda m: m):
    bins = []
    for i in range(10):
        m = i / 10 + 0.05
        bins.append({"low": i / 10, "high": (i + 1) / 10, "count": 10 * (i + 1), "mean_score": m,
                     "fraction_positive": fraction(m)})
    return bins


ALONG = np.linspace(0.15, 0.85, 8)


@pytest.mark.parametrize("draw", [
    lambda: plots.roc_plot([roc([0, 0.2, 1], [0, 0.8, 1]), roc([], [], "empty")], "ROC", {"fpr": 0.2, "tpr": 0.8, "label": "t"}),
    lambda: plots.roc_plot([], "no curves"),
    lambda: plots.reliability_plot(calibrated_bins(), "calibration", ece=0.01),
    lambda: plots.reliability_plot([{"low": 0, "high": 1, "count": 0, "mean_score": None, "fraction_positive": None}], "empty"),
    lambda: plots.histogram_plot([{"values": [0.1, 0.5], "label": "a"}, {"values": [], "label": "b"}], "h", "score"),
    lambda: plots.histogram_plot([], "nothing", "score", bins=5, value_range=(-3.0, 3.0)),
])
def test_charts_are_bgr_uint8_images_on_white(draw):
    img = draw()
    assert img.shape == (plots.HEIGHT, plots.WIDTH, 3) and img.dtype == np.uint8
    assert (img[0] == 255).all() and (img[:, -1] == 255).all()  # white background, nothing drawn off the edge
    assert (img < 128).any()  # axes and text are drawn


def test_frame_maps_the_unit_square_bottom_left_to_top_right_and_clips():
    assert FRAME.to_pixel(0, 0) == (FRAME.left, FRAME.bottom) and FRAME.to_pixel(1, 1) == (FRAME.right, FRAME.top)
    assert plots.Frame(left=10, top=20, right=110, bottom=220).to_pixel(0.5, 0.25) == (60, 170)
    assert FRAME.to_pixel(2.0, -1.0) == (FRAME.right, FRAME.bottom)
    assert FRAME.with_ranges((-1.0, 1.0), (0.0, 0.5)).to_pixel(0.0, 0.5) == ((FRAME.left + FRAME.right) // 2, FRAME.top)
    assert FRAME.left > 0 and FRAME.top > 0 and FRAME.right < plots.WIDTH and FRAME.bottom < plots.LEGEND_TOP < plots.HEIGHT


def test_perfect_roc_runs_up_the_left_edge_and_along_the_top_not_the_diagonal():
    img = plots.roc_plot([roc([0, 0, 1], [0, 1, 1])], "perfect")
    assert all(near(img, FRAME.to_pixel(0, t), BLUE) for t in ALONG)
    assert all(near(img, FRAME.to_pixel(t, 1), BLUE) for t in ALONG)
    assert not any(near(img, FRAME.to_pixel(t, t), BLUE, radius=4) for t in (0.3, 0.5, 0.7))


def test_chance_roc_runs_along_the_diagonal_not_the_edges():
    img = plots.roc_plot([roc([0, 1], [0, 1])], "chance")
    assert all(near(img, FRAME.to_pixel(t, t), BLUE) for t in ALONG)
    assert not any(near(img, FRAME.to_pixel(0, t), BLUE, radius=4) for t in (0.3, 0.5, 0.7))


def test_second_roc_curve_is_grey_and_dashed_under_the_first():
    img = plots.roc_plot([roc([0, 0, 1], [0, 1, 1]), roc([0, 1], [0, 1], "bundle validation")], "two")
    samples = np.linspace(0.1, 0.9, 41)
    grey = [near(img, FRAME.to_pixel(t, t), GREY, radius=1, tol=25) for t in samples]
    assert 0.3 < np.mean(grey) < 0.95  # dashes: mostly drawn, with gaps
    same = plots.roc_plot([roc([0, 1], [0, 1]), roc([0, 1], [0, 1], "bundle validation")], "same path")
    assert all(near(same, FRAME.to_pixel(t, t), BLUE, radius=0) for t in samples)  # the first curve is on top


def test_operating_point_marker_is_at_its_mapped_pixel():
    point = {"fpr": 0.2, "tpr": 0.8, "label": "threshold 0.31: sens 0.80, spec 0.80"}
    img = plots.roc_plot([roc([0, 0.2, 1], [0, 0.8, 1])], "op", point)
    col, row = FRAME.to_pixel(0.2, 0.8)
    assert near(img, (col, row), RED, radius=0, tol=10)
    assert not near(img, FRAME.to_pixel(0.6, 0.3), RED, radius=6)
    for absent in (None, {"fpr": float("nan"), "tpr": 0.5, "label": "no point"}):
        assert not near(plots.roc_plot([], "op", absent), (col, row), RED, radius=8)


def test_roc_values_outside_the_unit_square_are_clipped_and_nan_points_skipped():
    img = plots.roc_plot([roc([0, float("nan"), -0.5, 1.0, 2.0], [0, 0.3, 1.7, 1.5, None])], "clipped")
    assert all(near(img, FRAME.to_pixel(0, t), BLUE) for t in ALONG)  # (-0.5, 1.7) clips to (0, 1)
    assert all(near(img, FRAME.to_pixel(t, 1), BLUE) for t in ALONG)
    assert not near(img, (FRAME.left - 6, FRAME.top - 6), BLUE, radius=4)
    with pytest.raises(ValueError, match="2 x values but 3 y values"):
        plots.roc_plot([roc([0, 1], [0, 0.5, 1])], "mismatch")


def test_reliability_points_of_calibrated_bins_lie_on_the_diagonal():
    good = plots.reliability_plot(calibrated_bins(), "calibrated")
    bad = plots.reliability_plot(calibrated_bins(lambda m: m / 2), "overconfident")
    means = [b["mean_score"] for b in calibrated_bins()]
    assert all(near(good, FRAME.to_pixel(m, m), plots.CALIBRATION_COLOUR, radius=1) for m in means)
    assert all(near(bad, FRAME.to_pixel(m, m / 2), plots.CALIBRATION_COLOUR, radius=1) for m in means)
    assert not any(near(bad, FRAME.to_pixel(m, m), plots.CALIBRATION_COLOUR, radius=3) for m in means[4:])


def test_reliability_skips_empty_bins_and_shows_the_ece():
    bins = calibrated_bins()
    bins[5] = {"low": 0.5, "high": 0.6, "count": 0, "mean_score": None, "fraction_positive": None}
    img = plots.reliability_plot(bins, "gap", ece=0.05)
    col, row = FRAME.to_pixel(0.57, 0.25)
    assert (img[row, col] == 255).all()  # no bar over the empty bin
    assert (img[row, col - FRAME.to_pixel(0.1, 0)[0] + FRAME.left] < 250).any()  # the bar of the bin before it
    assert near(img, FRAME.to_pixel(0.45, 0.45), plots.CALIBRATION_COLOUR, radius=1)
    legend = slice(plots.LEGEND_TOP - 10, plots.HEIGHT)
    assert not np.array_equal(img[legend], plots.reliability_plot(bins, "gap")[legend])


def test_histogram_of_disjoint_series_shows_each_colour_only_over_its_values():
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0.05, 0.29, 500), rng.uniform(0.61, 0.94, 300)
    img = plots.histogram_plot([{"values": low, "label": "reference"}, {"values": high, "label": "records"}], "drift", "score")
    frame = FRAME.with_ranges((0.0, 1.0))

    def colour_in(colour, x0, x1) -> bool:
        cols = slice(frame.to_pixel(x0, 0)[0], frame.to_pixel(x1, 0)[0] + 1)
        band = img[FRAME.top:FRAME.bottom + 1, cols].astype(int)
        return bool((np.abs(band - np.array(colour)).max(axis=2) <= 30).any())

    assert colour_in(BLUE, 0.07, 0.27) and not colour_in(BLUE, 0.33, 0.95)
    assert colour_in(ORANGE, 0.63, 0.92) and not colour_in(ORANGE, 0.0, 0.58)


def test_histogram_rejects_a_bad_range_or_bin_count():
    with pytest.raises(ValueError, match="low < high"):
        plots.histogram_plot([], "h", "score", value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="bins >= 1"):
        plots.histogram_plot([], "h", "score", bins=0)


def test_long_and_non_ascii_text_stays_inside_the_image():
    label = "site cases from the radiology department of Sankt Jörg – " * 8
    img = plots.roc_plot([roc([0, 1], [0, 1], label)], "A title much too long to fit on one line " * 5,
                         {"fpr": 0.9, "tpr": 0.95, "label": label})
    assert (img[:, -3:] == 255).all() and (img[:, :2] == 255).all() and (img[-2:] == 255).all()


def test_write_png_round_trips_through_a_non_ascii_path(tmp_path):
    img = plots.histogram_plot([{"values": [0.2, 0.4, 0.4], "label": "scores"}], "h", "score")
    path = tmp_path / "Berichte für Zürich" / "histogramme_é_日本.png"
    assert plots.write_png(path, img) == path
    back = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, img)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_write_png_names_a_path_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UsageError, match="report.txt/roc.png: cannot write"):
        plots.write_png(blocker / "roc.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        plots.write_png(tmp_path / "float.png", np.zeros((4, 4, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_grid_places_charts_two_to_a_row_and_fills_the_last_with_white():
    p = plots
    charts = [np.full((10, 20, 3), v, np.uint8) for v in (0, 50, 100)]
    g = p.grid(charts)
    assert g.shape == (20, 40, 3)
    assert (g[:10, :20] == 0).all() and (g[:10, 20:] == 50).all() and (g[10:, :20] == 100).all() and (g[10:, 20:] == 255).all()
    assert p.grid(charts[:1]).shape == (10, 20, 3)
    with pytest.raises(ValueError, match="no chart"):
        p.grid([])
