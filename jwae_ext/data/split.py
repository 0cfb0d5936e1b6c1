"""One split of an image-caption dataset, whatever its source (embedded or precomputed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jwae_ext.data.scenes import SceneAttributes


class FeatureArray(Protocol):
    """What :attr:`CaptionSplit.images` offers: an ``(N, D)`` float32 array-like (a numpy array,
    a read-only memory map, or :class:`PooledRegions`) indexed by int, slice or index array."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index) -> np.ndarray: ...


class PooledRegions:
    """``(N, R, D)`` region features seen as ``(N, D)``: each access returns the mean over the
    ``R`` regions (accumulated in float64, returned as float32), reading only the rows asked
    for from the (memory-mapped) array."""

    def __init__(self, regions: np.ndarray):
        if regions.ndim != 3:
            raise ValueError(f"jwae_ext: region features must be (N, R, D), got {regions.shape}")
        self.regions = regions
        self.shape = (regions.shape[0], regions.shape[2])
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple):
            raise TypeError("jwae_ext: PooledRegions is indexed by rows only (int, slice, array)")
        return self.regions[index].mean(axis=-2, dtype=np.float64).astype(np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, len(self), 1024):  # bounded temporaries for huge N
            out[start : start + 1024] = self[start : start + 1024]
        return out if dtype is None else out.astype(dtype)


def no_region_features(split: str) -> ValueError:
    """The error for a split without region features where SCAN needs them."""
    return ValueError(
        f"jwae_ext: split {split} has no region features: SCAN needs a precomp folder whose "
        "{split}_ims.npy is (N, R, D) (e.g. SCAN's 36 x 2048 bottom-up features) or an embedded "
        "dataset"
    )


@dataclass
class CaptionSplit:
    """Image features, captions and which image each caption describes.

    ``images``: ``(N, D)`` float32 array-like (see :class:`FeatureArray`); ``captions``: ``M``
    strings; ``cap_to_img``: ``(M,)`` int64, caption ``j`` describes image ``cap_to_img[j]``
    (every image has at least one caption). The embedded dataset also provides ``attributes``
    (what each image shows) and ``renderer`` (image index -> ``(H, W, 3)`` uint8 pixels).
    ``regions``: ``(N, R, D_r)`` float32 region features (for SCAN) when the source has them: a
    precomp folder whose ``{split}_ims.npy`` is ``(N, R, D)`` (then ``images`` is their mean), or
    the embedded dataset (9 regions of 256, besides its 1024-d pooled features).
    """

    name: str
    images: FeatureArray
    captions: list[str]
    cap_to_img: np.ndarray
    attributes: SceneAttributes | None = None
    renderer: Callable[[int], np.ndarray] | None = None
    regions: np.ndarray | None = None

    def __post_init__(self):
        if len(self.images.shape) != 2 or 0 in self.images.shape:
            raise ValueError(
                f"jwae_ext: split {self.name}: image features must be a non-empty (N, D) "
                f"array, got shape {tuple(self.images.shape)}"
            )
        cap_to_img = np.asarray(self.cap_to_img)
        if cap_to_img.dtype != np.int64 or cap_to_img.shape != (len(self.captions),):
            raise ValueError(
                f"jwae_ext: split {self.name}: cap_to_img must be int64 of shape "
                f"({len(self.captions)},), got {cap_to_img.dtype} {cap_to_img.shape}"
            )
        n = self.num_images
        if cap_to_img.size and (cap_to_img.min() < 0 or cap_to_img.max() >= n):
            raise ValueError(f"jwae_ext: split {self.name}: cap_to_img has ids outside [0, {n})")
        uncaptioned = np.flatnonzero(np.bincount(cap_to_img, minlength=n) == 0)
        if uncaptioned.size:
            raise ValueError(
                f"jwae_ext: split {self.name}: {uncaptioned.size} images have no caption "
                f"(first: {uncaptioned[0]})"
            )
        if self.attributes is not None and len(self.attributes) != n:
            raise ValueError(
                f"jwae_ext: split {self.name}: {len(self.attributes)} attribute rows for {n} images"
            )
        if self.regions is not None and (
            len(self.regions.shape) != 3 or self.regions.shape[0] != n or 0 in self.regions.shape
        ):
            raise ValueError(
                f"jwae_ext: split {self.name}: region features must be a non-empty "
                f"({n}, R, D) array, got shape {tuple(self.regions.shape)}"
            )
        self.cap_to_img = cap_to_img

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def feature_dim(self) -> int:
        return self.images.shape[1]

    def require_regions(self) -> np.ndarray:
        """The ``(N, R, D_r)`` region features; a clear error where the source has none."""
        if self.regions is None:
            raise no_region_features(self.name)
        return self.regions

    @property
    def captions_per_image(self) -> int | None:
        """``k`` when every image has ``k`` consecutive captions (the precomp layout), else None."""
        n, m = self.num_images, self.num_captions
        if m % n or not np.array_equal(self.cap_to_img, np.arange(m) // (m // n)):
            return None
        return m // n

    def render(self, index: int) -> np.ndarray:
        """Pixels ``(H, W, 3)`` uint8 of image ``index`` (embedded datasets only)."""
        if self.renderer is None:
            raise ValueError(
                f"jwae_ext: split {self.name} has precomputed features only; it cannot be rendered"
            )
        if not 0 <= index < self.num_images:
            raise IndexError(f"jwae_ext: image index {index} out of range [0, {self.num_images})")
        return self.renderer(int(index))
