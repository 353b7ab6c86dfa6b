"""The class prior (``--class-prior slide``) on simulated slides of a lab's own cells:
PBC's held-back test crops drawn in a blood-like and a marrow-like mix (40 slides of 200
cells each), typed by CHECKPOINT with the prior off and at each strength. Prints the
accuracy, the distance of the counted differential to the slide's mix, and each type's
recall.

    python scripts/slide_prior_probe.py CHECKPOINT [--data ../shared/data/pbc]
        [--split CHECKPOINT's .split.csv] [--strength 0.25 0.5 1]
"""
from __future__ import annotations

import argparse

import numpy as np

from napari_bm_cells.classify import Classifier
from napari_bm_cells.prior import adapt_to_slide
from napari_bm_cells.training.cls_data import load_images
from napari_bm_cells.training.train_classifier import read_split, split_path

#: white-cell mixes (relative shares) of the simulated slides
MIXES = {
    "blood": {"NGS": .55, "NGB": .03, "LYT": .30, "MON": .06, "EOS": .03, "BAS": .01,
              "MYB": .005, "MMZ": .005, "EBO": .005, "PMO": .005},
    "marrow": {"NGS": .15, "NGB": .12, "MMZ": .12, "MYB": .12, "PMO": .05, "EBO": .25, "LYT": .12,
               "MON": .03, "EOS": .03, "BAS": .01},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="../shared/data/pbc")
    ap.add_argument("--split", default=None, help="split file (default: the checkpoint's)")
    ap.add_argument("--strength", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--cells", type=int, default=200)
    a = ap.parse_args(argv)
    clf = Classifier(a.checkpoint, device="cpu")
    test = read_split(a.split or split_path(a.checkpoint), a.data).query("split == 'test'")
    crops, ok = load_images(test["path"].tolist(), clf.input_size, fov=clf.meta.crop_size_px)
    probs, y, classes = clf.predict_in_batches(crops[ok]), test["label"].to_numpy()[ok], np.array(clf.classes)
    print(f"{len(y)} held-back test crops")
    for name, mix in MIXES.items():
        types = [c for c in mix if (y == c).any()]
        share = np.array([mix[c] for c in types], float)
        share /= share.sum()
        rng = np.random.default_rng(0)
        slides = []
        for _ in range(a.slides):
            truth = rng.choice(types, a.cells, p=share)
            slides.append((np.array([rng.choice(np.flatnonzero(y == c)) for c in truth]), truth))
        for strength in [0.0] + a.strength:
            acc, dist, hits = [], [], {c: [0, 0] for c in types}
            for idx, truth in slides:
                p, _ = adapt_to_slide(probs[idx], classes, min_cells=0, strength=strength)
                pred = classes[p.argmax(1)]
                acc.append(np.mean(pred == truth))
                dist.append(0.5 * sum(abs(np.mean(pred == c) - np.mean(truth == c)) for c in classes))
                for c in types:
                    hits[c][0] += int(np.sum((pred == c) & (truth == c)))
                    hits[c][1] += int(np.sum(truth == c))
            print(f"{name:6s} strength {strength:4}: accuracy {np.mean(acc):.3f}, distance to the mix "
                  f"{np.mean(dist):.3f}; recall " + " ".join(f"{c} {h[0] / h[1]:.2f}" for c, h in hits.items()))


if __name__ == "__main__":
    main()
