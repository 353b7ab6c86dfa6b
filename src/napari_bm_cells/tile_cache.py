"""Level-0 windows cut from a slide's storage tiles, each tile decoded once.

The classification stage reads, block by block, a level-0 window around the block's
cells; neighbouring windows overlap by a crop's side (a cell near a block edge needs
pixels of the next block). Reading each window whole decoded the overlaps again (1.7x
the slide for 2048 px blocks and 300 px crops) and decoded tiles no crop touches (blood
films, sparse regions). :class:`TileCache` decodes only the tiles some crop needs and
keeps them, least recently used out first, within a memory budget; a
:class:`TiledWindow` hands out crops cut from them, with no window-sized array.
Slides wider than the budget's band (~40k px at 512 px tiles) lose the reuse between
block rows, not correctness.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np

from .io import Slide

#: default memory budget of a :class:`TileCache`: the tiles a 30k px wide slide's next
#: block row shares with the current one (two rows of 512 px RGB tiles: ~90 MB)
CACHE_BYTES = 128 << 20


class TileCache:
    """Decoded level-0 tiles of ``slide`` (its :attr:`~napari_bm_cells.io.Slide.tile_shape`
    grid), read on demand and kept up to ``max_bytes``."""

    def __init__(self, slide: Slide, max_bytes: int = CACHE_BYTES):
        if slide.tile_shape is None:
            raise ValueError("TileCache needs a tiled (file-backed) slide")
        self.slide, self.max_bytes = slide, int(max_bytes)
        self.tile = slide.tile_shape
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self.decoded = 0  # tiles read from the slide so far (for tests and benchmarks)

    @classmethod
    def of(cls, slide: Slide, max_bytes: int = CACHE_BYTES) -> TileCache | None:
        """A cache for a tiled slide, None for an in-memory one (nothing to decode)."""
        return cls(slide, max_bytes) if slide.tile_shape else None

    def read_window(self, y0: int, x0: int, y1: int, x1: int, parts=None) -> TiledWindow:
        """Level-0 window ``[y0:y1, x0:x1]``, cut from the tiles when indexed (as
        :meth:`Slide.read_region` would return it, edge padded outside the slide).

        Parameters
        ----------
        parts : array-like of (y0, x0, y1, x1), optional
            The level-0 rectangles the caller will index; their tiles are read now, a
            run of neighbouring tiles per read. Default: the whole window.
        """
        H, W = self.slide.shape
        keys = set()
        for py0, px0, py1, px1 in parts if parts is not None else [(y0, x0, y1, x1)]:
            ya, yb = max(int(py0), y0, 0), min(int(np.ceil(py1)), y1, H)
            xa, xb = max(int(px0), x0, 0), min(int(np.ceil(px1)), x1, W)
            if yb > ya and xb > xa:
                keys.update(self._keys(ya, xa, yb, xb))
        self._fetch(sorted(keys))
        return TiledWindow(self, y0, x0, y1, x1)

    def region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Level-0 ``[y0:y1, x0:x1]`` from the tiles, edge padded outside the slide."""
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        H, W = self.slide.shape
        ty, tx = self.tile
        iy0, ix0 = min(max(y0, 0), H - 1), min(max(x0, 0), W - 1)
        iy1, ix1 = max(min(y1, H), iy0 + 1), max(min(x1, W), ix0 + 1)  # at least the edge pixel
        keys = self._keys(iy0, ix0, iy1, ix1)
        self._fetch(keys)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        top, left = min(max(iy0 - y0, 0), y1 - y0 - 1), min(max(ix0 - x0, 0), x1 - x0 - 1)
        for r, c in keys:
            t = self._tiles[(r, c)]
            ya, xa = max(r * ty, iy0), max(c * tx, ix0)
            yb, xb = min(r * ty + t.shape[0], iy1), min(c * tx + t.shape[1], ix1)
            out[top + ya - iy0:top + yb - iy0, left + xa - ix0:left + xb - ix0] = \
                t[ya - r * ty:yb - r * ty, xa - c * tx:xb - c * tx]
        # outside the slide: repeat its edge pixels (as read_region does)
        bottom, right = top + iy1 - iy0, left + ix1 - ix0
        out[:top] = out[top]
        out[bottom:] = out[bottom - 1]
        out[:, :left] = out[:, left:left + 1]
        out[:, right:] = out[:, right - 1:right]
        return out

    def _keys(self, y0: int, x0: int, y1: int, x1: int) -> list[tuple[int, int]]:
        """(row, col) of the tiles under a non-empty region inside the slide."""
        ty, tx = self.tile
        return list(itertools.product(range(y0 // ty, (y1 - 1) // ty + 1), range(x0 // tx, (x1 - 1) // tx + 1)))

    def _fetch(self, keys):
        """Read the missing tiles among ``keys``, a run of neighbouring tiles per read,
        and mark all of them most recently used (never evicted by this fetch)."""
        missing = [k for k in keys if k not in self._tiles]
        for k in keys:
            if k in self._tiles:
                self._tiles.move_to_end(k)
        if not missing:
            return
        H, W = self.slide.shape
        ty, tx = self.tile
        rows = np.array([k[0] for k in missing])
        cols = np.array([k[1] for k in missing])
        grid = np.zeros((rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), bool)
        grid[rows - rows.min(), cols - cols.min()] = True
        for (ra, rb), (ca, cb) in grid_rects(grid):
            ra, rb, ca, cb = ra + rows.min(), rb + rows.min(), ca + cols.min(), cb + cols.min()
            y0, x0 = int(ra * ty), int(ca * tx)
            block = self.slide.read_region(y0, x0, min(int(rb * ty), H), min(int(cb * tx), W))
            for r in range(ra, rb):
                for c in range(ca, cb):
                    # a copy: a view would keep the whole read alive while one tile is
                    # still in use, and the budget would not bound memory
                    t = block[r * ty - y0:(r + 1) * ty - y0, c * tx - x0:(c + 1) * tx - x0].copy()
                    self._tiles[(int(r), int(c))] = t
                    self._bytes += t.nbytes
                    self.decoded += 1
        while self._bytes > self.max_bytes and len(self._tiles) > len(keys):
            self._bytes -= self._tiles.popitem(last=False)[1].nbytes


def grid_rects(need: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Cover the True cells of a 2-D grid with rectangles ``((r0, r1), (c0, c1))``: runs
    along each row, merged down the rows while the next row has the same run (fewer,
    larger reads)."""
    open_runs: dict[tuple[int, int], int] = {}  # run (c0, c1) -> first row
    out = []
    for r, row in enumerate(np.vstack([need, np.zeros((1, need.shape[1]), bool)])):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(np.int8), 0]))
        runs = set(zip(edges[::2].tolist(), edges[1::2].tolist()))
        for run in [k for k in open_runs if k not in runs]:
            out.append(((open_runs.pop(run), r), run))
        for run in runs - open_runs.keys():
            open_runs[run] = r
    return out


class TiledWindow:
    """A level-0 window of a slide whose pixels come from a :class:`TileCache` when
    indexed with two slices (what :func:`~napari_bm_cells.crop.square_crop` does): no
    window-sized array is ever assembled."""

    def __init__(self, cache: TileCache, y0: int, x0: int, y1: int, x1: int):
        self.cache, self.origin = cache, (y0, x0)
        self.shape = (y1 - y0, x1 - x0, 3)

    def __getitem__(self, key) -> np.ndarray:
        (a, b, sy), (c, d, sx) = (k.indices(n) for k, n in zip(key, self.shape))
        if sy != 1 or sx != 1:
            raise IndexError("TiledWindow takes two slices with step 1")
        y0, x0 = self.origin
        return self.cache.region(y0 + a, x0 + c, y0 + max(a, b), x0 + max(c, d))
