#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# torch and the graphs take turns on few cores: waiting OpenMP threads sleep instead of spinning
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m pytest -q -rs "$@"
# the TensorRT code against the patched tensorrt-stubs (mypy; no GPU needed)
bash scripts/typecheck.sh
# the runtime on the Jetson's Python (3.10, runtime dependencies only); skipped for a chosen subset
if [ "$#" -eq 0 ]; then
  bash scripts/test_py310.sh
fi
