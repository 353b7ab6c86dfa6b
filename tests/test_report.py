"""The HTML report, its figures and the count helpers behind it, on a real analysis."""
import base64
import io
import re
import subprocess
import tempfile

import numpy as np
import pytest
from conftest import missing

from napari_bm_cells import count, plots, report
from napari_bm_cells.taxonomy import BM_CODES, PBC_CODES


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def analysis(data_dir, detector, classifier):
    """One real analysis (shipped models) of a 2x3 mosaic of BCCD fields."""
    from napari_bm_cells.pipeline import analyze
    from helpers import build_mosaic

    img, boxes = build_mosaic(2, 3, "bccd", seed=1)
    res = analyze(img, detector=detector, classifier=classifier)
    assert len(res.cells) >= 4, "the mosaic should give several white cells"
    return res


@pytest.fixture(scope="module")
def report_file(analysis, tmp_path_factory):
    scores = analysis.areas.scores if analysis.areas is not None else np.full((2, 3), 0.5)
    path = tmp_path_factory.mktemp("report") / "report.html"
    return report.write_report(analysis.cells, analysis.summary, path, slide=analysis.slide,
                               area_scores=scores)


@pytest.fixture(scope="module")
def chromium():
    """Chromium is required: a missing one fails unless ``BM_CELLS_ALLOW_SKIP=1``."""
    exe = report.find_chromium()
    if exe is None:
        msg = "chromium not installed (apt-get install chromium; scripts/test.sh does it)"
        missing(msg)
    return exe


def _bm_summary(n_blast, n_plasma, n_other):
    labels = ["BLA"] * n_blast + ["PLM"] * n_plasma + ["NGS"] * n_other
    return count.differential(labels, classes=BM_CODES)


def _images(html):
    return re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', html)


# ---------------------------------------------------------------- count helpers


def test_maturation_ratios_values():
    r = count.maturation_ratios({"PMO": 1, "MYB": 2, "MMZ": 3, "NGB": 4, "NGS": 8, "PEB": 2, "EBO": 0})
    assert r["immature_mature_granulocytes"] == {"numerator": 6, "denominator": 12, "ratio": 0.5}
    assert r["early_late_erythroid"] == {"numerator": 2, "denominator": 0, "ratio": None}


def test_maturation_ratios_omit_classes_the_model_lacks():
    r = count.maturation_ratios({c: 1 for c in PBC_CODES})  # PBC: no PEB
    assert set(r) == {"immature_mature_granulocytes", "early_late_erythroid"}  # EBO is there
    assert r["early_late_erythroid"] == {"numerator": 0, "denominator": 1, "ratio": 0.0}
    assert count.maturation_ratios({"LYT": 3, "MON": 1}) == {}


def test_cutoff_flags_ci_containing_5_flags_5():
    s = _bm_summary(3, 0, 47)  # 6% blasts of 50: Wilson CI ~2.1-16.2%
    lo, hi = s["blast_pct_ci95"]
    assert lo < 5 < hi
    flags = [f for f in count.cutoff_flags(s) if f["what"] == "blasts"]
    assert [f["cutoff"] for f in flags] == [c for c in (2, 5, 10, 20) if lo <= c <= hi] == [5, 10]
    assert flags[0]["pct"] == pytest.approx(6.0) and flags[0]["ci95"] == pytest.approx([lo, hi])


def test_cutoff_flags_tight_ci_flags_nothing():
    s = _bm_summary(30, 0, 970)  # 3% of 1000: CI ~2.1-4.3%
    assert count.cutoff_flags(s) == []


def test_cutoff_flags_plasma_cells():
    s = _bm_summary(0, 100, 900)  # 10% plasma cells of 1000
    flags = count.cutoff_flags(s)
    assert [(f["what"], f["cutoff"]) for f in flags] == [("plasma cells", 10)]
    assert flags[0]["pct"] == pytest.approx(10.0)


def test_cutoff_flags_nothing_for_markers_the_model_cannot_see():
    s = count.differential(["NGS"] * 5 + ["LYT"] * 3, classes=PBC_CODES)
    assert s["blast_pct_ci95"][1] > 20  # a blast model would flag every cut-off here
    assert count.cutoff_flags(s) == []


def test_marker_caveats():
    pbc = count.differential(["NGS", "LYT"], classes=PBC_CODES)
    assert count.marker_caveats(pbc) == [count.BLAST_CAVEAT, count.PLASMA_CAVEAT]
    assert "no blast class" in count.BLAST_CAVEAT and "n/a" in count.BLAST_CAVEAT
    assert count.marker_caveats(_bm_summary(1, 1, 10)) == []
    empty = count.differential([], classes=BM_CODES)
    assert count.marker_caveats(empty) == [count.EMPTY_CAVEAT] == ["No cells were counted."]


# ---------------------------------------------------------------- figures


def test_plots_are_png():
    from PIL import Image

    s = _bm_summary(2, 1, 7)
    im = Image.open(io.BytesIO(plots.histogram_png_bytes(s)))
    assert im.format == "PNG" and im.size[0] > 300
    scores = np.array([[0.1, 0.9, np.nan], [0.5, 1.0, 0.0]])
    im = Image.open(io.BytesIO(plots.area_map_png_bytes(scores)))
    assert im.format == "PNG"
    with pytest.raises(ValueError):
        plots.area_map_png_bytes(np.zeros(4))


# ---------------------------------------------------------------- the report of a real analysis


def test_report_contents(analysis, report_file):
    html = report_file.read_text()
    s = analysis.summary
    assert s["classifier"]["classes"] == list(PBC_CODES)  # the shipped PBC model
    for code, k in s["counts"].items():
        assert f'{code}</td><td>' in html and f'<span class="num">{k}</span>' in html
    # the commonest counted class (UNK and platelets are counted apart, without a CI)
    top = max((c for c in s["counts"] if s["ci95"].get(c)), key=s["counts"].get)
    lo, hi = s["ci95"][top]
    assert f'{s["percent"][top]:.1f}%' in html and f"{lo:.1f}&ndash;{hi:.1f}%" in html
    assert f'{s["n_counted"]} cells counted (of {s["n_cells"]} detected)' in html
    assert "all cells in the analysed area" in html  # no target
    assert count.BLAST_CAVEAT in html and count.PLASMA_CAVEAT in html
    assert "PLT</td>" in html and "(excluded)" in html and "left out of the" in html
    assert s["classifier"]["sha256"] in html and s["detector"]["sha256"] in html
    assert "not signed" in html and "Options" in html


def test_report_is_self_contained(analysis, report_file):
    from PIL import Image

    html = report_file.read_text()
    assert "data:image/png;base64" in html
    assert 'src="http' not in html and "href=" not in html and "<script" not in html
    assert "<link" not in html and "url(" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    imgs = _images(html)
    assert len(srcs) == len(imgs) >= 2  # every image is embedded
    for mime, b64 in imgs:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
    # thumbnails: at most 6 per class, of the classes found
    labels = analysis.cells["label"].value_counts()
    n_thumbs = sum(min(6, int(k)) for k in labels)
    assert sum(m == "image/jpeg" for m, _ in imgs) == n_thumbs
    # the most confident cell of the largest class comes first in its row
    top = labels.index[0]
    best = analysis.cells[analysis.cells["label"] == top].sort_values("confidence").iloc[-1]
    side = analysis.summary["classifier"]["crop_px_level0"]
    first = html.split(f"<b>{top}</b>", 1)[1]
    assert _images(first)[0][1] == base64.b64encode(
        report._thumb_bytes(analysis.slide, best.x, best.y, side)).decode()


def test_thumbnails_show_the_cell(analysis):
    """A thumbnail is the cell: darker (stained nucleus) than the smear background."""
    from PIL import Image

    r = analysis.cells.sort_values("confidence", ascending=False).iloc[0]
    side = analysis.summary["classifier"]["crop_px_level0"]
    im = np.asarray(Image.open(io.BytesIO(report._thumb_bytes(analysis.slide, r.x, r.y, side))))
    assert im.shape == (96, 96, 3)
    centre, ring = im[36:60, 36:60].mean(), np.concatenate([im[:8], im[-8:]]).mean()
    assert centre < ring - 10


def test_report_summary_variants(analysis):
    cells = analysis.cells
    s = dict(analysis.summary, input="/x/<b>evil</b>.tif",
             target={"n": 200, "met": False, "counted": 6, "fraction_analysed": 0.5},
             n_unclassified=3, min_confidence=0.6, n_reviewed=2,
             sign_off={"by": "Dr. A & B", "at": "2025-01-02T10:00:00"})
    html = report.build_report(cells, s)
    assert "&lt;b&gt;evil&lt;/b&gt;.tif" in html and "<b>evil" not in html
    assert "against a target of 200" in html and "target not met" in html and "50%" in html
    assert "<b>3</b>" in html and "below 0.60" in html and "not in the differential" in html
    assert "2 of" in html and "signed by Dr. A &amp; B at 2025-01-02T10:00:00" in html
    assert "image/jpeg" not in html  # no slide, no thumbnails
    for key in ("analysed_at", "options", "target", "n_unclassified", "sign_off", "areas"):
        s.pop(key, None)
    html = report.build_report(cells, s)
    assert "not signed" in html and "no review recorded" not in html  # n_reviewed kept


def test_report_blast_model_flags_cutoffs():
    s = _bm_summary(3, 0, 47)
    html = report.build_report(None, s)
    assert "6.0%" in html and "5% cut-off inside the 95% CI" in html
    assert "10% cut-off inside the 95% CI" in html and "2% cut-off" not in html
    assert count.BLAST_CAVEAT not in html and count.PLASMA_CAVEAT not in html


def test_report_empty():
    s = count.differential([], classes=PBC_CODES)
    html = report.build_report(None, s)
    assert "No cells were counted." in html
    assert "<td>n/a</td><td>n/a</td>" in html and "0.0%" not in html


# ---------------------------------------------------------------- headless browser


def test_chromium_renders_report(chromium, analysis, report_file, tmp_path):
    from PIL import Image

    png = report.chromium_screenshot(report_file, tmp_path / "shot.png", size=(1200, 2000))
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[:2] == (2000, 1200)
    non_white = (im.min(axis=2) < 235).mean()
    assert non_white > 0.03, f"screenshot nearly blank ({non_white:.3f} non-white)"
    colours = np.unique(im[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 100
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                              f"--user-data-dir={profile}", "--dump-dom", report_file.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    s = analysis.summary
    assert f'{s["n_counted"]} cells counted (of {s["n_cells"]} detected)' in dom
    assert "segmented neutrophil" in dom and count.BLAST_CAVEAT in dom


# ---------------------------------------------------------------- cohort page


def test_cohort_page(analysis, tmp_path):
    met = dict(_bm_summary(3, 0, 47), target={"n": 50, "met": True})
    rows = [{"slide": "A<1>", "report": "A/report.html", "summary": analysis.summary},
            {"slide": "B", "report": "B/report.html", "summary": met}]
    path = report.write_cohort_report(rows, tmp_path / "cohort.html")
    html = path.read_text()
    assert re.findall(r'href="([^"]+)"', html) == ["A/report.html", "B/report.html"]
    assert ">A&lt;1&gt;</a>" in html and ">B</a>" in html
    trs = html.split("<tr>")[2:]
    assert f'<span class="num">{analysis.summary["n_counted"]}</span>' in trs[0]
    assert "no blast class" in trs[0] and "<td>&mdash;</td>" in trs[0]
    assert "6.0% (2.1&ndash;16.2%)" in trs[1] and "<td>yes</td>" in trs[1]
    assert "blasts: 5% cut-off inside the 95% CI" in trs[1]
