"""Search with a trained model: index a collection, query it by text, image or indexed image.

``python -m jwae_ext.index RUN --out INDEX ...`` builds an index folder
(:func:`build_index`); ``python -m jwae_ext.search INDEX ... "query"`` or :class:`Index`
answers queries, exactly (docs/search.md)::

    idx = Index.open("photos.index")
    for hit in idx.search_text(["two dogs play on the grass"], k=10)[0].hits:
        print(hit.score, hit.path)

Modules: :mod:`~jwae_ext.search.layout` (the folder's files), :mod:`~jwae_ext.search.sources`
(what is indexed, checked against the run), :mod:`~jwae_ext.search.items` (its names and
captions, packed), :mod:`~jwae_ext.search.build`,
:mod:`~jwae_ext.search.topk` (exact top-k over blocks and shards),
:mod:`~jwae_ext.search.words` (known words), :mod:`~jwae_ext.search.index` (queries),
:mod:`~jwae_ext.search.approximate` (the codes into faiss, approximate search past exact).
"""

from jwae_ext.search.approximate import to_faiss
from jwae_ext.search.build import BuildSummary, build_index
from jwae_ext.search.index import Hit, Index, QueryError, TextResult
from jwae_ext.search.layout import IndexFormatError

__all__ = [
    "BuildSummary",
    "Hit",
    "Index",
    "IndexFormatError",
    "QueryError",
    "TextResult",
    "build_index",
    "to_faiss",
]
