"""A fixed, randomly initialised convolutional feature extractor for the embedded images.

It plays the part of the pretrained CNN behind precomputed COCO/Flickr30k features: two 4 x 4
convolutions of stride 2 with ReLU (48 -> 24 -> 12 pixels), then sum pooling over a 4 x 4 grid and
a square root, giving ``FEATURE_DIM`` = 4 * 4 * 64 = 1024 non-negative float32 features per
image. The same feature map also gives ``NUM_REGIONS`` = 9 region features of
``REGION_DIM`` = 256 (the part of bottom-up region features for SCAN): one region per cell of the
scene's 3 x 3 object grid (each cell's 4 x 4 map pixels sum-pooled over a 2 x 2 grid), so every
object lies in one region and empty cells play the context regions.

Bit-identical on every machine: the weights are small integers drawn from a fixed seed, pixels
are integers, and every intermediate value is an integer below 2**24, so the float32 matrix
products (whatever BLAS, blocking or FMA is used) and the sums are exact; the requantisation
between layers is an exact floor division, and the final square root and scaling are single
correctly rounded IEEE operations.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from jwae_ext.data.render import IMAGE_SIZE

_SEED = 20190101  # fixed: the extractor is the same for every dataset seed and style
_CHANNELS = (3, 16, 64)
_GRID = 4
FEATURE_DIM = _GRID * _GRID * _CHANNELS[2]
_CELLS, _CELL_GRID = 3, 2  # regions: the scene's 3 x 3 object cells, each pooled over 2 x 2
NUM_REGIONS = _CELLS * _CELLS
REGION_DIM = _CELL_GRID * _CELL_GRID * _CHANNELS[2]
_SHIFT1 = 64  # requantisation after layer 1
_SCALE = np.float32(1 / 64)  # brings typical features to O(1); a power of two, so exact
_CHUNK = 256  # images per batch: bounds the im2col buffers to a few MiB


@functools.lru_cache(maxsize=1)
def _weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer weights in [-2, 2] and biases, as float32 matrices (im2col layout)."""
    rng = np.random.default_rng(_SEED)
    layers = []
    for c_in, c_out in itertools.pairwise(_CHANNELS):
        u = rng.random((16 * c_in, c_out))
        w = np.floor(u * 5).astype(np.float32) - 2
        b = np.floor(rng.random(c_out) * 5 * c_in).astype(np.float32) - 2.5 * c_in
        layers += [w, np.floor(b)]
    return tuple(layers)


def _conv4x4s2_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """4 x 4 convolution of stride 2 with one pixel of zero padding (halves H and W), then ReLU;
    x: (B, H, W, C)."""
    batch, h, width, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.lib.stride_tricks.sliding_window_view(padded, (4, 4), axis=(1, 2))[:, ::2, ::2]
    cols = cols.transpose(0, 1, 2, 4, 5, 3).reshape(batch * (h // 2) * (width // 2), 16 * c)
    return np.maximum(cols @ w + b, 0).reshape(batch, h // 2, width // 2, -1)


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE,) * 2 + (3,):
        raise ValueError(
            f"jwae_ext: images must be uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), "
            f"got {images.dtype} {images.shape}"
        )


def _sum_pool(h: np.ndarray, grid: int) -> np.ndarray:
    """(B, S, S, C) -> (B, grid, grid, C) sums over square blocks (exact: integers < 2**22)."""
    side = h.shape[1] // grid
    return h.reshape(h.shape[0], grid, side, grid, side, -1).sum(axis=(2, 4))


def _feature_map(images: np.ndarray) -> np.ndarray:
    """The last convolution's map ``(B, 12, 12, 64)`` of a chunk of uint8 images (exact
    integers in float32)."""
    w1, b1, w2, b2 = _weights()
    x = images.astype(np.float32) - 128  # |x| <= 128
    # Layer 1: |sum| <= 48 * 128 * 2 + |bias| < 2**14.
    h = np.floor(_conv4x4s2_relu(x, w1, b1) / _SHIFT1)  # < 2**8
    # Layer 2: sum <= 256 * 2**8 * 2 + |bias| < 2**18.
    return _conv4x4s2_relu(h, w2, b2)


def extract_features(
    images: np.ndarray, *, regions: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(N, H, W, 3)`` uint8 images -> ``(N, FEATURE_DIM)`` float32 features; with
    ``regions=True`` also ``(N, NUM_REGIONS, REGION_DIM)`` float32 region features (regions in
    row-major cell order: top left, top, top right, left, ...)."""
    _check_images(images)
    n = images.shape[0]
    out = np.empty((n, FEATURE_DIM), dtype=np.float32)
    region_out = np.empty((n, NUM_REGIONS, REGION_DIM), dtype=np.float32) if regions else None
    for start in range(0, n, _CHUNK):
        h = _feature_map(images[start : start + _CHUNK])  # (B, 12, 12, 64)
        pooled = _sum_pool(h, _GRID)  # < 2**22
        out[start : start + _CHUNK] = np.sqrt(pooled.reshape(h.shape[0], -1)) * _SCALE
        if region_out is not None:
            # 6 x 6 blocks of 2 x 2 map pixels, grouped into the 3 x 3 cells' 2 x 2 blocks.
            fine = _sum_pool(h, _CELLS * _CELL_GRID)
            cells = fine.reshape(h.shape[0], _CELLS, _CELL_GRID, _CELLS, _CELL_GRID, -1)
            cells = cells.transpose(0, 1, 3, 2, 4, 5).reshape(h.shape[0], NUM_REGIONS, -1)
            region_out[start : start + _CHUNK] = np.sqrt(cells) * _SCALE
    return out if region_out is None else (out, region_out)


# Map pixel v of the last convolution is centred on image pixel 4v + 1.5: it stands for the
# image pixels 4v .. 4v + 3.
_STRIDE = IMAGE_SIZE // (_GRID * 3)


def box_features(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Features of arbitrary boxes, as Fast R-CNN pools proposals from a shared feature map:
    ``(N, H, W, 3)`` uint8 images and ``(N, P, 4)`` boxes ``(x1, y1, x2, y2)`` (inclusive pixel
    corners) -> ``(N, P, REGION_DIM)`` float32.

    Each box is cut into 2 x 2 bins on the extractor's last map; a bin's value is the area-
    weighted mean of the map pixels under it, times 4 (the 2 x 2 map pixels a region feature's
    block sums), then square-rooted and scaled like the region features: a box that covers one
    object cell exactly gets that cell's region feature. Computed in float64 and rounded once.
    """
    _check_images(images)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[0] != images.shape[0] or boxes.shape[2] != 4:
        raise ValueError(
            f"jwae_ext: boxes must be (N, P, 4) with N = {images.shape[0]}, got {boxes.shape}"
        )
    out = np.empty((*boxes.shape[:2], REGION_DIM), dtype=np.float32)
    for start in range(0, images.shape[0], _CHUNK):
        h = _feature_map(images[start : start + _CHUNK]).astype(np.float64)
        chunk = boxes[start : start + _CHUNK]
        wy = _bin_weights(chunk[..., 1], chunk[..., 3], h.shape[1])  # (B, P, 2, 12)
        wx = _bin_weights(chunk[..., 0], chunk[..., 2], h.shape[2])
        pooled = np.einsum("bpyi,bpxj,bijc->bpyxc", wy, wx, h, optimize=True)
        scaled = np.sqrt(pooled.reshape(*chunk.shape[:2], -1) * _CELL_GRID**2)
        out[start : start + _CHUNK] = scaled * np.float64(_SCALE)
    return out


def _bin_weights(low: np.ndarray, high: np.ndarray, size: int) -> np.ndarray:
    """``(..., 2, size)``: for each box extent ``[low, high]`` (inclusive image pixels), cut in
    two equal halves on the map, the share of each half that each map pixel covers (each half's
    weights sum to 1; a degenerate half takes the map pixel it lies in)."""
    start = low / _STRIDE
    stop = np.maximum(high + 1, low + 1) / _STRIDE
    middle = (start + stop) / 2
    edges = np.stack([start, middle, middle, stop], axis=-1).reshape(*low.shape, 2, 2)
    pixels = np.arange(size, dtype=np.float64)
    lo, hi = edges[..., :1], edges[..., 1:]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    width = overlap.sum(axis=-1, keepdims=True)
    inside = np.clip(np.floor(lo), 0, size - 1) == pixels
    return np.where(width > 0, overlap / np.where(width > 0, width, 1), inside)
