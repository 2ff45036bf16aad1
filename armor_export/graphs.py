"""Export-only wrappers and the ONNX export of each bundle graph.

Each wrapper turns the reference model's entry points into a flat tensors-in, tensors-out
module whose argument order is the graph declaration's (`runtime.graphs`): the KV cache as
flat `past_key_values.{i}.key/.value` tensors instead of a `DynamicCache`, the adapter
cache likewise. These rewrites live here, never in the reference model.

Export uses the TorchScript-based exporter (`dynamo=False`, opset 17): it handles the
varargs cache with plain `dynamic_axes` and runs ~20x faster than dynamo here
(docs/benchmarks.md). Examples are traced with sequence > 1 and past > 0, so no shape is
baked in. This module knows torch and the graph declarations; not manifests or verification.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn
from transformers import DynamicCache

from armor_export.onnx_files import save_onnx
from runtime.graphs import GraphSpec
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

OPSET = 17


def _cache_from_flat(past: tuple[torch.Tensor, ...]) -> DynamicCache:
    cache = DynamicCache()
    for i in range(len(past) // 2):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def _flat_from_cache(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


class VisionEncoderGraph(nn.Module):
    def __init__(self, model: ArmorModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):  # [B, 3, S, S] -> [B, N_img, H]
        return self.model.encode_images(pixel_values)


class DecoderGraph(nn.Module):
    def __init__(self, model: ArmorModel):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        hidden, cache = self.model.decode(inputs_embeds, attention_mask, position_ids, _cache_from_flat(past))
        return (hidden, *_flat_from_cache(cache))  # [B, T, W], present.{i}.key/value [B, kv, P+T, D]


class TextHeadGraph(nn.Module):
    def __init__(self, model: ArmorModel):
        super().__init__()
        self.model = model

    def forward(self, hidden_states):  # [B, T, H] -> [B, T, V + 1]
        return self.model.text_logits(hidden_states)


class VisualHeadGraph(nn.Module):
    def __init__(self, model: ArmorModel):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, present = self.model.image_logits(hidden_states, position_ids, pairs, attention_mask)  # [B, T, n_codes + 2]
        return (logits, *[t for kv in present for t in kv])


class VQDecoderGraph(nn.Module):
    def __init__(self, model: ArmorModel):
        super().__init__()
        self.vqgan = model.vqgan

    def forward(self, codes):  # [B, h, w] int64 -> [B, 3, S, S]
        return self.vqgan.decode(codes)


class TextModelGraph(nn.Module):
    """input_ids -> logits over the text vocabulary (the original head), for the ecosystem."""

    def __init__(self, model: ArmorModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        x = self.model.embedding.original(input_ids)  # [B, T, H]
        states, cache = self.model.decode(x, attention_mask, position_ids, _cache_from_flat(past))
        hidden = states[..., :self.model.config.hidden_size]  # the last layer's (`adapter_reads` adds one)
        return (self.model.mllm.lm_head(hidden), *_flat_from_cache(cache))


def export_graph(module: nn.Module, example: tuple, spec: GraphSpec, path: Path) -> list[Path]:
    """Export `module` to `path` with the declaration's names and dynamic axes; returns the files
    written (the graph, and its external data when large)."""
    path = Path(path)
    tmp_dir = path.with_name(f".{path.name}.export")  # large graphs spill external files here
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(tmp_dir / "graph.onnx"), input_names=spec.input_names,
                              output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
        proto = onnx.load(str(tmp_dir / "graph.onnx"))
        _name_dims(proto, spec)
        return save_onnx(proto, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _name_dims(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give every dynamic axis its declared name (the exporter invents some) and check fixed ones."""
    declared = {t.name: t.axes for t in spec.inputs + spec.outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        axes = declared.get(value.name)
        if axes is None:
            raise RuntimeError(f"exported graph has an undeclared tensor {value.name!r}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(axes):
            raise RuntimeError(f"{value.name}: exported rank {len(dims)}, declared {len(axes)}")
        for dim, axis in zip(dims, axes):
            if isinstance(axis, str):
                dim.ClearField("dim_value")
                dim.dim_param = axis
            else:
                dim.ClearField("dim_param")
                dim.dim_value = axis
