"""Figures: per-sequence bar chart, relevance overlays of the most relevant slices, the paper's Fig. 1.

Matplotlib with the Agg backend (no screen); every PNG is written atomically.
Relevance is shown with a symmetric diverging map (blue negative, red positive),
transparent near zero, over the sequence in grey; the tumor outline in yellow.
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

from .sequences import DISPLAY_NAMES

SEQUENCE_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def pyplot():
    """matplotlib.pyplot on the Agg backend unless one was chosen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Save a matplotlib figure to PNG atomically and close it."""
    from .case_io import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    pyplot().close(fig)
    return write_bytes(buf.getvalue(), path)


def display_max(maps: np.ndarray, percentile: float = 99.5) -> float:
    """Colour range +-this for relevance: the ``percentile`` of |relevance| over non-zero voxels, so that a few
    extreme voxels do not push everything else into the transparent band near zero."""
    a = np.abs(np.asarray(maps, dtype=np.float64))
    a = a[a > 0]
    return float(np.percentile(a, percentile)) if a.size else 1.0


def relevance_cmap():
    """Blue-white-red, with alpha rising from 0 at zero relevance."""
    from matplotlib.colors import LinearSegmentedColormap

    base = pyplot().get_cmap("RdBu_r")(np.linspace(0, 1, 256))
    base[:, 3] = np.clip(np.abs(np.linspace(-1, 1, 256)) * 2.5, 0, 1)
    return LinearSegmentedColormap.from_list("relevance", base)


def _error_bars(values, interval):
    """Matplotlib ``yerr`` (2, n) of an interval ``(low, high)`` around ``values`` (clipped at 0)."""
    low, high = (np.asarray(v, float) for v in interval)
    values = np.asarray(values, float)
    return np.clip(np.stack([values - low, high - values]), 0, None)


def bar_chart(shares: Sequence[float], path: str, title: str = "Sequence relevance",
              positive: Optional[Sequence[float]] = None, negative: Optional[Sequence[float]] = None,
              names: Optional[Sequence[str]] = None, interval=None, necessity=None) -> str:
    """Normalised relevance per sequence (sums to 1), optionally with positive/negative mass and, as error
    bars, an interval ``(low, high)`` per sequence (e.g. 2.5/97.5 percentiles over resampled regions B).
    ``necessity`` (``(dice_loss, shapley_dice)`` per sequence) adds a second panel: how much the segmentation
    needs each sequence."""
    names = list(names or DISPLAY_NAMES)[: len(shares)]
    plt = pyplot()
    if necessity is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    else:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 3.6), dpi=100)
        _necessity_panel(ax2, names, *necessity)
    _relevance_panel(ax, np.asarray(shares, float), names, positive, negative, interval)
    ax.set_title(title)
    return save_figure(fig, path)


def _relevance_panel(ax, shares, names, positive, negative, interval) -> None:
    x = np.arange(len(shares))
    ax.bar(x, shares, color=[SEQUENCE_COLOURS[i % len(SEQUENCE_COLOURS)] for i in x], label="net share",
           yerr=None if interval is None else _error_bars(shares, interval), capsize=4,
           error_kw={"label": "95 % of resampled B"} if interval is not None else None)
    if interval is not None and (positive is None or negative is None):
        ax.legend(fontsize=8, loc="best")
    if positive is not None and negative is not None:
        ax.scatter(x, positive, marker="^", color="k", s=18, label="positive mass", zorder=3)
        ax.scatter(x, negative, marker="v", color="grey", s=18, label="negative mass", zorder=3)
        ax.legend(fontsize=8, loc="best")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("normalised relevance")
    tops = shares if interval is None else np.maximum(shares, interval[1])  # above the error bar
    for xi, v, top in zip(x, shares, tops):
        ax.annotate(f"{v:.2f}", (xi, top if v >= 0 else v), ha="center", va="bottom" if v >= 0 else "top",
                    fontsize=8)


def _necessity_panel(ax, names, dice_loss, shapley) -> None:
    """Grouped bars per sequence: the Dice lost without it (all others kept) and its Shapley value of Dice."""
    x = np.arange(len(names))
    ax.bar(x - 0.2, dice_loss, width=0.4, color="#999999", label="Dice lost without it")
    ax.bar(x + 0.2, shapley, width=0.4, color=[SEQUENCE_COLOURS[i % len(SEQUENCE_COLOURS)] for i in x],
           label="Shapley value of Dice")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("Dice")
    ax.set_title("how much the segmentation needs each sequence")
    ax.legend(fontsize=8, loc="best")


def most_relevant_slices(maps: np.ndarray, k: int = 3) -> list[int]:
    """Axial slices with the largest total |relevance| (over sequences), best first."""
    per_slice = np.abs(maps).sum(axis=(0, 2, 3))
    return [int(i) for i in np.argsort(per_slice)[::-1][:k]]


def overlay_slice(image: np.ndarray, maps: np.ndarray, z: int, path: str, tumor: Optional[np.ndarray] = None,
                  region: Optional[np.ndarray] = None, title: str = "", names: Optional[Sequence[str]] = None) -> str:
    """One axial slice: a panel per sequence (grey, its relevance overlaid, tumor outline) and a colour bar."""
    plt = pyplot()
    names = list(names or DISPLAY_NAMES)
    n = maps.shape[0]
    vmax = display_max(maps[:, z])
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n + 0.8, 2.6), dpi=100)
    cmap = relevance_cmap()
    im = None
    for c, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(image[c, z], cmap="gray", interpolation="nearest")
        im = ax.imshow(maps[c, z], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        if tumor is not None and tumor[z].any():
            ax.contour(tumor[z].astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        if region is not None and region[z].any():
            ax.contour(region[z].astype(float), levels=[0.5], colors="lime", linewidths=0.6, linestyles="dashed")
        ax.set_title(f"{names[c]}\n{maps[c].sum() / maps.sum():+.2f}" if maps.sum() else names[c],
                     fontsize=8)
        ax.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="relevance")
    fig.suptitle(title or f"slice {z}", fontsize=9)
    return save_figure(fig, path)


def cohort_figure(names: Sequence[str], shares: np.ndarray, path: str,
                  title: str = "Normalised relevance per sequence", low=None, high=None, sequence_names=None,
                  necessity=None) -> str:
    """The paper's Fig. 1: one colour per patient (dots joined by lines), the mean as black bars; with ``low``
    and ``high`` (cases x sequences, e.g. 2.5/97.5 percentiles over resampled regions B) each dot gets its
    interval as an error bar.  ``necessity`` (cases x sequences: Shapley values of Dice) adds a second panel
    drawn the same way."""
    plt = pyplot()
    shares = np.asarray(shares, float)
    sequence_names = list(sequence_names or DISPLAY_NAMES)[: shares.shape[1]]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))
    if necessity is None:
        fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=100)
    else:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13.0, 4.0), dpi=100)
        _cohort_panel(ax2, names, np.asarray(necessity, float), sequence_names, colours)
        ax2.set_ylabel("Shapley value of Dice")
        ax2.set_title("how much the segmentation needs each sequence")
    _cohort_panel(ax, names, shares, sequence_names, colours, low, high)
    ax.set_ylabel("normalised relevance")
    ax.set_title(title)
    if len(names) <= 20:
        (ax if necessity is None else ax2).legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, path)


def _cohort_panel(ax, names, values, sequence_names, colours, low=None, high=None) -> None:
    x = np.arange(values.shape[1])
    ax.bar(x, values.mean(axis=0), color="none", edgecolor="k", lw=1.2, label="mean", zorder=1)
    for i, (name, row) in enumerate(zip(names, values)):
        jitter = (i - (len(names) - 1) / 2) * 0.25 / max(len(names), 1)
        ax.plot(x + jitter, row, "o-", ms=4, lw=0.6, color=colours[i], label=name, zorder=2)
        if low is not None and high is not None:
            ax.errorbar(x + jitter, row, yerr=_error_bars(row, (low[i], high[i])), fmt="none", ecolor=colours[i],
                        elinewidth=0.8, capsize=2, zorder=2)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, sequence_names, rotation=20)


def png_data_uri(path: str) -> str:
    import base64

    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


__all__ = ["bar_chart", "overlay_slice", "most_relevant_slices", "cohort_figure", "relevance_cmap",
           "png_data_uri", "save_figure"]
