"""A matplotlib chart drawn off the GUI thread and shown as a picture.

Drawing the panel's histogram (text layout, Agg rasterising) takes hundreds of ms on a
small CPU; done on the GUI thread while cells stream in, napari stops responding for that
long at every recount. :class:`ChartView` owns one Agg ``Figure``, draws into it in a
worker thread, and shows the finished RGBA buffer in a ``QLabel``. Requests made while a
drawing is under way are coalesced: only the newest is drawn next.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

DPI = 90


class ChartView(QLabel):
    """Shows ``draw(figure, *args)``, drawn in a worker thread at the widget's size.

    Parameters
    ----------
    draw : callable
        ``draw(figure, *args)`` draws on the (Agg) figure; it may clear and reuse its axes.
    size : (float, float)
        The figure's size in inches before the widget is laid out.

    Attributes
    ----------
    figure : matplotlib.figure.Figure or None
        The figure, made (with matplotlib's import) in the worker at the first drawing;
        read it only while :attr:`busy` is False.
    busy : bool
        A drawing is under way or pending.
    """

    def __init__(self, draw: Callable, size=(4.2, 2.6), parent=None):
        super().__init__(parent)
        self.figure = None
        self._size = size
        self._draw = draw
        self._args: tuple | None = None  # the newest request, drawn next
        self._pending = False
        self._worker = None
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(80, 60)

    @property
    def busy(self) -> bool:
        return self._worker is not None or self._pending

    def sizeHint(self) -> QSize:
        return QSize(int(self._size[0] * DPI), int(self._size[1] * DPI))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 -- Qt's name; the picture may shrink
        return QSize(80, 60)

    def show_chart(self, *args) -> None:
        """Draw ``draw(figure, *args)`` soon; the newest request wins."""
        self._args = args
        self._pending = True
        self._start()

    def resizeEvent(self, event):  # noqa: N802 -- Qt's name
        super().resizeEvent(event)
        if self._args is not None:
            self.show_chart(*self._args)

    def _start(self) -> None:
        if self._worker is not None or not self._pending:
            return
        from superqt.utils import create_worker

        self._pending = False
        ratio = self.devicePixelRatioF()
        px = (max(self.width(), 80) * ratio, max(self.height(), 60) * ratio)
        self._worker = create_worker(self._render, self._args, px, ratio,
                                     _connect={"returned": self._show, "finished": self._done})
        self._worker.errored.connect(self._failed)

    def _render(self, args: tuple, px: tuple, ratio: float) -> QImage:
        if self.figure is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=self._size, dpi=DPI)
            FigureCanvasAgg(self.figure)
        fig = self.figure
        fig.set_dpi(DPI * ratio)
        fig.set_size_inches(px[0] / (DPI * ratio), px[1] / (DPI * ratio))
        self._draw(fig, *args)
        fig.canvas.draw()
        buf = np.asarray(fig.canvas.buffer_rgba())
        img = QImage(buf.tobytes(), buf.shape[1], buf.shape[0], 4 * buf.shape[1], QImage.Format_RGBA8888)
        img.setDevicePixelRatio(ratio)
        return img.copy()  # own its memory: the bytes object above goes away

    def _show(self, img: QImage) -> None:
        self.setPixmap(QPixmap.fromImage(img))

    def _failed(self, exc: BaseException) -> None:
        from .parts import notify_error

        notify_error("chart", exc)

    def _done(self) -> None:
        self._worker = None
        self._start()


# --------------------------------------------------------------------------- the panel's figures
def theme_colours(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's theme; white/black if unknown."""
    try:
        from napari.utils.theme import get_theme

        th = get_theme(viewer.theme)
        return th.background.as_hex(), th.text.as_hex()
    except Exception:  # noqa: BLE001
        return "#ffffff", "#000000"


def draw_histogram_figure(fig, s: dict, classes, fg: str, bg: str, by: str) -> None:
    """The panel's histogram on ``fig`` (drawn by :class:`ChartView` off the GUI thread)."""
    ax = fig.axes[0] if fig.axes else fig.add_subplot(111)
    fig.set_facecolor(bg)
    if s is None:
        ax.clear()
        ax.set_facecolor(bg)
        return
    from .layers import draw_histogram

    draw_histogram(ax, s, classes, text_colour=fg, by=by)
    ax.set_facecolor(bg)
    # fixed margins (room for the rotated class codes): a tight layout on every recount
    # costs a fifth of the drawing
    fig.subplots_adjust(left=0.14, right=0.98, top=0.9, bottom=0.3)


def draw_probabilities_figure(fig, probs: dict, fg: str, bg: str) -> None:
    """The selected cell's six most probable classes as horizontal bars on ``fig``."""
    ax = fig.axes[0] if fig.axes else fig.add_subplot(111)
    fig.set_facecolor(bg)
    ax.clear()
    ax.set_facecolor(bg)
    if not probs:
        return
    from ..taxonomy import colour_of

    top = sorted(probs.items(), key=lambda kv: -kv[1])[:6][::-1]
    ax.barh([k for k, _ in top], [v for _, v in top], color=[colour_of(k) for k, _ in top])
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=7, colors=fg)
    for sp in ax.spines.values():
        sp.set_color(fg)
    fig.subplots_adjust(left=0.22, right=0.96, top=0.96, bottom=0.14)
