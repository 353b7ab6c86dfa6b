"""Cut the white cells of other labs' detection fields and type them with a teacher
(pseudo-labels for ``train-classifier --extra-data``); prints the types per lab (of all
the white cells, so also how many the teacher takes for platelets: a sure error) and,
per type, the share of crops whose square reaches past the field on some side (filled
with the glass colour there).

    python scripts/pseudo_label_fields.py TEACHER OUT [--data .pack/txl-pbc/data.yaml]
        [--labs Raabin-WBC BCD] [--min-confidence P] [--crop-px 112]
"""
from __future__ import annotations

import argparse

from napari_bm_cells.training.pseudo_labels import pseudo_label_fields


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("out")
    ap.add_argument("--data", default=".pack/txl-pbc/data.yaml")
    ap.add_argument("--labs", nargs="+", default=["Raabin-WBC", "BCD"])
    ap.add_argument("--min-confidence", type=float, default=None,
                    help="default: the teacher's review threshold")
    ap.add_argument("--crop-px", type=int, default=112, help="the student's --crop-size-px")
    a = ap.parse_args(argv)
    df = pseudo_label_fields(a.data, a.out, a.teacher, labs=tuple(a.labs), out_px=a.crop_px,
                             min_confidence=a.min_confidence)
    df.to_csv(f"{a.out}/cells.csv", index=False)
    print(df.groupby(["lab", "label"]).size().unstack(0).fillna(0).astype(int).T.to_string())
    print("share of crops reaching past the field:")
    print((df["sides_past_edge"] > 0).groupby([df["lab"], df["label"]]).mean().unstack(0).round(2).T.to_string())
    print("written (confident, not platelets):", {k: int(v) for k, v in df.groupby("lab")["kept"].sum().items()})


if __name__ == "__main__":
    main()
