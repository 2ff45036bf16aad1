#!/usr/bin/env bash
# The proxy-1b workload (InternVL2.5-1B shapes, random weights): build it, export it at fp32 and
# fp16, and benchmark the runtime against PyTorch eager. A measurement run, not a test:
# about 20-30 minutes and ~16 GiB of memory on a 2-core machine. Results go to runs/proxy-1b/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
out=runs/proxy-1b
.venv/bin/armor-train --preset proxy-1b --out "$out" --dtype float16
for dtype in fp32 fp16; do
  .venv/bin/armor-export "$out/final" --out "$out/bundle-$dtype" --dtype "$dtype" --overwrite --quiet \
    | tee "$out/export-$dtype.txt"
done
.venv/bin/armor-bench "$out/bundle-fp32" --checkpoint "$out/final" --out "$out/bench" --steps 32 --repeats 2
