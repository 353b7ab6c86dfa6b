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
    """Classes to draw, most cells first (ties in ``classes`` order, then the rest);
    empty ones dropped unless every class is empty."""
    counts = summary.get("counts", {})
    codes = [c for c in (classes or counts) if c in counts]
    codes += [c for c in counts if c not in codes]
    codes = sorted(codes, key=lambda c: -counts[c])  # stable: ties keep the model's order
    return [c for c in codes if counts[c] > 0] or codes


def draw_histogram(ax, summary: dict, classes=None, text_colour: str | None = None, by: str = "class") -> None:
    """Bars of cells per class on ``ax`` (most first, class colours, integer y ticks, the %
    of the counted cells above each bar and its 95% CI as a whisker; excluded classes
    hatched and marked "excl"), or with ``by="lineage"`` the roll-up over the lineages
    of the differentiation tree (counted cells only).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    summary : dict
        A differential (``counts``, ``percent``, ``ci95``, ``excluded_codes``, ``n_counted``).
    classes : sequence of str, optional
        Order among classes with as many cells (the model's order).
    text_colour : str, optional
        Colour of text, ticks and spines (a dark theme's foreground).
    by : {"class", "lineage"}
    """
    from matplotlib.ticker import MaxNLocator

    from .taxonomy import LINEAGE_PALETTE, UNKNOWN_COLOUR

    ax.clear()
    n = summary.get("n_counted", 0)
    if by == "lineage":
        counts = dict(summary.get("lineage_counts", {}))
        codes = list(counts)
        colours = [LINEAGE_PALETTE.get(c, UNKNOWN_COLOUR) for c in codes]
        percent = summary.get("lineage_percent", {})
        ci, excl = {}, set()
    else:
        counts, percent = summary.get("counts", {}), summary.get("percent", {})
        ci, excl = summary.get("ci95", {}), set(summary.get("excluded_codes", []))
        codes = _bar_codes(summary, classes)
        colours = [colour_of(c) for c in codes]
    vals = [counts[c] for c in codes]
    bars = ax.bar(range(len(codes)), vals, color=colours, edgecolor=text_colour or "black", linewidth=0.6)
    top = max(vals + [1])
    for k, (b, c) in enumerate(zip(bars, codes)):
        if c in excl or percent.get(c) is None:
            b.set_hatch("//")
            text = "excl"
        else:
            text = f"{percent[c]:.0f}%" if n else ""
            if n and ci.get(c):  # the CI in cells: how far this count may be from the truth
                lo, hi = ci[c][0] * n / 100, ci[c][1] * n / 100
                ax.plot([k, k], [lo, hi], color=text_colour or "black", linewidth=0.8)
                top = max(top, hi)
        ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7,
                    color=text_colour or "black")
    ax.set_xticks(range(len(codes)))
    ax.set_xticklabels(codes, rotation=90, fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("cells")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{n} counted of {summary.get('n_cells', 0)} cells", fontsize=9)
    if text_colour:
        for item in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]:
            item.set_color(text_colour)
        ax.tick_params(colors=text_colour)
        for sp in ax.spines.values():
            sp.set_color(text_colour)


def histogram_png_bytes(summary: dict, classes=None, title: str | None = None) -> bytes:
    """The differential's histogram (see :func:`draw_histogram`) as PNG bytes.

    Parameters
    ----------
    summary : dict
        A differential or analysis summary.
    classes : sequence of str, optional
        Order among classes with as many cells.
    title : str, optional
        A line above the plot (the sample's name).

    Returns
    -------
    bytes
        A PNG image.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), dpi=110)
    fig.set_facecolor("white")
    draw_histogram(fig.add_subplot(111), summary, classes)
    if title:
        fig.suptitle(title, fontsize=10)
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
