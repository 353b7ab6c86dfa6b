#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine: the virtual X server napari's
# OpenGL canvas needs (GUI tests fail without it under CI, skip elsewhere), headless Chromium for the HTML
# report test, the package with its test extras, ruff, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq xvfb >/dev/null) || echo "note: could not install Xvfb; napari GUI tests will be skipped"
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the HTML report test fails (BM_CELLS_ALLOW_SKIP=1 skips it)"
fi
pip install -q -e ".[test]"
ruff check .  # the configuration in pyproject.toml
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
exec python -m pytest "$@"
