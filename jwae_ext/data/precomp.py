"""Precomputed features in the VSE++/SCAN layout: ``{split}_ims.npy`` + ``{split}_caps.txt``.

``{split}_ims.npy`` holds ``(N, D)`` or ``(N, R, D)`` float32 features (region features are
mean-pooled on access) and is memory-mapped, never read whole; ``{split}_caps.txt`` holds one
UTF-8 caption per line, ``k = lines / N`` consecutive captions per image. Every error names the
file (and, for captions, the line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jwae_ext.data.split import CaptionSplit, FeatureArray, PooledRegions

SPLITS = ("train", "dev", "test", "testall")
_IMS, _CAPS = "{}_ims.npy", "{}_caps.txt"


def available_splits(folder: str | os.PathLike) -> list[str]:
    """The splits with a features file in ``folder`` (standard ones first, then others)."""
    names = {p.name[: -len("_ims.npy")] for p in Path(folder).glob("*_ims.npy")}
    return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))


def read_features(path: str | os.PathLike) -> FeatureArray:
    """Memory-map a float32 ``(N, D)`` or ``(N, R, D)`` ``.npy`` file after checking its header
    against its size; ``(N, R, D)`` comes back as :class:`PooledRegions`."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            major, _ = np.lib.format.read_magic(f)
            if major not in (1, 2, 3):
                raise ValueError(f"unsupported .npy format version {major}")
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            raise ValueError(f"jwae_ext: {path} is not a valid .npy file: {e}") from None
        offset = f.tell()
    if dtype != np.dtype(np.float32):
        raise ValueError(
            f"jwae_ext: {path} holds {dtype} features, expected float32 "
            "(convert with np.save(path, features.astype(np.float32)))"
        )
    if len(shape) not in (2, 3) or 0 in shape:
        raise ValueError(
            f"jwae_ext: {path} has shape {shape}, expected non-empty (N, D) or (N, R, D) features"
        )
    # Python integers: a forged header's shape cannot overflow the size computed from it.
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        what = "is truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"jwae_ext: {path} {what}: its header announces {shape} float32 "
            f"({expected} bytes with the header), the file has {actual} bytes"
        )
    array = np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"
    )
    return PooledRegions(array) if len(shape) == 3 else array


def read_captions(path: str | os.PathLike) -> list[str]:
    """One caption per line (UTF-8; ``\\n``, ``\\r\\n`` or ``\\r`` line ends; a leading BOM and
    surrounding whitespace are dropped). Raises ``ValueError`` naming the file and line for
    bytes that are not UTF-8 and for empty lines."""
    return list(iter_captions(path))


def iter_captions(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """:func:`read_captions` one caption at a time, the file read in chunks of ``chunk_bytes``
    (a million captions without a million strings at once)."""
    path = Path(path)
    number = 0
    for number, raw in enumerate(_raw_lines(path, chunk_bytes), start=1):
        try:
            caption = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"jwae_ext: {path}, line {number}: not valid UTF-8 "
                f"(byte 0x{raw[e.start]:02x} at byte column {e.start + 1})"
            ) from None
        caption = (caption.removeprefix("\ufeff") if number == 1 else caption).strip()
        if not caption:
            raise ValueError(
                f"jwae_ext: {path}, line {number}: empty caption (one caption per line)"
            )
        yield caption
    if number == 0:
        raise ValueError(f"jwae_ext: {path} holds no captions")


def _raw_lines(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """The lines of a file as bytes without their ends (``\\n``, ``\\r\\n``, ``\\r``); a final
    line end adds no empty line."""

    def lines_of(data: bytes) -> list[bytes]:
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")

    carry = b""
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            data = carry + block
            held = b"\r" if data.endswith(b"\r") else b""  # maybe the first half of a \r\n
            lines = lines_of(data[: len(data) - len(held)])
            carry = lines.pop() + held
            yield from lines
    if carry:
        lines = lines_of(carry)
        yield from lines[:-1] if lines[-1] == b"" else lines


def _check_split_name(split: str) -> None:
    if not isinstance(split, str) or not split or "/" in split or os.sep in split:
        raise ValueError(f"jwae_ext: split must be a plain name like 'train', got {split!r}")


def load_precomp(
    folder: str | os.PathLike,
    split: str,
    *,
    captions_per_image: int | None = None,
    num_images: int | None = None,
) -> CaptionSplit:
    """Load ``split`` from a precomp ``folder``.

    ``captions_per_image``: ``k`` is ``lines / N`` unless given; given ``k`` with one feature row
    per caption (``N == lines``, as in some VSE++ releases) keeps every ``k``-th row.
    ``num_images``: keep only the first images (and their captions).
    """
    ims_path, caps_path = _split_files(folder, split)
    images, captions = read_features(ims_path), read_captions(caps_path)
    images, k = _matched(images, len(captions), captions_per_image, ims_path, caps_path)
    n = len(images)
    if num_images is not None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"jwae_ext: num_images must be a positive integer, got {num_images!r}")
        n = min(n, num_images)
        images, captions = _rows(images, slice(n)), captions[: n * k]
    return CaptionSplit(
        name=f"{Path(folder)}/{split}",
        images=images,
        captions=captions,
        cap_to_img=np.arange(n * k, dtype=np.int64) // k,
        regions=images.regions if isinstance(images, PooledRegions) else None,
    )


@dataclass(frozen=True)
class StreamedSplit:
    """A precomp split whose captions are read when iterated, never held: ``images`` as
    :func:`read_features` maps them, ``captions()`` a fresh iterator over the captions file,
    ``captions_per_image`` consecutive captions per image."""

    images: FeatureArray
    captions: Callable[[], Iterator[str]]
    captions_per_image: int


def stream_precomp(folder: str | os.PathLike, split: str) -> StreamedSplit:
    """``split`` of a precomp ``folder`` checked as :func:`load_precomp` checks it (the captions
    file is read once, a caption at a time, to count and check its lines), its captions not
    kept in memory."""
    ims_path, caps_path = _split_files(folder, split)
    images, lines = read_features(ims_path), sum(1 for _ in iter_captions(caps_path))
    images, k = _matched(images, lines, None, ims_path, caps_path)
    return StreamedSplit(images, partial(iter_captions, caps_path), k)


def _split_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The features and captions files of ``split`` in ``folder``, both checked to exist."""
    _check_split_name(split)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"jwae_ext: data folder {folder} does not exist")
    ims_path, caps_path = folder / _IMS.format(split), folder / _CAPS.format(split)
    if not ims_path.exists():
        found = ", ".join(available_splits(folder)) or "none"
        raise FileNotFoundError(
            f"jwae_ext: no split '{split}' in {folder}: {ims_path.name} is missing "
            f"(splits found: {found})"
        )
    if not caps_path.exists():
        raise FileNotFoundError(f"jwae_ext: {caps_path} is missing (captions of {ims_path.name})")
    return ims_path, caps_path


def _matched(
    images: FeatureArray, m: int, captions_per_image: int | None, ims_path: Path, caps_path: Path
) -> tuple[FeatureArray, int]:
    """The images (every ``k``-th row where a given ``k`` finds one row per caption) and the
    captions per image ``k`` that ``m`` captions make of them; an error where they do not fit."""
    n = len(images)
    if captions_per_image is not None:
        k = captions_per_image
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"jwae_ext: captions_per_image must be an integer >= 1, got {k!r}")
        if n == m and k > 1 and m % k == 0:
            images, n = _rows(images, slice(None, None, k)), m // k
        if m != n * k:
            raise ValueError(
                f"jwae_ext: {caps_path} has {m} captions for {n} images in {ims_path.name}, "
                f"expected {k} per image ({n * k} lines)"
            )
    elif m % n:
        raise ValueError(
            f"jwae_ext: {caps_path} has {m} captions for {n} images in {ims_path.name}: "
            f"not a whole number of captions per image ({m} / {n} = {m / n:.3f})"
        )
    return images, m // n


def _rows(images: FeatureArray, rows: slice) -> FeatureArray:
    """A lazy view of some rows (slicing PooledRegions itself would pool them eagerly)."""
    if isinstance(images, PooledRegions):
        return PooledRegions(images.regions[rows])
    return images[rows]


def write_precomp(
    folder: str | os.PathLike, split: str, features: np.ndarray, captions: Sequence[str]
) -> None:
    """Write ``{split}_ims.npy`` (float32 ``(N, D)`` or ``(N, R, D)``) and ``{split}_caps.txt``
    (``len(captions)`` must be a multiple of ``N``; captions must be non-empty single lines), both
    or neither (see :func:`write_precomp_splits`)."""
    write_precomp_splits(folder, {split: (features, captions)})


def write_precomp_splits(
    folder: str | os.PathLike,
    splits: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    *,
    extra_files: Mapping[str, bytes] | None = None,
) -> None:
    """Write several splits (``{split: (features, captions)}``, as :func:`write_precomp`) as one
    transaction: every argument is checked first, every file is written to a temporary name, and
    only when all are complete are they renamed into place. A failure (a bad argument, a full
    disk) leaves the folder as it was, with no partial file, and removes the folders this call
    created. Features may be memory-mapped: they are copied in bounded chunks.

    ``extra_files``: ``{file name: bytes}`` written in the same transaction (``{split}_ids.txt``,
    a manifest); plain names inside ``folder`` only."""
    folder = Path(folder)
    files = {}
    for split, (features, captions) in splits.items():
        features = _checked_split(split, features, captions)
        text = "".join(f"{c.strip()}\n" for c in captions).encode("utf-8")
        files[folder / _IMS.format(split)] = partial(write_array, array=features)
        files[folder / _CAPS.format(split)] = partial(write_bytes, data=text)
    for name, data in (extra_files or {}).items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"jwae_ext: extra file names must be plain file names, got {name!r}")
        if folder / name in files:
            raise ValueError(f"jwae_ext: extra file {name} would replace a split's file")
        files[folder / name] = partial(write_bytes, data=bytes(data))
    write_files(files)


def write_files(files: Mapping[Path, Callable[[BinaryIO], object]]) -> None:
    """Write every file of ``{path: write}`` (``write(f)`` fills the open binary file) as one
    transaction: each to a temporary name first, renamed into place only when all are complete.
    A failure leaves existing files as they were, with no partial file, and removes the folders
    this call created."""
    parents = sorted({path.parent for path in files}, key=lambda d: len(d.parts))
    created: list[Path] = []
    for parent in parents:
        created += [d for d in (parent, *parent.parents) if not d.exists()]
        parent.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    try:
        for path, write in files.items():
            temporaries.append(path.with_name(f".{path.name}.tmp{os.getpid()}"))
            try:
                with open(temporaries[-1], "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                raise OSError(err.errno, f"jwae_ext: cannot write {path}: {err.strerror}") from err
        for tmp, path in zip(temporaries, files, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        for empty in sorted(created, key=lambda d: -len(d.parts)):
            empty.rmdir()
        raise


def write_bytes(f: BinaryIO, data: bytes) -> None:
    """A :func:`write_files` writer of ``data``."""
    f.write(data)


class _Writes:
    """Only the ``write`` of a file: ``np.save`` then writes through it in chunks, so a failed
    write raises the system's error (a full disk), not ``tofile``'s count of bytes written."""

    def __init__(self, f) -> None:
        self.write = f.write


def write_array(f: BinaryIO, array: np.ndarray) -> None:
    """A :func:`write_files` writer of ``array`` as a ``.npy`` file (no pickles)."""
    np.save(_Writes(f), array, allow_pickle=False)


def _checked_split(split: str, features: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    _check_split_name(split)
    features = np.asarray(features)
    if features.dtype != np.float32 or features.ndim not in (2, 3) or 0 in features.shape:
        raise ValueError(
            f"jwae_ext: features must be non-empty float32 (N, D) or (N, R, D), "
            f"got {features.dtype} {features.shape}"
        )
    if len(captions) % features.shape[0] or not captions:
        raise ValueError(
            f"jwae_ext: {len(captions)} captions for {features.shape[0]} images: "
            "not a whole number of captions per image"
        )
    for j, caption in enumerate(captions):
        if (
            not isinstance(caption, str)
            or not caption.strip()
            or "\n" in caption
            or "\r" in caption
        ):
            raise ValueError(f"jwae_ext: caption {j} must be a non-empty single line: {caption!r}")
    return features
