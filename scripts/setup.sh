#!/usr/bin/env bash
# Create .venv (if missing) and install ARMOR Edge with its training/export and test extras.
# torch is installed first and pinned: an unpinned torch may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[train,dev]"
.venv/bin/python -c "import torch, transformers, onnxruntime, tokenizers; print('setup: torch', torch.__version__, '| transformers', transformers.__version__, '| onnxruntime', onnxruntime.__version__)"
