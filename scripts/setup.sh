#!/usr/bin/env bash
# Create .venv (if missing) and install ARMOR Edge with its training/export and test extras,
# and the `gguf` extra (gguf-py and llama-cpp-python for text.gguf / --backend llamacpp).
# torch is installed first and pinned: an unpinned torch may pull a multi-GB CUDA build.
# llama-cpp-python is source-only (a C++ build, minutes): the wheel is built once into
# ARMOR_WHEEL_CACHE (default ~/.cache/armor-edge/wheels) and installed from there, so a second
# run takes seconds. ARMOR_SKIP_GGUF=1 skips the extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[train,dev]"
.venv/bin/python -c "import torch, transformers, onnxruntime, tokenizers; print('setup: torch', torch.__version__, '| transformers', transformers.__version__, '| onnxruntime', onnxruntime.__version__)"
# scripts/typecheck.sh's tensorrt-stubs: --no-deps (they depend on TensorRT, which cannot be installed
# here), into a folder off sys.path (in site-packages their bare `tensorrt/` imports as an empty package)
if [ ! -f .venv/stubs/tensorrt-stubs/tensorrt/__init__.pyi ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target .venv/stubs/tensorrt-stubs \
    "tensorrt-stubs==10.13.0.35.1"
fi

if [ "${ARMOR_SKIP_GGUF:-0}" != "1" ]; then
  WHEELS=${ARMOR_WHEEL_CACHE:-$HOME/.cache/armor-edge/wheels}
  mkdir -p "$WHEELS"
  # the wheel is tagged py3-none-linux_<machine> (ctypes, no CPython ABI): one per machine type
  if ! ls "$WHEELS"/llama_cpp_python-0.3.*_"$(uname -m)".whl >/dev/null 2>&1; then
    echo "setup: building llama-cpp-python into $WHEELS (once; several minutes on 2 cores)"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps -w "$WHEELS" "llama-cpp-python>=0.3,<0.4"
  fi
  # --prefer-binary: the cached wheel wins over a newer sdist on the index (no rebuild)
  .venv/bin/python -m pip install -q --disable-pip-version-check --prefer-binary --find-links "$WHEELS" "gguf>=0.10,<1" \
    "llama-cpp-python>=0.3,<0.4"
  .venv/bin/python -c "import gguf, llama_cpp; print('setup: llama-cpp-python', llama_cpp.__version__)"
fi
