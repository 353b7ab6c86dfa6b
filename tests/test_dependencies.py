"""Every library the package imports is declared in pyproject.toml: the core's among the
dependencies a plain ``pip install napari-bm-cells`` brings, the napari plugin's and
training's among their extras."""
import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_bm_cells"


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    return {_name(r) for r in project["dependencies"]}, extras


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"napari_bm_cells", "__future__"}


def test_every_imported_library_is_declared():
    core, extras = _declared()
    dists = metadata.packages_distributions()
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).as_posix()
        allowed = set(core)
        if rel.startswith("gui/"):
            allowed |= extras["napari"]
        if rel.startswith("training/"):
            allowed |= extras["pretrained"]
        if rel == "explain.py":
            allowed |= extras["explain"]
        for mod in _imports(f):
            names = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
            assert names, f"{rel}: imports {mod}, which no installed distribution provides"
            assert names & allowed, f"{rel}: imports {mod} ({', '.join(sorted(names))}), not declared for it"


def test_importing_the_package_leaves_qts_plugin_path_alone(tmp_path):
    """opencv-python points Qt at its own plugins when cv2 is imported; a napari window
    opened after the pipeline was imported must still find Qt's own platform plugins."""
    import subprocess

    code = ("import os, cv2, napari_bm_cells.pipeline, napari_bm_cells.training.det_data\n"
            "d = os.path.dirname(cv2.__file__)\n"
            "bad = {k: v for k, v in os.environ.items() if k.startswith('QT_QPA') and v.startswith(d)}\n"
            "print(bad)\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("QT_QPA")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{}"
    # and every cv2 import in the package goes through the module that undoes it
    direct = [p.relative_to(SRC) for p in SRC.rglob("*.py")
              if p.name != "_opencv.py" and re.search(r"^\s*import cv2\b", p.read_text(), re.M)]
    assert not direct, f"import cv2 through napari_bm_cells._opencv in {direct}"
