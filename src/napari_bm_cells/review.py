"""Review helpers on a cell table (the ``cells`` DataFrame of an analysis / cells.csv).

Pure functions, no Qt: the napari review widgets call them to order cells for a human
to check, show a gallery of one class, roll counts up by lineage and record
corrections. Probability columns are the ``prob_<CODE>`` columns the pipeline writes.

Uncertainty scores (higher = review sooner), see :func:`uncertainty_scores`:

``margin`` (default)
    ``1 - (p1 - p2)``: one minus the gap between the two largest class probabilities.
    1 when the model cannot tell its top two classes apart, 0 when it is sure.
``confidence``
    ``1 - p1``: one minus the top probability (the ``confidence`` column).
``entropy``
    Shannon entropy of the class probabilities divided by ``log(n_classes)`` (0..1).
``p_blast`` / ``p_atypical``
    The cell's P(blast) / P(atypical) (columns of the same names): suspicious cells
    first, for a blast-focused review.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .cells_table import classes_of, prob_column, probability_matrix
from .errors import InputError
from .taxonomy import NON_LEUKOCYTE_CODES, UNCLASSIFIED, is_known

SCORES = ("margin", "confidence", "entropy", "p_blast", "p_atypical")
_probs = probability_matrix


def uncertainty_scores(cells: pd.DataFrame, method: str = "margin") -> pd.Series:
    """Per-cell review score, higher = more in need of a human look.

    Parameters
    ----------
    cells : DataFrame
        Cell table with ``prob_<CODE>`` columns (or at least ``confidence`` for
        ``margin`` / ``confidence``; ``p_blast`` / ``p_atypical`` for those scores).
    method : {"margin", "confidence", "entropy", "p_blast", "p_atypical"}
        See the module docstring for the formulas.

    Returns
    -------
    Series
        float in [0, 1], indexed like ``cells``, named ``"score"``.
    """
    if method not in SCORES:
        raise InputError(f"uncertainty score {method!r}: choose one of {', '.join(SCORES)}")
    p = _probs(cells)
    if method in ("p_blast", "p_atypical"):
        if method not in cells.columns:
            raise InputError(f"the cell table has no {method!r} column")
        s = cells[method].to_numpy(np.float64)
    elif method == "entropy":
        if p is None:
            raise InputError("entropy needs the prob_<CODE> columns of the cell table")
        k = p.shape[1]
        q = np.clip(p, 1e-12, 1.0)
        s = -(p * np.log(q)).sum(1) / np.log(k) if k > 1 else np.zeros(len(p))
    elif p is not None and p.shape[1] >= 1:
        top = -np.sort(-p, axis=1)
        p1 = top[:, 0]
        if method == "confidence":
            s = 1.0 - p1
        else:
            p2 = top[:, 1] if p.shape[1] > 1 else np.zeros(len(p))
            s = 1.0 - (p1 - p2)
    elif "confidence" in cells.columns:
        # no probability columns: the margin cannot be computed, 1 - confidence is its bound
        s = 1.0 - cells["confidence"].to_numpy(np.float64)
    else:
        raise InputError("the cell table has neither prob_<CODE> nor confidence columns")
    return pd.Series(np.clip(s, 0.0, 1.0), index=cells.index, name="score")


def review_queue(cells: pd.DataFrame, by: str = "margin", reviewed_last: bool = True,
                 labels=None) -> list[int]:
    """Cell ids in the order a reviewer should see them.

    Parameters
    ----------
    cells : DataFrame
        Cell table with ``cell_id``.
    by : str
        An uncertainty score (see :func:`uncertainty_scores`; ``"p_blast"`` puts likely
        blasts first), sorted descending; ties keep ascending ``cell_id``.
    Unclassified cells (label ``UNK``, below the confidence threshold) come first: the
    differential waits for them.

    reviewed_last : bool
        Cells already reviewed (``reviewed`` column True) go after all unreviewed ones
        (each part ordered by the score); False ignores the review state.
    labels : iterable of str, optional
        Only cells whose current ``label`` is one of these.

    Returns
    -------
    list of int
    """
    if not len(cells):
        return []
    df = cells
    if labels is not None:
        df = df[df["label"].isin(list(labels))]
    score = uncertainty_scores(df, by)
    key = pd.DataFrame({"cell_id": df["cell_id"].to_numpy(), "score": score.to_numpy(),
                        "unclassified": df["label"].astype(str).eq(UNCLASSIFIED).to_numpy()})
    sort_by, asc = ["unclassified", "score", "cell_id"], [False, False, True]
    if reviewed_last and "reviewed" in df.columns:
        key["reviewed"] = df["reviewed"].eq(True).to_numpy()
        sort_by, asc = ["reviewed"] + sort_by, [True] + asc
    key = key.sort_values(sort_by, ascending=asc, kind="mergesort")
    return [int(c) for c in key["cell_id"]]


def gallery(cells: pd.DataFrame, label: str, lowest_first: bool = False) -> list[int]:
    """Cell ids currently labelled ``label``, ordered by the model's probability of it.

    The sort key is ``prob_<label>`` (equal to ``confidence`` for cells the model
    labelled; a cell a reviewer moved into the class ranks by how much the model agreed),
    or ``confidence`` when that column is missing. Most confident first, or least
    confident first with ``lowest_first`` (to hunt misclassifications). Ties keep
    ascending ``cell_id``.
    """
    df = cells[cells["label"].astype(str) == str(label)]
    if not len(df):
        return []
    col = prob_column(label)
    conf = df[col] if col in df.columns else df["confidence"]
    key = pd.DataFrame({"cell_id": df["cell_id"].to_numpy(), "conf": conf.to_numpy(np.float64)})
    key = key.sort_values(["conf", "cell_id"], ascending=[lowest_first, True], kind="mergesort")
    return [int(c) for c in key["cell_id"]]


def lineage_rollup(cells: pd.DataFrame, exclude=NON_LEUKOCYTE_CODES, classes=None) -> pd.DataFrame:
    """Counts and percentages per lineage of the current labels.

    Uses :func:`napari_bm_cells.count.differential` (same denominator rules as the
    summary: ``exclude`` codes are not counted). Returns one row per lineage of
    :data:`napari_bm_cells.taxonomy.LINEAGES` with ``count`` and ``percent``; the
    DataFrame's ``attrs["differential"]`` holds the full differential dict.
    """
    from .count import differential

    if classes is None:
        classes = classes_of(cells) or None
    d = differential(cells["label"].astype(str).tolist() if len(cells) else [], classes,
                     exclude=exclude)
    out = pd.DataFrame({"count": pd.Series(d["lineage_counts"]),
                        "percent": pd.Series(d["lineage_percent"])})
    out.index.name = "lineage"
    out.attrs["differential"] = d
    return out


def mark_reviewed(cells: pd.DataFrame, cell_id: int, new_label: str | None = None,
                  inplace: bool = False) -> pd.DataFrame:
    """Record that a human checked a cell, optionally correcting its class.

    Sets ``reviewed`` True; with ``new_label`` the ``label`` becomes that code (without
    it an unclassified ``UNK`` cell takes its ``model_label``) and the
    model's label is kept in ``model_label`` (set once, so repeated corrections keep
    the original). Model columns (``confidence``, ``prob_*``) are not touched.

    Parameters
    ----------
    cells : DataFrame
    cell_id : int
    new_label : str, optional
        A class code of the taxonomy or one of the table's ``prob_<CODE>`` classes.
    inplace : bool
        Modify ``cells`` instead of returning a copy.

    Returns
    -------
    DataFrame
        The updated table (``cells`` itself when ``inplace``).
    """
    df = cells if inplace else cells.copy()
    rows = np.flatnonzero(df["cell_id"].to_numpy() == int(cell_id))
    if not len(rows):
        raise InputError(f"no cell with cell_id {cell_id}")
    if "reviewed" not in df.columns:
        df["reviewed"] = False
    if "model_label" not in df.columns:
        df["model_label"] = df["label"].astype(object)
    ix = df.index[rows]
    df.loc[ix, "reviewed"] = True
    if new_label is not None:
        code = str(new_label).strip()
        known = set(classes_of(df))
        if not (is_known(code) or code in known):
            raise InputError(f"{new_label!r} is not a known class code")
        df.loc[ix, "label"] = code
    else:  # an unclassified cell the reviewer accepts takes the model's class
        unk = ix[df.loc[ix, "label"].astype(str).eq(UNCLASSIFIED).to_numpy()]
        df.loc[unk, "label"] = df.loc[unk, "model_label"]
    return df


def pending_review(cells: pd.DataFrame) -> int:
    """Unclassified (``UNK``) cells nobody has given a class yet."""
    if not len(cells) or "label" not in cells:
        return 0
    unk = cells["label"].astype(str).eq(UNCLASSIFIED)
    return int(unk.sum())


def sign_off(cells: pd.DataFrame, by: str, allow_pending: bool = False, when=None) -> dict:
    """The sign-off record of a reviewed differential (summary.json ``sign_off``).

    Parameters
    ----------
    cells : DataFrame
        The cell table as reviewed.
    by : str
        Who signs (a name or user id).
    allow_pending : bool
        Sign although unclassified cells remain (they stay out of the differential).
    when : datetime, optional
        Default now (local time zone).

    Raises
    ------
    InputError
        Without a name, or while unclassified cells remain and ``allow_pending`` is False.
    """
    from datetime import datetime

    by = (by or "").strip()
    if not by:
        raise InputError("sign-off needs the name of who signs")
    n = pending_review(cells)
    if n and not allow_pending:
        raise InputError(f"{n} unclassified (UNK) cell(s) still need a class: review them "
                         "(Next > starts with them) or allow signing with unclassified cells")
    when = when or datetime.now().astimezone()
    return {"by": by, "at": when.isoformat(timespec="seconds"), "n_cells": int(len(cells)),
            "n_reviewed": int(cells["reviewed"].eq(True).sum()) if "reviewed" in cells else 0,
            "n_unclassified": n}
