#!/usr/bin/env bash
# Re-measure every table of docs/benchmarks.md that depends on the `tiny` checkpoint, one
# command after another (nothing else should run beside it): exports, INT8 / INT4 gates,
# dynamic vs static cache, Jacobi decoding, the soak, GGUF gates and llama.cpp beside ORT.
#   bash scripts/remeasure_tiny.sh [CHECKPOINT] [OUT]   (defaults: the shipped tiny, runs/rm)
# Each command's output goes to OUT/logs/NAME.log; the benches write OUT/bench-*/bench.json.
# The tables are then written by hand from those files (docs/benchmarks.md says which is which).
set -euo pipefail
cd "$(dirname "$0")/.."
CK="${1:-training_ref/checkpoints/tiny}"
R="${2:-runs/rm}"
if [ -e "$R" ]; then
  echo "remeasure_tiny: $R exists; remove it or name another folder" >&2
  exit 2
fi
mkdir -p "$R/logs"
export OMP_WAIT_POLICY=PASSIVE TQDM_DISABLE=1  # no progress bars in the logs
BIN=.venv/bin

step() {  # step NAME COMMAND...: run it, keep its output; non-zero (under set -e: the end) on failure
  local name="$1"; shift
  echo "remeasure_tiny: $name" >&2
  local t0=$SECONDS
  if ! "$@" > "$R/logs/$name.log" 2>&1; then
    echo "$name: failed after $((SECONDS - t0)) s (logs/$name.log)" | tee -a "$R/logs/times.txt" >&2
    return 1
  fi
  echo "$name: $((SECONDS - t0)) s" >> "$R/logs/times.txt"
}

gated() {  # gated NAME COMMAND...: a step whose accuracy gate may refuse it; the refusal is
  # logged (the log keeps the report), then the command reruns with --force so the benches
  # still have its row
  local name="$1"; shift
  step "$name" "$@" || step "$name-forced" "$@" --overwrite --force
}

{  # the machine beside the numbers: VMs of one name differ (docs/benchmarks.md)
  for key in 'model name' 'cpu family' 'model'; do grep -m1 -E "^$key\s*:" /proc/cpuinfo; done
  echo "SIMD: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "cores: $(nproc); $(date -u '+%F %H:%M UTC')"
} > "$R/logs/machine.txt" 2>/dev/null || true

step export-fp32 "$BIN/armor-export" "$CK" --out "$R/tiny"
step export-fp16 "$BIN/armor-export" "$CK" --dtype fp16 --out "$R/tiny-fp16"
step export-static "$BIN/armor-export" "$CK" --kv-cache static --out "$R/tiny-static"
for s in int8 int8-weight int4-weight; do
  gated "calibrate-$s" "$BIN/armor-calibrate" "$R/tiny" --out "$R/q-$s" --scheme "$s"
done
step bench-q "$BIN/armor-bench" "$R/tiny" "$R/q-int8" "$R/q-int8-weight" "$R/q-int4-weight" \
  --checkpoint "$CK" --out "$R/bench-q" --repeats 3
step bench-kv "$BIN/armor-bench" "$R/tiny" "$R/tiny-static" --checkpoint "$CK" \
  --out "$R/bench-kv" --steps 64 --repeats 3 --positions 64,400
step bench-jacobi "$BIN/armor-bench" "$R/tiny" --jacobi 4,8,16 --jacobi-prompts 200 --out "$R/bench-jacobi"
step soak "$BIN/armor-bench" "$R/tiny" --soak 1000 --out "$R/soak"

if "$BIN/python" -c "import llama_cpp" 2>/dev/null; then
  for t in f32 f16 q8_0 q4_k_m; do
    cp -r "$R/tiny" "$R/llama-$t"
    gated "gguf-$t" "$BIN/armor-export" "$CK" --target gguf --gguf-type "$t" --out "$R/llama-$t"
  done
  step bench-llama "$BIN/armor-bench" "$R/tiny" "$R/q-int8-weight" "$R/q-int4-weight" \
    "$R/llama-f32" "$R/llama-q8_0" "$R/llama-q4_k_m" --backend ort,ort,ort,llamacpp,llamacpp,llamacpp \
    --positions 64,256 --steps 128 --repeats 5 --out "$R/bench-llama"
else
  echo "remeasure_tiny: llama-cpp-python is not installed (bash scripts/setup.sh builds it): GGUF skipped" >&2
fi
echo "remeasure_tiny: done; logs in $R/logs" >&2
