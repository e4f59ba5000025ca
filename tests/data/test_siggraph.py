"""The SIGGRAPH point cloud against an independent rendering of the font's outline by Agg
(which fills with its own rule and its own curve flattening; antialiased, so a pixel's
coverage is the fraction of its area inside)."""

import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch

from distill.data import Glyphs, build_datamodule

PIXELS = (2300, 350)  # 0.002 data units per pixel for the default 4.6 x 0.7 box


def render(glyphs: Glyphs, linewidth: float = 0.0) -> np.ndarray:
    """Antialiased coverage in [0, 1] of each pixel (rows top to bottom) by the filled outline
    over the glyphs' box; ``linewidth`` (pixels) > 0 also strokes the edge, dilating it."""
    dpi = 100
    figure = Figure(figsize=(PIXELS[0] / dpi, PIXELS[1] / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(glyphs.low[0], glyphs.high[0])
    axes.set_ylim(glyphs.low[1], glyphs.high[1])
    axes.axis("off")
    edge = {"edgecolor": "black", "linewidth": linewidth * 72 / dpi} if linewidth else {}
    axes.add_patch(PathPatch(glyphs.outline, facecolor="black", **({"edgecolor": "none"} | edge)))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return 1 - np.asarray(canvas.buffer_rgba())[..., 0] / 255


def pixel_of(glyphs: Glyphs, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the rendered pixel under each point (N, 2)."""
    unit = (points - glyphs.low) / (glyphs.high - glyphs.low)
    column = np.clip((unit[:, 0] * PIXELS[0]).astype(int), 0, PIXELS[0] - 1)
    row = np.clip(((1 - unit[:, 1]) * PIXELS[1]).astype(int), 0, PIXELS[1] - 1)
    return row, column


@pytest.fixture(scope="module")
def siggraph():
    module = build_datamodule("siggraph")
    module.setup()
    return module


def test_box_and_entropy(siggraph):
    glyphs = siggraph.glyphs
    np.testing.assert_allclose(glyphs.high - glyphs.low, [4.6, 0.7])
    np.testing.assert_allclose(glyphs.high + glyphs.low, [0.0, 0.0], atol=1e-12)
    assert siggraph.entropy == pytest.approx(math.log(glyphs.area), abs=1e-12)
    assert len(glyphs.polygons) == 11  # S I G G R A P H, and the holes of R, A, P


def test_area_matches_the_rendered_outline(siggraph):
    glyphs = siggraph.glyphs
    pixel_area = float(np.prod((glyphs.high - glyphs.low) / PIXELS))
    assert render(glyphs).sum() * pixel_area == pytest.approx(glyphs.area, rel=1e-3)


def test_samples_lie_inside_the_glyphs_and_never_in_holes(siggraph):
    glyphs, points = siggraph.glyphs, siggraph.train_data.double().numpy()
    assert glyphs.contains(points).all()
    row, column = pixel_of(glyphs, points)
    assert (render(glyphs, linewidth=3)[row, column] > 0).all()  # none in a hole or outside
    assert (render(glyphs)[row, column] > 0.5).mean() > 0.98  # the rest sit on edge pixels


def test_samples_are_uniform(siggraph):
    """Counts in 0.1 x 0.1 cells against the rendered area of each cell: chi-square per
    degree of freedom near 1."""
    glyphs, points = siggraph.glyphs, siggraph.train_data.double().numpy()
    coverage = render(glyphs)
    cells = (46, 7)
    per_cell = coverage.reshape(cells[1], PIXELS[1] // cells[1], cells[0], PIXELS[0] // cells[0])
    expected = per_cell.sum(axis=(1, 3))[::-1].T / coverage.sum() * len(points)  # (x, y) cells
    unit = (points - glyphs.low) / (glyphs.high - glyphs.low)
    index = np.minimum((unit * cells).astype(int), np.array(cells) - 1)
    observed = np.zeros(cells)
    np.add.at(observed, (index[:, 0], index[:, 1]), 1)
    used = expected > 20
    assert observed[~used].sum() < 0.01 * len(points)
    chi_square = ((observed[used] - expected[used]) ** 2 / expected[used]).sum() / used.sum()
    assert chi_square < 1.6


def test_other_texts_and_errors():
    module = build_datamodule(
        "siggraph", text="Hi", width=1.0, height=0.7, num_train=300, num_val=10, num_test=10
    )
    module.setup()
    assert module.entropy == pytest.approx(math.log(module.glyphs.area))
    assert module.glyphs.contains(module.train_data.double().numpy()).all()
    with pytest.raises(ValueError, match="cross each other"):
        Glyphs("o\u0338", 1.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        Glyphs("  ", 1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        Glyphs("A", 0.0, 1.0)
