"""Figures (PNG) of trained models: latent space, retrieval examples, training curves.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), at a
fixed size and resolution so that each file's pixel size is known in advance (``*_size``
functions give it as ``(height, width)``).

1. :func:`latent_space`: a 2-D PCA of image and caption codes, coloured by the semantic class of
   the image (the poster's "image latent space" figure), one panel per model, side by side.
2. :func:`retrieval_examples`: caption queries with their top-5 images drawn, and image queries
   with their top-5 captions as text, ground truth marked (embedded data: images are rendered).
   :func:`grounding_examples`: phrases over their images with the ground-truth box and each
   localization model's chosen box (the poster's phrase-localization figure).
3. :func:`training_curves`: every loss term, dev R@1 and rsum per epoch from ``metrics.jsonl``.
4. :func:`image_tsne`: the image codes alone on a t-SNE, coloured by the main object's shape and
   by its colour, one column per model (the poster's "semantic continuity" figure).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from jwae_ext import ops
from jwae_ext.checkpoint import LoadedModel
from jwae_ext.data import CaptionSplit, SceneAttributes
from jwae_ext.grounding.data import GroundingSplit
from jwae_ext.grounding.evaluation import localize
from jwae_ext.metrics_log import read_metrics

__all__ = [
    "ImageCodesPanel",
    "LatentPanel",
    "evaluation_figures",
    "grounding_examples",
    "grounding_size",
    "image_tsne",
    "image_tsne_size",
    "latent_space",
    "latent_space_size",
    "pca_2d",
    "retrieval_examples",
    "retrieval_size",
    "training_curves",
    "training_curves_size",
    "tsne_2d",
]

DPI = 100
_PANEL = (4.8, 4.6)  # inches per latent-space panel
_LEGEND_WIDTH = 1.8  # inches to the right of the panels
_MAX_POINTS = 1000  # per modality and panel, so that the classes stay visible
_ROW_HEIGHT = 1.45  # inches per retrieval query
_TITLE_HEIGHT = 0.5
_RETRIEVAL_WIDTH = 10.0
_CURVE_PANEL = (3.2, 2.5)
_CURVE_COLUMNS = 4
_GROUND_TRUTH = "#1a9641"
_OTHER = "#9e9e9e"


def _pixels(width_in: float, height_in: float) -> tuple[int, int]:
    return round(height_in * DPI), round(width_in * DPI)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


# ---- 1. latent space ---------------------------------------------------------------------------


def pca_2d(points: torch.Tensor) -> np.ndarray:
    """``(n, 2)`` coordinates of ``points`` (n, d) on their first two principal axes.

    Each axis' sign is fixed (its largest loading positive) so that the picture does not flip
    between runs of the SVD.
    """
    x = points.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]
    biggest = axes.abs().argmax(dim=1, keepdim=True)
    axes = axes * torch.gather(axes, 1, biggest).sign()
    coords = x @ axes.T
    if coords.shape[1] < 2:  # 1-D codes: a flat second axis
        coords = torch.cat([coords, torch.zeros_like(coords)], dim=1)
    return coords.numpy()


@dataclass
class LatentPanel:
    """One model's codes of one split. ``classes`` ((N,) int, or None to colour by modality)
    colours each image and its captions."""

    title: str
    img_codes: torch.Tensor
    cap_codes: torch.Tensor
    cap_to_img: np.ndarray
    classes: np.ndarray | None = None


def latent_space_size(panels: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of a :func:`latent_space` figure with ``panels`` panels."""
    return _pixels(panels * _PANEL[0] + _LEGEND_WIDTH, _PANEL[1])


def _evenly(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(np.int64))


def latent_space(
    path: str | Path, panels: Sequence[LatentPanel], class_names: Sequence[str] | None = None
) -> Path:
    """Draw each panel's image codes (dots) and one caption per image (crosses) on the 2-D PCA
    of both together; write the PNG to ``path`` and return it."""
    if not panels:
        raise ValueError("jwae_ext: latent_space needs at least one panel")
    height, width = latent_space_size(len(panels))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.subplots_adjust(
        left=0.04, right=1 - (_LEGEND_WIDTH + 0.1) / (width / DPI), top=0.9, bottom=0.06
    )
    palette = _palette(class_names)
    handles: dict[str, object] = {}
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        images = _evenly(panel.img_codes.shape[0], _MAX_POINTS)
        # The first caption of each shown image: one per image keeps both clouds equally dense.
        _, first = np.unique(np.asarray(panel.cap_to_img), return_index=True)
        captions = first[images]
        coords = pca_2d(torch.cat([panel.img_codes[images], panel.cap_codes[captions]]))
        img_xy, cap_xy = coords[: len(images)], coords[len(images) :]
        if panel.classes is None:
            ax.scatter(*img_xy.T, s=9, c="#2b83ba", marker="o", label="image", alpha=0.8)
            ax.scatter(*cap_xy.T, s=12, c="#d7191c", marker="x", label="caption", alpha=0.6)
        else:
            labels = np.asarray(panel.classes)[images]
            for c in np.unique(labels):
                sel = labels == c
                name = class_names[c] if class_names else str(c)
                handles[name] = ax.scatter(
                    *img_xy[sel].T, s=9, color=palette[c % len(palette)], marker="o", alpha=0.85
                )
                ax.scatter(
                    *cap_xy[sel].T, s=12, color=palette[c % len(palette)], marker="x", alpha=0.45
                )
        ax.set_title(panel.title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if panels[0].classes is None:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)
    else:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="center right",
            fontsize=8,
            title="dots: images\ncrosses: captions",
            title_fontsize=8,
        )
    fig.suptitle("Latent space (PCA of image and caption codes)", fontsize=11)
    return _save(fig, Path(path))


def _palette(class_names: Sequence[str] | None) -> list:
    from matplotlib import colormaps

    count = len(class_names) if class_names else 10
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(count, 1))]


# ---- 2. retrieval examples -----------------------------------------------------------------


def retrieval_size(queries: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of each :func:`retrieval_examples` figure."""
    return _pixels(_RETRIEVAL_WIDTH, queries * _ROW_HEIGHT + _TITLE_HEIGHT)


def _query_images(split: CaptionSplit, queries: int) -> np.ndarray:
    return _evenly(split.num_images, queries)


def _image_axis(ax, pixels: np.ndarray, colour: str, width: float) -> None:
    ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def retrieval_examples(
    out_dir: str | Path,
    img_codes: torch.Tensor,
    cap_codes: torch.Tensor,
    split: CaptionSplit,
    *,
    queries: int = 4,
    k: int = 5,
    prefix: str = "",
) -> tuple[Path, Path]:
    """Write ``{prefix}retrieval-t2i.png`` (caption queries, top-``k`` images drawn, the query's
    image framed in green) and ``{prefix}retrieval-i2t.png`` (image queries, top-``k`` captions,
    the query's own captions in green) for ``queries`` images spread over ``split``, which must be
    renderable (embedded data). Codes are l2-normalized (N, d) and (M, d)."""
    if split.renderer is None:
        raise ValueError(f"jwae_ext: split {split.name} cannot be rendered (precomputed features)")
    out_dir = Path(out_dir)
    k = min(k, split.num_images, split.num_captions)
    targets = _query_images(split, queries)
    _, first_caption = np.unique(split.cap_to_img, return_index=True)
    cap_queries = first_caption[targets]
    _, by_caption = ops.topk_search(cap_codes[cap_queries], img_codes, k)
    _, by_image = ops.topk_search(img_codes[targets], cap_codes, k)
    t2i = _draw_t2i(split, cap_queries, by_caption.cpu().numpy())
    i2t = _draw_i2t(split, targets, by_image.cpu().numpy())
    return (
        _save(t2i, out_dir / f"{prefix}retrieval-t2i.png"),
        _save(i2t, out_dir / f"{prefix}retrieval-i2t.png"),
    )


def _retrieval_figure(rows: int, columns: int, ratios: list[float]) -> tuple[Figure, object]:
    height, width = retrieval_size(rows)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    top = 1 - _TITLE_HEIGHT / (height / DPI)
    grid = fig.add_gridspec(
        rows,
        columns,
        width_ratios=ratios,
        left=0.01,
        right=0.99,
        top=top,
        bottom=0.01,
        wspace=0.08,
        hspace=0.15,
    )
    return fig, grid


def _draw_t2i(split: CaptionSplit, queries: np.ndarray, ranked: np.ndarray) -> Figure:
    k = ranked.shape[1]
    fig, grid = _retrieval_figure(len(queries), k + 1, [3.2] + [1.0] * k)
    for row, (q, hits) in enumerate(zip(queries, ranked, strict=True)):
        text = fig.add_subplot(grid[row, 0])
        text.axis("off")
        text.text(0, 0.5, textwrap.fill(split.captions[q], 44), va="center", fontsize=9)
        truth = split.cap_to_img[q]
        for col, image in enumerate(hits):
            ax = fig.add_subplot(grid[row, col + 1])
            hit = image == truth
            _image_axis(ax, split.render(image), _GROUND_TRUTH if hit else _OTHER, 4 if hit else 1)
            if row == 0:
                ax.set_title(f"{col + 1}", fontsize=9)
    fig.suptitle(f"Caption to image, top {k} (green frame: the caption's image)", fontsize=11)
    return fig


def _draw_i2t(split: CaptionSplit, queries: np.ndarray, ranked: np.ndarray) -> Figure:
    k = ranked.shape[1]
    fig, grid = _retrieval_figure(len(queries), 2, [1.0, 7.6])
    for row, (q, hits) in enumerate(zip(queries, ranked, strict=True)):
        _image_axis(fig.add_subplot(grid[row, 0]), split.render(q), "black", 1)
        text = fig.add_subplot(grid[row, 1])
        text.axis("off")
        for rank, caption in enumerate(hits):
            hit = split.cap_to_img[caption] == q
            text.text(
                0.01,
                1 - (rank + 0.5) / k,
                f"{rank + 1}. {textwrap.shorten(split.captions[caption], 110)}",
                va="center",
                fontsize=9,
                color=_GROUND_TRUTH if hit else "black",
                fontweight="bold" if hit else "normal",
            )
    fig.suptitle(f"Image to caption, top {k} (green: a caption of the image)", fontsize=11)
    return fig


# ---- 2b. phrase localization -----------------------------------------------------------------

_GROUNDING_PANEL = 2.6  # inches per phrase (square image panels)
_GROUNDING_COLUMNS = 3
_INSET, _INSET_SCALE = 0.4, 48  # pixels per method for a 48-pixel image, scaled with its size
_METHOD_COLOURS = ("#d7191c", "#2b83ba", "#fdae61", "#abd9e9", "#984ea3", "#ffff33")


def grounding_size(phrases: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of a :func:`grounding_examples` figure."""
    columns = min(phrases, _GROUNDING_COLUMNS)
    rows = -(-phrases // _GROUNDING_COLUMNS)
    return _pixels(columns * _GROUNDING_PANEL, rows * (_GROUNDING_PANEL + 0.5) + _TITLE_HEIGHT)


def grounding_examples(
    path: str | Path, models: Mapping[str, LoadedModel], split: GroundingSplit, *, phrases: int = 6
) -> Path:
    """The poster's localization figure: ``phrases`` phrases spread over ``split`` (the first
    with an evaluated phrase in every ``N / phrases`` images), each over its image (a grey
    canvas of the image's size when the split has no pixels) with its ground-truth box (green,
    thick) and the box each of ``models`` chose (one colour each, legend below)."""
    if not 1 <= len(models) <= len(_METHOD_COLOURS):
        raise ValueError(
            f"jwae_ext: grounding_examples draws 1 to {len(_METHOD_COLOURS)} models, "
            f"got {len(models)}"
        )
    table = split.phrases
    if not len(table):
        raise ValueError(f"jwae_ext: split {split.name} has no evaluated phrase to draw")
    picked = np.unique(np.searchsorted(table.image, _evenly(split.num_images, phrases)))
    picked = picked[picked < len(table)]
    chosen = {
        name: localize(m.model, split, m.vocab, k=1, device=next(m.model.parameters()).device)
        for name, m in models.items()
    }
    height, width = grounding_size(len(picked))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    rows = -(-len(picked) // _GROUNDING_COLUMNS)
    for panel, row in enumerate(picked):
        ax = fig.add_subplot(rows, _GROUNDING_COLUMNS, panel + 1)
        image = int(table.image[row])
        if split.renderer is not None:
            ax.imshow(split.render(image), interpolation="nearest")
        else:
            w, h = split.sizes[image]
            ax.imshow(np.full((h, w, 3), 200, dtype=np.uint8))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(textwrap.fill(table.text[row], 28), fontsize=9)
        _box(ax, table.gt[row], _GROUND_TRUTH, 3.0, "ground truth")
        colours = _METHOD_COLOURS[: len(chosen)]
        for i, ((name, boxes), colour) in enumerate(zip(chosen.items(), colours, strict=True)):
            proposal = int(boxes[row, 0])
            if proposal >= 0:
                # Each method's box a little further inside: methods that chose the same
                # proposal stay visible as parallel dashed lines.
                inset = _INSET * (i + 1) * split.sizes[image].max() / _INSET_SCALE
                _box(ax, split.boxes[image, proposal], colour, 1.5, name, inset=inset)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.1, wspace=0.1, hspace=0.35)
    return _save(fig, Path(path))


def _box(ax, box: np.ndarray, colour: str, width: float, label: str, inset: float = 0.0) -> None:
    """An inclusive pixel box drawn around its pixels (edges at half-pixel positions), dashed
    and moved ``inset`` pixels inwards when ``inset`` > 0."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(
        Rectangle(
            (x1 - 0.5 + inset, y1 - 0.5 + inset),
            x2 - x1 + 1 - 2 * inset,
            y2 - y1 + 1 - 2 * inset,
            fill=False,
            edgecolor=colour,
            linewidth=width,
            linestyle="--" if inset else "-",
            label=label,
        )
    )


# ---- 3. training curves --------------------------------------------------------------------


def _curve_panels(records: list[dict]) -> list[str]:
    terms: list[str] = []
    for record in records:
        terms += [t for t in record.get("train", {}) if t not in terms]
    if "rsum" in records[-1].get("dev", {}):
        return [*terms, "R@1", "rsum"]
    return [*terms, "R@K"]  # a phrase-localization run: dev R@1 and R@5


def training_curves_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` in pixels of the :func:`training_curves` figure of ``path``."""
    panels = len(_curve_panels(read_metrics(path)))
    rows = math.ceil(panels / _CURVE_COLUMNS)
    return _pixels(_CURVE_COLUMNS * _CURVE_PANEL[0], rows * _CURVE_PANEL[1] + _TITLE_HEIGHT)


def training_curves(metrics: str | Path, path: str | Path, title: str = "") -> Path:
    """One panel per training loss term (epoch means), then dev R@1 (both directions) and dev
    rsum (for a phrase-localization run: dev R@1 and R@5), the best epoch marked; write the PNG
    to ``path`` and return it."""
    records = read_metrics(metrics)
    panels = _curve_panels(records)
    height, width = training_curves_size(metrics)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.subplots_adjust(
        left=0.06,
        right=0.98,
        bottom=0.08,
        top=1 - _TITLE_HEIGHT / (height / DPI) - 0.04,
        wspace=0.35,
        hspace=0.5,
    )
    rows = math.ceil(len(panels) / _CURVE_COLUMNS)
    epochs = [r["epoch"] for r in records]
    best = [r["epoch"] for r in records if r.get("best")]
    for i, name in enumerate(panels):
        ax = fig.add_subplot(rows, _CURVE_COLUMNS, i + 1)
        if name == "R@1":
            for direction in ("i2t", "t2i"):
                ax.plot(
                    epochs,
                    [r["dev"][direction]["r1"] for r in records],
                    marker=".",
                    label=direction,
                )
            ax.legend(fontsize=7)
            ax.set_title("dev R@1", fontsize=9)
        elif name == "R@K":
            for k in ("r1", "r5"):
                ax.plot(epochs, [r["dev"][k] for r in records], marker=".", label=f"R@{k[1:]}")
            ax.legend(fontsize=7)
            ax.set_title("dev localization", fontsize=9)
        elif name == "rsum":
            ax.plot(epochs, [r["dev"]["rsum"] for r in records], marker=".", color="black")
            ax.set_title("dev rsum", fontsize=9)
        else:
            values = [r.get("train", {}).get(name, math.nan) for r in records]
            ax.plot(epochs, values, marker=".", color="#7b3294")
            ax.set_title(f"train {name}", fontsize=9)
        if best:
            ax.axvline(best[-1], color=_OTHER, linestyle=":", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or f"Training curves ({Path(metrics).parent.name})", fontsize=11)
    return _save(fig, Path(path))


# ---- what ``python -m jwae_ext.evaluate --figures`` draws ----------------------------------


def evaluation_figures(
    out_dir: Path,
    img_codes: torch.Tensor,
    cap_codes: torch.Tensor,
    split: CaptionSplit,
    *,
    title: str,
    run_dir: Path,
) -> list[Path]:
    """The figures that one model's codes of ``split`` allow: the latent space titled ``title``
    (coloured by the main object's shape when the data has attributes), retrieval examples
    (renderable data only) and the training curves (when ``run_dir`` holds ``metrics.jsonl``)."""
    panel = LatentPanel(
        title=title,
        img_codes=img_codes,
        cap_codes=cap_codes,
        cap_to_img=split.cap_to_img,
        classes=None if split.attributes is None else split.attributes.semantic_class("shape"),
    )
    names = None if split.attributes is None else SceneAttributes.class_names("shape")
    written = [latent_space(out_dir / "latent.png", [panel], names)]
    if split.renderer is not None:
        written += retrieval_examples(out_dir, img_codes, cap_codes, split)
    if (run_dir / "metrics.jsonl").is_file():
        written.append(training_curves(run_dir / "metrics.jsonl", out_dir / "curves.png"))
    return written


# ---- 4. image codes alone, t-SNE -----------------------------------------------------------

_TSNE_PANEL = (4.2, 4.0)  # inches per t-SNE panel
_TSNE_KINDS = ("shape", "colour")  # one row of panels per attribute of the main object


@dataclass
class ImageCodesPanel:
    """One model's image codes of a split with attributes (the embedded data)."""

    title: str
    img_codes: torch.Tensor
    attributes: SceneAttributes


def tsne_2d(points: torch.Tensor, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` t-SNE coordinates of ``points`` (n, d), n >= 2: scikit-learn's Barnes-Hut
    t-SNE on cosine distances (what retrieval ranks by), PCA-initialised and seeded,
    so the same codes give the same picture. Neighbourhoods are kept, global distances are not:
    it shows whether similar images sit together, which a linear projection can hide."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError(
            "jwae_ext: the t-SNE figure needs scikit-learn (pip install scikit-learn, or the "
            "project's [test] extra)"
        ) from err
    x = points.detach().to("cpu", torch.float64).numpy()
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return tsne.fit_transform(x)


def image_tsne_size(panels: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of an :func:`image_tsne` figure of ``panels`` models."""
    rows = len(_TSNE_KINDS)
    return _pixels(panels * _TSNE_PANEL[0] + _LEGEND_WIDTH, rows * _TSNE_PANEL[1] + _TITLE_HEIGHT)


def image_tsne(path: str | Path, panels: Sequence[ImageCodesPanel], seed: int = 0) -> Path:
    """The image codes alone of each model (a column), on their t-SNE (:func:`tsne_2d`, at most
    1000 evenly spaced images), coloured by the main object's shape (top row) and by its colour
    (bottom row, in that colour): the poster's semantic continuity, without any text. Writes
    the PNG to ``path`` and returns it."""
    if not panels:
        raise ValueError("jwae_ext: image_tsne needs at least one panel")
    height, width = image_tsne_size(len(panels))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    right = 1 - (_LEGEND_WIDTH + 0.1) / (width / DPI)
    fig.subplots_adjust(
        left=0.02, right=right, top=1 - _TITLE_HEIGHT / (height / DPI) - 0.04, bottom=0.02
    )
    rows = len(_TSNE_KINDS)
    for column, panel in enumerate(panels):
        shown = _evenly(panel.img_codes.shape[0], _MAX_POINTS)
        coords = tsne_2d(panel.img_codes[shown], seed)
        for row, kind in enumerate(_TSNE_KINDS):
            ax = fig.add_subplot(rows, len(panels), row * len(panels) + column + 1)
            names = SceneAttributes.class_names(kind)
            colours = names if kind == "colour" else _palette(names)  # colours drawn as named
            labels = panel.attributes.semantic_class(kind)[shown]
            for c in np.unique(labels):
                ax.scatter(*coords[labels == c].T, s=7, color=colours[c], alpha=0.8, label=names[c])
            ax.set_title(f"{panel.title}: by {kind}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:  # one legend per row, right of the last panel
                box = ax.get_position()
                fig.legend(
                    *ax.get_legend_handles_labels(),
                    loc="center left",
                    bbox_to_anchor=(right + 0.01, box.y0 + box.height / 2),
                    fontsize=7,
                    title=kind,
                    title_fontsize=8,
                    markerscale=1.5,
                )
    fig.suptitle("Image codes alone (t-SNE), coloured by the main object", fontsize=11)
    return _save(fig, Path(path))
