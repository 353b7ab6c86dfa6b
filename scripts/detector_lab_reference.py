"""Store the CIELAB statistics of a detector's training fields in its sidecar JSON.

``bm-cells train-detector`` writes them itself; this adds them to weights trained
before (the run-time colour standardisation of detection, ``--colour standardise``,
maps a slide's tiles onto them). The shipped detector's:

    python scripts/detector_lab_reference.py src/napari_bm_cells/models/cells_yolov8n.pt \\
        ../shared/data/txl-pbc/data.yaml ../shared/data/bccd
"""
import argparse

from napari_bm_cells.training.train_detector import add_lab_reference

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("weights", help="YOLO .pt whose <weights>.json gets lab_reference")
p.add_argument("sources", nargs="+", help="the VOC folders / YOLO data.yaml it was trained on (train splits)")
p.add_argument("--leave-out", default=None, help="the lab the detector was trained without")
a = p.parse_args()
print(add_lab_reference(a.weights, a.sources, a.leave_out))
