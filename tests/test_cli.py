"""``bm-cells analyze`` on bad and unusual input: exit codes, one-line errors, outputs."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_bm_cells.cli import main

BASE_COLUMNS = ["cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "det_score",
                "label", "model_label", "confidence", "p_blast", "p_atypical", "area_score"]




@pytest.fixture(scope="module")
def field(bccd_jpeg) -> np.ndarray:
    """A real 640 x 480 BCCD field (one white cell) as RGB uint8."""
    with Image.open(bccd_jpeg) as im:
        return np.asarray(im.convert("RGB"))


def _analyze(path, out, classifier_path, capsys):
    rc = main(["analyze", str(path), "--out", str(out), "--classifier", str(classifier_path),
               "--device", "cpu", "-q"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_one_line_error(rc, out, err, name):
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bm-cells: error: ") and str(name) in lines[0], lines[0]


# --- bad input: exit 2, one line naming the file -------------------------------------------

def test_truncated_jpeg(bccd_jpeg, classifier_path, tmp_path, capsys):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(bccd_jpeg.read_bytes()[:5000])
    rc, out, err = _analyze(bad, tmp_path / "out", classifier_path, capsys)
    _assert_one_line_error(rc, out, err, bad)
    assert not (tmp_path / "out" / "cells.csv").exists()


def test_text_file_renamed_tif(classifier_path, tmp_path, capsys):
    bad = tmp_path / "notes.tif"
    bad.write_text("patient 12, slide 3: re-scan tomorrow\n")
    rc, out, err = _analyze(bad, tmp_path / "out", classifier_path, capsys)
    _assert_one_line_error(rc, out, err, bad)


def test_missing_file(classifier_path, tmp_path, capsys):
    missing = tmp_path / "nope" / "slide.svs"
    rc, out, err = _analyze(missing, tmp_path / "out", classifier_path, capsys)
    _assert_one_line_error(rc, out, err, missing)
    assert "not found" in err


def test_classifier_whose_class_list_does_not_match_its_weights(bccd_jpeg, classifier_path, tmp_path,
                                                                capsys):
    from dataclasses import replace

    from safetensors.torch import load_file

    from napari_bm_cells.checkpoint import read_meta, save_checkpoint

    meta = read_meta(classifier_path)
    wrong = replace(meta, classes=meta.classes[:-2])  # two classes fewer than the head has
    bad = save_checkpoint(tmp_path / "wrong_classes.safetensors", load_file(str(classifier_path)), wrong)
    rc, out, err = _analyze(bccd_jpeg, tmp_path / "out", bad, capsys)
    _assert_one_line_error(rc, out, err, bad)
    assert "do not match" in err


def test_missing_classifier_checkpoint(bccd_jpeg, tmp_path, capsys):
    missing = tmp_path / "none.safetensors"
    rc, out, err = _analyze(bccd_jpeg, tmp_path / "out", missing, capsys)
    _assert_one_line_error(rc, out, err, missing)


# --- unusual but valid images: exit 0, documented outputs ----------------------------------

def _check_outputs(out_dir, classifier_path, min_cells=0):
    from napari_bm_cells.checkpoint import read_meta

    classes = read_meta(classifier_path).classes
    cells = pd.read_csv(out_dir / "cells.csv")
    assert list(cells.columns) == BASE_COLUMNS + [f"prob_{c}" for c in classes]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_cells"] == len(cells) >= min_cells
    if len(cells):
        probs = cells[[f"prob_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-3)
        assert set(cells["model_label"]) <= set(classes)
        assert set(cells["label"]) <= set(classes) | {"UNK"}  # UNK: left to review
        assert ((cells["x"] >= 0) & (cells["x"] < 640) & (cells["y"] >= 0) & (cells["y"] < 480)).all()
    return cells, summary


def test_rgb_jpeg_reference(bccd_jpeg, classifier_path, tmp_path, capsys):
    rc, out, err = _analyze(bccd_jpeg, tmp_path / "out", classifier_path, capsys)
    assert rc == 0, err
    assert "cells.csv" in out and "summary.json" in out
    _check_outputs(tmp_path / "out", classifier_path, min_cells=1)


def test_grey_png(field, classifier_path, tmp_path, capsys):
    path = tmp_path / "grey.png"
    Image.fromarray(field).convert("L").save(path)
    assert np.asarray(Image.open(path)).ndim == 2
    rc, out, err = _analyze(path, tmp_path / "out", classifier_path, capsys)
    assert rc == 0, err
    _check_outputs(tmp_path / "out", classifier_path)


def test_rgba_png(field, classifier_path, tmp_path, capsys):
    path = tmp_path / "rgba.png"
    rgba = np.dstack([field, np.full(field.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(path)
    rc, out, err = _analyze(path, tmp_path / "out", classifier_path, capsys)
    assert rc == 0, err
    _check_outputs(tmp_path / "out", classifier_path, min_cells=1)


def test_16_bit_tiff(field, classifier_path, tmp_path, capsys):
    import tifffile

    path = tmp_path / "field16.tif"
    tifffile.imwrite(path, field.astype(np.uint16) * 257, photometric="rgb")
    rc, out, err = _analyze(path, tmp_path / "out", classifier_path, capsys)
    assert rc == 0, err
    cells16, _ = _check_outputs(tmp_path / "out", classifier_path, min_cells=1)
    # the same cells as the 8-bit original
    Image.fromarray(field).save(tmp_path / "field8.png")
    rc, _, err = _analyze(tmp_path / "field8.png", tmp_path / "out8", classifier_path, capsys)
    assert rc == 0, err
    cells8 = pd.read_csv(tmp_path / "out8" / "cells.csv")
    assert len(cells8) == len(cells16)
    np.testing.assert_allclose(cells16[["x", "y"]].to_numpy(), cells8[["x", "y"]].to_numpy(), atol=2)


def test_blank_white_image_has_no_cells(classifier_path, tmp_path, capsys):
    path = tmp_path / "white.png"
    Image.fromarray(np.full((480, 640, 3), 255, np.uint8)).save(path)
    rc, out, err = _analyze(path, tmp_path / "out", classifier_path, capsys)
    assert rc == 0, err
    text = (tmp_path / "out" / "cells.csv").read_text()
    assert len(text.strip().splitlines()) == 1  # header only
    cells, summary = _check_outputs(tmp_path / "out", classifier_path)
    assert len(cells) == 0 and summary["n_cells"] == 0


@pytest.mark.parametrize("args, flag", [(["--tile-size", "0"], "--tile-size"), (["--overlap", "-1"], "--overlap"),
                                        (["--batch-size", "0"], "--batch-size"), (["--cell-size", "-5"], "--cell-size"),
                                        (["--target", "0"], "--target"), (["--target", "-200"], "--target"),
                                        (["--min-area-score", "1.5"], "--min-area-score"),
                                        (["--min-area-score", "-0.1"], "--min-area-score"),
                                        (["--min-confidence", "-0.1"], "--min-confidence"),
                                        (["--min-confidence", "2"], "--min-confidence")])
def test_bad_analysis_options_are_one_line_exit_2(bccd_jpeg, tmp_path, capsys, args, flag):
    from napari_bm_cells.cli import main

    rc = main(["analyze", str(bccd_jpeg), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"bm-cells: error: {flag} ")
    assert not (tmp_path / "o").exists()


def test_analyze_writes_geojson_and_report_and_counts_to_a_target(bccd_jpeg, classifier_path, tmp_path, capsys):
    import json

    from napari_bm_cells.cli import main

    rc = main(["analyze", str(bccd_jpeg), "--out", str(tmp_path / "o"), "--classifier", str(classifier_path),
               "-q", "--target", "200"])
    out = capsys.readouterr().out
    assert rc == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"cells.csv", "summary.json", "cells.geojson",
                                                            "report.html", "differential.png"}
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["target"]["n"] == 200 and summary["target"]["met"] is False
    assert "target 200: NOT met" in out
    gj = json.loads((tmp_path / "o" / "cells.geojson").read_text())
    assert gj["features"][0]["geometry"]["type"] == "Polygon"  # a mask outline (masks are on)
    assert "<html" in (tmp_path / "o" / "report.html").read_text()[:200].lower()
    # written with the user's umask, as any other program's files (not private 0600)
    import os
    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp_path / "o").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
    rc = main(["analyze", str(bccd_jpeg), "--out", str(tmp_path / "n"), "--classifier", str(classifier_path),
               "-q", "--no-report", "--no-masks"])
    assert rc == 0 and not any((tmp_path / "n" / f).exists() for f in ("report.html", "differential.png"))


def test_calibrate_confidence_command(data_dir, classifier_path, tmp_path, capsys):
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.cli import main

    out = tmp_path / "c.safetensors"
    rc = main(["calibrate-confidence", str(data_dir / "pbc"), "--classifier", str(classifier_path),
               "--out", str(out), "--device", "cpu"])
    line = capsys.readouterr().out.splitlines()[0]
    assert rc == 0 and line.startswith("min confidence ") and "on the val split" in line
    assert read_meta(out).min_confidence > 0
    assert main(["calibrate-confidence", str(data_dir / "pbc"), "--target-accuracy", "1.5"]) == 2


def test_help_shows_defaults_and_verbose_goes_after_the_command(capsys):
    from napari_bm_cells.cli import build_parser

    p = build_parser()
    assert p.parse_args(["analyze", "x.jpg", "--out", "o", "-v"]).verbose is True
    assert p.parse_args(["-v", "analyze", "x.jpg", "--out", "o"]).verbose is True
    assert p.parse_args(["analyze", "x.jpg", "--out", "o"]).verbose is False
    with pytest.raises(SystemExit):
        p.parse_args(["train-classifier", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS passes over the training data (default: 20)" in text
    assert "--img-size IMG_SIZE network input side in px (default: 112)" in text


def test_every_option_of_every_command_has_help_and_shows_its_default(capsys):
    import argparse

    from napari_bm_cells.cli import build_parser

    p = build_parser()
    [sub] = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sp in sub.choices.items():
        with pytest.raises(SystemExit):
            p.parse_args([name, "--help"])
        text = capsys.readouterr().out
        fmt = sp.formatter_class(prog=name)
        for act in sp._actions:
            if isinstance(act, argparse._HelpAction):
                continue
            assert act.help and act.help != act.dest.replace("_", " "), (name, act.dest)
            if act.option_strings and act.default not in (None, False, [], argparse.SUPPRESS):
                shown = fmt._get_help_string(act) % {"default": act.default}
                assert "default" in shown and shown.split("(default")[0].strip() in " ".join(text.split()), \
                    (name, act.dest, shown)


def test_out_that_is_a_file_is_one_line(bccd_jpeg, tmp_path, capsys):
    from napari_bm_cells.cli import main

    f = tmp_path / "results.txt"
    f.write_text("x")
    for cmd in (["analyze", str(bccd_jpeg)], ["batch", str(tmp_path)]):
        assert main([*cmd, "--out", str(f)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a file" in err[0]


def test_glob_matching_nothing_leaves_the_cohort_alone(bccd_jpeg, tmp_path, capsys):
    import shutil

    from napari_bm_cells.cli import main

    (tmp_path / "in").mkdir()
    shutil.copy(bccd_jpeg, tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cohort.csv").write_text("slide,status\nold.svs,done\n")
    assert main(["batch", str(tmp_path / "in"), "--out", str(out), "--glob", "*.svs", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no slide matches --glob '*.svs'" in err[0]
    assert (out / "cohort.csv").read_text() == "slide,status\nold.svs,done\n"


def test_printed_differential_is_readable_without_the_code():
    from napari_bm_cells.count import differential, format_differential

    text = format_differential(differential(["NGS"] * 3 + ["PLT"], ["NGS", "LYT", "PLT"]))
    assert "segmented neutrophil" in text and "excluded" in text and "Wilson" in text
    assert "blast n/a (the model has no blast class)" in text
    empty = format_differential(differential([], ["NGS", "LYT"]))
    assert "n/a" in empty and "0.0%" not in empty and "0.0-0.0" not in empty


def test_demo_analyses_a_real_field_and_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    """`bm-cells demo` (the README's first command): the sample field, the four result
    files, and the absolute folder they are in."""
    from napari_bm_cells.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "-q"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "bm-cells-demo"
    assert f"results are in {folder.resolve()}" in out and "sample image: " in out
    assert {p.name for p in folder.iterdir()} == {"cells.csv", "summary.json", "cells.geojson", "report.html",
                                                  "differential.png"}
    # the printed differential reads without the code: full names, the CI method, what
    # "excluded" means, and no blast % where the model has no blast class
    from napari_bm_cells.taxonomy import CLASSES, full_name

    rows = [ln for ln in out.splitlines() if ln[:3] in CLASSES and ln[3:5] == "  "]
    assert len(rows) >= 10
    for ln in rows:
        assert " ".join(ln.split()[1:]).startswith(full_name(ln[:3])), ln
    assert "95% CI: Wilson score interval" in out and "'excluded' classes are not in the denominator" in out
    assert "blast n/a (the model has no blast class)" in out


def test_combined_classifiers_analyse_a_field_and_the_summary_names_the_members(bccd_jpeg, classifier_path,
                                                                               teacher_path, tmp_path, capsys):
    import json

    from napari_bm_cells.cli import main

    ens = tmp_path / "ens.safetensors"
    assert main(["combine-classifiers", str(classifier_path), str(teacher_path), "--out", str(ens)]) == 0
    assert "choose its review threshold" in capsys.readouterr().out
    assert main(["analyze", str(bccd_jpeg), "--out", str(tmp_path / "o"), "--classifier", str(ens),
                 "--device", "cpu", "-q", "--no-report"]) == 0
    run = json.loads((tmp_path / "o" / "summary.json").read_text())["classifier"]
    assert run["arch"] == "ensemble" and run["members"] == ["resnext26ts", "tf_efficientnet_lite0"]
    assert main(["combine-classifiers", str(classifier_path), "--out", str(tmp_path / "one.safetensors")]) == 2
    assert "give two or more checkpoints" in capsys.readouterr().err
