"""The cell table's schema: one row per cell, as in ``cells.csv`` and a cells layer's features.

Columns: :data:`CELL_COLUMNS` (id, level-0 centre and box, detector score, class, the
model's class, confidence, P(blast), P(atypical), counting-area score), then one
``prob_<CODE>`` column per class of the model, in the model's order. Every reader and
writer of the table names the probability columns through this module.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CELL_COLUMNS = ["cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "det_score",
                "label", "model_label", "confidence", "p_blast", "p_atypical", "area_score"]
PROB_PREFIX = "prob_"


def prob_column(code: str) -> str:
    """The probability column of class ``code``."""
    return f"{PROB_PREFIX}{code}"


def prob_columns(cells: pd.DataFrame) -> list[str]:
    """The ``prob_<CODE>`` columns of a cell table, in table order."""
    return [c for c in cells.columns if str(c).startswith(PROB_PREFIX)]


def classes_of(cells: pd.DataFrame) -> list[str]:
    """The model's classes, from the ``prob_<CODE>`` columns (in column order)."""
    return [c[len(PROB_PREFIX):] for c in prob_columns(cells)]


def probabilities(row) -> dict[str, float]:
    """``{code: probability}`` of one cell (a table row or a dict)."""
    items = row.items() if hasattr(row, "items") else dict(row).items()
    return {str(k)[len(PROB_PREFIX):]: float(v) for k, v in items if str(k).startswith(PROB_PREFIX)}


def probability_matrix(cells: pd.DataFrame) -> np.ndarray | None:
    """The (n cells, n classes) probabilities in :func:`classes_of` order; None without any."""
    cols = prob_columns(cells)
    return cells[cols].to_numpy(np.float64) if cols else None
