"""Cut every white cell of other labs' detection fields, untyped, as ``analyze`` cuts
cells for CHECKPOINT's field of view and cell size: crops for
``train-classifier --unlabelled`` (learnt from a teacher's outputs only).

    python scripts/cut_lab_cells.py CHECKPOINT OUT [--data .pack/txl-pbc/data.yaml]
        [--labs Raabin-WBC BCD] [--splits train val] [--crop-px 112]

Writes OUT/<lab>/<field>_<box>.png and prints the number of cells per lab.
"""
from __future__ import annotations

import argparse

from napari_bm_cells.checkpoint import read_meta
from napari_bm_cells.training.pseudo_labels import write_lab_cells


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="classifier whose crop geometry (field of view, cell size) to cut with")
    ap.add_argument("out")
    ap.add_argument("--data", default=".pack/txl-pbc/data.yaml")
    ap.add_argument("--labs", nargs="+", default=["Raabin-WBC", "BCD"])
    ap.add_argument("--splits", nargs="+", default=["train", "val"],
                    help="splits of the detection set (keep its test split for evaluation)")
    ap.add_argument("--crop-px", type=int, default=112, help="the student's --crop-size-px")
    a = ap.parse_args(argv)
    n = write_lab_cells(a.data, a.out, read_meta(a.checkpoint), tuple(a.labs), tuple(a.splits), a.crop_px)
    for lab, k in n.items():
        print(f"{lab}: {k} white cells -> {a.out}/{lab}")


if __name__ == "__main__":
    main()
