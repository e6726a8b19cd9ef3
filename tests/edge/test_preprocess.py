import cv2
import numpy as np
import pytest

from medge.edge.errors import ConfigError, ImageError
from medge.edge.inputs.image import read_image, write_image
from medge.edge.preprocess import (
    PERCENTILES,
    PreprocessConfig,
    normalize,
    percentile_range,
    preprocess,
    preprocess_batch,
    preprocess_uint8,
    to_uint8,
)
from tests.conftest import xray_like

MINMAX = PreprocessConfig(high_bit_rule="minmax")


def plain_cv2(img8, size=224, ksize=5, clip=2.0, tiles=8, mean=0.5, std=0.5):
    """The reference: the plain OpenCV sequence, written out by hand."""
    b = cv2.GaussianBlur(img8, (ksize, ksize), 0)
    c = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(b)
    r = cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
    return ((r.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std))[None]


@pytest.mark.parametrize("shape", [(512, 512), (301, 257), (97, 131), (1024, 768), (224, 224), (150, 160)])
def test_bit_exact_with_plain_cv2_sequence(shape):
    img = xray_like(*shape, seed=shape[0])
    out = preprocess(img)
    assert out.dtype == np.float32 and out.shape == (1, 224, 224)
    np.testing.assert_array_equal(out, plain_cv2(img))


def test_bit_exact_for_16bit_after_the_minmax_rule_of_old_bundles(tmp_path):
    img16 = xray_like(333, 290, seed=7, bits=12)
    write_image(tmp_path / "x16.png", img16)
    img16 = read_image(tmp_path / "x16.png")
    as8 = cv2.normalize(img16, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)  # the documented rule
    np.testing.assert_array_equal(preprocess(img16, MINMAX), plain_cv2(as8))
    # the display range of a DICOM window is ignored by minmax, as it was before the percentile rule
    np.testing.assert_array_equal(to_uint8(img16, MINMAX, (0, 65535)), as8)


def _percentile_reference(img, lo_q=PERCENTILES[0], hi_q=PERCENTILES[1]):
    """The documented percentile rule written out with numpy (exact ranks of the whole image)."""
    v = np.sort(img.ravel())
    lo, hi = float(v[round(lo_q / 100 * (v.size - 1))]), float(v[round(hi_q / 100 * (v.size - 1))])
    return np.clip(np.rint((img.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_percentile_rule_follows_its_definition(dtype):
    img = xray_like(300, 257, seed=4, bits=12).astype(dtype)
    got, want = to_uint8(img).astype(int), _percentile_reference(img).astype(int)
    assert PreprocessConfig().high_bit_rule == "percentile"
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 1e-3  # rounding of .5 in float32 only
    assert (to_uint8(img) == 0).mean() == pytest.approx(0.005, abs=0.003)  # 0.5% clip to black
    assert (to_uint8(img) == 255).mean() == pytest.approx(0.005, abs=0.003)
    # A linear map: the order of intensities is kept.
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(got.ravel()[order]) >= 0)


def test_percentile_rule_is_not_wrecked_by_a_hot_pixel():
    img = xray_like(256, 256, bits=12)
    hot = img.copy()
    hot[17, 23] = 65535  # a dead detector pixel, or burned-in text, at full scale
    clean8, hot8 = (np.delete(to_uint8(x).ravel().astype(int), 17 * 256 + 23) for x in (img, hot))
    assert np.abs(clean8 - hot8).max() <= 1  # one pixel more moves a rank by one, no more
    assert len(np.unique(to_uint8(hot, MINMAX))) < 20  # what min-max made of it: the anatomy in a few grey levels


def test_percentile_rule_samples_large_images_on_a_grid():
    big = np.tile(xray_like(64, 64, bits=12), (40, 40))  # 2560 x 2560 = 6.5 MP
    lo, hi = percentile_range(big)
    v = np.sort(big.ravel())
    assert abs(lo - v[round(0.005 * (v.size - 1))]) <= 8 and abs(hi - v[round(0.995 * (v.size - 1))]) <= 8


def test_display_range_wins_over_the_percentiles_and_constants_become_zeros():
    img = np.array([[0.0, 0.25, 0.5, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(to_uint8(img, PreprocessConfig(), (0.0, 1.0)), [[0, 64, 128, 255, 255]])
    np.testing.assert_array_equal(to_uint8(np.full((5, 5), 1000, np.uint16)), np.zeros((5, 5), np.uint8))
    np.testing.assert_array_equal(to_uint8(np.full((5, 5), 1000, np.uint16), MINMAX), np.zeros((5, 5), np.uint8))
    mostly_black = np.zeros((100, 100), np.uint16)
    mostly_black[0, :20] = 4000  # 0.2% bright: the percentiles are equal, min and max are used instead
    assert to_uint8(mostly_black).max() == 255


def test_configs_written_before_the_rule_existed_keep_minmax():
    old = {k: v for k, v in PreprocessConfig().to_dict().items() if k != "high_bit_rule"}
    assert PreprocessConfig.from_dict(old).high_bit_rule == "minmax"


def test_other_configs_match_their_plain_sequence():
    img = xray_like(400, 300, seed=3)
    cfg = PreprocessConfig(blur_ksize=7, clahe_clip_limit=3.0, clahe_tile_grid=4, size=96, mean=0.4, std=0.25)
    np.testing.assert_array_equal(preprocess(img, cfg), plain_cv2(img, 96, 7, 3.0, 4, 0.4, 0.25))


def test_three_channels_repeat_the_gray_plane():
    img = xray_like(100, 120)
    out = preprocess(img, PreprocessConfig(channels=3))
    assert out.shape == (3, 224, 224)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], preprocess(img)[0])


def test_color_input_is_converted_to_gray():
    img = xray_like(100, 120)
    np.testing.assert_array_equal(preprocess(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)), preprocess(img))


def test_deterministic_and_batch_equals_single():
    imgs = [xray_like(200 + 10 * i, 180, seed=i) for i in range(4)]
    batch = preprocess_batch(imgs)
    assert batch.shape == (4, 1, 224, 224)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(img))
    np.testing.assert_array_equal(preprocess_batch(imgs), batch)
    assert preprocess_batch([]).shape == (0, 1, 224, 224)


def test_uint8_then_normalize_equals_preprocess():
    img = xray_like(300, 300, seed=9)
    cfg = PreprocessConfig(size=64)
    np.testing.assert_array_equal(normalize(preprocess_uint8(img, cfg), cfg), preprocess(img, cfg))


def test_config_round_trip():
    cfg = PreprocessConfig(blur_ksize=3, clahe_clip_limit=1.5, size=128, channels=3, interpolation="linear")
    d = cfg.to_dict()
    assert PreprocessConfig.from_dict(d) == cfg
    assert d["blur_ksize"] == 3 and d["size"] == 128
    assert PreprocessConfig().fingerprint() != cfg.fingerprint()
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()).fingerprint() == PreprocessConfig().fingerprint()


def test_default_config_is_the_seeds():
    cfg = PreprocessConfig()
    assert (cfg.blur_ksize, cfg.blur_sigma, cfg.clahe_clip_limit, cfg.clahe_tile_grid) == (5, 0.0, 2.0, 8)
    assert (cfg.size, cfg.mean, cfg.std, cfg.channels) == (224, 0.5, 0.5, 1)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"blur_ksize": 4}, "blur_ksize must be odd"),
        ({"blur_ksize": 0}, "blur_ksize must be odd"),
        ({"size": 0}, "size must be in"),
        ({"size": -3}, "size must be in"),
        ({"std": 0}, "std must be > 0"),
        ({"std": float("nan")}, "std must be a finite number"),
        ({"clahe_clip_limit": 0}, "clahe_clip_limit must be > 0"),
        ({"clahe_tile_grid": 0}, "clahe_tile_grid"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"interpolation": "nearest-ish"}, "interpolation must be one of"),
        ({"size": "224"}, "size must be an integer"),
        ({"size": True}, "size must be an integer"),
        ({"colour": 1}, "unknown keys"),
    ],
)
def test_bad_configs_are_rejected(bad, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig.from_dict({**PreprocessConfig().to_dict(), **bad})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PreprocessConfig().size = 10


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((0, 10), np.uint8), "empty image"),
        (np.zeros((4, 4, 2), np.uint8), "expected a gray, BGR or BGRA image"),
        (np.zeros((4, 4), np.int32), "unsupported pixel type"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        ([[1, 2], [3, 4]], "expected a numpy array"),
    ],
)
def test_bad_arrays_raise_image_error(arr, match):
    with pytest.raises(ImageError, match=match):
        preprocess(arr)
