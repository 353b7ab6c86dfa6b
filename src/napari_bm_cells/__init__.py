"""napari-bm-cells: differential cell counts of bone-marrow and blood smears.

The pipeline reads a slide lazily (``io``), detects white cells tile by tile
(``detect``), cuts centre-contour crops (``crop``), classifies them in batches
(``classify``), counts the differential (``count``) and writes tables (``export``);
``pipeline`` ties these together for the CLI, the batch runner and the napari widgets.
"""
__version__ = "0.1.0"

__all__ = ["analyze", "AnalysisOptions", "AnalysisResult", "open_slide", "__version__"]


def __getattr__(name):  # lazy: importing the package must not pull in torch
    if name in ("analyze", "AnalysisOptions", "AnalysisResult", "iter_analysis"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "open_slide":
        from .io import open_slide
        return open_slide
    raise AttributeError(name)
