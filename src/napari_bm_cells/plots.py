"""Qt-free figures of an analysis as PNG bytes (matplotlib ``Figure``, no pyplot)."""
from __future__ import annotations

import io

import numpy as np

from .taxonomy import colour_of


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _bar_codes(summary: dict, classes=None) -> list[str]:
    """Classes to draw: ``classes`` order first, then the rest; empty ones dropped
    unless every class is empty."""
    counts = summary.get("counts", {})
    codes = [c for c in (classes or counts) if c in counts]
    codes += [c for c in counts if c not in codes]
    return [c for c in codes if counts[c] > 0] or codes


def draw_class_histogram(ax, summary: dict, classes=None) -> None:
    """Bars of cells per class on ``ax``: class colours, integer y ticks, the % of the
    counted cells above each bar; excluded classes hatched and marked "excl".

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    summary : dict
        A differential (``counts``, ``percent``, ``excluded_codes``, ``n_counted``).
    classes : sequence of str, optional
        Bar order (the summary's order by default).
    """
    from matplotlib.ticker import MaxNLocator

    counts, percent = summary.get("counts", {}), summary.get("percent", {})
    excl = set(summary.get("excluded_codes", []))
    codes = _bar_codes(summary, classes)
    vals = [counts[c] for c in codes]
    bars = ax.bar(range(len(codes)), vals, color=[colour_of(c) for c in codes],
                  edgecolor="black", linewidth=0.6)
    for b, c in zip(bars, codes):
        if c in excl or percent.get(c) is None:
            b.set_hatch("//")
            text = "excl"
        else:
            text = f"{percent[c]:.0f}%" if summary.get("n_counted") else ""
        ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(codes)))
    ax.set_xticklabels(codes, rotation=90, fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(vals + [1]) * 1.15)
    ax.set_ylabel("cells")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{summary.get('n_counted', 0)} counted of {summary.get('n_cells', 0)} cells",
                 fontsize=9)


def histogram_png_bytes(summary: dict, classes=None) -> bytes:
    """The differential's histogram (see :func:`draw_class_histogram`) as PNG bytes.

    Parameters
    ----------
    summary : dict
        A differential or analysis summary.
    classes : sequence of str, optional
        Bar order.

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=100)
    draw_class_histogram(fig.add_subplot(111), summary, classes)
    fig.tight_layout()
    return _png(fig)


def area_map_png_bytes(scores: np.ndarray) -> bytes:
    """A map of counting-area scores with a colour bar, as PNG bytes.

    Parameters
    ----------
    scores : (rows, cols) float array
        Score per region in 0-1; NaN for regions not scored (drawn grey).

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"area scores must be 2-D, got shape {scores.shape}")
    rows, cols = scores.shape
    aspect = rows / max(cols, 1)
    fig = Figure(figsize=(5, max(1.6, min(6.0, 4.2 * aspect + 0.6))), dpi=100)
    ax = fig.add_subplot(111)
    cmap = colormaps["viridis"].with_extremes(bad="#d0d0d0")
    im = ax.imshow(np.ma.masked_invalid(scores), cmap=cmap, vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("counting-area score")
    fig.tight_layout()
    return _png(fig)
