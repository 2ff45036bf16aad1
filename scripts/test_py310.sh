#!/usr/bin/env bash
# The Jetson's Python: a Python 3.10 environment with only the runtime's dependencies (no torch,
# numpy 1.x) runs armor-run and the runtime's tests on bundles exported by the main environment.
# Skips, saying so, where this machine has no python3.10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY310=""
for candidate in "${PYTHON310:-}" python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
  if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 10)" 2>/dev/null; then
    PY310=$candidate
    break
  fi
done
if [ -z "$PY310" ]; then
  echo "py310: SKIPPED: no Python 3.10 interpreter here (set PYTHON310)"
  exit 0
fi
if [ ! -x .venv310/bin/python ]; then
  "$PY310" -m venv .venv310
fi
.venv310/bin/python -m pip install -q --disable-pip-version-check "numpy<2" pytest .
if .venv310/bin/python -c "import torch" 2>/dev/null; then
  echo "py310: torch is installed in .venv310; the runtime-only check needs an environment without it" >&2
  exit 1
fi
bundles=build/test-bundles
.venv/bin/python tests/export_bundles.py "$bundles"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$out" && "$OLDPWD/.venv310/bin/armor-run" "$OLDPWD/$bundles/tiny" \
  --prompt "draw a picture with 3 shapes and tell me what it shows." --out "$out/answer")
test -s "$out/answer/image_0.png"
# the runtime's tests (fast tier) with this environment's Python and dependencies
ARMOR_TEST_BUNDLES="$PWD/$bundles" .venv310/bin/python -m pytest -q -rs -p no:cacheprovider \
  -m "not slow" tests/runtime "$@"
.venv310/bin/python -c "import numpy, sys; print('py310: runtime-only check passed on Python', sys.version.split()[0], '| numpy', numpy.__version__)"
