"""Two models' cross-lab typings side by side, image by image (``bm-cells compare-crosslab``).

On BCCD's 348 fields one model's type accuracy has a 95% interval of about ±4.5 points,
so two rows of ``crosslab`` a few points apart look alike. Both models typed the same
images, though: the images where exactly one of them is right decide. McNemar's exact
test on those gives the p-value, and the paired difference its own, much narrower,
interval.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..errors import InputError


def paired_difference(a_right, b_right) -> dict:
    """Compare two models' right/wrong on the same images.

    Parameters
    ----------
    a_right, b_right : sequences of bool, one per image, in the same order

    Returns
    -------
    dict
        ``n``, ``accuracy_a``, ``accuracy_b``, ``difference`` (b - a), ``difference_ci95``
        (Wald interval of a paired difference), ``only_a`` and ``only_b`` (images only
        that model got right) and ``p_mcnemar`` (exact two-sided McNemar test on them).
    """
    from scipy.stats import binomtest

    a = pd.Series(a_right, dtype=bool).to_numpy()
    b = pd.Series(b_right, dtype=bool).to_numpy()
    if len(a) != len(b) or not len(a):
        raise InputError(f"paired comparison needs the same images, at least one: got {len(a)} and {len(b)}")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    d = (only_b - only_a) / n
    se = math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": n, "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()), "difference": d,
            "difference_ci95": [d - 1.96 * se, d + 1.96 * se], "only_a": only_a, "only_b": only_b,
            "p_mcnemar": float(p)}


def compare_runs(dir_a, dir_b) -> pd.DataFrame:
    """Pair the typings two ``crosslab`` runs wrote (``bccd_fields.csv``, ``images_*.csv``)
    by file and image, one row per file both runs have (see :func:`paired_difference`)."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    names = sorted({p.name for p in dir_a.glob("*.csv")} & {p.name for p in dir_b.glob("*.csv")}
                   - {"detector_crosslab.csv"})
    if not names:
        raise InputError(f"compare-crosslab: {dir_a} and {dir_b} share no typings (bccd_fields.csv, "
                         "images_*.csv); run crosslab --bccd/--images with each model into its own --out")
    rows = []
    for name in names:
        a, b = (pd.read_csv(d / name, usecols=["image", "truth", "correct"]) for d in (dir_a, dir_b))
        both = a.merge(b, on=["image", "truth"], suffixes=("_a", "_b"))
        if both.empty:
            raise InputError(f"compare-crosslab: {name} holds different images in {dir_a} and {dir_b}")
        rows.append({"typings": name[:-4], **paired_difference(both["correct_a"], both["correct_b"]),
                     "unpaired": len(a) + len(b) - 2 * len(both)})
    return pd.DataFrame(rows)


def format_comparison(df: pd.DataFrame) -> str:
    """One line per typing: both accuracies, the difference with its interval, the images
    only one model got right and McNemar's p."""
    lines = []
    for r in df.itertuples():
        lo, hi = r.difference_ci95
        lines.append(f"{r.typings} (n={r.n}): A {r.accuracy_a:.3f}, B {r.accuracy_b:.3f}, "
                     f"B - A {r.difference:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}); "
                     f"right only with A {r.only_a}, only with B {r.only_b}; McNemar p {r.p_mcnemar:.3g}"
                     + (f"; {r.unpaired} images in one run only, left out" if r.unpaired else ""))
    return "\n".join(lines)
