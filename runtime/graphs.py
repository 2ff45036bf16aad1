"""The bundle's graphs: each graph's input/output names, element types and axes, declared once.

The exporter names and shapes its ONNX graphs from these declarations, the runtime feeds
and reads them by these names and checks every opened graph against them, calibration
records its inputs under these names. KV names follow Hugging Face / Optimum:
`past_key_values.{i}.key` in, `present.{i}.key` out, axes (batch, heads, sequence,
head_dim). A string axis is dynamic (its name becomes the ONNX dim_param), an int axis is
fixed.

The decoder comes in two cache forms (`manifest["model"]["kv_cache"]`):
- `dynamic`: the past grows by a Concat in the graph; `present` is past + new tokens.
- `static`: a fixed-capacity cache `[batch, kv_heads, capacity, head_dim]` goes in with
  `cache_mask` (1 = filled slot), only the new tokens' key/value rows come out
  (`present.{i}.key [batch, kv_heads, sequence, head_dim]`), and the runtime writes them into
  its buffer in place. Shapes are static but for batch and new tokens.

Torch-free; it knows names and axes, not how graphs are built or run.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT = "float"  # float32 or float16: the bundle's dtype decides (manifest)
INT64 = "int64"
KV_CACHE_FORMS = ("dynamic", "static")
ELEMENT_TYPES = ("float32", "float16", "int64")

# The TensorRT form (manifest["tensorrt"]; armor_export.tensorrt writes it, the TensorRT backend
# reads it): graph `g` in `trt/g.onnx`, its engine in `engines/g.engine`, optimization profiles
# named by the call they serve (decoder and visual head: prefill / decode; the others: default).
TRT_DIR = "trt"
ENGINES_DIR = "engines"
TRT_TIERS = ("10.3", "10.x", "11")  # --trt-version: JetPack 6 (10.3), 10.15+ (10.x), TensorRT 11
TRT_PRECISIONS = ("fp32", "fp16", "int8")  # int8: the Q/DQ graphs of armor-calibrate --scheme int8 --target tensorrt
TRT_PROFILE_NAMES = ("prefill", "decode", "default")


def trt_file(graph: str) -> str:
    return f"{TRT_DIR}/{graph}.onnx"


def engine_file(graph: str) -> str:
    return f"{ENGINES_DIR}/{graph}.engine"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # FLOAT or INT64 in a declaration; float32 / float16 / int64 once resolved for a bundle
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

    def resolved(self, float_type: str) -> "GraphSpec":
        """The declaration with FLOAT replaced by the bundle's element type (float32 / float16)."""
        fix = lambda ts: tuple(TensorSpec(t.name, float_type if t.dtype == FLOAT else t.dtype, t.axes) for t in ts)  # noqa: E731
        return GraphSpec(self.name, fix(self.inputs), fix(self.outputs))

    def to_dict(self) -> dict:
        io = lambda ts: [{"name": t.name, "dtype": t.dtype, "axes": list(t.axes)} for t in ts]  # noqa: E731
        return {"inputs": io(self.inputs), "outputs": io(self.outputs)}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "GraphSpec":
        """A manifest's `graphs[name]` entry back as a spec (KeyError/TypeError on a malformed entry)."""
        io = lambda ts: tuple(TensorSpec(str(t["name"]), str(t["dtype"]), tuple(t["axes"])) for t in ts)  # noqa: E731
        return cls(name, io(d["inputs"]), io(d["outputs"]))


def _kv(prefix: str, layer: int, seq_axis: str | int, heads: int, head_dim: int) -> tuple[TensorSpec, TensorSpec]:
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


def decoder(n_layers: int, kv_heads: int, head_dim: int, hidden: int, states: int | None = None) -> GraphSpec:
    """Dynamic cache form: inputs_embeds + mask (past + new) + positions + past -> decoder
    states (the last layer's after the final norm; `states` wide, default `hidden`, see
    `state_width`) + present (past + new)."""
    past = [t for i in range(n_layers) for t in _kv("past_key_values", i, "past_sequence", kv_heads, head_dim)]
    present = [t for i in range(n_layers) for t in _kv("present", i, "total_sequence", kv_heads, head_dim)]
    return GraphSpec(
        "decoder",
        (TensorSpec("inputs_embeds", FLOAT, ("batch", "sequence", hidden)),
         TensorSpec("attention_mask", INT64, ("batch", "total_sequence")),
         TensorSpec("position_ids", INT64, ("batch", "sequence")),
         *past),
        (TensorSpec("hidden_states", FLOAT, ("batch", "sequence", states or hidden)), *present),
    )


def static_decoder(n_layers: int, kv_heads: int, head_dim: int, hidden: int, capacity: int,
                   states: int | None = None) -> GraphSpec:
    """Static cache form: inputs_embeds + `attention_mask` of the new tokens (0 = left padding)
    + `cache_mask` of the cache slots (1 = filled) + positions + the fixed-capacity cache ->
    decoder states (as `decoder`'s) + the new tokens' key/value rows only (no Concat on the cache)."""
    past = [t for i in range(n_layers) for t in _kv("past_key_values", i, capacity, kv_heads, head_dim)]
    present = [t for i in range(n_layers) for t in _kv("present", i, "sequence", kv_heads, head_dim)]
    return GraphSpec(
        "decoder",
        (TensorSpec("inputs_embeds", FLOAT, ("batch", "sequence", hidden)),
         TensorSpec("attention_mask", INT64, ("batch", "sequence")),
         TensorSpec("cache_mask", INT64, ("batch", capacity)),
         TensorSpec("position_ids", INT64, ("batch", "sequence")),
         *past),
        (TensorSpec("hidden_states", FLOAT, ("batch", "sequence", states or hidden)), *present),
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
    it plus `<imgbos>`'s own; afterwards one or more codes per call. `position_ids` are the
    adapter's: 0..grid for the segment, the manifest's `adapter_context_start` + j for context
    token j; `attention_mask` covers past + new tokens (0 = left padding)."""
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


def state_width(m: dict) -> int:
    """Width of the decoder states the text head and the adapter read: the hidden size, twice
    it when the adapter also reads an earlier layer (`adapter_reads`: [last | that layer])."""
    return m["hidden_size"] * (1 if m.get("adapter_reads") is None else 2)


def decoder_spec(m: dict) -> GraphSpec:
    """The decoder's declaration in the cache form the model summary names."""
    form, w = m.get("kv_cache", "dynamic"), state_width(m)
    if form == "static":
        return static_decoder(m["n_layers"], m["n_kv_heads"], m["head_dim"], m["hidden_size"], m["kv_capacity"], w)
    if form != "dynamic":
        raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHE_FORMS)}, got {form!r}")
    return decoder(m["n_layers"], m["n_kv_heads"], m["head_dim"], m["hidden_size"], w)


def bundle_graphs(m: dict) -> dict[str, GraphSpec]:
    """Every graph of a bundle from the manifest's model summary (`manifest["model"]`)."""
    grid_h, grid_w = m["image_grid"]
    return {
        "vision_encoder": vision_encoder(m["vision_image_size"], m["n_image_tokens"], m["hidden_size"]),
        "decoder": decoder_spec(m),
        "text_head": text_head(state_width(m), m["n_text_vocab"] + 1),
        "visual_head": visual_head(m["adapter_layers"], m["adapter_heads"], m["hidden_size"] // m["adapter_heads"],
                                   state_width(m), m["n_codes"] + 2),
        "vq_decoder": vq_decoder(grid_h, grid_w, m["image_size"]),
    }


def io_mismatch(spec: GraphSpec, inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, int]]) -> str | None:
    """Compare an opened graph's (name, element type, rank) inputs and outputs with a resolved
    spec; None if they agree, else one phrase naming the first tensor that differs."""
    for kind, declared, got in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        names = [n for n, _, _ in got]
        if names != [t.name for t in declared]:
            missing = [t.name for t in declared if t.name not in names]
            extra = [n for n in names if n not in {t.name for t in declared}]
            what = (f"lacks {kind} {missing[0]!r}" if missing else f"has an undeclared {kind} {extra[0]!r}"
                    if extra else f"has its {kind}s in another order")
            return what
        for t, (name, dtype, rank) in zip(declared, got):
            if dtype != t.dtype:
                return f"{kind} {name!r} is {dtype}, the manifest declares {t.dtype}"
            if rank != len(t.axes):
                return f"{kind} {name!r} has rank {rank}, the manifest declares {len(t.axes)}"
    return None
