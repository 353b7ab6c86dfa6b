"""Pack a compact copy of the training data for a training run on another machine.

Detection sets (TXL-PBC, BCCD) keep their layout, sizes and labels, re-encoded as JPEG
(quality 65); PBC crops are cut to the classifier's field of view (the central 250 px)
and stored at the network's input size (112 px, or ``--size N``), so the whole set fits in
about 55 MB. Train on the packed crops with ``--crop-size-px 112 --ref-cell-px <107 x
112/250>`` (``--img-size N --crop-size-px N --ref-cell-px <107 x N/250>`` for another
size): the field of view and the cell size are then the same as on the full crops; then
restate the checkpoints in full-crop pixels (``--restate``), as the pipeline cuts crops
from slides by them.

Usage: ``python scripts/pack_training_set.py ../shared/data .pack [--size N]``, then
``tar czf .packed/data.tgz .pack`` (what ``scripts/gpu_train.sh`` unpacks); after
training, ``python scripts/pack_training_set.py --restate CKPT.safetensors ...``
(``gpu_train.sh`` runs it on its classifiers).
"""
from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image

FOV, SIZE = 250, 112


def _reencode(src: Path, dst: Path, quality: int = 65) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").save(dst, quality=quality)


def _crop(src: Path, dst: Path, size: int = SIZE) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        left, top = (im.size[0] - FOV) // 2, (im.size[1] - FOV) // 2
        im.crop((left, top, left + FOV, top + FOV)).resize((size, size), Image.BILINEAR).save(dst, quality=80)


def pack(data: Path, out: Path, size: int = SIZE) -> None:
    jobs = []
    for name in ("txl-pbc", "bccd"):
        for p in (data / name).rglob("*"):
            if p.is_dir():
                continue
            dst = out / name / p.relative_to(data / name)
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                jobs.append((_reencode, p, dst.with_suffix(".jpg")))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst)
    for name in ("pbc", "pbc-extra"):
        for p in sorted((data / name).glob("*/*.jpg")):
            jobs.append((partial(_crop, size=size), p, out / name / p.relative_to(data / name)))
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda j: j[0](j[1], j[2]), jobs))
    print(f"packed {len(jobs)} images into {out}")


def restate(ckpt: Path) -> None:
    """Field of view and cell size of a checkpoint trained on packed crops, in the
    pixels of the full PBC crops (250 px field of view); the packed size is the
    checkpoint's field of view."""
    from napari_bm_cells.checkpoint import load_model, save_checkpoint

    model, meta = load_model(ckpt)
    if meta.crop_size_px >= FOV:
        raise SystemExit(f"{ckpt}: field of view {meta.crop_size_px} px, not a packed crop's (< {FOV} px)")
    meta.ref_cell_px *= FOV / meta.crop_size_px
    meta.crop_size_px = FOV
    save_checkpoint(ckpt, model.state_dict(), meta, half=True)
    print(f"{ckpt}: field of view {FOV} px, cell {meta.ref_cell_px:.1f} px")


if __name__ == "__main__":
    if sys.argv[1] == "--restate":
        for c in sys.argv[2:]:
            restate(Path(c))
    else:
        size = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else SIZE
        pack(Path(sys.argv[1]), Path(sys.argv[2]), size)
