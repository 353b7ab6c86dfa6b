"""A self-contained HTML report of one analysed slide, and a cohort page of many.

The report is one HTML file: inline CSS, images embedded as base64 ``data:`` URIs,
no scripts and no references to other files, so it can be mailed, archived or
printed as it is.
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .count import (BLAST_CAVEAT, EMPTY_CAVEAT, PLASMA_CAVEAT, PLASMA_CODE, cutoff_flags,
                    has_blast_class, has_plasma_class, maturation_ratios, marker_caveats)
from .taxonomy import UNCLASSIFIED, colour_of, full_name

THUMB_PX = 96

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:14px;color:#1a1a1a;
 margin:24px auto;max-width:960px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #ccc;
 padding-bottom:3px}
table{border-collapse:collapse;margin:4px 0}td,th{padding:3px 9px;border-bottom:1px solid #e4e4e4;
 text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;
 font-variant-numeric:tabular-nums}
.meta td:first-child{color:#555}.swatch{display:inline-block;width:11px;height:11px;
 border:1px solid #444;margin-right:5px;vertical-align:-1px}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;margin:0 3px;
 color:#fff;background:#c62828}.badge.ok{background:#2e7d32}.badge.warn{background:#ef6c00}
.caveat{color:#8a4b00;font-size:13px}.note{color:#555;font-size:13px}
.key td{font-size:15px}.key td:first-child{width:300px}
.thumbs{display:flex;flex-wrap:wrap;gap:4px;margin:2px 0 10px}
.thumbs img{width:96px;height:96px;border:1px solid #bbb}
.muted{color:#888}
"""


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome executable on ``PATH``, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_screenshot(html_path, png_path, size=(1000, 1400), timeout: float = 120) -> Path:
    """Render an HTML file to a PNG with headless Chromium.

    Parameters
    ----------
    html_path, png_path : path
    size : (int, int)
        Window width and height in pixels.
    timeout : float
        Seconds before giving up.

    Returns
    -------
    Path
        ``png_path``.

    Raises
    ------
    FileNotFoundError
        When no Chromium is installed (see :func:`find_chromium`).
    RuntimeError
        When Chromium wrote no picture.
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium / chromium-browser / google-chrome on PATH")
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={png_path}",
             f"--window-size={size[0]},{size[1]}", Path(html_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
    if not png_path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return png_path


# ---------------------------------------------------------------- formatting helpers


def _e(x) -> str:
    return escape(str(x), quote=True)


def _pct(p) -> str:
    return "n/a" if p is None else f"{p:.1f}%"


def _ci(ci) -> str:
    return "n/a" if ci is None else f"{ci[0]:.1f}&ndash;{ci[1]:.1f}%"


def _ratio(r) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{_data_uri(data, mime)}" alt="{_e(alt)}"{w}>'


def _table(rows, header=None, cls: str = "") -> str:
    """HTML table of already-escaped cells."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def _badge(text: str, kind: str = "") -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _caveat(text: str) -> str:
    return f'<div class="caveat">{_e(text)}</div>'


def _sample_name(summary: dict) -> str:
    src = str(summary.get("input") or "sample")
    return Path(src).name or src


# ---------------------------------------------------------------- sections


def _header(summary: dict) -> str:
    when = summary.get("analysed_at") or _dt.datetime.now().isoformat(timespec="seconds")
    rows = [("file", _e(summary.get("input", "n/a"))), ("analysed", _e(when)),
            ("cells", _counted_line(summary))]
    if summary.get("mpp"):
        rows.append(("pixel size", f"{summary['mpp']:.3g} &micro;m"))
    return (f"<h1>Differential count &mdash; {_e(_sample_name(summary))}</h1>"
            + _table(rows, cls="meta"))


def _counted_line(summary: dict) -> str:
    n, tot = summary.get("n_counted", 0), summary.get("n_cells", 0)
    text = f"{n} cells counted (of {tot} detected)"
    target = summary.get("target")
    if not target:
        return _e(text + ": all cells in the analysed area")
    met = bool(target.get("met"))
    badge = _badge("target met", "ok") if met else _badge("target not met", "warn")
    frac = target.get("fraction_analysed")
    area = f"; {100 * frac:.0f}% of the counting area analysed" if frac is not None else ""
    return _e(f"{text} against a target of {target.get('n')}{area}") + " " + badge


def _flag_badges(flags: list[dict], what: str) -> str:
    return "".join(_badge(f"{f['cutoff']}% cut-off inside the 95% CI")
                   for f in flags if f["what"] == what)


def _key_numbers(summary: dict) -> str:
    flags = cutoff_flags(summary)
    empty = not summary.get("n_counted")
    if has_blast_class(summary) and not empty:
        blast = (f"{_pct(summary.get('blast_pct'))} <span class='note'>(95% CI "
                 f"{_ci(summary.get('blast_pct_ci95'))})</span>" + _flag_badges(flags, "blasts"))
    else:
        blast = "n/a" + (_caveat(BLAST_CAVEAT) if not has_blast_class(summary) else "")
    if has_plasma_class(summary) and not empty:
        plasma = (f"{_pct(summary.get('percent', {}).get(PLASMA_CODE))} <span class='note'>(95% CI "
                  f"{_ci(summary.get('ci95', {}).get(PLASMA_CODE))})</span>"
                  + _flag_badges(flags, "plasma cells"))
    else:
        plasma = "n/a" + (_caveat(PLASMA_CAVEAT) if not has_plasma_class(summary) else "")
    me = _ratio(summary.get("me_ratio"))
    me_note = ("" if summary.get("me_ratio") is not None else
               "<div class='note'>no erythroid cells counted</div>")
    rows = [("blasts", blast), ("plasma cells", plasma),
            ("M:E ratio", f"{me} <span class='note'>({summary.get('myeloid_count', 0)} myeloid : "
                          f"{summary.get('erythroid_count', 0)} erythroid)</span>{me_note}")]
    rows += _maturation_rows(summary)
    out = "<h2>Key numbers</h2>" + _table(rows, cls="key")
    if empty:
        out += _caveat(EMPTY_CAVEAT)
    return out


_RATIO_NAMES = {"immature_mature_granulocytes": "immature : mature granulocytes "
                                                "(PMO+PMB+MYB+MMZ : NGB+NGS)",
                "early_late_erythroid": "early : late erythroid (PEB : EBO)"}


def _maturation_rows(summary: dict) -> list[tuple[str, str]]:
    return [(_e(_RATIO_NAMES.get(name, name)),
             f"{_ratio(r['ratio'])} <span class='note'>({r['numerator']} : {r['denominator']})</span>")
            for name, r in maturation_ratios(summary.get("counts", {})).items()]


def _differential(summary: dict) -> str:
    counts, percent, ci95 = summary.get("counts", {}), summary.get("percent", {}), summary.get("ci95", {})
    excl = set(summary.get("excluded_codes", []))
    empty = not summary.get("n_counted")
    rows, any_excl = [], False
    for code, k in counts.items():
        sw = f'<span class="swatch" style="background:{_e(colour_of(code))}"></span>'
        if code in excl or percent.get(code) is None:
            any_excl = True
            pct, ci = "(excluded)<sup>*</sup>", ""
        elif empty:
            pct, ci = "n/a", "n/a"
        else:
            pct, ci = _pct(percent[code]), _ci(ci95.get(code))
        rows.append((sw + _e(code), _e(full_name(code)), f'<span class="num">{int(k)}</span>', pct, ci))
    out = "<h2>Differential</h2>" + _table(rows, ["code", "cell type", "count", "%", "95% CI"], "diff")
    if any_excl:
        out += ("<p class='note'><sup>*</sup> Excluded classes are counted but left out of the "
                f"denominator ({summary.get('n_counted', 0)} counted cells) of the percentages.</p>")
    out += _unclassified(summary)
    return out


def _unclassified(summary: dict) -> str:
    n = summary.get("n_unclassified")
    if n is None:
        return ""
    thr = summary.get("min_confidence")
    why = f" (class probability below {thr:.2f})" if thr is not None else ""
    return (f"<p class='note'>Unclassified cells ({UNCLASSIFIED}): <b>{int(n)}</b>{_e(why)}; they "
            "are not in the differential until a reviewer gives them a class.</p>")


def _histogram(summary: dict) -> str:
    from .plots import histogram_png_bytes

    classes = (summary.get("classifier") or {}).get("classes")
    return "<h2>Cells per class</h2>" + _img(histogram_png_bytes(summary, classes), "histogram")


def _thumb_bytes(slide, x: float, y: float, side: float) -> bytes:
    from PIL import Image

    h = side / 2
    down = max(1.0, side / (2 * THUMB_PX))  # read at no more than twice the thumbnail size
    arr = slide.read_region(y - h, x - h, y + h, x + h, downsample=down)
    im = Image.fromarray(np.ascontiguousarray(arr[..., :3])).resize((THUMB_PX, THUMB_PX), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _crop_side(summary: dict, cells: pd.DataFrame) -> float:
    side = (summary.get("classifier") or {}).get("crop_px_level0")
    if side:
        return float(side)
    if {"bbox_x0", "bbox_x1"} <= set(cells.columns) and len(cells):
        return float(1.5 * (cells["bbox_x1"] - cells["bbox_x0"]).median())
    return 2.0 * THUMB_PX


def _thumbnails(cells: pd.DataFrame, summary: dict, slide, per_class: int) -> str:
    if slide is None or cells is None or not len(cells) or per_class <= 0:
        return ""
    side = _crop_side(summary, cells)
    order = list(summary.get("counts", {})) + sorted(set(cells["label"].astype(str)))
    parts = []
    for code in dict.fromkeys(order):
        sub = cells[cells["label"].astype(str) == code]
        if not len(sub):
            continue
        if "confidence" in sub:
            sub = sub.sort_values("confidence", ascending=False, kind="stable")
        imgs = "".join(_img(_thumb_bytes(slide, float(r.x), float(r.y), side),
                            f"{code} cell", "image/jpeg") for r in sub.head(per_class).itertuples())
        n = f"{len(sub)} cell" + ("" if len(sub) == 1 else "s")
        parts.append(f"<div><b>{_e(code)}</b> {_e(full_name(code))} "
                     f"<span class='note'>({n}, most confident first)</span></div>"
                     f"<div class='thumbs'>{imgs}</div>")
    return "<h2>Example cells</h2>" + "".join(parts) if parts else ""


def _area_map(summary: dict, area_scores) -> str:
    if area_scores is None:
        return ""
    from .plots import area_map_png_bytes

    areas = summary.get("areas") or {}
    note = ""
    if areas.get("min_score"):
        note = f"<p class='note'>Regions below a score of {_e(areas['min_score'])} are not counted.</p>"
    return ("<h2>Counting areas</h2><p class='note'>Where the smear is fit for counting (monolayer, in "
            "focus); grey: not scored.</p>" + _img(area_map_png_bytes(area_scores), "area map") + note)


def _model_rows(d: dict, keys) -> list[tuple[str, str]]:
    rows = []
    for k in keys:
        if k in d:
            v = d[k]
            if isinstance(v, (list, tuple)):
                v = ", ".join(map(str, v))
            elif isinstance(v, float):
                v = f"{v:.4g}"
            rows.append((_e(k), _e("n/a" if v is None else v)))
    return rows


def _provenance(summary: dict) -> str:
    det, cls = summary.get("detector") or {}, summary.get("classifier") or {}
    rows = [("package", _e(f"napari-bm-cells {__version__}"))]
    rows += [(f"detector {k}", v) for k, v in _model_rows(det, ("name", "weights", "sha256"))]
    rows += [(f"classifier {k}", v) for k, v in
             _model_rows(cls, ("arch", "weights", "sha256", "classes", "crop_px_level0", "input_size"))]
    out = "<h2>Provenance</h2>" + _table(rows, cls="meta")
    opts = summary.get("options") or {}
    if opts:
        out += "<h2>Options</h2>" + _table([(_e(k), _e(v)) for k, v in opts.items()], ["option", "value"])
    return out + _review(summary)


def _review(summary: dict) -> str:
    n_rev = summary.get("n_reviewed")
    review = ("no review recorded" if n_rev is None else
              f"{int(n_rev)} of {summary.get('n_cells', 0)} cells reviewed")
    sign = summary.get("sign_off")
    if sign and sign.get("by"):
        signed = _e(f"signed by {sign['by']}" + (f" at {sign['at']}" if sign.get("at") else ""))
    else:
        signed = _badge("not signed", "warn")
    return "<h2>Review</h2>" + _table([("review", _e(review)), ("sign-off", signed)], cls="meta")


# ---------------------------------------------------------------- public API


def build_report(cells: pd.DataFrame, summary: dict, slide=None, area_scores: np.ndarray | None = None,
                 thumbs_per_class: int = 6) -> str:
    """The report of one analysed slide as one self-contained HTML page.

    Parameters
    ----------
    cells : pandas.DataFrame
        The cell table (``x``, ``y`` level-0 pixels, ``label``, ``confidence``).
    summary : dict
        The analysis summary (a differential plus ``input``, ``detector``,
        ``classifier``; optional ``analysed_at``, ``target``, ``options``,
        ``n_unclassified``, ``min_confidence``, ``n_reviewed``, ``sign_off``, ``areas``).
    slide : napari_bm_cells.io.Slide, optional
        The image: when given, thumbnails of the most confident cells of every class.
    area_scores : (rows, cols) float array, optional
        Counting-area scores (NaN where not scored), drawn as a map.
    thumbs_per_class : int
        Thumbnails per class at most.

    Returns
    -------
    str
        The HTML page (inline CSS, images as base64 ``data:`` URIs, no scripts).
    """
    body = [_header(summary), _key_numbers(summary), _differential(summary), _histogram(summary),
            _thumbnails(cells, summary, slide, thumbs_per_class), _area_map(summary, area_scores),
            _provenance(summary)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(_sample_name(summary))} &mdash; differential count</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(cells: pd.DataFrame, summary: dict, path, slide=None,
                 area_scores: np.ndarray | None = None) -> Path:
    """Write :func:`build_report`'s page to ``path`` atomically.

    Returns
    -------
    Path
        ``path``.
    """
    from .export import atomic_write

    return atomic_write(path, build_report(cells, summary, slide=slide, area_scores=area_scores))


def _cohort_flags(summary: dict) -> str:
    badges = [_badge(f"{f['what']}: {f['cutoff']}% cut-off inside the 95% CI")
              for f in cutoff_flags(summary)]
    short = {BLAST_CAVEAT: "no blast class", PLASMA_CAVEAT: "no plasma-cell class",
             EMPTY_CAVEAT: "no cells counted"}
    notes = [f"<span class='caveat'>{_e(short.get(c, c))}</span>" for c in marker_caveats(summary)]
    return " ".join(badges + notes)


def _cohort_row(row: dict) -> tuple:
    s = row.get("summary") or {}
    name = row.get("slide") or _sample_name(s)
    href = Path(row["report"]).as_posix() if row.get("report") else None
    link = f'<a href="{_e(href)}">{_e(name)}</a>' if href else _e(name)
    n = s.get("n_counted", 0)
    if has_blast_class(s) and n:
        blast = f"{_pct(s.get('blast_pct'))} ({_ci(s.get('blast_pct_ci95'))})"
    else:
        blast = "n/a"
    target = s.get("target")
    met = "&mdash;" if not target else ("yes" if target.get("met") else "no")
    return (link, f'<span class="num">{int(n)}</span>', blast, _ratio(s.get("me_ratio")), met,
            _cohort_flags(s))


def build_cohort_report(rows: list[dict]) -> str:
    """One HTML page with a row per slide, linking to each slide's report.

    Parameters
    ----------
    rows : list of dict
        ``slide`` (name), ``report`` (path of its report relative to the cohort page)
        and ``summary`` (its analysis summary).

    Returns
    -------
    str
        The HTML page: slide, cells counted, blast % (95% CI), M:E, target met, flags.
    """
    table = _table([_cohort_row(r) for r in rows],
                   ["slide", "cells counted", "blasts (95% CI)", "M:E", "target met", "flags"])
    when = _dt.datetime.now().isoformat(timespec="seconds")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Cohort</title>"
            f"<style>{_CSS}</style></head><body><h1>Cohort &mdash; {len(rows)} slides</h1>"
            f"<p class='note'>napari-bm-cells {_e(__version__)}, {_e(when)}</p>{table}</body></html>\n")


def write_cohort_report(rows: list[dict], path) -> Path:
    """Write :func:`build_cohort_report`'s page to ``path`` atomically.

    Returns
    -------
    Path
        ``path``.
    """
    from .export import atomic_write

    return atomic_write(path, build_cohort_report(rows))
