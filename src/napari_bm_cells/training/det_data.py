"""Detection data sets: Pascal VOC folders (BCCD) and YOLO ``data.yaml`` sets (TXL-PBC).

Both are turned into one YOLO set with a chosen class list, images linked (not copied).
"""
from __future__ import annotations

import logging
import os
import shutil
import zlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..errors import InputError
from .labs import in_lab, source_names

log = logging.getLogger(__name__)

#: class sets a detector can be trained for; names as BCCD / TXL-PBC spell them
CLASS_SETS = {"wbc": ("WBC",), "all": ("WBC", "RBC", "Platelets")}
_ALIASES = {"wbc": "WBC", "rbc": "RBC", "platelets": "Platelets", "platelet": "Platelets",
            "plt": "Platelets"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


@dataclass
class Box:
    cls: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class Sample:
    image: Path
    width: int
    height: int
    boxes: list[Box]


def _canon(name: str) -> str:
    return _ALIASES.get(name.strip().lower(), name.strip())


def read_voc(voc_dir: str | Path) -> dict[str, list[Sample]]:
    """Read a Pascal VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main``).

    Returns samples per split; without ``ImageSets/Main`` everything is ``train``.
    Boxes keep their original pixel coordinates (VOC is 1-based inclusive; we use
    0-based half-open, hence the ``- 1`` on the lower corner).
    """
    voc_dir = Path(voc_dir)
    ann_dir, img_dir = voc_dir / "Annotations", voc_dir / "JPEGImages"
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise InputError(f"{voc_dir}: not a Pascal VOC folder (needs Annotations/ and JPEGImages/)")
    split_ids = {}
    for split in SPLITS:
        f = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        if f.is_file():
            split_ids[split] = [s.strip() for s in f.read_text().split() if s.strip()]
    if not split_ids:
        split_ids = {"train": sorted(p.stem for p in ann_dir.glob("*.xml"))}
    out: dict[str, list[Sample]] = {}
    for split, ids in split_ids.items():
        out[split] = []
        for sid in ids:
            xml = ann_dir / f"{sid}.xml"
            try:
                root = ET.parse(xml).getroot()
            except (ET.ParseError, FileNotFoundError) as exc:
                log.warning("%s: skipped (%s)", xml, exc)
                continue
            img = img_dir / (root.findtext("filename") or f"{sid}.jpg")
            if not img.is_file():
                img = img_dir / f"{sid}.jpg"
            size = root.find("size")
            w, h = int(size.findtext("width")), int(size.findtext("height"))
            boxes = []
            for obj in root.iter("object"):
                bb = obj.find("bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append(Box(_canon(obj.findtext("name")), x0 - 1, y0 - 1, x1, y1))
            out[split].append(Sample(img, w, h, boxes))
    return out


def read_yolo(data_yaml: str | Path) -> dict[str, list[Sample]]:
    """Read a YOLO data set described by ``data.yaml`` (boxes converted to pixels)."""
    from PIL import Image

    data_yaml = Path(data_yaml)
    try:
        cfg = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{data_yaml}: cannot read YOLO data.yaml ({exc})") from None
    names = cfg.get("names")
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    names = [_canon(n) for n in names]
    root = Path(cfg.get("path") or ".")
    if not root.is_absolute():  # relative to the yaml file, as ultralytics reads it
        root = data_yaml.parent / root
    out: dict[str, list[Sample]] = {}
    for split in SPLITS:
        if not cfg.get(split):
            continue
        img_dir = (root / cfg[split]).resolve()
        samples = []
        for img in sorted(img_dir.rglob("*")):
            if img.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            # ultralytics' rule: the labels folder replaces the *last* "images" folder
            sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
            lab = Path(sb.join(str(img).rsplit(sa, 1))).with_suffix(".txt")
            with Image.open(img) as im:
                w, h = im.size
            boxes = []
            if lab.is_file():
                for line in lab.read_text().splitlines():
                    parts = line.split()
                    if len(parts) < 5:
                        continue
                    c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                    boxes.append(Box(names[c], (cx - bw / 2) * w, (cy - bh / 2) * h,
                                     (cx + bw / 2) * w, (cy + bh / 2) * h))
            samples.append(Sample(img, w, h, boxes))
        out[split] = samples
    return out


def read_detection_set(path: str | Path) -> dict[str, list[Sample]]:
    """Read a VOC folder or a YOLO ``data.yaml`` (a folder holding one is fine too)."""
    path = Path(path)
    if path.is_dir() and (path / "Annotations").is_dir():
        return read_voc(path)
    if path.is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return read_yolo(path)
    raise InputError(f"{path}: not a detection data set; give a Pascal VOC folder "
                     "(Annotations/, JPEGImages/) or a YOLO data.yaml")


def image_signature(path: str | Path) -> np.ndarray:
    """A 32×24 standardised grey thumbnail: equal for re-encoded copies of one image."""
    from .._opencv import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputError(f"{path}: cannot read image")
    t = cv2.resize(img, (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


class DuplicateFinder:
    """Recognises images seen before, even re-encoded or re-annotated in another set.

    TXL-PBC re-annotates BCCD fields and splits them differently, so merging the two
    naively puts BCCD *training* fields into TXL-PBC's *test* split (and gives the
    network two box sets for one image).
    """

    def __init__(self, tol: float = 0.05):
        self.tol = tol
        self._sigs = np.zeros((0, 0), np.float32)  # rows [:n] in use; capacity doubles
        self._names: list[str] = []

    def match(self, sig: np.ndarray) -> str | None:
        """Name of a remembered image with signature ``sig``, else None."""
        n = len(self._names)
        if n:
            d = ((self._sigs[:n] - sig) ** 2).mean(axis=1)
            j = int(d.argmin())
            if d[j] < self.tol:
                return self._names[j]
        return None

    def add(self, sig: np.ndarray, name: str) -> None:
        n = len(self._names)
        if n == len(self._sigs):  # grow without re-stacking every signature per image
            grown = np.zeros((max(64, 2 * n), sig.size), np.float32)
            if n:
                grown[:n] = self._sigs[:n]
            self._sigs = grown
        self._sigs[n] = sig
        self._names.append(name)

    def seen(self, path: str | Path, remember: bool = True) -> str | None:
        """Name of the earlier copy of ``path`` (and remember ``path`` if new)."""
        sig = image_signature(path)
        hit = self.match(sig)
        if hit is None and remember:
            self.add(sig, str(path))
        return hit


def _write_stain_copies(image: Path, out_dir: Path, name: str, boxes: list[tuple[int, tuple]], n: int,
                        seed: int, field_of_view: float = 0.0) -> None:
    """``n`` recoloured copies of a training image, as JPEG, with its ``boxes`` (class
    index, pixel box) as YOLO label lines; a share ``field_of_view`` of them also cut to a
    camera's round field of view or a scanner's strip (:func:`~.augment.cut_field_of_view`),
    their boxes cut to what stays visible (:func:`~.augment.visible_boxes`)."""
    from PIL import Image

    from .augment import cut_field_of_view, random_stain_uint8, visible_boxes

    with Image.open(image) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    for k in range(n):
        copy, copy_boxes = random_stain_uint8(rgb, seed * 31 + k), boxes
        rng = np.random.default_rng(seed * 31 + k)
        if rng.random() < field_of_view:
            copy, outside = cut_field_of_view(copy, rng)
            cut, keep = visible_boxes([box for _, box in boxes], outside)
            copy_boxes = list(zip([c for (c, _), kept in zip(boxes, keep) if kept], cut))
        Image.fromarray(copy).save(
            out_dir / "images" / "train" / f"{name}_stain{k}.jpg", quality=int(60 + (seed + k) % 36))
        (out_dir / "labels" / "train" / f"{name}_stain{k}.txt").write_text(
            "\n".join(_yolo_line(c, box, w, h) for c, box in copy_boxes))


def _yolo_line(cls: int, box, width: float, height: float) -> str:
    """A YOLO label line (class, centre and size as shares of the image) of a pixel box (x0 y0 x1 y1)."""
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
    return f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"


#: share of the training fields held out for validation when the sources have no val split
VAL_FRACTION = 0.15


def hold_out_val(out_dir: Path, fraction: float = VAL_FRACTION, seed: int = 0) -> int:
    """Move a random ``fraction`` of a YOLO set's training fields (at least one) into its
    ``val`` split, dropping their recoloured copies from training, so the best epoch and
    the score threshold are chosen on fields the detector did not learn. Returns how many
    moved (and logs it: the user should know their sources had no validation split)."""
    train = out_dir / "images" / "train"
    originals = sorted(p for p in train.iterdir() if "_stain" not in p.stem)
    if len(originals) < 2:
        return 0
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(originals))))
    for p in rng.choice(np.array(originals, object), size=n, replace=False):
        p.rename(out_dir / "images" / "val" / p.name)
        (out_dir / "labels" / "train" / f"{p.stem}.txt").rename(out_dir / "labels" / "val" / f"{p.stem}.txt")
        for copy in train.glob(f"{p.stem}_stain*"):
            copy.unlink()
            (out_dir / "labels" / "train" / f"{copy.stem}.txt").unlink(missing_ok=True)
    log.warning("the sources have no validation split: held out %d of %d training fields (%.0f%%) "
                "to choose the best epoch and the score threshold", n, len(originals), 100 * fraction)
    return n


def write_yolo_set(sources: list[str | Path], out_dir: str | Path,
                   classes: tuple[str, ...] = CLASS_SETS["wbc"], dedupe: bool = True,
                   stain_copies: int = 0, seed: int = 0, leave_out: str | None = None,
                   field_of_view: float = 0.0) -> Path:
    """Merge detection sets into one YOLO set keeping only ``classes``.

    Images are symlinked (copied where links are not allowed); every box of a kept
    class is written. With ``dedupe``, an image already written (by an earlier source,
    or earlier in the same one; even re-encoded) is left out: the first copy's boxes and
    split win, so no field is in two splits of the merged set (TXL-PBC re-annotates
    BCCD fields and splits them differently; both sets also hold near-identical frames
    of one spot). ``dedupe=False`` converts every image and box as is. Without a val split
    in the sources, :func:`hold_out_val` makes one from the training fields.
    ``leave_out`` names a lab (:func:`~.labs.field_source`) whose fields are left out of every
    split, for leave-one-source-out training. Returns the path of the new ``data.yaml``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
    finder = DuplicateFinder() if dedupe else None
    n_dup = n_left = 0
    for si, src in enumerate(sources):
        for split, samples in read_detection_set(src).items():
            for s in samples:
                if leave_out and in_lab(s, leave_out):
                    n_left += 1
                    continue
                if finder is not None and finder.seen(s.image):
                    n_dup += 1
                    continue
                name = f"s{si}_{s.image.stem}"
                dst = out_dir / "images" / split / f"{name}{s.image.suffix.lower()}"
                try:
                    dst.symlink_to(s.image.resolve())
                except OSError:
                    shutil.copy2(s.image, dst)
                boxes = [(classes.index(b.cls), (b.x0, b.y0, b.x1, b.y1)) for b in s.boxes if b.cls in classes]
                (out_dir / "labels" / split / f"{name}.txt").write_text(
                    "\n".join(_yolo_line(c, box, s.width, s.height) for c, box in boxes))
                if split == "train" and stain_copies:
                    _write_stain_copies(s.image, out_dir, name, boxes, stain_copies,
                                        seed + zlib.crc32(name.encode()) % 100_000, field_of_view)
    if leave_out:
        if not n_left:
            raise InputError(f"--leave-out {leave_out}: no field of that lab in the sources "
                             f"(labs: {', '.join(source_names())})")
        log.warning("left out %d fields of %s (leave-one-source-out)", n_left, leave_out)
    if n_dup:
        log.warning("left out %d images already in the merged set (duplicates)", n_dup)
    if not any((out_dir / "images" / "val").iterdir()):
        hold_out_val(out_dir, seed=seed)
    cfg = {"path": str(out_dir.resolve()), "names": {i: c for i, c in enumerate(classes)}}
    for split in SPLITS:
        if any((out_dir / "images" / split).iterdir()):
            cfg[split] = f"images/{split}"
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return yaml_path
