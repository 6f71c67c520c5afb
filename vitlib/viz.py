"""Plots for the course notebooks (matplotlib only).

Every function takes a ``title``, labels its axes, draws on a new figure (or on ``ax`` when one is
given, to combine plots side by side) and returns the ``Figure``. Assign the result in a notebook
(``fig = viz.heatmap(...)``) so the figure is shown once.

Sections: shared helpers · images and patches · matrices · curves and distributions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

# --- shared helpers -------------------------------------------------------------------------


def to_numpy(x) -> np.ndarray:
    """A tensor (any device, any dtype, with or without grad), array or list as a NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return np.asarray([to_numpy(v) for v in x])  # e.g. losses kept as tensors
    return np.asarray(x)


def to_display_image(image) -> np.ndarray:
    """One image, (C, H, W) or (H, W, C) or (H, W), as (H, W, 3) floats in [0, 1].

    Integer images are read as 0–255. Float images outside [0, 1] (normalised ones, say) are
    rescaled to their own min and max.
    """
    img = to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected one image shaped (C, H, W), (H, W, C) or (H, W) with 1 or 3 channels, got "
            f"{img.shape}; for a batch, pick one image (images[0]) or use show_images"
        )
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(img.astype(np.float32) / 255.0, 0.0, 1.0)
    img = img.astype(np.float32)
    low, high = float(img.min()), float(img.max())
    if low < 0.0 or high > 1.0:
        img = (img - low) / max(high - low, 1e-12)
    return img


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


# --- images and patches ---------------------------------------------------------------------


def show_image(
    image, *, title: str = "Image", ax: Axes | None = None, figsize: tuple[float, float] = (3, 3)
) -> Figure:
    """One image with pixel coordinates on the axes."""
    fig, ax = _figure_and_axes(ax, figsize)
    ax.imshow(to_display_image(image), interpolation="nearest")
    _label(ax, title, "x (pixels)", "y (pixels)")
    return fig


def show_images(
    images,
    labels=None,
    classes: Sequence[str] | None = None,
    *,
    title: str = "Images",
    ncols: int = 8,
    size: float = 1.4,
) -> Figure:
    """A grid of images (B, C, H, W), each captioned with its class name (or label number)."""
    batch = to_numpy(images)
    n = len(batch)
    if n == 0:
        raise ValueError("show_images got no images; pass a batch like images[:16]")
    label_list = None if labels is None else to_numpy(labels).tolist()
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False,
        layout="constrained",
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_display_image(batch[i]), interpolation="nearest")
        if label_list is not None:
            label = label_list[i]
            ax.set_title(classes[label] if classes is not None else str(label), fontsize=9)
    fig.suptitle(title)
    return fig


def image_mosaic(
    images,
    *,
    title: str,
    ncols: int = 8,
    row_labels: Sequence[str] | None = None,
    xlabel: str = "image",
    ylabel: str = "row",
    gap: int = 2,
    size: float = 0.8,
    ax: Axes | None = None,
) -> Figure:
    """A batch (B, C, H, W) as one picture, ``ncols`` images a row with ``gap`` white pixels
    between them, drawn with a single ``imshow`` (fast even for a hundred images; use
    ``show_images`` for a caption on every image). ``row_labels`` name the rows on the y axis,
    e.g. one class per row."""
    batch = [to_display_image(image) for image in to_numpy(images)]
    if not batch:
        raise ValueError("image_mosaic got no images; pass a batch like images[:64]")
    nrows = math.ceil(len(batch) / ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(batch)} images in rows of {ncols} make {nrows} rows, but "
                         f"{len(row_labels)} row labels were given; pass one label per row")
    h, w, _ = batch[0].shape
    mosaic = np.ones((nrows * (h + gap) - gap, ncols * (w + gap) - gap, 3), dtype=np.float32)
    for i, image in enumerate(batch):
        top, left = (i // ncols) * (h + gap), (i % ncols) * (w + gap)
        mosaic[top:top + h, left:left + w] = image
    fig, ax = _figure_and_axes(ax, (size * ncols + 1.2, size * nrows + 0.6))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(ncols)],
                  [str(c + 1) for c in range(ncols)])
    labels = list(row_labels) if row_labels is not None else [str(r + 1) for r in range(nrows)]
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(nrows)], labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    _label(ax, title, xlabel, ylabel)
    return fig


def show_patches(
    image,
    patch_size: int,
    *,
    title: str | None = None,
    gap: float = 0.15,
    numbers: bool | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (4, 4),
) -> Figure:
    """An image cut into its grid of patch_size × patch_size patches, drawn apart with gaps.

    ``gap`` is the space between patches as a fraction of a patch; ``numbers`` writes each
    patch's position in the token sequence (row-major, as ``patchify`` orders them) on it, by
    default when the grid has at most 8 × 8 patches.
    """
    img = to_display_image(image)
    height, width, _ = img.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"a {height}×{width} image cannot be cut into {patch_size}×{patch_size} patches; "
            "use a patch size that divides both sides"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    if numbers is None:
        numbers = grid_h * grid_w <= 64
    scale = max(1, math.ceil(8 / patch_size))  # draw a patch at least 8 canvas pixels wide
    size = patch_size * scale
    space = max(1, round(gap * size))
    step = size + space
    canvas = np.zeros((grid_h * step - space, grid_w * step - space, 4))  # transparent gaps
    for row in range(grid_h):
        for col in range(grid_w):
            patch = img[row * patch_size:(row + 1) * patch_size,
                        col * patch_size:(col + 1) * patch_size]
            top, left = row * step, col * step
            canvas[top:top + size, left:left + size, :3] = patch.repeat(scale, 0).repeat(scale, 1)
            canvas[top:top + size, left:left + size, 3] = 1.0
    fig, ax = _figure_and_axes(ax, figsize)
    ax.imshow(canvas, interpolation="nearest")
    if numbers:
        for row in range(grid_h):
            for col in range(grid_w):
                ax.text(col * step + 0.06 * size, row * step + 0.06 * size,
                        str(row * grid_w + col), color="white", fontsize=7, ha="left", va="top",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "linewidth": 0})
    every = max(1, grid_w // 8)  # at most about 8 tick labels per axis
    ax.set_xticks([c * step + size / 2 - 0.5 for c in range(0, grid_w, every)],
                  [str(c) for c in range(0, grid_w, every)])
    ax.set_yticks([r * step + size / 2 - 0.5 for r in range(0, grid_h, every)],
                  [str(r) for r in range(0, grid_h, every)])
    if title is None:
        title = f"{grid_h}×{grid_w} = {grid_h * grid_w} patches of {patch_size}×{patch_size} pixels"
    _label(ax, title, "patch column", "patch row")
    return fig


# --- matrices -------------------------------------------------------------------------------


def heatmap(
    matrix,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.2, 4.2),
) -> Figure:
    """A 2-D matrix as a coloured grid with a colour bar.

    Entries that are -inf or NaN (masked attention scores, say) are drawn in light grey and
    written as "masked". ``annotate`` writes every value in its cell; by default when the matrix
    has at most 10 × 10 entries.
    """
    values = to_numpy(matrix).astype(np.float64)
    if values.ndim != 2:
        raise ValueError(
            f"heatmap needs a 2-D matrix, got shape {values.shape}; pick one, e.g. attn[0, 0]"
        )
    hidden = ~np.isfinite(values)
    shown = np.ma.masked_array(values, mask=hidden)
    colours = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")  # masked entries in light grey
    fig, ax = _figure_and_axes(ax, figsize)
    image = ax.imshow(shown, cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    if colorbar_label:
        bar.set_label(colorbar_label)
    rows, cols = values.shape
    if annotate is None:
        annotate = rows <= 10 and cols <= 10
    if annotate:
        low, high = image.get_clim()
        middle = (low + high) / 2
        for i in range(rows):
            for j in range(cols):
                if hidden[i, j]:
                    ax.text(j, i, "masked", ha="center", va="center", fontsize=7, color="#555555")
                else:
                    colour = "black" if values[i, j] > middle else "white"
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center",
                            fontsize=8, color=colour)
    if xticklabels is not None:
        ax.set_xticks(range(cols), list(xticklabels))
    if yticklabels is not None:
        ax.set_yticks(range(rows), list(yticklabels))
    _label(ax, title, xlabel, ylabel)
    return fig


def attention_heatmap(
    attn,
    tokens: Sequence[str] | None = None,
    *,
    title: str = "Attention weights",
    annotate: bool | None = None,
    vmax: float | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.2, 4.2),
) -> Figure:
    """An attention matrix A (queries × keys): row i shows how query i spreads its attention."""
    return heatmap(
        attn, title=title, xlabel="key j (attended to)", ylabel="query i (attending)",
        xticklabels=tokens, yticklabels=tokens, annotate=annotate, vmin=0.0, vmax=vmax,
        colorbar_label="weight $A_{ij}$", ax=ax, figsize=figsize,
    )


def heatmaps(
    matrices: Mapping[str, object],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    annotate: bool | None = None,
    vmin: float | None = None,
    colorbar_label: str | None = None,
    size: float = 4.2,
) -> Figure:
    """Several matrices side by side on one colour scale, one panel per entry of ``matrices``
    (panel title -> matrix)."""
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(size * len(matrices) + 0.8, size), squeeze=False,
        layout="constrained",
    )
    values = [to_numpy(m).astype(np.float64) for m in matrices.values()]
    finite = [v[np.isfinite(v)] for v in values]  # masked (-inf) entries do not set the scale
    vmax = max(float(v.max()) for v in finite if v.size)
    if vmin is None:
        vmin = min(float(v.min()) for v in finite if v.size)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        heatmap(matrix, title=name, xlabel=xlabel, ylabel=ylabel, xticklabels=xticklabels,
                yticklabels=yticklabels, annotate=annotate, vmin=vmin, vmax=vmax,
                colorbar_label=colorbar_label, ax=ax)
    fig.suptitle(title)
    return fig


def attention_heatmaps(
    maps: Mapping[str, object],
    tokens: Sequence[str] | None = None,
    *,
    title: str = "Attention weights",
    annotate: bool | None = None,
    size: float = 4.2,
) -> Figure:
    """Several attention matrices side by side, one per entry of ``maps`` (panel title -> A)."""
    return heatmaps(
        maps, title=title, xlabel="key j (attended to)", ylabel="query i (attending)",
        xticklabels=tokens, yticklabels=tokens, annotate=annotate, vmin=0.0,
        colorbar_label="weight $A_{ij}$", size=size,
    )


# --- curves and distributions ---------------------------------------------------------------


def plot_lines(
    xs,
    ys: Mapping[str, object],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    dashed: Sequence[str] = (),
    markers: bool = True,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.5, 3.8),
) -> Figure:
    """One line per entry of ``ys`` (legend name -> values at ``xs``); names in ``dashed`` are
    drawn dashed without markers (fitted or reference curves). Log axes on request."""
    x = to_numpy(xs)
    fig, ax = _figure_and_axes(ax, figsize)
    for name, values in ys.items():
        y = to_numpy(values)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.shape} values for {x.shape} x positions")
        if name in dashed:
            ax.plot(x, y, "--", color="grey", label=name)
        else:
            ax.plot(x, y, marker="o" if markers else None, markersize=4, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 64 rather than 2^6
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _label(ax, title, xlabel, ylabel)
    return fig


def histograms(
    samples: Mapping[str, object],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "density",
    bins: int = 60,
    density: bool = True,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.5, 3.8),
) -> Figure:
    """Overlaid histograms, one per entry of ``samples`` (legend name -> values), on shared bins."""
    arrays = {name: to_numpy(values).ravel() for name, values in samples.items()}
    everything = np.concatenate(list(arrays.values()))
    edges = np.histogram_bin_edges(everything, bins=bins)
    fig, ax = _figure_and_axes(ax, figsize)
    for name, values in arrays.items():
        ax.hist(values, bins=edges, density=density, alpha=0.55, label=name)
    ax.legend(fontsize=8)
    _label(ax, title, xlabel, ylabel)
    return fig


# --- position embeddings --------------------------------------------------------------------


def similarity_grid(
    similarity,
    grid: tuple[int, int],
    *,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.6, 5),
) -> Figure:
    """How similar each position of a grid_h × grid_w patch grid is to every other, drawn as in
    the ViT paper: the tile at (row r, column c) is position (r, c)'s row of ``similarity``
    folded back into the grid's shape, so a bright spot shows which positions resemble it.

    ``similarity`` is (N, N) with N = grid_h · grid_w positions in row-major (``patchify``)
    order, e.g. the cosine similarities of a position table's rows. The colour scale spans the
    values shown unless ``vmin`` / ``vmax`` fix it (-1 and 1 to compare tables).
    """
    values = to_numpy(similarity).astype(np.float64)
    grid_h, grid_w = grid
    n = grid_h * grid_w
    if values.shape != (n, n):
        raise ValueError(
            f"a {grid_h}×{grid_w} grid has {n} positions, so similarity must be ({n}, {n}), got "
            f"{values.shape}; drop a class token's row and column first (similarity[1:, 1:])"
        )
    tiles = values.reshape(grid_h, grid_w, grid_h, grid_w)  # (row, col) -> its (gh, gw) tile
    step_h, step_w = grid_h + 1, grid_w + 1  # one empty cell between tiles
    mosaic = np.full((grid_h * step_h - 1, grid_w * step_w - 1), np.nan)
    for row in range(grid_h):
        for col in range(grid_w):
            mosaic[row * step_h:row * step_h + grid_h, col * step_w:col * step_w + grid_w] = (
                tiles[row, col]
            )
    fig, ax = _figure_and_axes(ax, figsize)
    colours = plt.get_cmap(cmap).with_extremes(bad="white")  # the gaps between tiles
    image = ax.imshow(np.ma.masked_invalid(mosaic), cmap=colours, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85).set_label("cosine similarity")
    ticks_every = max(1, grid_w // 8)
    ax.set_xticks([c * step_w + (grid_w - 1) / 2 for c in range(0, grid_w, ticks_every)],
                  [str(c) for c in range(0, grid_w, ticks_every)])
    ax.set_yticks([r * step_h + (grid_h - 1) / 2 for r in range(0, grid_h, ticks_every)],
                  [str(r) for r in range(0, grid_h, ticks_every)])
    _label(ax, title, "patch column of the position", "patch row of the position")
    return fig


# --- looking inside a trained model ---------------------------------------------------------


def heatmap_overlays(
    images,
    heatmaps,
    captions: Sequence[str] | None = None,
    *,
    title: str,
    ncols: int = 8,
    size: float = 1.5,
    alpha: float = 0.6,
    cmap: str = "inferno",
) -> Figure:
    """Images (B, C, H, W) above the same images overlaid with a coarse heat map each
    (B, h, w), e.g. one value per patch, stretched over the image and smoothed. Each heat map is
    scaled to its own range, so the colours show where a map is high, not how high."""
    batch, maps = to_numpy(images), to_numpy(heatmaps).astype(np.float64)
    if maps.ndim != 3 or len(maps) != len(batch):
        raise ValueError(
            f"need one 2-D heat map per image: {len(batch)} images but heat maps shaped "
            f"{maps.shape}; reshape each to the patch grid, e.g. (B, grid, grid)"
        )
    n = len(batch)
    ncols = min(ncols, n)
    groups = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        2 * groups, ncols, figsize=(size * ncols, 2 * size * groups + 0.5), squeeze=False,
        layout="constrained",
    )
    for i in range(groups * ncols):
        top, bottom = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
        top.axis("off")
        bottom.axis("off")
        if i >= n:
            continue
        img = to_display_image(batch[i])
        height, width, _ = img.shape
        top.imshow(img, interpolation="nearest")
        if captions is not None:
            top.set_title(captions[i], fontsize=8)
        bottom.imshow(img, interpolation="nearest")
        bottom.imshow(maps[i], cmap=cmap, alpha=alpha, interpolation="bilinear",
                      extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    fig.suptitle(title)
    return fig


def layer_head_scatter(
    values,
    *,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "reference",
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.5, 3.8),
) -> Figure:
    """One dot per head at each block for a (blocks, heads) table, e.g. the mean attention
    distance, with the mean over heads as a line and an optional horizontal reference line."""
    table = to_numpy(values).astype(np.float64)
    if table.ndim != 2:
        raise ValueError(f"expected a (blocks, heads) table, got shape {table.shape}")
    blocks, heads = table.shape
    layer = np.arange(1, blocks + 1)
    fig, ax = _figure_and_axes(ax, figsize)
    for head in range(heads):
        ax.scatter(layer, table[:, head], s=18, alpha=0.7, label=f"head {head}" if heads <= 8
                   else None)
    ax.plot(layer, table.mean(axis=1), color="black", linewidth=1, label="mean over heads")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", label=reference_label)
    ax.set_xticks(layer)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _label(ax, title, "block", ylabel)
    return fig
