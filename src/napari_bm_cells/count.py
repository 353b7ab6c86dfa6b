"""Differential counts: percentages with 95% CIs, lineage roll-up, M:E ratio, blast %."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .taxonomy import (ATYPICAL_CODES, BLAST_CODES, ERYTHROID_LINEAGES, LINEAGES,
                       MYELOID_LINEAGES, NON_LEUKOCYTE_CODES, lineage_of, score_map)

TARGETS = (200, 500)


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (as fractions); (0, 0) when n == 0."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 0.0)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def differential(labels: Iterable[str], classes: Iterable[str] | None = None,
                 exclude: Iterable[str] = NON_LEUKOCYTE_CODES,
                 p_blast: np.ndarray | None = None, p_atypical: np.ndarray | None = None) -> dict:
    """Differential count of classified cells.

    Parameters
    ----------
    labels : iterable of str
        Class code of every cell.
    classes : iterable of str, optional
        The model's classes: every one gets a row, also when it has no cells, and the
        blast / atypical classes the model lacks are reported.
    exclude : iterable of str
        Codes left out of the denominator (artefacts, smudge cells, platelets, ... by
        default); they are still counted.
    p_blast, p_atypical : arrays, optional
        Per-cell scores; their means are reported.

    Returns
    -------
    dict
        ``n_cells``, ``n_counted`` (the denominator), ``counts``, ``percent``,
        ``ci95`` (percent), ``lineage_counts`` / ``lineage_percent``, ``blast_pct``,
        ``atypical_pct`` (with CIs), ``me_ratio`` (myeloid : erythroid, None without
        erythroid cells), and ``targets`` (cells counted vs the 200 / 500 norms).
    """
    labels = [str(x) for x in labels]
    exclude = set(exclude)
    codes = list(dict.fromkeys(list(classes or []) + sorted(set(labels))))
    counts = {c: 0 for c in codes}
    for lab in labels:
        counts[lab] += 1
    counted = [lab for lab in labels if lab not in exclude]
    n = len(counted)

    def pct(k):
        return 100.0 * k / n if n else 0.0

    def ci(k):
        lo, hi = wilson_ci(k, n)
        return [100 * lo, 100 * hi]

    percent = {c: (pct(k) if c not in exclude else None) for c, k in counts.items()}
    ci95 = {c: (ci(k) if c not in exclude else None) for c, k in counts.items()}
    lin = {name: 0 for name in LINEAGES}
    for lab in counted:
        lin[lineage_of(lab)] += 1
    n_blast = sum(lab in BLAST_CODES for lab in counted)
    n_atyp = sum(lab in ATYPICAL_CODES for lab in counted)
    myeloid = sum(lin[x] for x in MYELOID_LINEAGES)
    erythroid = sum(lin[x] for x in ERYTHROID_LINEAGES)
    out = {
        "n_cells": len(labels),
        "n_counted": n,
        "excluded_codes": sorted(exclude),
        "counts": counts,
        "percent": percent,
        "ci95": ci95,
        "lineage_counts": lin,
        "lineage_percent": {k: pct(v) for k, v in lin.items()},
        "blast_count": n_blast,
        "blast_pct": pct(n_blast),
        "blast_pct_ci95": ci(n_blast),
        "atypical_count": n_atyp,
        "atypical_pct": pct(n_atyp),
        "atypical_pct_ci95": ci(n_atyp),
        "myeloid_count": myeloid,
        "erythroid_count": erythroid,
        "me_ratio": (myeloid / erythroid) if erythroid else None,
        "targets": {str(t): {"counted": n, "reached": n >= t, "remaining": max(0, t - n)}
                    for t in TARGETS},
    }
    if p_blast is not None and len(p_blast):
        out["mean_p_blast"] = float(np.mean(p_blast))
    if p_atypical is not None and len(p_atypical):
        out["mean_p_atypical"] = float(np.mean(p_atypical))
    if classes is not None:
        sm = score_map(list(classes))
        out["missing_blast_classes"] = list(sm.missing_blast)
        out["missing_atypical_classes"] = list(sm.missing_atypical)
    return out


def blast_atypical_scores(probs: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """P(blast) and P(atypical) per cell, summed from the model's classes."""
    sm = score_map(list(classes))
    probs = np.asarray(probs, np.float32).reshape(len(probs), len(list(classes)))
    pb = probs[:, list(sm.blast_idx)].sum(1) if sm.blast_idx else np.zeros(len(probs), np.float32)
    pa = probs[:, list(sm.atypical_idx)].sum(1) if sm.atypical_idx else np.zeros(len(probs), np.float32)
    return pb, pa


def format_differential(summary: dict, top: int | None = None) -> str:
    """A plain-text differential for terminals: code, name, count, % and its 95% CI
    (Wilson score interval), then the counted cells, blast / atypical %, M:E, the
    caveats and the clinical cut-offs a CI contains. Percentages read ``n/a`` when no
    cell was counted; excluded classes are counted but are not in the denominator."""
    from .taxonomy import full_name

    n = summary["n_counted"]
    rows = [f"{'class':<6}{'name':<26}{'count':>6}{'%':>8}   95% CI"]
    items = sorted(summary["counts"].items(), key=lambda kv: -kv[1])
    for code, k in items[:top] if top else items:
        p = summary["percent"].get(code)
        name = full_name(code)[:25]
        if p is None:
            rows.append(f"{code:<6}{name:<26}{k:>6}{'excluded':>10}")
        elif not n:
            rows.append(f"{code:<6}{name:<26}{k:>6}{'n/a':>8}")
        else:
            lo, hi = summary["ci95"][code]
            rows.append(f"{code:<6}{name:<26}{k:>6}{p:>8.1f}   {lo:.1f}-{hi:.1f}")
    me = summary.get("me_ratio")

    def pct(key):
        if not n:
            return "n/a"
        lo, hi = summary[f"{key}_ci95"]
        return f"{summary[key]:.1f}% ({lo:.1f}-{hi:.1f})"

    blast = pct("blast_pct") if has_blast_class(summary) else "n/a (the model has no blast class)"
    rows.append(f"cells counted {n} (of {summary['n_cells']} detected; 'excluded' classes are not in the "
                f"denominator); 95% CI: Wilson score interval")
    rows.append(f"blast {blast}, atypical {pct('atypical_pct')}, M:E {'n/a' if me is None else f'{me:.2f}'}")
    rows += [f"note: {c}" for c in marker_caveats(summary) if c != BLAST_CAVEAT]
    rows += [f"flag: the {f['cutoff']}% {f['what']} cut-off lies inside the 95% CI "
             f"({f['ci95'][0]:.1f}-{f['ci95'][1]:.1f}%)" for f in cutoff_flags(summary)]
    return "\n".join(rows)


#: maturation ratios: name -> (numerator classes, denominator classes)
MATURATION_RATIOS = {
    "immature_mature_granulocytes": (("PMO", "PMB", "MYB", "MMZ"), ("NGB", "NGS")),
    "early_late_erythroid": (("PEB",), ("EBO",)),
}

#: clinical cut-offs (percent of counted cells)
BLAST_CUTOFFS = (2, 5, 10, 20)
PLASMA_CUTOFFS = (10, 60)
PLASMA_CODE = "PLM"

BLAST_CAVEAT = "The model has no blast class: the blast % cannot be measured (shown as n/a)."
PLASMA_CAVEAT = ("The model has no plasma-cell class: the plasma-cell % cannot be measured "
                 "(shown as n/a).")
EMPTY_CAVEAT = "No cells were counted."


def maturation_ratios(counts: dict) -> dict:
    """Immature : mature granulocytes and early : late erythroid precursors.

    Parameters
    ----------
    counts : dict
        Cells per class code (``summary["counts"]``).

    Returns
    -------
    dict
        ``immature_mature_granulocytes`` = (PMO + PMB + MYB + MMZ) : (NGB + NGS) and
        ``early_late_erythroid`` = PEB : EBO, each ``{"numerator", "denominator",
        "ratio"}`` (ratio None when the denominator is 0). A ratio none of whose
        classes is a key of ``counts`` (the model lacks them) is left out.
    """
    out = {}
    for name, (num, den) in MATURATION_RATIOS.items():
        if not any(c in counts for c in num + den):
            continue
        k1 = int(sum(counts.get(c, 0) for c in num))
        k2 = int(sum(counts.get(c, 0) for c in den))
        out[name] = {"numerator": k1, "denominator": k2, "ratio": k1 / k2 if k2 else None}
    return out


def _model_classes(summary: dict) -> set[str]:
    classes = (summary.get("classifier") or {}).get("classes") or []
    return set(classes) | set(summary.get("counts", {}))


def has_blast_class(summary: dict) -> bool:
    """Whether the model behind ``summary`` has a blast class (one of MYO, MOB, BLA)."""
    if BLAST_CODES & _model_classes(summary):
        return True
    # a differential computed with the model's classes lists what it lacks
    return "missing_blast_classes" in summary and not summary["missing_blast_classes"]


def has_plasma_class(summary: dict) -> bool:
    """Whether the model behind ``summary`` has the plasma-cell class (PLM)."""
    return PLASMA_CODE in _model_classes(summary)


def _flags(what: str, cutoffs, pct, ci) -> list[dict]:
    if pct is None or ci is None:
        return []
    lo, hi = float(ci[0]), float(ci[1])
    return [{"what": what, "cutoff": c, "pct": float(pct), "ci95": [lo, hi]}
            for c in cutoffs if lo <= c <= hi]


def cutoff_flags(summary: dict) -> list[dict]:
    """Clinical cut-offs that lie inside the 95% CI of the blast or plasma-cell %.

    A count whose CI contains a cut-off cannot tell on which side of it the sample is.

    Parameters
    ----------
    summary : dict
        A differential (:func:`differential`, or an analysis summary).

    Returns
    -------
    list of dict
        One ``{"what": "blasts" | "plasma cells", "cutoff", "pct", "ci95": [lo, hi]}``
        per cut-off inside its CI (blasts 2, 5, 10, 20 %; plasma cells 10, 60 %).
        Nothing for a marker the model has no class for, nor when no cell was counted.
    """
    if not summary.get("n_counted"):
        return []
    out = []
    if has_blast_class(summary):
        out += _flags("blasts", BLAST_CUTOFFS, summary.get("blast_pct"), summary.get("blast_pct_ci95"))
    if has_plasma_class(summary):
        out += _flags("plasma cells", PLASMA_CUTOFFS, summary.get("percent", {}).get(PLASMA_CODE),
                      summary.get("ci95", {}).get(PLASMA_CODE))
    return out


def marker_caveats(summary: dict) -> list[str]:
    """Plain sentences on what the differential cannot tell.

    Parameters
    ----------
    summary : dict
        A differential (:func:`differential`, or an analysis summary).

    Returns
    -------
    list of str
        :data:`BLAST_CAVEAT` when the model has no blast class, :data:`PLASMA_CAVEAT`
        when it has no plasma-cell class, :data:`EMPTY_CAVEAT` when no cell was counted.
    """
    out = []
    if not has_blast_class(summary):
        out.append(BLAST_CAVEAT)
    if not has_plasma_class(summary):
        out.append(PLASMA_CAVEAT)
    if not summary.get("n_counted"):
        out.append(EMPTY_CAVEAT)
    return out
