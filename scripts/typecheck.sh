#!/usr/bin/env bash
# mypy on the code written against TensorRT's Python API, with the patched tensorrt-stubs
# 10.13.0.35.1 on MYPYPATH (scripts/patch_trt_stubs.py; setup.sh installs them into .venv/stubs,
# a folder off sys.path). No TensorRT runs here: this is how CI catches a misspelt or removed
# TensorRT API (e.g. execute_async_v2, an unknown BuilderFlag) before a Jetson does.
# - runtime/backends/tensorrt.py: mypy --strict.
# - armor_export/tensorrt.py: every function body checked (check_untyped_defs) with the stubs,
#   strict but for the rules its ONNX-rewriting half was not written to (bare `dict` generics,
#   unannotated helpers, Any returns from onnx/numpy); its TensorRT code (build_engines,
#   engine_support) is checked with the same TensorRT types either way.
# - the stubs' own errors are ignored (ignore_errors): as shipped they use undefined names
#   (`capsule`) and bare `...` defaults; their declarations are still what we are checked against.
# - cuda-python (cuda.bindings / cuda.cudart) is Cython without .pyi or py.typed, so mypy
#   cannot see its types: ignore_missing_imports for cuda.* only; runtime/backends/tensorrt.py
#   wraps every cudart call in a typed `Cuda` class instead.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=.venv/stubs/tensorrt-stubs
TYPINGS=.venv/typings
if [ ! -f "$SRC/tensorrt/__init__.pyi" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$SRC" "tensorrt-stubs==10.13.0.35.1"
fi
.venv/bin/python scripts/patch_trt_stubs.py "$SRC" "$TYPINGS"
cat > "$TYPINGS/mypy.ini" <<'INI'
[mypy]
python_version = 3.10
strict = True
follow_imports = silent
warn_unused_configs = True
[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True
[mypy-cuda.*,onnxruntime.*]
ignore_missing_imports = True
[mypy-armor_export.tensorrt]
disallow_any_generics = False
disallow_untyped_defs = False
disallow_incomplete_defs = False
disallow_untyped_calls = False
warn_return_any = False
check_untyped_defs = True
INI
MYPYPATH="$TYPINGS" .venv/bin/python -m mypy --config-file "$TYPINGS/mypy.ini" --cache-dir "$TYPINGS/.mypy_cache" \
  runtime/backends/tensorrt.py armor_export/tensorrt.py
