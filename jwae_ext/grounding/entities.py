"""The Flickr30k Entities annotation files: ``Sentences/<id>.txt`` and ``Annotations/<id>.xml``.

Definitions follow the dataset's own parser (``flickr30k_entities_utils.py``):

- a sentence line marks phrases as ``[/EN#<entity>/<type>[/<type>...] word ... word]``; the
  plain sentence is the words without the markup; phrases of one entity (a coreference chain)
  share its id; ``0`` (type ``notvisual``) marks phrases that were never boxed;
- an annotation file is PASCAL-VOC-like XML: ``<size>`` (width, height, depth) and ``<object>``
  elements, each with one or more ``<name>`` entity ids and either a ``<bndbox>``
  (``xmin ymin xmax ymax``, 1-based inclusive pixels; read 0-based, minus 1, as the dataset's
  parser does) or ``<nobndbox>`` / ``<scene>`` flags.

Every error names the file and the line (sentences) or the element (annotations). The writers
produce files these readers read back unchanged.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "NOT_VISUAL",
    "AnnotatedObject",
    "Annotation",
    "Phrase",
    "Sentence",
    "format_annotation",
    "format_sentence",
    "parse_sentence",
    "read_annotation",
    "read_sentences",
]

NOT_VISUAL = "notvisual"
NULL_ENTITY = "0"
_HEADER = re.compile(r"\[/EN#(\d+)((?:/[^/\s\[\]]+)+)")


@dataclass(frozen=True)
class Phrase:
    """A marked phrase: its words, the index of its first word in the sentence, the entity it
    refers to and its types (e.g. ``("people",)``, or several)."""

    first_word: int
    words: tuple[str, ...]
    entity: str
    types: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def visual(self) -> bool:
        """Whether the phrase can have a box: not entity 0, not of type notvisual."""
        return self.entity != NULL_ENTITY and NOT_VISUAL not in self.types


@dataclass(frozen=True)
class Sentence:
    """One caption: its plain words and its marked phrases, in order."""

    words: tuple[str, ...]
    phrases: tuple[Phrase, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def parse_sentence(line: str, where: str = "sentence") -> Sentence:
    """Parse one marked-up caption; ``where`` (e.g. ``"Sentences/1.txt, line 3"``) prefixes the
    ValueError raised for nested or unbalanced brackets and malformed phrase headers."""
    words: list[str] = []
    phrases: list[Phrase] = []
    open_phrase: tuple[int, str, tuple[str, ...]] | None = None  # first word, entity, types
    for token in line.split():
        if token.startswith("["):
            if open_phrase is not None:
                raise ValueError(
                    f"jwae_ext: {where}: nested '[' in {token!r} (phrases cannot nest)"
                )
            header = _HEADER.fullmatch(token)
            if header is None:
                raise ValueError(
                    f"jwae_ext: {where}: phrase header {token!r} is not "
                    "'[/EN#<entity>/<type>[/<type>...]' followed by the phrase's words"
                )
            open_phrase = (len(words), header.group(1), tuple(header.group(2)[1:].split("/")))
            continue
        closes = token.endswith("]")
        word = token[:-1] if closes else token
        if "[" in word or "]" in word or (closes and not word):
            raise ValueError(f"jwae_ext: {where}: stray bracket in {token!r}")
        if closes and open_phrase is None:
            raise ValueError(f"jwae_ext: {where}: ']' in {token!r} closes no phrase")
        words.append(word)
        if closes:
            first, entity, types = open_phrase
            phrases.append(Phrase(first, tuple(words[first:]), entity, types))
            open_phrase = None
    if open_phrase is not None:
        if open_phrase[0] == len(words):
            raise ValueError(f"jwae_ext: {where}: a phrase has no words")
        raise ValueError(f"jwae_ext: {where}: phrase opened at word {open_phrase[0]} is not closed")
    return Sentence(tuple(words), tuple(phrases))


def format_sentence(sentence: Sentence) -> str:
    """The marked-up line of ``sentence`` (what :func:`parse_sentence` reads back)."""
    tokens = list(sentence.words)
    for phrase in sentence.phrases:
        last = phrase.first_word + len(phrase.words) - 1
        header = f"[/EN#{phrase.entity}/{'/'.join(phrase.types)}"
        tokens[phrase.first_word] = f"{header} {tokens[phrase.first_word]}"
        tokens[last] = f"{tokens[last]}]"
    return " ".join(tokens)


def read_sentences(path: str | os.PathLike) -> list[Sentence]:
    """The captions of a ``Sentences/<id>.txt`` file, one per non-empty line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"jwae_ext: {path} is not UTF-8 text: {err}") from None
    return [
        parse_sentence(line, f"{path}, line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


# ---- annotations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatedObject:
    """One ``<object>``: the entity ids it belongs to and its box ``(x1, y1, x2, y2)`` (0-based
    inclusive pixels), or no box with its ``scene`` / ``nobox`` flags."""

    names: tuple[str, ...]
    box: tuple[int, int, int, int] | None = None
    scene: bool = False
    nobox: bool = False


@dataclass(frozen=True)
class Annotation:
    """One image's ``Annotations/<id>.xml``."""

    width: int
    height: int
    objects: tuple[AnnotatedObject, ...] = field(default=())
    depth: int = 3
    filename: str = ""

    def boxes(self, entity: str) -> np.ndarray:
        """``(n, 4)`` int64: every box of ``entity`` (n = 0 when it has none)."""
        found = [o.box for o in self.objects if o.box is not None and entity in o.names]
        return np.array(found, dtype=np.int64).reshape(-1, 4)


def _xml_int(element: ET.Element, tag: str, where: str) -> int:
    child = element.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"jwae_ext: {where}: missing <{tag}>")
    try:
        return int(child.text.strip())
    except ValueError:
        raise ValueError(
            f"jwae_ext: {where}: <{tag}> must be an integer, got {child.text.strip()!r}"
        ) from None


def read_annotation(path: str | os.PathLike) -> Annotation:
    """Parse an ``Annotations/<id>.xml`` file (XML with entity declarations is refused: nothing
    in the format needs them, and they can expand without bound)."""
    path = Path(path)
    raw = path.read_bytes()
    if b"<!ENTITY" in raw or b"<!DOCTYPE" in raw:
        raise ValueError(f"jwae_ext: {path}: DOCTYPE/ENTITY declarations are not allowed")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise ValueError(f"jwae_ext: {path} is not valid XML: {err}") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"jwae_ext: {path}: missing <size>")
    width = _xml_int(size, "width", f"{path}, <size>")
    height = _xml_int(size, "height", f"{path}, <size>")
    depth = _xml_int(size, "depth", f"{path}, <size>") if size.find("depth") is not None else 3
    if width < 1 or height < 1:
        raise ValueError(f"jwae_ext: {path}, <size>: width and height must be >= 1")
    objects = []
    for number, obj in enumerate(root.findall("object"), start=1):
        where = f"{path}, <object> {number}"
        names = tuple((n.text or "").strip() for n in obj.findall("name"))
        if not names or not all(names):
            raise ValueError(f"jwae_ext: {where}: needs one or more non-empty <name> entity ids")
        box = obj.find("bndbox")
        if box is not None:
            corners = [_xml_int(box, t, f"{where}, <bndbox>") - 1 for t in _CORNERS]
            if corners[2] < corners[0] or corners[3] < corners[1]:
                raise ValueError(
                    f"jwae_ext: {where}, <bndbox>: xmax < xmin or ymax < ymin ({corners})"
                )
            objects.append(AnnotatedObject(names, box=tuple(corners)))
            continue
        if obj.find("nobndbox") is None and obj.find("scene") is None:
            raise ValueError(f"jwae_ext: {where}: needs a <bndbox> or <nobndbox>/<scene> flags")
        flags = {t: obj.find(t) is not None and _xml_int(obj, t, where) > 0 for t in _FLAGS}
        objects.append(AnnotatedObject(names, scene=flags["scene"], nobox=flags["nobndbox"]))
    filename = (root.findtext("filename") or "").strip()
    return Annotation(width, height, tuple(objects), depth, filename)


_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_FLAGS = ("nobndbox", "scene")


def format_annotation(annotation: Annotation) -> str:
    """The XML text of ``annotation`` (what :func:`read_annotation` reads back)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = annotation.filename
    size = ET.SubElement(root, "size")
    for tag, value in (
        ("width", annotation.width),
        ("height", annotation.height),
        ("depth", annotation.depth),
    ):
        ET.SubElement(size, tag).text = str(value)
    for obj in annotation.objects:
        element = ET.SubElement(root, "object")
        for name in obj.names:
            ET.SubElement(element, "name").text = name
        if obj.box is not None:
            box = ET.SubElement(element, "bndbox")
            for tag, value in zip(_CORNERS, obj.box, strict=True):
                ET.SubElement(box, tag).text = str(value + 1)
        else:
            ET.SubElement(element, "nobndbox").text = str(int(obj.nobox))
            ET.SubElement(element, "scene").text = str(int(obj.scene))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
