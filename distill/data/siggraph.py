"""A 2-D point cloud uniform inside the glyphs of a text, like the "SIGGRAPH" cloud of Jang's
normalizing flows tutorial, drawn with DejaVu Sans Bold, the font that ships with matplotlib.

The glyph outlines (quadratic Bezier curves) are flattened into polygons once; the
distribution is uniform on the region those polygons enclose under the even-odd rule (a point
is inside when an odd number of polygons contain it, which cuts the holes of A, P, R). Its
entropy is exactly log(area), the area from the shoelace formula with the same parity: a
polygon nested in an odd number of others is a hole and subtracts.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.font_manager import FontProperties
from matplotlib.path import Path as MplPath
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D

from distill.data.datamodule import GeneratedDataModule

FONT_FILE = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
_POINTS_PER_CURVE = 32  # flattening error of the area below 1e-4 relative


def _flatten(path: MplPath) -> list[np.ndarray]:
    """The closed polygons ``(K, 2)`` of ``path``, each Bezier curve replaced by
    ``_POINTS_PER_CURVE`` chords."""
    polygons, current = [], []
    steps = np.linspace(0, 1, _POINTS_PER_CURVE + 1)[1:]
    for bezier, code in path.iter_bezier():
        if code == MplPath.MOVETO:
            polygons.append(current)
            current = [bezier.control_points[0]]
        elif code in (MplPath.LINETO, MplPath.CLOSEPOLY):
            current.append(bezier.control_points[-1])
        else:
            current.extend(bezier(steps))
    polygons.append(current)
    return [np.array(polygon) for polygon in polygons if len(polygon) >= 3]


def _signed_area(polygon: np.ndarray) -> float:
    """Shoelace formula, positive for counter-clockwise vertices ``(K, 2)``."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


class Glyphs:
    """The region inside the glyphs of ``text``, scaled to fill a ``width`` x ``height``
    box centred at the origin (each axis scaled on its own).

    ``outline``: the font's outline (curves) in data space, for drawing; ``polygons``: its
    flattening, which defines the region; ``area``: the exact area of the region they
    enclose (even-odd rule); ``contains(points)``: (N, 2) -> (N,) bool; ``sample(n, rng)``:
    (n, 2) uniform points by rejection from the bounding box.
    """

    def __init__(self, text: str, width: float, height: float):
        if not text.strip():
            raise ValueError("siggraph text is empty: give at least one visible character")
        if width <= 0 or height <= 0:
            raise ValueError(f"siggraph width and height must be positive, got {width}, {height}")
        outline = TextPath((0, 0), text, size=1, prop=FontProperties(fname=FONT_FILE))
        polygons = _flatten(outline)
        if not polygons:
            raise ValueError(f"the text {text!r} has no visible glyphs in DejaVu Sans Bold")
        points = np.concatenate(polygons)
        low, high = points.min(0), points.max(0)
        scale = np.array([width, height]) / (high - low)
        center = (low + high) / 2
        self.polygons = [(polygon - center) * scale for polygon in polygons]
        self.outline = outline.transformed(Affine2D().translate(*-center).scale(*scale))
        self.low, self.high = (low - center) * scale, (high - center) * scale
        self._paths = [MplPath(polygon) for polygon in self.polygons]
        depths = self._nesting_depths(text)
        self.area = sum(
            (-1) ** depth * abs(_signed_area(polygon))
            for depth, polygon in zip(depths, self.polygons, strict=True)
        )

    def _nesting_depths(self, text: str) -> list[int]:
        """How many other polygons contain each polygon. The even-odd rule is right only when
        outlines do not cross: each polygon lies wholly inside or outside each other one."""
        depths = []
        for index, polygon in enumerate(self.polygons):
            depth = 0
            for other, path in enumerate(self._paths):
                if other == index:
                    continue
                inside = path.contains_points(polygon)
                if inside.any() and not inside.all():
                    raise ValueError(
                        f"glyph outlines of {text!r} cross each other in DejaVu Sans Bold: "
                        "choose a text whose letters do not overlap (e.g. add spaces)"
                    )
                depth += int(inside.all())
            depths.append(depth)
        return depths

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Even-odd rule: (N, 2) -> (N,) bool, True inside an odd number of polygons."""
        count = np.zeros(len(points), dtype=int)
        for path in self._paths:
            count += path.contains_points(points)
        return count % 2 == 1

    def sample(self, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
        """``num_samples`` points ``(num_samples, 2)`` uniform on the region."""
        accepted, total = [], 0
        acceptance = self.area / float(np.prod(self.high - self.low))
        while total < num_samples:
            count = math.ceil(1.2 * (num_samples - total) / acceptance) + 16
            candidates = self.low + (self.high - self.low) * rng.rand(count, 2)
            inside = candidates[self.contains(candidates)]
            accepted.append(inside)
            total += len(inside)
        return np.concatenate(accepted)[:num_samples]


@functools.cache
def glyphs(text: str, width: float, height: float) -> Glyphs:
    """`Glyphs`, built once per text and box."""
    return Glyphs(text, width, height)


class SiggraphDataModule(GeneratedDataModule):
    """Points uniform inside the glyphs of ``text`` (default "SIGGRAPH", as in Jang's
    tutorial), scaled to a ``width`` x ``height`` box centred at the origin; 2-D. The
    entropy is log(glyph area), exact. For other texts, choose a box of similar aspect ratio
    to the text's."""

    name = "siggraph"

    def __init__(
        self,
        text: str = "SIGGRAPH",
        width: float = 4.6,
        height: float = 0.7,
        **splits: Any,
    ):
        super().__init__(2, **splits)
        self.glyphs = glyphs(text, width, height)

    def _sample(self, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
        return self.glyphs.sample(num_samples, rng)

    def _true_entropy(self) -> float:
        return math.log(self.glyphs.area)

    def in_support(self, points: torch.Tensor) -> torch.Tensor:
        """Inside the glyphs (`Glyphs.contains`): ``(N, 2)`` -> ``(N,)`` bool."""
        inside = self.glyphs.contains(points.detach().cpu().double().numpy())
        return torch.as_tensor(inside, dtype=torch.bool)
