#!/usr/bin/env bash
# The main job on the embedded default: set up, export the shipped `tiny` checkpoint to an
# ONNX bundle (verified against PyTorch), answer an interleaved prompt with the runtime,
# save the image, print the text and the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE
.venv/bin/armor-export training_ref/checkpoints/tiny --target onnx --out bundles/tiny --overwrite
.venv/bin/armor-run bundles/tiny --out armor-out \
  --prompt "draw a picture with 3 shapes and tell me what it shows."
