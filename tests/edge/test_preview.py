"""medge.edge.preview: the picture of the preprocessing stages (medge preview, the serve page)."""
import numpy as np
import pytest

from medge.edge.preprocess import PreprocessConfig
from medge.edge.preview import PANEL_MAX_W, PANEL_PX, TITLE_MIN_W, render_preview
from tests.conftest import xray_like


def _panels(picture: np.ndarray) -> int:
    """Panels in a preview: the 8-px grey gaps between them are whole columns of 128."""
    gray = picture if picture.ndim == 2 else picture[..., 0]
    gap = np.all(gray == 128, axis=0)
    starts = np.flatnonzero(gap[1:] & ~gap[:-1]) + 1
    return 1 + sum(1 for s in starts if s + 8 <= gap.size and gap[s : s + 8].all() and not gap[s + 8 : s + 9].all())


@pytest.mark.parametrize("h, w", [(300, 200), (64, 2000), (2000, 64)])
def test_four_gray_panels_of_bounded_size_for_any_aspect(h, w):
    picture = render_preview(xray_like(h, w), PreprocessConfig(size=32))
    assert picture.dtype == np.uint8 and picture.ndim == 2
    assert picture.shape[0] == PANEL_PX + 28  # the title bar over each panel
    assert picture.shape[1] <= 4 * PANEL_MAX_W + 3 * 8 and picture.shape[1] >= 4 * TITLE_MIN_W + 3 * 8
    assert _panels(picture) == 4


def test_a_model_with_heatmaps_adds_a_colour_panel(heat_bundle):
    from medge.edge import Model

    model = Model.load(heat_bundle[0])
    picture = render_preview(xray_like(128, 128), model.preprocess_config, model=model)
    assert picture.ndim == 3 and picture.shape[2] == 3 and _panels(picture) == 5
    plain = render_preview(xray_like(128, 128), model.preprocess_config)
    assert picture.shape[1] > plain.shape[1]
