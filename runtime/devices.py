"""Datasheet numbers of the devices `armor-bench --project` projects onto.

Bandwidth and memory are NVIDIA's datasheet values (FACTS.md). Compute is the GPU's dense
tensor-core peak: Jetson datasheets give module "AI TOPS" as sparse INT8 including the DLAs, so
the GPU's share is taken from the AGX Orin technical brief (64 tensor cores at 1.3 GHz: 170
sparse TOPS, i.e. 2.04 sparse TOPS per tensor core per GHz) scaled by each module's tensor
cores and GPU clock (this reproduces the Orin Nano's 40 / 67 TOPS, which have no DLA), halved
for dense, halved again for FP16 (Ampere's tensor cores run FP16 at half the INT8 rate) and
again for TF32. The laptop GPU: 233 sparse INT8 "AI TOPS" (NVIDIA's product page), the same
halvings. Nothing here was measured; it knows numbers, not graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import InputError


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (shared with the CPU on Jetson)
    int8_tops: float  # dense tensor-core INT8, the GPU alone
    memory_gb: float  # what the model, its cache and the OS share (Jetson) or the VRAM (laptop)
    source: str

    @property
    def fp16_tflops(self) -> float:
        return self.int8_tops / 2

    @property
    def tf32_tflops(self) -> float:
        return self.int8_tops / 4

    def peak(self, compute: str) -> float:
        """Operations per second at `compute` (int8, fp16 or tf32)."""
        return {"int8": self.int8_tops, "fp16": self.fp16_tflops, "tf32": self.tf32_tflops}[compute] * 1e12


_PER_CORE_GHZ = 170 / (64 * 1.3) / 2  # dense INT8 TOPS per tensor core per GHz (AGX Orin brief)

DEVICES = {d.name: d for d in (
    Device("agx-orin-64gb", "Jetson AGX Orin 64GB (MAXN)", 204.8, 64 * 1.3 * _PER_CORE_GHZ, 64,
           "datasheet: 204.8 GB/s, 275 sparse INT8 TOPS (GPU 170 + DLA 105)"),
    Device("orin-nx-16gb", "Jetson Orin NX 16GB (MAXN)", 102.4, 32 * 0.918 * _PER_CORE_GHZ, 16,
           "datasheet: 102.4 GB/s, 100 sparse INT8 TOPS with the DLAs; GPU: 32 tensor cores at 918 MHz"),
    Device("orin-nano-8gb", "Jetson Orin Nano 8GB (15 W)", 68.0, 32 * 0.625 * _PER_CORE_GHZ, 8,
           "datasheet: 68 GB/s, 40 sparse INT8 TOPS (no DLA); 32 tensor cores at 625 MHz"),
    Device("orin-nano-super", "Jetson Orin Nano 8GB Super (25 W, JetPack 6.1+)", 102.0, 32 * 1.02 * _PER_CORE_GHZ, 8,
           "datasheet: 102 GB/s, 67 sparse INT8 TOPS (no DLA); 32 tensor cores at 1020 MHz"),
    Device("rtx-4060-laptop", "GeForce RTX 4060 Laptop GPU (8 GB GDDR6)", 256.0, 233 / 2, 8,
           "product page: 128-bit GDDR6 at 16 Gbps (256 GB/s), 233 AI TOPS (sparse INT8)"),
)}


def device(name: str) -> Device:
    if name not in DEVICES:
        raise InputError(f"--project {name}: unknown device; choose from {', '.join(DEVICES)}")
    return DEVICES[name]
