"""Batch analysis of a folder of slides: per-slide results plus a cohort table.

:func:`batch` finds every supported slide under a folder (recursively), analyses each
with :func:`~napari_bm_cells.pipeline.analyze` and writes::

    OUT/
      slides/<relative path of the slide>.out/   cells.csv, summary.json, done.json
                                                 (or error.json when the slide failed)
      cohort.csv    one row per slide: counts, percentages, blast %, atypical %, M:E
      errors.csv    slide, error (one line) for the slides that failed
      skipped.csv   path, reason for files that are not slides

Resumable: ``done.json`` (written last, atomically) records the input's hash, the
analysis settings and the model hashes, plus the hashes of ``cells.csv`` and
``summary.json``. A re-run skips a slide only when all of these still match, so a run
killed at any moment (even SIGKILL) loses no finished slide and leaves nothing a re-run
would trust. Slides run in-process (``workers=1``), on a local dask cluster or on an
existing ``dask.distributed`` cluster; each worker loads the models once, and the client
writes every output, so a distributed run writes the same files as a serial one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from . import runtime
from .errors import InputError

log = logging.getLogger(__name__)

SLIDES_DIR = "slides"
OUT_SUFFIX = ".out"
MARKER = "done.json"
#: what a finished slide's folder holds besides the marker
OUTPUTS = ("cells.csv", "summary.json", "cells.geojson", "report.html")
ERROR = "error.json"
LOCK = ".bm-cells-batch.lock"
MARKER_VERSION = 1
COHORT_FIRST = ["slide", "status", "output", "n_cells", "n_counted"]
COHORT_LAST = ["blast_pct", "atypical_pct", "me_ratio"]


@dataclass
class SlideJob:
    """One slide of a batch: its path, its path relative to the batch folder (posix)
    and its output folder."""

    path: Path
    rel: str
    out: Path


# --- finding slides ------------------------------------------------------------------

def find_slides(folder, glob: str | None = None, exclude=()) -> tuple[list[SlideJob], list[dict]]:
    """Slides under ``folder`` (recursive) and the files that are not slides.

    Parameters
    ----------
    folder : path
    glob : str, optional
        Pattern matched against each path relative to ``folder`` from the right
        (``"*.svs"`` matches at any depth, ``"cohort1/*.tif"`` only in that folder).
    exclude : iterable of paths
        Folders not to descend into (the output folder when it lies inside ``folder``).

    Returns
    -------
    slides : list of SlideJob
        Sorted by relative path; ``out`` is relative to the output root.
    skipped : list of dict
        ``{"path", "reason"}`` for files that match ``glob`` but are not slides.
        Hidden files and folders (names starting with ``.``) are ignored silently.
    """
    from .io import is_slide_path

    folder = Path(folder)
    excl = {Path(p).resolve() for p in exclude}
    slides, skipped = [], []

    def wanted(rel: str) -> bool:
        return glob is None or PurePosixPath(rel).match(glob)

    for root, dirs, files in os.walk(folder):
        root = Path(root)
        keep = []
        for d in sorted(dirs):
            p = root / d
            if d.startswith(".") or p.resolve() in excl:
                continue
            if is_slide_path(p):  # a zarr store: one slide, never descended into
                rel = p.relative_to(folder).as_posix()
                if wanted(rel):
                    slides.append(rel)
            else:
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = root / f
            rel = p.relative_to(folder).as_posix()
            if not wanted(rel):
                continue
            if is_slide_path(p):
                slides.append(rel)
            else:
                skipped.append({"path": rel, "reason": f"not a slide ({p.suffix or 'no suffix'}); "
                                "supported: .zarr, .tif/.tiff, .svs, .jpg/.jpeg, .png, .bmp"})
    slides.sort()
    jobs = [SlideJob(folder / rel, rel, Path(SLIDES_DIR) / (rel + OUT_SUFFIX)) for rel in slides]
    return jobs, skipped


# --- hashes --------------------------------------------------------------------------

def _sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def input_fingerprint(path, previous: dict | None = None, rehash: bool = False) -> dict:
    """Identity of a slide's content: ``{"sha256", "size", "mtime_ns", "kind"}``.

    Files: sha256 of the bytes. When ``previous`` (the fingerprint stored in a done
    marker) has the same size and modification time, its hash is reused unless
    ``rehash``. Folders (zarr stores): sha256 of the sorted listing of relative paths
    and sizes (chunks are never read).
    """
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        total = 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = Path(root) / f
                size = p.stat().st_size
                total += size
                h.update(f"{p.relative_to(path).as_posix()}\t{size}\n".encode())
        return {"kind": "dir-listing", "sha256": h.hexdigest(), "size": total, "mtime_ns": None}
    st = path.stat()
    fp = {"kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if (not rehash and previous and previous.get("kind") == "file" and previous.get("sha256")
            and previous.get("size") == st.st_size and previous.get("mtime_ns") == st.st_mtime_ns):
        fp["sha256"] = previous["sha256"]
    else:
        fp["sha256"] = _sha256_file(path)
    return fp


# --- models and settings -------------------------------------------------------------

def _detector_spec(detector) -> str:
    """What a worker needs to load the detector: ``"contour"`` or a weights path."""
    from .detect import DEFAULT_DETECTOR

    if detector is None:
        return str(DEFAULT_DETECTOR)
    if isinstance(detector, (str, Path)):
        return "contour" if str(detector).lower() == "contour" else str(Path(detector).resolve())
    if getattr(detector, "name", None) == "contour":
        return "contour"
    w = getattr(detector, "weights", None)
    if w:
        return str(Path(w).resolve())
    raise InputError(f"cannot send detector {detector!r} to dask workers: pass its weights path")


def _classifier_spec(classifier) -> str:
    from .classify import DEFAULT_CLASSIFIER

    if classifier is None:
        return str(DEFAULT_CLASSIFIER)
    if isinstance(classifier, (str, Path)):
        return str(Path(classifier).resolve())
    return str(Path(classifier.path).resolve())


def run_settings(options, detector, classifier, device: str) -> dict:
    """Everything that decides a slide's result except the slide: analysis options,
    device, detector and classifier (by content hash) and the package version.

    ``detector`` / ``classifier`` are loaded objects or what their loaders take.
    """
    from . import __version__
    from .checkpoint import file_sha256, read_meta

    det_spec, cls_spec = _detector_spec(detector), _classifier_spec(classifier)
    if det_spec == "contour":
        det = {"name": "contour", "sha256": None}
    else:
        if not Path(det_spec).is_file():
            raise InputError(f"{det_spec}: detector weights not found; pass --detector with a "
                             "YOLO .pt file or --detector contour")
        from .detect import DEFAULT_IOU, sidecar_conf

        # the weights, their sidecar (class list, scale, confidence threshold) and the
        # thresholds in effect: a loaded detector's own, else what loading would give
        sidecar = Path(det_spec).with_suffix(".json")
        meta = _read_json(sidecar) or {}
        det = {"name": "yolo", "sha256": file_sha256(det_spec, n=64),
               "sidecar_sha256": file_sha256(sidecar, n=64) if sidecar.is_file() else None,
               "conf": float(getattr(detector, "conf", sidecar_conf(meta))),
               "iou": float(getattr(detector, "iou", DEFAULT_IOU))}
    read_meta(cls_spec)  # a missing / foreign checkpoint is one clear error, not N slide errors
    opts = dataclasses.asdict(options)
    return {"options": json.loads(json.dumps(opts, default=str)), "device": device,
            "detector": det, "classifier": {"sha256": file_sha256(cls_spec, n=64)},
            "version": __version__, "marker_version": MARKER_VERSION}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def get_models(det_spec: str, cls_spec: str, device: str = "auto", torch_threads: int | None = None):
    """The (detector, classifier) pair for these specs, loaded once per process and thread.

    Dask workers call this for every slide; only the first call loads. Keyed on the
    thread too, because an ultralytics predictor must not be shared between threads.
    """
    if torch_threads:
        import torch
        torch.set_num_threads(int(torch_threads))
    return runtime.models(det_spec, cls_spec, device, per_thread=True)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    msg = msg[0] if msg else ""
    if isinstance(exc, InputError):
        return msg or type(exc).__name__
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _analyse(path, det, cls, options, device):
    """Analyse one slide; returns ``("done", cells, summary)`` or ``("error", kind, msg)``
    (``kind`` is ``"input"`` for bad files, which are not retried while unchanged)."""
    from .pipeline import analyze

    try:
        res = analyze(path, detector=det, classifier=cls, options=options, device=device)
    except InputError as exc:
        return ("error", "input", _one_line(exc))
    except MemoryError as exc:
        return ("error", "runtime", _one_line(exc) + " (out of memory)")
    except Exception as exc:  # noqa: BLE001 -- one bad slide must not stop the batch
        log.debug("slide %s failed", path, exc_info=True)
        return ("error", "runtime", _one_line(exc))
    return ("done", res.cells, res.summary, {"areas": res.areas, "outlines": res.outlines})


def analyse_task(path: str, det_spec: str, cls_spec: str, device: str, options,
                 torch_threads: int | None = None):
    """What a dask worker runs for one slide (models come from the per-worker cache)."""
    import dask

    try:
        det, cls = get_models(det_spec, cls_spec, device, torch_threads)
    except Exception as exc:  # noqa: BLE001
        return ("error", "runtime", "loading the models failed: " + _one_line(exc))
    # inside a worker, dask would send the slide's tile reads to the cluster as new tasks
    # (and wait on them from a worker thread: a deadlock with one thread per worker);
    # read them here, as a serial run does
    with dask.config.set(scheduler="threads"):
        return _analyse(path, det, cls, options, device)


def default_workers() -> int:
    """Workers this machine fits: half the cores, at most one per ~3 GB of free memory."""
    cores = os.cpu_count() or 1
    try:
        import psutil
        mem_gb = psutil.virtual_memory().available / 2**30
    except ImportError:  # pragma: no cover -- psutil comes with distributed
        mem_gb = math.inf
    return max(1, min(cores // 2, int(mem_gb // 3)))


# --- per-slide outputs ---------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _clean_tmp(folder: Path):
    """Remove temporary files of interrupted atomic writes (``.<name>.*.tmp``)."""
    if not folder.is_dir():
        return
    for p in folder.rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


def trusted_marker(job_out: Path, rel: str, key: str, fp: dict) -> dict | None:
    """The done marker of a slide when it matches the slide, settings and outputs."""
    m = _read_json(job_out / MARKER)
    if not m or m.get("slide") != rel or m.get("settings_key") != key:
        return None
    if (m.get("input") or {}).get("sha256") != fp.get("sha256"):
        return None
    for name, sha in (m.get("outputs") or {}).items():
        p = job_out / name
        if not p.is_file() or _sha256_file(p) != sha:
            return None
    if not m.get("outputs"):
        return None
    return m


def write_slide_outputs(root: Path, job: SlideJob, cells: pd.DataFrame, summary: dict,
                        fp: dict, settings: dict, key: str, extras: dict | None = None,
                        report: bool = True) -> dict:
    """cells.csv, summary.json, cells.geojson and report.html (each atomic), then the done
    marker (atomic, last). ``extras`` holds the run's area map and cell outlines."""
    from .export import atomic_write, write_results
    from .io import open_slide
    from .pipeline import AnalysisResult

    d = root / job.out
    (d / MARKER).unlink(missing_ok=True)
    (d / ERROR).unlink(missing_ok=True)
    extras = extras or {}
    slide = None
    if report:
        try:  # the report's cell thumbnails; the slide was just read, so this should not fail
            slide = open_slide(job.path)
        except InputError:
            slide = None
    res = AnalysisResult(cells, summary, slide=slide, areas=extras.get("areas"),
                         outlines=extras.get("outlines") or {})
    paths = write_results(res, d, report=report)
    marker = {"slide": job.rel, "input": fp, "settings_key": key, "settings": settings,
              "outputs": {p.name: _sha256_file(p) for p in paths.values()},
              "n_cells": int(len(cells)),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(d / MARKER, json.dumps(marker, indent=2))
    return marker


def write_slide_error(root: Path, job: SlideJob, kind: str, msg: str, fp: dict | None, key: str):
    """error.json (atomic); stale results of an earlier run of this slide are removed."""
    from .export import atomic_write

    d = root / job.out
    for name in (MARKER, *OUTPUTS):
        (d / name).unlink(missing_ok=True)
    atomic_write(d / ERROR, json.dumps({"slide": job.rel, "kind": kind, "error": msg,
                                        "input": fp, "settings_key": key,
                                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))


def cohort_row(job: SlideJob, summary: dict) -> dict:
    """One cohort row from a slide's summary."""
    row = {"slide": job.rel, "status": "done", "output": job.out.as_posix(),
           "n_cells": summary.get("n_cells"), "n_counted": summary.get("n_counted")}
    for code, k in (summary.get("counts") or {}).items():
        row[f"count_{code}"] = k
    for code, p in (summary.get("percent") or {}).items():
        row[f"pct_{code}"] = np.nan if p is None else p
    for k in COHORT_LAST:
        v = summary.get(k)
        row[k] = np.nan if v is None else v
    return row


def cohort_table(rows: list[dict]) -> pd.DataFrame:
    """Rows in a fixed column order: slide, status, output, n_cells, n_counted, count_*,
    pct_* (codes in order of first appearance), blast_pct, atypical_pct, me_ratio."""
    codes = []
    for r in rows:
        for k in r:
            if k.startswith("count_") and k[6:] not in codes:
                codes.append(k[6:])
    cols = COHORT_FIRST + [f"count_{c}" for c in codes] + [f"pct_{c}" for c in codes] + COHORT_LAST
    df = pd.DataFrame(rows, columns=cols)
    for c in codes:  # counts are integers; failed slides have none
        df[f"count_{c}"] = df[f"count_{c}"].astype("Int64")
    for c in ("n_cells", "n_counted"):
        df[c] = df[c].astype("Int64")
    return df


def read_cohort(path) -> pd.DataFrame:
    """Read cohort.csv back (integer columns stay integers)."""
    df = pd.read_csv(path)
    for c in df.columns:
        if c.startswith("count_") or c in ("n_cells", "n_counted"):
            df[c] = df[c].astype("Int64")
    return df


class _Tables:
    """The run's cohort / error rows, rewritten (atomically) after every slide."""

    def __init__(self, root: Path, jobs: list[SlideJob], report: bool = True):
        self.root = root
        self.order = {j.rel: i for i, j in enumerate(jobs)}
        self.rows: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.summaries: dict[str, tuple[SlideJob, dict]] = {}
        self.report = report

    def done(self, job: SlideJob, summary: dict):
        self.rows[job.rel] = cohort_row(job, summary)
        self.summaries[job.rel] = (job, summary)
        self.errors.pop(job.rel, None)

    def failed(self, job: SlideJob, msg: str):
        self.rows[job.rel] = {"slide": job.rel, "status": "error", "output": job.out.as_posix()}
        self.summaries.pop(job.rel, None)
        self.errors[job.rel] = msg

    def cohort(self) -> pd.DataFrame:
        return cohort_table([self.rows[k] for k in sorted(self.rows, key=self.order.get)])

    def write(self) -> pd.DataFrame:
        from .export import atomic_write

        df = self.cohort()
        atomic_write(self.root / "cohort.csv", df.to_csv(index=False, float_format="%.6g"))
        err = pd.DataFrame([{"slide": k, "error": self.errors[k]}
                            for k in sorted(self.errors, key=self.order.get)], columns=["slide", "error"])
        atomic_write(self.root / "errors.csv", err.to_csv(index=False))
        if self.report:
            from .report import write_cohort_report

            write_cohort_report([{"slide": k, "report": f"{job.out.as_posix()}/report.html", "summary": s}
                                 for k, (job, s) in sorted(self.summaries.items(), key=lambda kv: self.order[kv[0]])],
                                self.root / "cohort.html")
        return df


@contextmanager
def _out_lock(out: Path):
    """One batch at a time per output folder (an OS lock, on every platform: released even
    when the process is killed)."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{out}: another 'bm-cells batch' is writing into this folder; "
                         "wait for it or choose another --out") from None
    try:
        yield
    finally:
        lock.release()


def _note(msg: str, progress: bool):
    if progress:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    log.info(msg)


# --- the batch -----------------------------------------------------------------------

def batch(folder, out, client=None, workers: int | None = None, options=None, detector=None,
          classifier=None, glob: str | None = None, device: str = "auto",
          scheduler: str | None = None, progress: bool = True, retry_errors: bool = False,
          rehash: bool = False, report: bool = True) -> pd.DataFrame:
    """Analyse every slide in ``folder`` into ``out``; resumable.

    Parameters
    ----------
    folder : path
        Searched recursively for slides (see :func:`find_slides`).
    out : path
        Output root (see the module docstring for the layout).
    client : distributed.Client, optional
        Run slides on this dask cluster (workers must see the slide and model paths).
    workers : int, optional
        Without ``client`` / ``scheduler``: the size of a local dask cluster (one process
        per worker). ``1`` runs in this process without dask. Default
        :func:`default_workers`.
    options : AnalysisOptions, optional
    detector, classifier : loaded objects or paths, optional
        Loaded models are used as they are in-process; dask workers load the same weights
        from their paths (once per worker).
    glob : str, optional
        Only slides whose relative path matches (e.g. ``"*.svs"``).
    device : str
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``).
    progress : bool
        Progress bar on stderr.
    retry_errors : bool
        Retry slides that failed with a bad-input error although they did not change
        (other failures are always retried).
    rehash : bool
        Re-hash every input file instead of trusting an unchanged size + mtime.
    report : bool
        Write each slide's ``report.html`` and the cohort page ``cohort.html``.

    Returns
    -------
    pandas.DataFrame
        The cohort table (also written to ``out/cohort.csv``); ``.attrs["batch"]`` holds
        the run's counts (``n_slides``, ``n_done``, ``n_reused``, ``n_failed``,
        ``n_skipped``).
    """
    from .pipeline import AnalysisOptions

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the folder holding the slides")
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    options = options or AnalysisOptions()  # masks give cells.geojson its outlines
    if classifier is not None and not isinstance(classifier, (str, Path)):
        device = classifier.device
    with _out_lock(root):
        _clean_tmp(root)
        jobs, skipped = find_slides(folder, glob, exclude=[root])
        if glob and not jobs:
            raise InputError(f"{folder}: no slide matches --glob {glob!r} (patterns match paths relative "
                             f"to the folder, e.g. '*.svs' or 'site1/*.ome.zarr'); {root} left as it was")
        from .export import atomic_write
        atomic_write(root / "skipped.csv", pd.DataFrame(skipped, columns=["path", "reason"])
                     .to_csv(index=False))
        if skipped:
            _note(f"skipped {len(skipped)} file(s) that are not slides (see {root / 'skipped.csv'})",
                  progress)
        settings = run_settings(options, detector, classifier, device)
        key = settings_key(settings)
        tables = _Tables(root, jobs, report)
        todo, fps, reused = [], {}, 0
        for job in jobs:
            d = root / job.out
            prev = _read_json(d / MARKER) or _read_json(d / ERROR) or {}
            try:
                fp = input_fingerprint(job.path, prev.get("input"), rehash)
            except OSError as exc:
                write_slide_error(root, job, "runtime", _one_line(exc), None, key)
                tables.failed(job, _one_line(exc))
                continue
            fps[job.rel] = fp
            if trusted_marker(d, job.rel, key, fp) is not None:
                summary = _read_json(d / "summary.json")
                if summary is not None:
                    tables.done(job, summary)
                    reused += 1
                    continue
            err = _read_json(d / ERROR)
            if (not retry_errors and err and err.get("kind") == "input" and err.get("slide") == job.rel
                    and err.get("settings_key") == key
                    and (err.get("input") or {}).get("sha256") == fp["sha256"]):
                tables.failed(job, err.get("error", ""))
                continue
            todo.append(job)
        tables.write()
        if reused:
            _note(f"{reused} slide(s) already analysed with these settings: reused", progress)

        from tqdm import tqdm
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="slides", unit="slide",
                   file=sys.stderr, disable=not progress or not jobs, dynamic_ncols=True)

        def finish(job, res):
            if res[0] == "done":
                write_slide_outputs(root, job, res[1], res[2], fps[job.rel], settings, key,
                                    res[3] if len(res) > 3 else None, report)
                tables.done(job, res[2])
            else:
                write_slide_error(root, job, res[1], res[2], fps[job.rel], key)
                tables.failed(job, res[2])
                _note(f"failed: {job.rel}: {res[2]}", progress)
            tables.write()
            bar.set_postfix_str(f"failed {len(tables.errors)}" if tables.errors else "", refresh=False)
            bar.update(1)

        own_client = quiet_logs = None
        try:
            if todo:
                if client is None and scheduler is None and (workers or default_workers()) <= 1:
                    _run_serial(todo, detector, classifier, options, device, finish)
                else:
                    n = None
                    if client is None:
                        from distributed import Client
                        if scheduler:
                            own_client = client = Client(scheduler)
                        else:
                            from distributed import LocalCluster
                            n = workers or default_workers()
                            if not log.isEnabledFor(logging.INFO):  # keep the terminal for the bar
                                dlog = logging.getLogger("distributed")
                                quiet_logs = (dlog, dlog.level)
                                dlog.setLevel(logging.WARNING)
                            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                   dashboard_address=None)
                            own_client = client = Client(cluster)
                    threads = max(1, (os.cpu_count() or 1) // n) if n else None
                    _run_dask(client, todo, detector, classifier, options, device, threads, finish)
        finally:
            bar.close()
            if own_client is not None:
                cluster = own_client.cluster
                own_client.close()
                if cluster is not None and scheduler is None:
                    # workers that loaded torch models take > 4 s to exit and get killed
                    # with a warning: harmless here, the results are already written
                    nlog = logging.getLogger("distributed.nanny")
                    level = nlog.level
                    nlog.setLevel(logging.ERROR)
                    try:
                        cluster.close()
                    finally:
                        nlog.setLevel(level)
            if quiet_logs is not None:
                quiet_logs[0].setLevel(quiet_logs[1])
        df = tables.write()
    df.attrs["batch"] = {"n_slides": len(jobs), "n_done": int((df["status"] == "done").sum()),
                         "n_reused": reused, "n_failed": int((df["status"] == "error").sum()),
                         "n_skipped": len(skipped)}
    return df


def _run_serial(todo, detector, classifier, options, device, finish):
    det, cls = runtime.models(detector, classifier, device)
    for job in todo:
        finish(job, _analyse(job.path, det, cls, options, device))


def _run_dask(client, todo, detector, classifier, options, device, torch_threads, finish):
    from distributed import as_completed

    det_spec, cls_spec = _detector_spec(detector), _classifier_spec(classifier)
    futures = {}
    for i, job in enumerate(todo):
        f = client.submit(analyse_task, str(Path(job.path).resolve()), det_spec, cls_spec, device,
                          options, torch_threads, pure=False, priority=-i,
                          key=f"bm-cells-slide-{i}-{hashlib.sha1(job.rel.encode()).hexdigest()[:10]}"
                              f"-{time.time_ns()}")
        futures[f] = job
    try:
        for f in as_completed(futures):
            job = futures.pop(f)
            try:
                res = f.result()
            except Exception as exc:  # noqa: BLE001 -- e.g. KilledWorker: a worker died
                res = ("error", "runtime", _one_line(exc))
            f.release()
            finish(job, res)
    finally:
        if futures:
            client.cancel(list(futures))
