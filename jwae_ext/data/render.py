"""Drawing scenes to RGB pixels in one of two styles.

Everything here is integer arithmetic or single IEEE operations on hard-coded constants (no
trigonometry, no float reductions), so a scene renders to the same bytes on every machine.
Shapes are anti-aliased by counting which of 4 x 4 sub-pixel samples fall inside them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jwae_ext.data.scenes import SHAPES, SceneObject

IMAGE_SIZE = 48
CELL = IMAGE_SIZE // 3
_SUB = 4  # sub-pixel samples per axis
_SAMPLES = _SUB * _SUB

# Five-pointed star, outer radius 1, inner radius 0.4, first point up (y grows downwards);
# the vertices are tabulated so that no platform-dependent sin/cos enters the pixels.
_STAR = np.array(
    [
        (0.0, -1.0), (0.235114, -0.323607), (0.951057, -0.309017), (0.380423, 0.123607),
        (0.587785, 0.809017), (0.0, 0.4), (-0.587785, 0.809017), (-0.380423, 0.123607),
        (-0.951057, -0.309017), (-0.235114, -0.323607),
    ]
)  # fmt: skip
_TRIANGLE = np.array([(0.0, -1.0), (0.95, 0.8), (-0.95, 0.8)])


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: does a ray from (x, y) towards +x cross the polygon's edges an odd number
    of times?"""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        straddles = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= straddles & (x < x_cross)
    return inside


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (in the shape's unit frame, all shapes within [-1, 1]^2) are inside."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (ax <= 0.82) & (ay <= 0.82)
    if shape == "diamond":
        return ax + ay <= 1.0
    if shape == "cross":
        return ((ax <= 0.34) & (ay <= 1.0)) | ((ay <= 0.34) & (ax <= 1.0))
    if shape == "triangle":
        return _inside_polygon(x, y, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(x, y, _STAR)
    raise ValueError(f"jwae_ext: unknown shape {shape!r}")


@functools.cache
def coverage(shape: str, radius: float) -> np.ndarray:
    """``(2R+1, 2R+1)`` int64 sprite, ``R = ceil(radius)``: how many of a pixel's 16 sub-pixel
    samples lie inside ``shape`` scaled to ``radius`` pixels around the central pixel's centre.
    Every shape is star-shaped about its centre, so a smaller radius gives a sprite contained in
    a larger one (outlines are the difference of two sprites)."""
    reach = int(np.ceil(radius))
    side = 2 * reach + 1
    # Sample k of pixel p sits at p - reach + (k + 0.5) / 4 - 0.5 relative to the centre.
    sub = (np.arange(side * _SUB) + 0.5) / _SUB - 0.5 - reach
    y, x = np.meshgrid(sub / radius, sub / radius, indexing="ij")
    inside = _inside(shape, x, y)
    return inside.reshape(side, _SUB, side, _SUB).sum(axis=(1, 3), dtype=np.int64)


@functools.cache
def _sprites(shape: str, radius: int, stroke: float) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of the whole shape and of its fill inside an outline ``stroke`` pixels wide
    (the fill sprite zero-padded to the same size), each ``(side, side, 1)``."""
    outer = coverage(shape, float(radius))
    inner = coverage(shape, radius - stroke) if stroke else outer
    inner = np.pad(inner, (outer.shape[0] - inner.shape[0]) // 2)
    sprites = outer[..., None], inner[..., None]
    for sprite in sprites:
        sprite.flags.writeable = False  # shared by the cache
    return sprites


@dataclass(frozen=True)
class Style:
    """How one style draws: a palette (one RGB per colour name, in ``COLOURS`` order), a vertical
    background gradient (top and bottom RGB) with uniform pixel noise of +-``noise``, and an
    optional darker outline of ``stroke`` pixels."""

    name: str
    palette: tuple[tuple[int, int, int], ...]
    background_top: tuple[int, int, int]
    background_bottom: tuple[int, int, int]
    noise: int
    stroke: float
    stroke_darkness: int  # outline colour = colour * stroke_darkness // 16

    def background(self, noise_bytes: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` int64 background from ``H*W*3`` random bytes."""
        n = IMAGE_SIZE
        rows = np.arange(n, dtype=np.int64)[:, None]
        top = np.array(self.background_top, dtype=np.int64)
        bottom = np.array(self.background_bottom, dtype=np.int64)
        gradient = (top * (n - 1 - rows) + bottom * rows) // (n - 1)  # (H, 3)
        jitter = noise_bytes.reshape(n, n, 3).astype(np.int64) % (2 * self.noise + 1) - self.noise
        return gradient[:, None, :] + jitter


STYLES = {
    "a": Style(
        name="a",
        palette=(
            (225, 40, 35), (40, 185, 60), (45, 85, 230), (235, 215, 40),
            (150, 55, 200), (245, 135, 25), (40, 215, 220),
        ),
        background_top=(22, 24, 34),
        background_bottom=(22, 24, 34),
        noise=6,
        stroke=0.0,
        stroke_darkness=16,
    ),
    "b": Style(
        name="b",
        palette=(
            (215, 50, 60), (70, 175, 55), (60, 100, 215), (225, 205, 70),
            (140, 65, 180), (230, 125, 45), (60, 200, 195),
        ),
        background_top=(34, 30, 30),
        background_bottom=(20, 26, 36),
        noise=9,
        stroke=1.5,
        stroke_darkness=9,
    ),
}  # fmt: skip


def render_scene(
    objects: Sequence[SceneObject], style: Style, noise_bytes: np.ndarray
) -> np.ndarray:
    """Draw ``objects`` over ``style``'s background; returns ``(H, W, 3)`` uint8.

    ``noise_bytes``: ``H*W*3`` random uint8 for the background texture."""
    image = style.background(noise_bytes)
    for obj in objects:
        outer, inner = _sprites(SHAPES[obj.shape], obj.radius, style.stroke)
        colour = np.clip(np.add(style.palette[obj.colour], obj.tint), 0, 255)
        edge = colour * style.stroke_darkness // 16
        reach = outer.shape[0] // 2
        row = (obj.position // 3) * CELL + CELL // 2 + obj.offset[1]
        col = (obj.position % 3) * CELL + CELL // 2 + obj.offset[0]
        window = image[row - reach : row + reach + 1, col - reach : col + reach + 1]
        window[...] = (
            window * (_SAMPLES - outer) + edge * (outer - inner) + colour * inner + _SAMPLES // 2
        ) // _SAMPLES
    return np.clip(image, 0, 255).astype(np.uint8)
