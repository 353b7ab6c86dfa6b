"""The settings of an analysis, declared once: :class:`AnalysisOptions`.

Each user-facing field carries an :class:`Option` in its metadata: its command-line flag
and help, how text becomes its value, and its napari widget field. ``bm-cells analyze``
and ``batch`` build their flags from it (:func:`add_flags`, :func:`from_flags`) and the
*Analyze smear* widget builds its fields from it (``gui.widget``), so a default, a help
text or a check lives here only.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Callable

from .errors import InputError
from .taxonomy import NON_LEUKOCYTE_CODES


def level_from_text(text) -> str | int | float:
    """``"auto"``, a pyramid level (``"1"``), a downsample (``"2x"``) or a float."""
    if isinstance(text, (int, float)):
        return text
    t = (text or "auto").strip().lower()
    if t in ("", "auto"):
        return "auto"
    if t.isdigit():
        return int(t)
    if t.endswith("x"):
        return t
    try:
        return float(t)
    except ValueError:
        raise InputError(f"--level {text!r}: use auto, a pyramid level (0, 1, ...) "
                         "or a downsample such as 2x") from None


def confidence_from_text(text) -> float | None:
    """``"checkpoint"`` (or empty): the checkpoint's threshold (None); else a number 0-1."""
    if text is None or isinstance(text, (int, float)):
        return text
    t = str(text).strip().lower()
    if t in ("", "checkpoint", "auto"):
        return None
    try:
        return float(t)
    except ValueError:
        raise InputError(f"--min-confidence {text!r}: give 'checkpoint' or a probability "
                         "between 0 and 1") from None


@dataclass(frozen=True)
class Option:
    """How a user sets one field of :class:`AnalysisOptions`.

    Attributes
    ----------
    flag : str
        Command-line flag (``--no-x`` for a switch that turns a True default off).
    help : str
        Help text of the flag and tooltip of the widget field.
    kind : {"int", "float", "text", "switch", "choice"}
        Spin box, float spin box, text field, check box or drop-down of ``choices``;
        ``text`` values go through ``parse``.
    parse : callable, optional
        Text -> value (command line and text fields).
    label : str
        The widget field's label (a check box's text).
    limits : tuple, optional
        (min, max, step) of a spin box.
    none : object, optional
        The widget value that means "not set" (None), e.g. 0 for *count to*.
    widget_value : object, optional
        The widget's initial value when it differs from the field's default.
    metavar : str, optional
    choices : tuple of str, optional
        The values a ``choice`` takes.
    in_widget : bool
        Whether the *Analyze smear* widget has a field for it.
    """

    flag: str
    help: str
    kind: str
    parse: Callable | None = None
    label: str = ""
    limits: tuple | None = None
    none: object = None
    widget_value: object = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    in_widget: bool = True


#: run-time colour adaptations (:mod:`~napari_bm_cells.colour`)
COLOUR_CHOICES = ("standardise", "white-balance", "off")
#: class priors of the cells' types (:mod:`~napari_bm_cells.prior`)
PRIOR_CHOICES = ("off", "slide")


def _opt(default, **kw):
    return field(default=default, metadata={"option": Option(**kw)})


@dataclass
class AnalysisOptions:
    """Settings of one analysis (the flags of ``bm-cells analyze``, the fields of the
    *Analyze smear* widget).

    Attributes
    ----------
    tile_size, overlap : int
        Detection tiles and their overlap, in detection-level pixels.
    level : str, int or float
        ``"auto"`` (cells reach the detector at its trained size), a pyramid level
        index (int), or a downsample factor (``"2x"`` or a float).
    cell_px : float, optional
        Typical white-cell diameter at level 0 in pixels, when known (overrides the
        slide's pixel size for the detection scale).
    crop_px : float, optional
        Side of the crop cut around each cell at level 0; default from the
        checkpoint's field of view and the slide's pixel size or measured cell size.
    batch_size : int
        Crops per classifier batch (batches span blocks, so all but the first, of
        ``pipeline.FIRST_BATCH`` crops to start the model early, and the last have this
        size; 16 is as fast per crop as 32 on CPU and starts the model sooner).
    det_batch : int, optional
        Detection tiles per detector call (default: 1 on CPU, 4 on GPU; see
        :func:`~napari_bm_cells.detect.default_det_batch`).
    region : (y0, x0, y1, x1), optional
        Level-0 region to analyse; default the whole slide.
    masks : bool
        Build the cell-mask labels (for napari's Labels layer and GeoJSON outlines);
        the command line and the widget build them unless told not to.
    colour : {"standardise", "white-balance", "off"}
        Adapt the slide's colours to the models' training data
        (:mod:`~napari_bm_cells.colour`): CIELAB standardisation (default) of the cell
        crops (onto the classifier's training crops) and of the detector's tiles (into
        the range of its training fields, for a slide outside it), a white balance of the
        crops' glass colour, or none. Each model needs the reference stored with it (``lab_reference`` /
        ``background``).
    class_prior : {"off", "slide"}
        ``off`` (default): every type taken as equally common, as the classifier was
        trained. ``slide``: the slide's class mix, estimated from all its cells'
        probabilities, re-weights each cell's probabilities (:mod:`~napari_bm_cells.prior`;
        slides of fewer than 50 cells keep them): more cells of a blood smear typed right,
        but rare types (myelocytes, metamyelocytes, promyelocytes) are called less often
        and marrow differentials do not gain (docs/models.md).
    exclude : tuple of str
        Codes left out of the differential's denominator.
    target : int, optional
        Count to this many leukocytes: regions are visited best counting area first
        (:mod:`~napari_bm_cells.areas`) and the run stops once the differential has
        this many cells.
    min_area_score : float
        Analyse only regions whose counting-area score is at least this (0-1; 0: all).
    min_confidence : float, optional
        Cells whose top class probability is below this get the label ``UNK`` (their
        model class stays in ``model_label``) and stay out of the differential until
        reviewed; default the checkpoint's threshold (chosen on its validation split),
        0 for none.
    """

    tile_size: int = _opt(640, flag="--tile-size", kind="int", label="tile size", limits=(128, 8192, 32),
                          help="detection tile side, in detection-level px")
    overlap: int = _opt(160, flag="--overlap", kind="int", label="overlap", limits=(0, 4096, 16),
                        help="tile overlap, in detection-level px; keep it above a cell's diameter")
    level: str | int | float = _opt("auto", flag="--level", kind="text", parse=level_from_text,
                                    label="detection level",
                                    help="detection scale: auto, a pyramid level (0, 1, ...) or a downsample like 2x")
    cell_px: float | None = _opt(None, flag="--cell-size", kind="float", label="cell size (px)",
                                 limits=(0.0, 2000.0, 10.0), none=0.0, metavar="PX",
                                 help="typical white-cell diameter at full resolution in px, if known; "
                                      "default: found from the image")
    crop_px: float | None = None
    batch_size: int = _opt(16, flag="--batch-size", kind="int", help="crops per classifier batch", in_widget=False)
    det_batch: int | None = None
    region: tuple[int, int, int, int] | None = None
    masks: bool = _opt(False, flag="--no-masks", kind="switch", label="cell masks (Labels layer)",
                       widget_value=True,
                       help="no cell masks: cells.geojson then holds detection boxes, not cell outlines")
    colour: str = _opt("standardise", flag="--colour", kind="choice", label="colour adaptation",
                       choices=COLOUR_CHOICES, metavar="{" + ",".join(COLOUR_CHOICES) + "}",
                       help="adapt the slide's colours to the models' training data: 'standardise' "
                            "maps the CIELAB mean and spread of the cell crops onto the classifier's "
                            "training crops', and of the detector's tiles into the range of its training "
                            "fields' where they lie outside it (default; see docs/models.md, other labs), "
                            "'white-balance' matches only the crops' glass colour, 'off' leaves both as "
                            "they are")
    class_prior: str = _opt("off", flag="--class-prior", kind="choice", label="class prior",
                            choices=PRIOR_CHOICES, metavar="{" + ",".join(PRIOR_CHOICES) + "}",
                            help="'slide': weigh each cell's type by the slide's class mix, estimated from "
                                 "all its cells (slides of 50 cells or more): more of a blood smear's cells "
                                 "typed right, rare types called less often, no gain on marrow (see "
                                 "docs/models.md); 'off' (default): every type taken as equally common")
    exclude: tuple[str, ...] = tuple(sorted(NON_LEUKOCYTE_CODES))
    target: int | None = _opt(None, flag="--target", kind="int", label="count to", limits=(0, 100000, 100),
                              none=0, metavar="N",
                              help="count N leukocytes (e.g. 200-500), visiting the best counting areas "
                                   "first, then stop; default: every cell")
    min_area_score: float = _opt(0.0, flag="--min-area-score", kind="float", label="min area score",
                                 limits=(0.0, 1.0, 0.05), metavar="S",
                                 help="analyse only regions whose counting-area score (0-1: in focus, a "
                                      "monolayer) is at least S (0: all)")
    min_confidence: float | None = _opt(None, flag="--min-confidence", kind="text", parse=confidence_from_text,
                                        label="min confidence", widget_value="checkpoint", metavar="P",
                                        help="cells whose top class probability is below P are unclassified "
                                             "(UNK) until reviewed; default ('checkpoint'): the classifier's "
                                             "threshold, chosen on its validation split; 0: none")
    block: int = 2048

    def check(self) -> "AnalysisOptions":
        """Raise :class:`InputError` (one line naming the option and its fix) for values
        out of range; return ``self``."""
        d = {f.name: f.default for f in fields(self)}
        bad = [
            (self.tile_size >= 64, "tile_size", f"a tile side of at least 64 px (default {d['tile_size']})"),
            (0 <= self.overlap < self.tile_size, "overlap",
             f"0 or more px, less than the tile size {self.tile_size} (default {d['overlap']})"),
            (self.batch_size >= 1, "batch_size", f"1 or more crops per batch (default {d['batch_size']})"),
            (self.cell_px is None or self.cell_px > 0, "cell_px",
             "a positive white-cell diameter in px, or leave it out"),
            (self.target is None or self.target >= 1, "target",
             "a number of leukocytes to count, 1 or more (200-500 for a marrow differential)"),
            (0.0 <= self.min_area_score <= 1.0, "min_area_score",
             "a counting-area score between 0 and 1 (0: every area)"),
            (self.min_confidence is None or 0.0 <= self.min_confidence <= 1.0, "min_confidence",
             "a class probability between 0 and 1 (0: no cell unclassified)"),
            (self.colour in COLOUR_CHOICES, "colour", "one of " + ", ".join(COLOUR_CHOICES)),
            (self.class_prior in PRIOR_CHOICES, "class_prior", "one of " + ", ".join(PRIOR_CHOICES)),
        ]
        for ok, name, fix in bad:
            if not ok:
                raise InputError(f"{option_of(name).flag} {getattr(self, name)}: give {fix}")
        return self


def option_of(name: str) -> Option:
    """The :class:`Option` of field ``name``."""
    return next(f.metadata["option"] for f in fields(AnalysisOptions) if f.name == name)


def user_options() -> list[tuple[str, object, Option]]:
    """``(name, default, Option)`` of every field a user sets, in declaration order."""
    return [(f.name, f.default, f.metadata["option"]) for f in fields(AnalysisOptions) if "option" in f.metadata]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag per user-set field (help shows the default)."""
    for name, default, o in user_options():
        if o.kind == "switch":  # default None: help shows no "(default: ...)" for a switch
            parser.add_argument(o.flag, dest=name, action="store_const", const=not o.flag.startswith("--no-"),
                                default=None, help=o.help)
        else:
            typ = o.parse or {"int": int, "float": float}.get(o.kind, str)
            parser.add_argument(o.flag, dest=name, type=typ, default=default, metavar=o.metavar, help=o.help,
                                choices=o.choices)


def from_flags(args: argparse.Namespace, **fixed) -> AnalysisOptions:
    """The checked :class:`AnalysisOptions` of parsed flags (and ``fixed`` values)."""
    values = {}
    for name, default, o in user_options():
        v = getattr(args, name)
        if v is None and o.kind == "switch":  # not given: --no-x keeps x on
            v = o.flag.startswith("--no-") or bool(default)
        values[name] = v
    return AnalysisOptions(**values, **fixed).check()
