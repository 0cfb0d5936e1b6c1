"""Captions in the layouts people have, read into one form: image name -> captions (+ splits).

Layouts: a COCO captions JSON (``images`` with ``id``/``file_name``, ``annotations`` with
``image_id``/``caption``) or Karpathy's split JSON (``images`` with ``filename``, optional
``filepath``, ``split`` and ``sentences`` with ``raw``); a Flickr-style CSV/TSV (``image,caption``
with a header, ``image#k<TAB>caption`` without one, or ``|``-separated as in Flickr30k's
``results.csv``); or one ``NAME.txt`` beside each image, one caption per line. Captions are
normalised to one line (runs of white space, line breaks included, become one space).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# The split names of caption files (Karpathy's "restval" is COCO training data) -> ours.
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "dev", "dev": "dev", "test": "test"}
_HEADER_IMAGE = {"image", "image_name", "image_id", "file_name", "filename", "file", "img", "name"}


@dataclass
class CaptionSource:
    """What a caption file says. ``captions``: image name (a relative path, ``/``-separated) ->
    captions in file order; ``splits``: image name -> ``train``/``dev``/``test`` when the file
    assigns them; ``empty``: captions dropped for being empty; ``unknown_ids``: COCO annotations
    naming an image id absent from ``images``; ``malformed``: table rows skipped for having too
    few columns (``"row N"``)."""

    captions: dict[str, list[str]]
    splits: dict[str, str] | None = None
    empty: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def one_line(caption: str) -> str:
    """The caption on one line with single spaces (COCO has captions with line breaks)."""
    return " ".join(caption.split())


def read_caption_file(path: str | os.PathLike) -> CaptionSource:
    """Read a COCO/Karpathy JSON or a Flickr-style CSV/TSV, told apart by content."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"jwae_ext: caption file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"jwae_ext: caption file {path} is not UTF-8 text: {e}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"jwae_ext: caption file {path} is not valid JSON: {e}") from None
        return _read_json(path, data)
    return _read_table(path, text)


def _read_json(path: Path, data: object) -> CaptionSource:
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(
            f"jwae_ext: caption file {path}: expected a JSON object with an 'images' list "
            "(COCO captions or Karpathy split format)"
        )
    if "annotations" in data:
        return _read_coco(path, images, data["annotations"])
    return _read_karpathy(path, images)


def _field(path: Path, entry: object, key: str, where: str):
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"jwae_ext: caption file {path}: {where} has no '{key}'")
    return entry[key]


def _read_coco(path: Path, images: list, annotations: object) -> CaptionSource:
    if not isinstance(annotations, list):
        raise ValueError(f"jwae_ext: caption file {path}: 'annotations' must be a list")
    names, splits = {}, {}
    for i, image in enumerate(images):
        image_id = _field(path, image, "id", f"images[{i}]")
        names[image_id] = str(_field(path, image, "file_name", f"images[{i}]"))
        if "split" in image:
            splits[names[image_id]] = _split_name(path, image["split"])
    source = CaptionSource(captions={name: [] for name in names.values()})
    for j, annotation in enumerate(annotations):
        image_id = _field(path, annotation, "image_id", f"annotations[{j}]")
        caption = one_line(str(_field(path, annotation, "caption", f"annotations[{j}]")))
        if image_id not in names:
            source.unknown_ids.append(str(image_id))
        elif caption:
            source.captions[names[image_id]].append(caption)
        else:
            source.empty += 1
    source.splits = _all_or_none(path, splits, source.captions)
    return source


def _read_karpathy(path: Path, images: list) -> CaptionSource:
    source, splits = CaptionSource(captions={}), {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        name = str(_field(path, image, "filename", where))
        if image.get("filepath"):
            name = f"{image['filepath']}/{name}"
        sentences = _field(path, image, "sentences", where)
        if not isinstance(sentences, list):
            raise ValueError(f"jwae_ext: caption file {path}: {where}.sentences must be a list")
        captions = source.captions.setdefault(name, [])
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if not isinstance(raw, str):
                raise ValueError(
                    f"jwae_ext: caption file {path}: {where}.sentences[{k}] has no 'raw' text"
                )
            if one_line(raw):
                captions.append(one_line(raw))
            else:
                source.empty += 1
        if "split" in image:
            splits[name] = _split_name(path, image["split"])
    source.splits = _all_or_none(path, splits, source.captions)
    return source


def _split_name(path: Path, split: object) -> str:
    if split not in SPLIT_NAMES:
        raise ValueError(
            f"jwae_ext: caption file {path}: unknown split {split!r} "
            f"(expected one of {', '.join(SPLIT_NAMES)})"
        )
    return SPLIT_NAMES[split]


def _all_or_none(path: Path, splits: dict[str, str], names: Iterable[str]) -> dict[str, str] | None:
    names = list(names)
    if splits and len(splits) != len(names):
        raise ValueError(
            f"jwae_ext: caption file {path}: only {len(splits)} of {len(names)} images have a "
            "'split' field; give them all one, or pass --splits to split by ratio"
        )
    return splits or None


def _read_table(path: Path, text: str) -> CaptionSource:
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first else "|" if "|" in first else ","
    # Tab- and |-separated files do not quote: a caption opening with '"' is text, not a quote
    # that would swallow the following lines.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"jwae_ext: caption file {path} holds no captions")
    header = [cell.strip().lower() for cell in rows[0]]
    width = len(header)
    if width < 2:
        raise ValueError(
            f"jwae_ext: caption file {path}, line 1: expected 'image{_show(delimiter)}caption' "
            f"columns, got {rows[0]!r}"
        )
    has_header = header[0] in _HEADER_IMAGE
    source = CaptionSource(captions={})
    for number, row in enumerate(rows[has_header:], start=1 + has_header):
        if len(row) < width:
            source.malformed.append(f"row {number}")
            continue
        # Unquoted captions with the delimiter in them spill into more columns: rejoin them.
        name = row[0].strip().split("#", 1)[0]
        caption = one_line(delimiter.join(row[width - 1 :]))
        captions = source.captions.setdefault(name, [])
        if caption:
            captions.append(caption)
        else:
            source.empty += 1
    return source


def _show(delimiter: str) -> str:
    return {"\t": "<TAB>", "|": "'|'", ",": "','"}[delimiter]


def read_sidecar(path: Path) -> list[str]:
    """The captions of a ``NAME.txt`` beside an image: one per non-empty line."""
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"jwae_ext: caption file {path} is not UTF-8 text: {e}") from None
    return [c for c in map(one_line, lines) if c]
