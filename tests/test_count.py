"""Differential, CIs, M:E ratio and the AML scores against hand-computed values."""
import numpy as np
import pytest

from napari_bm_cells.count import blast_atypical_scores, differential, wilson_ci
from napari_bm_cells.taxonomy import AML_CODES, BM_CODES, PBC_CODES, score_map


def test_wilson_ci_hand_computed():
    # k=10, n=50: p=0.2, z=1.959964; centre=(p+z²/2n)/(1+z²/n), half=z*sqrt(p(1-p)/n+z²/4n²)/(1+z²/n)
    z = 1.959963985
    p, n = 0.2, 50
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = wilson_ci(10, 50)
    assert lo == pytest.approx(centre - half, abs=1e-6)
    assert hi == pytest.approx(centre + half, abs=1e-6)
    assert wilson_ci(0, 0) == (0.0, 0.0)


def test_differential_hand_computed():
    labels = ["NGS"] * 6 + ["LYT"] * 2 + ["EBO"] * 2 + ["BLA"] + ["ART"] * 3 + ["MYB"]
    d = differential(labels, BM_CODES)
    assert d["n_cells"] == 15
    assert d["n_counted"] == 12  # ART excluded from the denominator
    assert d["counts"]["ART"] == 3 and d["percent"]["ART"] is None
    assert d["percent"]["NGS"] == pytest.approx(50.0)
    assert d["percent"]["LYT"] == pytest.approx(100 * 2 / 12)
    assert d["counts"]["PLM"] == 0 and d["percent"]["PLM"] == 0.0
    # blasts: BLA; atypical: BLA + EBO + MYB
    assert d["blast_pct"] == pytest.approx(100 / 12)
    assert d["atypical_pct"] == pytest.approx(100 * 4 / 12)
    # myeloid = NGS 6 + BLA 1 + MYB 1 = 8; erythroid = EBO 2
    assert d["me_ratio"] == pytest.approx(4.0)
    assert d["lineage_counts"] == {"erythropoiesis": 2, "granulopoiesis": 8, "lymphopoiesis": 2,
                                   "monopoiesis": 0, "other": 0}
    lo, hi = d["ci95"]["NGS"]
    assert (lo, hi) == pytest.approx([100 * x for x in wilson_ci(6, 12)])
    assert d["targets"]["200"] == {"counted": 12, "reached": False, "remaining": 188}


def test_differential_no_erythroid_and_configurable_exclusion():
    d = differential(["NGS", "LYT", "PLT"], PBC_CODES, exclude=())
    assert d["n_counted"] == 3 and d["me_ratio"] is None
    assert d["missing_blast_classes"] == ["BLA"]


def test_aml_scores_sum_the_right_classes():
    classes = list(AML_CODES)
    probs = np.full((2, len(classes)), 0.0, np.float32)
    probs[0, classes.index("MYO")] = 0.3
    probs[0, classes.index("MOB")] = 0.2
    probs[0, classes.index("LYA")] = 0.1
    probs[0, classes.index("NGS")] = 0.4
    probs[1, classes.index("PMO")] = 0.5
    probs[1, classes.index("EBO")] = 0.25
    probs[1, classes.index("LYT")] = 0.25
    pb, pa = blast_atypical_scores(probs, classes)
    assert pb == pytest.approx([0.5, 0.0])
    assert pa == pytest.approx([0.6, 0.75])
    sm = score_map(classes)
    assert sm.missing_blast == () and sm.missing_atypical == ()


def test_scores_of_a_model_without_blasts_report_missing_classes():
    sm = score_map(PBC_CODES)
    assert sm.blast_idx == ()
    assert "BLA" in sm.missing_blast
    pb, pa = blast_atypical_scores(np.eye(len(PBC_CODES)), PBC_CODES)
    assert pb.sum() == 0
    # PBC's atypical classes are the immature ones: EBO, MMZ, MYB, PMO
    assert pa.sum() == 4
