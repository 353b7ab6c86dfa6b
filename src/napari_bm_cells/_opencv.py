"""OpenCV, imported so that it leaves Qt alone.

The ``opencv-python`` wheel (which ultralytics requires) points Qt at its own platform
plugins and fonts (``QT_QPA_PLATFORM_PLUGIN_PATH``, ``QT_QPA_FONTDIR``) when ``cv2`` is
first imported. A napari window opened after that in the same process finds OpenCV's
``xcb`` plugin, built for another Qt, and stops with "Could not load the Qt platform
plugin". Every module of this package imports ``cv2`` from here, which undoes those two
settings whoever imported ``cv2`` first.
"""
import os

import cv2

_CV2_DIR = os.path.dirname(os.path.abspath(cv2.__file__))
for _key in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR"):
    if os.environ.get(_key, "").startswith(_CV2_DIR):
        del os.environ[_key]

__all__ = ["cv2"]
