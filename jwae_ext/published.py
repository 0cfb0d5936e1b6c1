"""The poster's published numbers (docs/design.md; the poster's text in the project's reference),
to print beside the numbers measured on the same datasets.

The poster trains on COCO (retrieval: COCO's 1K protocol, the one SCAN and VSE++ report), tests
across datasets on Flickr30k, and localizes phrases on Flickr30k Entities. Its method names map
to this project's variants: Emb. Network is ``vse0`` (retrieval) and ``embnet`` (phrase
localization), SCAN+jWAE(-MH) is ``scan-jwae-mh``, CITE+jWAE is ``cite-jwae``.
"""

from __future__ import annotations

__all__ = ["DATASETS", "published_columns"]

# What ``--published`` may name: the poster's training set (COCO) or Flickr30k, the set of its
# phrase-localization table (it has no Flickr30k-trained retrieval table).
DATASETS = ("coco", "f30k")

_IN_DOMAIN = {  # train and test COCO, 1K protocol: i2t R@1, t2i R@1
    "vse0": (50.1, 39.6),
    "vse++": (64.6, 52.0),
    "scan": (70.9, 56.4),
    "jwae-mh": (66.6, 53.1),
    "jwae-mse": (50.3, 25.2),
    "scan-jwae-mh": (72.0, 57.1),
}
_CROSS = {  # train COCO, test Flickr30k: i2t R@5, t2i R@5
    "vse0": (33.7, 8.4),
    "scan": (73.7, 61.3),
    "jwae-mh": (51.1, 37.0),
    "scan-jwae-mh": (80.0, 66.7),
}
_GROUNDING = {"embnet": (51.0,), "cite": (59.2,), "jwae-mse": (52.5,), "cite-jwae": (60.4,)}

# table -> (the datasets it needs, what the poster measured there, its columns)
_TABLES = {
    "in": (("coco",), "COCO 1K", ("i2t R@1", "t2i R@1"), _IN_DOMAIN),
    "cross": (("coco",), "COCO → Flickr30k", ("i2t R@5", "t2i R@5"), _CROSS),
    "grounding": (DATASETS, "Flickr30k Entities", ("R@1",), _GROUNDING),
}


def published_columns(table: str, dataset: str | None) -> tuple[str, dict[str, dict[str, float]]]:
    """The poster's numbers for ``table`` (``"in"``, ``"cross"`` or ``"grounding"``) when the
    data are ``dataset`` (``--published``; None: not the poster's data): ``(what the poster
    measured, {method: {column: value}})``, empty when the poster has no such table there."""
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"jwae_ext: --published must be one of {DATASETS}, got {dataset!r}")
    needs, setting, headers, numbers = _TABLES[table]
    if dataset not in needs:
        return setting, {}
    return setting, {m: dict(zip(headers, v, strict=True)) for m, v in numbers.items()}
