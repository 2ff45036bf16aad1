"""The bundle's graphs: each graph's input/output names, element types and axes, declared once.

The exporter names and shapes its ONNX graphs from these declarations, the runtime feeds
and reads them by these names, calibration records its inputs under these names. KV names
follow Hugging Face / Optimum: `past_key_values.{i}.key` in, `present.{i}.key` out, axes
(batch, heads, sequence, head_dim). A string axis is dynamic (its name becomes the ONNX
dim_param), an int axis is fixed.

Torch-free; it knows names and axes, not how graphs are built or run.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT = "float"  # float32 or float16: the bundle's dtype decides (manifest)
INT64 = "int64"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # FLOAT or INT64
    axes: tuple[str | int, ...]


@dataclass(frozen=True)
class GraphSpec:
    name: str  # the role in the manifest; the file is `{name}.onnx`
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's `dynamic_axes` for every named tensor."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if isinstance(a, str)}
                for t in self.inputs + self.outputs}

    def to_dict(self) -> dict:
        io = lambda ts: [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in ts]  # noqa: E731
        return {"inputs": io(self.inputs), "outputs": io(self.outputs)}


def _kv(prefix: str, layer: int, seq_axis: str, heads: int, head_dim: int) -> tuple[TensorSpec, TensorSpec]:
    return tuple(TensorSpec(f"{prefix}.{layer}.{kind}", FLOAT, ("batch", heads, seq_axis, head_dim))
                 for kind in ("key", "value"))


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]


def vision_encoder(image_size: int, n_image_tokens: int, hidden: int) -> GraphSpec:
    return GraphSpec(
        "vision_encoder",
        (TensorSpec("pixel_values", FLOAT, ("batch", 3, image_size, image_size)),),
        (TensorSpec("image_embeds", FLOAT, ("batch", n_image_tokens, hidden)),),
    )


def decoder(n_layers: int, kv_heads: int, head_dim: int, hidden: int) -> GraphSpec:
    """inputs_embeds + mask + positions + past -> last hidden states (after the final norm) + present."""
    past = [t for i in range(n_layers) for t in _kv("past_key_values", i, "past_sequence", kv_heads, head_dim)]
    present = [t for i in range(n_layers) for t in _kv("present", i, "total_sequence", kv_heads, head_dim)]
    return GraphSpec(
        "decoder",
        (TensorSpec("inputs_embeds", FLOAT, ("batch", "sequence", hidden)),
         TensorSpec("attention_mask", INT64, ("batch", "total_sequence")),
         TensorSpec("position_ids", INT64, ("batch", "sequence")),
         *past),
        (TensorSpec("hidden_states", FLOAT, ("batch", "sequence", hidden)), *present),
    )


def text_head(hidden: int, n_text_logits: int) -> GraphSpec:
    return GraphSpec(
        "text_head",
        (TensorSpec("hidden_states", FLOAT, ("batch", "sequence", hidden)),),
        (TensorSpec("text_logits", FLOAT, ("batch", "sequence", n_text_logits)),),
    )


def visual_head(n_layers: int, heads: int, head_dim: int, hidden: int, n_image_logits: int) -> GraphSpec:
    """Adapter + visual head with the adapter's own cache (empty, sequence 0, when an image
    starts). At `<imgbos>` the `context` is the decoder's hidden states of every token before
    it plus `<imgbos>`'s own; afterwards one code per call. `position_ids` are the adapter's:
    0..grid for the segment, the manifest's `adapter_context_start` + j for context token j;
    `attention_mask` covers past + new tokens (0 = left padding)."""
    past = [t for i in range(n_layers) for t in _kv("past_key_values", i, "past_context", heads, head_dim)]
    present = [t for i in range(n_layers) for t in _kv("present", i, "total_context", heads, head_dim)]
    return GraphSpec(
        "visual_head",
        (TensorSpec("hidden_states", FLOAT, ("batch", "context", hidden)),
         TensorSpec("attention_mask", INT64, ("batch", "total_context")),
         TensorSpec("position_ids", INT64, ("batch", "context")),
         *past),
        (TensorSpec("image_logits", FLOAT, ("batch", "context", n_image_logits)), *present),
    )


def vq_decoder(grid_h: int, grid_w: int, image_size: int) -> GraphSpec:
    return GraphSpec(
        "vq_decoder",
        (TensorSpec("codes", INT64, ("batch", grid_h, grid_w)),),
        (TensorSpec("pixels", FLOAT, ("batch", 3, image_size, image_size)),),
    )


def text_model(n_layers: int, kv_heads: int, head_dim: int, vocab: int) -> GraphSpec:
    """The text path in the layout Optimum / onnxruntime-genai read (`text/model.onnx`)."""
    past = [t for i in range(n_layers) for t in _kv("past_key_values", i, "past_sequence", kv_heads, head_dim)]
    present = [t for i in range(n_layers) for t in _kv("present", i, "total_sequence", kv_heads, head_dim)]
    return GraphSpec(
        "model",
        (TensorSpec("input_ids", INT64, ("batch", "sequence")),
         TensorSpec("attention_mask", INT64, ("batch", "total_sequence")),
         TensorSpec("position_ids", INT64, ("batch", "sequence")),
         *past),
        (TensorSpec("logits", FLOAT, ("batch", "sequence", vocab)), *present),
    )


def bundle_graphs(m: dict) -> dict[str, GraphSpec]:
    """Every graph of a bundle from the manifest's model summary (`manifest["model"]`)."""
    grid_h, grid_w = m["image_grid"]
    return {
        "vision_encoder": vision_encoder(m["vision_image_size"], m["n_image_tokens"], m["hidden_size"]),
        "decoder": decoder(m["n_layers"], m["n_kv_heads"], m["head_dim"], m["hidden_size"]),
        "text_head": text_head(m["hidden_size"], m["n_text_vocab"] + 1),
        "visual_head": visual_head(m["adapter_layers"], m["adapter_heads"], m["hidden_size"] // m["adapter_heads"],
                                   m["hidden_size"], m["n_codes"] + 2),
        "vq_decoder": vq_decoder(grid_h, grid_w, m["image_size"]),
    }
