"""Analysis options are declared once (options.AnalysisOptions) and become the CLI's flags."""
import argparse
import dataclasses

import pytest

from napari_bm_cells.errors import InputError
from napari_bm_cells.options import AnalysisOptions, add_flags, from_flags, user_options


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_flags(p)
    return from_flags(p.parse_args(list(argv)))


def test_flags_default_to_the_declared_defaults_and_masks_are_on():
    opts = _parse()
    assert dataclasses.replace(opts, masks=False) == AnalysisOptions()
    assert opts.masks and not _parse("--no-masks").masks


def test_each_flag_sets_its_field():
    opts = _parse("--tile-size", "512", "--overlap", "64", "--level", "2x", "--cell-size", "80",
                  "--target", "200", "--min-area-score", "0.5", "--min-confidence", "checkpoint",
                  "--colour", "white-balance")
    assert (opts.tile_size, opts.overlap, opts.level, opts.cell_px, opts.target) == (512, 64, "2x", 80.0, 200)
    assert opts.min_area_score == 0.5 and opts.min_confidence is None and opts.colour == "white-balance"
    assert _parse("--level", "1").level == 1 and _parse("--min-confidence", "0.7").min_confidence == 0.7


@pytest.mark.parametrize("argv, flag", [(("--overlap", "640"), "--overlap"), (("--target", "0"), "--target"),
                                        (("--cell-size", "-3"), "--cell-size"),
                                        (("--min-confidence", "2"), "--min-confidence")])
def test_a_bad_value_names_its_flag(argv, flag):
    with pytest.raises(InputError, match=f"^{flag} "):
        _parse(*argv)


def test_every_user_option_has_a_flag_and_help():
    names = [n for n, _, _ in user_options()]
    assert {"tile_size", "overlap", "level", "cell_px", "batch_size", "masks", "colour", "target",
            "min_area_score", "min_confidence"} <= set(names)
    assert all(o.flag.startswith("--") and o.help for _, _, o in user_options())
