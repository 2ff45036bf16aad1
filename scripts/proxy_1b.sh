#!/usr/bin/env bash
# The proxy-1b workload (InternVL2.5-1B shapes, random weights): build it, export it at fp32 and
# fp16, quantize it (static INT8 Q/DQ, weight-only INT8 and INT4) and benchmark every bundle against
# fp32 and PyTorch eager. A measurement run, not a test: about 1.5 hours and ~17 GiB of memory on a 2-core machine. Results go to runs/proxy-1b/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
out=runs/proxy-1b
.venv/bin/armor-train --preset proxy-1b --out "$out" --dtype float16
for dtype in fp32 fp16; do
  .venv/bin/armor-export "$out/final" --out "$out/bundle-$dtype" --dtype "$dtype" --overwrite --quiet \
    | tee "$out/export-$dtype.txt"
done
# weight-only INT8 / INT4 of the decoder and heads; the accuracy report runs on a few held-out prompts only
# (random weights: the report checks the plumbing, the speed is the point)
for scheme in int8-weight int4-weight; do
  .venv/bin/armor-calibrate "$out/bundle-fp32" --out "$out/bundle-$scheme" --scheme "$scheme" \
    --prompts 2 --n-vqa 4 --n-t2i 1 --overwrite --quiet | tee "$out/calibrate-$scheme.txt"
done
# static INT8 (weights and activations): 16 feeds per graph from 3 recorded prompts (the third is the
# t2i one the image-mode graphs calibrate on); no sensitivity pass (it runs the 24-layer decoder once per node)
.venv/bin/armor-calibrate "$out/bundle-fp32" --out "$out/bundle-int8" --scheme int8 --no-sensitivity \
  --samples 16 --prompts 3 --n-vqa 4 --n-t2i 1 --overwrite --quiet | tee "$out/calibrate-int8.txt"
.venv/bin/armor-bench "$out/bundle-fp32" "$out/bundle-int8" "$out/bundle-int8-weight" "$out/bundle-int4-weight" \
  --checkpoint "$out/final" --out "$out/bench" --steps 16 --repeats 1
