"""`armor-bench --project DEVICE`: roofline projections of a bundle's calls on a device.

Each graph call takes at least max(bytes read / bandwidth, FLOPs / compute peak): the bytes and
FLOPs per call are measured from the bundle's graphs (armor_export.costs, recorded in the
manifest by the TensorRT export, else computed by `python -m armor_export.costs` in its own
process: the runtime imports no other package), the bandwidth and peak are datasheet numbers
(runtime.devices). A token is its calls in sequence:
- text token: decoder decode (batch 1) + text head;
- image code with CFG: decoder decode (batch 2, the guided pair) + visual head decode (batch 2);
- time to first token: vision encoder + decoder prefill (the profile's opt prompt) + text head;
- one image: the visual head's prefill, a code step per image token, the VQ decoder.
Rows use the measured rows' schema (engine "projection"), so they sit beside measured rows in
bench.json / bench.csv. A roofline is a lower bound on latency: real engines reach a fraction of
it (launch overheads, attention kernels, cache traffic). It knows costs and devices, not engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.devices import Device
from runtime.errors import ArmorError

BASIS = "roofline: max(bytes / datasheet bandwidth, FLOPs / datasheet dense peak) per graph call, summed per token"


def load_costs(bundle: Path, manifest: dict) -> dict:
    """The bundle's measured costs: the manifest's (TensorRT export), else from armor_export.costs."""
    recorded = manifest.get("tensorrt", {}).get("costs")
    if recorded:
        return recorded
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "costs.json"
        done = subprocess.run([sys.executable, "-m", "armor_export.costs", str(bundle), "--out", str(out)],
                              capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ArmorError(f"measuring {bundle}'s graph costs failed (needs the `train` extra for onnx): {tail}")
        return json.loads(out.read_text())


def compute_kind(manifest: dict) -> str:
    """The arithmetic a strongly typed TensorRT engine of this bundle runs its matrix products in."""
    scheme = manifest.get("calibration", {}).get("scheme")
    precision = manifest.get("tensorrt", {}).get("precision")
    if scheme == "int8" or precision == "int8":
        return "int8"
    if precision == "fp16" or manifest["dtype"] == "fp16" or scheme in ("int8-weight", "int4-weight"):
        return "fp16"  # weight-only schemes dequantize into fp16 products
    return "tf32"  # TensorRT runs fp32 products as TF32 by default


def call_ms(cost: dict, dev: Device, compute: str) -> tuple[float, str]:
    """(ms, "memory" or "compute": which bound wins) of one call."""
    memory = (cost["weight_bytes"] + cost["io_bytes"]) / (dev.bandwidth_gbs * 1e9)
    math = cost["flops"] / dev.peak(compute)
    return max(memory, math) * 1e3, "memory" if memory >= math else "compute"


def project_row(costs: dict, manifest: dict, dev: Device, positions: list[int]) -> dict:
    """One projection row for `dev` in armor-bench's row schema."""
    g = costs["graphs"]
    compute = compute_kind(manifest)
    unresolved = sorted({n for calls in g.values() for c in calls.values() for n in c["unresolved"]})

    def ms(graph: str, call: str) -> float:
        return call_ms(g[graph][call], dev, compute)[0]

    step, bound = call_ms(g["decoder"]["decode@b1"], dev, compute)
    head = ms("text_head", "default@b1")
    text = step + head
    image = ms("decoder", "decode@b2") + ms("visual_head", "decode@b2")
    vision, vq = ms("vision_encoder", "default@b1"), ms("vq_decoder", "default@b1")
    n_codes = manifest["model"]["n_image_tokens"]
    weights = sum(next(iter(calls.values()))["weight_bytes"] for calls in g.values())
    resident = weights + g["decoder"]["decode@b2"]["io_bytes"]  # weights + the batch-2 static cache
    row = {"device": dev.name, "engine": "projection", "backend": "tensorrt", "compute": compute,
           "ttft_ms": vision + ms("decoder", "prefill@b1") + head,
           "text_tokens_per_s": 1e3 / text, "image_tokens_per_s": 1e3 / image,
           "s_per_image": (ms("visual_head", "prefill@b2") + n_codes * image + vq) / 1e3,
           "vision_ms": vision, "vq_decode_ms": vq, "text_head_ms": head,
           "decoder_bound": bound, "resident_mb": resident / 1e6, "fits": resident < dev.memory_gb * 1e9,
           "device_label": dev.label, "device_source": dev.source, "basis": BASIS, "costs_form": costs["form"]}
    row.update({f"decoder_step_ms@{p}": step for p in positions})  # the static cache reads its capacity at any p
    if unresolved:
        row["unresolved"] = unresolved[:10]
    return row
