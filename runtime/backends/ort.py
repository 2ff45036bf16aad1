"""ONNX Runtime: every graph of a bundle, and the decoder's KV cache in both cache forms.

`OrtBackend` runs one graph in an `InferenceSession` on `device="cpu"`, `"cuda"` (CUDA EP)
or `"tensorrt"` (TensorRT EP), each only where the installed onnxruntime offers the provider
*and* the session really gets it; otherwise one clear sentence. onnxruntime is imported only
here, and only when a bundle is opened.

The decoder cache (`OrtDecoder.start` -> a `runtime.cache.Stream`):
- `dynamic` graph (past grows by a Concat in the graph): `OrtDynamicStream` keeps the cache as
  numpy arrays, or, with `io_binding=True`, as `OrtValue`s left where the session put them
  (on a GPU that saves the device -> host -> device round trip of the whole cache per step;
  on CPU `run` already returns numpy views of ORT's buffers, so it buys nothing there).
- `static` graph (fixed capacity, only the new rows come out): `OrtStaticStream` preallocates
  `[B, kv_heads, capacity, head_dim]` per layer and writes each step's new rows in place.
It knows graph names, cache layouts and providers; it knows nothing about modes or sampling.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.backends import DeviceError, check_io
from runtime.cache import ContextFull, Stream, Timed
from runtime.errors import BundleError
from runtime.graphs import past_names, present_names

log = logging.getLogger(__name__)

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# The OrtDevice type of the memory each device's EP computes in (the TensorRT EP uses CUDA memory).
MEMORY = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(bool)": "bool"}
GRAPHS = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")
_POOL: dict = {}  # the process-wide intra-op thread pool, once created: {"threads": n}


def _global_pool(threads: int | None) -> bool:
    """Create (once per process) the thread pool every session shares. The graphs take turns,
    so one shared pool keeps its threads warm between them where per-session pools hand the
    cores back and forth (text tokens/s 1.6x on proxy-1b, docs/benchmarks.md). False where this
    onnxruntime cannot."""
    if "threads" in _POOL:
        if threads and threads != _POOL["threads"]:
            log.warning("the shared ONNX Runtime thread pool already has %s threads; %d asked (one pool per process)",
                        _POOL["threads"] or "default", threads)
        return _POOL["ok"]
    try:
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(threads or 0, 1)
        _POOL.update(threads=threads or 0, ok=True)
    except (ImportError, AttributeError, RuntimeError) as e:
        log.info("no shared thread pool (%s): one pool per session", e)
        _POOL.update(threads=threads or 0, ok=False)
    return _POOL["ok"]


def shared_pool_active() -> bool:
    """Whether this process's sessions share the global intra-op pool (then every session must)."""
    return bool(_POOL.get("ok"))


def session_options(threads: int | None = None, allow_spinning: bool = False, thread_pool: str = "session"):
    """The SessionOptions of every ONNX Runtime session ARMOR Edge opens (runtime, export
    verification, calibration). `thread_pool="shared"` gives all sessions of the process one
    intra-op pool: the graphs take turns, and one pool keeps its threads warm between them
    (text tokens/s 1.6x on proxy-1b, docs/benchmarks.md); once it exists, onnxruntime refuses
    sessions with pools of their own, so every later session here joins it, and other code in
    the process that opens sessions itself (onnxruntime's quantization tools do) fails: the CLIs,
    which own their process, use it; the API default is a pool per session."""
    import onnxruntime as ort

    if thread_pool not in ("shared", "session"):
        raise DeviceError(f"thread_pool must be shared or session, got {thread_pool!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if (thread_pool == "shared" or _POOL.get("ok")) and _global_pool(threads):
        opts.use_per_session_threads = False
    elif threads:
        opts.intra_op_num_threads = threads
    # Per-session pools: spinning workers of one session would steal the cores the next
    # session needs (`allow_spinning` to compare; docs/benchmarks.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


class OrtBackend:
    """One graph in an onnxruntime InferenceSession. `provider_options` go to the first
    provider (e.g. the TensorRT EP's profile shapes and engine cache). `thread_pool`: "session"
    (each session its own intra-op pool, the default) or "shared" (see `session_options`)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 provider_options: dict | None = None, allow_spinning: bool = False, thread_pool: str = "session"):
        import onnxruntime as ort

        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        wanted = DEVICES[device]
        offered = ort.get_available_providers()
        if wanted[0] not in offered:
            extra = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu with TensorRT"}.get(device, "onnxruntime")
            raise DeviceError(f"device {device!r} needs {wanted[0]} ({extra}); this onnxruntime offers only "
                              f"{', '.join(offered)}")
        opts = session_options(threads, allow_spinning, thread_pool)
        providers = [p for p in wanted if p in offered]
        if provider_options:
            providers = [(providers[0], provider_options)] + providers[1:]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise BundleError(f"cannot open {path}: {str(e).splitlines()[0]}") from e
        if self.session.get_providers()[0] != wanted[0]:
            raise DeviceError(f"device {device!r}: onnxruntime could not start {wanted[0]} (no usable device?); "
                              f"it fell back to {self.session.get_providers()[0]}")
        self.device = device
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # The EP's device id (its provider option, "0" unless the session was told otherwise).
        options = self.session.get_provider_options().get(self.session.get_providers()[0], {})
        self.memory = (MEMORY[device], int(options.get("device_id", 0)))

    def io(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        described = lambda vs: [(v.name, ORT_TYPES.get(v.type, v.type), len(v.shape)) for v in vs]  # noqa: E731
        return described(self.session.get_inputs()), described(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        return dict(zip(names, self.session.run(names, feeds)))

    def run_bound(self, feeds: dict, keep: list[str] = ()) -> dict:
        """Run with an IO binding. `feeds` values: numpy arrays or OrtValues (e.g. a `keep`
        output of an earlier call). Returns every output: those in `keep` as OrtValues in the
        session's device memory (ORT allocates them), the rest as numpy."""
        import onnxruntime as ort

        keep = set(keep)
        if keep - set(self.output_names):
            raise ValueError(f"not outputs of this graph: {', '.join(sorted(keep - set(self.output_names)))}")
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:  # numpy outputs straight to host memory: no second copy on a GPU
            binding.bind_output(name, *(self.memory if name in keep else ("cpu", 0)))
        self.session.run_with_iobinding(binding)
        # get_outputs() follows the binding order; .numpy() of a host OrtValue is a view that keeps it alive
        return {name: v if name in keep else v.numpy()
                for name, v in zip(self.output_names, binding.get_outputs())}

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_engines(bundle, device: str = "cpu", threads: int | None = None, io_binding: bool = False,
                 graphs: tuple[str, ...] = GRAPHS, provider_options: dict | None = None, allow_spinning: bool = False,
                 thread_pool: str = "session"):
    """Sessions for `graphs` (checked against the manifest) and the decoder engine."""
    if io_binding and bundle.model["kv_cache"] == "static":
        raise DeviceError("io_binding applies to the dynamic-cache decoder; this bundle's decoder has a static "
                          "cache, which the runtime already writes in place")
    runners: dict[str, Timed] = {}
    try:
        for g in graphs:
            path, options = bundle.graph_path(g), provider_options
            if device == "tensorrt":
                path, options = tensorrt_ep_session(bundle, g)
                options.update(provider_options or {})
            runners[g] = Timed(OrtBackend(path, device, threads, options, allow_spinning, thread_pool))
            check_io(bundle, g, runners[g])
    except Exception:
        for r in runners.values():
            r.close()
        raise
    decoder = OrtDecoder(bundle, runners, io_binding=io_binding) if "decoder" in runners else None
    return runners, decoder


def tensorrt_ep_session(bundle, graph: str, cache_dir: Path | None = None) -> tuple[Path, dict]:
    """The TensorRT EP's graph file and provider options for `graph`: the TensorRT form the
    exporter wrote (`trt/`), one explicit profile spanning every profile it declared (the EP
    takes one range per input: min of the minima, max of the maxima, the decode profile's
    optimum), and engine and timing caches in the bundle's `engines/ort-trt/` (a user cache
    folder when the bundle is read-only), so engines are built once, not as the past grows."""
    trt = bundle.manifest.get("tensorrt") or {}
    entry = (trt.get("graphs") or {}).get(graph)
    if not entry or not entry.get("profiles"):
        raise DeviceError(f"{bundle.path} has no TensorRT form of {graph} (trt/): run "
                          f"`armor-export {bundle.path} --target tensorrt --out {bundle.path}` first")
    if bundle.model["kv_cache"] != "static":
        raise DeviceError(f"{bundle.path}: the TensorRT EP runs the static-cache decoder; this bundle's is "
                          f"{bundle.model['kv_cache']} (export with --kv-cache static or --target tensorrt)")
    profiles = entry["profiles"]
    names = list(profiles[0]["min"])
    lo = {n: [min(p["min"][n][i] for p in profiles) for i in range(len(profiles[0]["min"][n]))] for n in names}
    hi = {n: [max(p["max"][n][i] for p in profiles) for i in range(len(profiles[0]["max"][n]))] for n in names}
    opt = next((p for p in profiles if p.get("name") == "decode"), profiles[0])["opt"]
    shapes = lambda dims: ",".join(f"{n}:{'x'.join(str(int(d)) for d in dims[n])}" for n in names)  # noqa: E731
    cache = cache_dir or _engine_cache(bundle)
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
               "trt_profile_min_shapes": shapes(lo), "trt_profile_opt_shapes": shapes(opt),
               "trt_profile_max_shapes": shapes(hi)}
    return bundle.path / entry["file"], options


def _engine_cache(bundle) -> Path:
    """engines/ort-trt/ in the bundle, or a per-bundle folder under the user's cache when the
    bundle cannot be written."""
    import hashlib
    import os

    inside = bundle.path / "engines" / "ort-trt"
    try:
        inside.mkdir(parents=True, exist_ok=True)
        if os.access(inside, os.W_OK):
            return inside
    except OSError:
        pass
    key = hashlib.sha256(str(bundle.path.resolve()).encode()).hexdigest()[:16]
    outside = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "armor-edge" / "ort-trt" / key
    outside.mkdir(parents=True, exist_ok=True)
    return outside


class OrtDecoder:
    """The decoder graph and its cache form. `graphs` is shared with the model (calibration
    may wrap a runner in place), so the runner is looked up at every call."""

    def __init__(self, bundle, graphs: dict, io_binding: bool = False):
        m = bundle.model
        self.graphs, self.io_binding = graphs, io_binding
        self.form = m["kv_cache"]
        self.table = np.asarray(bundle.embeddings)  # a plain view of the memory map: fast gathers
        self.float = np.float16 if bundle.dtype == "fp16" else np.float32
        self.image_token_id = m["special_token_ids"]["image_context"]
        self.n_layers, self.kv_shape = m["n_layers"], (m["n_kv_heads"], m["head_dim"])
        self.capacity = m["kv_capacity"] if self.form == "static" else m["context_length"]
        self.past, self.present = past_names(self.n_layers), present_names(self.n_layers)
        self.seconds = 0.0  # time in engine calls outside the runners (none: the runners time themselves)

    def embeds(self, ids: np.ndarray, image_embeds: np.ndarray | None) -> np.ndarray:
        """ids [B, T] -> [B, T, H] in the graph's float type, input images in their placeholders."""
        x = self.table[ids].astype(self.float, copy=False)
        if image_embeds is not None:
            slots = ids == self.image_token_id
            if int(slots.sum()) != image_embeds.shape[0]:
                raise ValueError(f"{int(slots.sum())} image placeholders for {image_embeds.shape[0]} image embeddings")
            x[slots] = image_embeds
        return x

    def start(self, ids, image_embeds: np.ndarray | None = None, text_head=None) -> Stream:
        """A batch-1 stream prefilled with `ids`."""
        cls = OrtStaticStream if self.form == "static" else OrtDynamicStream
        stream = cls(self, 1, text_head)
        stream.append(ids, image_embeds)
        return stream

    def close(self) -> None:
        pass


class OrtDynamicStream(Stream):
    """Dynamic-cache decoder: `past` arrays [B, kv, width, D] (numpy, or OrtValues with IO binding)."""

    def __init__(self, dec: OrtDecoder, batch: int, text_head, past: list | None = None):
        super().__init__([], np.zeros(batch, np.int64), text_head)
        self.dec = dec
        kv, d = dec.kv_shape
        self.past = past if past is not None else [np.zeros((batch, kv, 0, d), dec.float) for _ in dec.past]

    def _forward(self, ids, image_embeds):
        dec, t = self.dec, ids.shape[1]
        if self.width + t > dec.capacity:
            raise ContextFull(f"the decoder holds {dec.capacity} tokens; {self.width + t} asked")
        feeds = {"inputs_embeds": dec.embeds(ids, image_embeds), "attention_mask": self.mask(t),
                 "position_ids": self.positions(t), **dict(zip(dec.past, self.past))}
        runner = dec.graphs["decoder"]
        out = runner.run_bound(feeds, keep=dec.present) if dec.io_binding else runner.run(feeds)
        self.past = [out[n] for n in dec.present]
        return out["hidden_states"]

    def _host(self) -> list[np.ndarray]:
        return [p if isinstance(p, np.ndarray) else p.numpy() for p in self.past]

    def _pair(self, other: "OrtDynamicStream", pads: np.ndarray) -> "OrtDynamicStream":
        rows = []
        for stream, pad in ((self, pads[0]), (other, pads[1])):
            rows.append([np.pad(p, ((0, 0), (0, 0), (int(pad), 0), (0, 0))) for p in stream._host()])
        return OrtDynamicStream(self.dec, 2, None, [np.concatenate(pq, 0) for pq in zip(*rows)])

    def _row(self, i: int) -> "OrtDynamicStream":
        pad = int(self.pads[i])
        return OrtDynamicStream(self.dec, 1, None, [np.ascontiguousarray(p[i:i + 1, :, pad:]) for p in self._host()])

    def _truncate(self, width: int) -> None:
        self.past = [np.ascontiguousarray(p[:, :, :width]) for p in self._host()]


class OrtStaticStream(Stream):
    """Static-cache decoder: preallocated `[B, kv, capacity, D]` buffers, new rows written in place."""

    def __init__(self, dec: OrtDecoder, batch: int, text_head, buffers: list | None = None):
        super().__init__([], np.zeros(batch, np.int64), text_head)
        self.dec = dec
        kv, d = dec.kv_shape
        self.buffers = buffers if buffers is not None else \
            [np.zeros((batch, kv, dec.capacity, d), dec.float) for _ in dec.past]
        self.cache_mask = np.zeros((batch, dec.capacity), np.int64)

    def _forward(self, ids, image_embeds):
        dec, (b, t), w = self.dec, ids.shape, self.width
        if w + t > dec.capacity:
            raise ContextFull(f"the static cache holds {dec.capacity} tokens; {w + t} asked "
                              f"(export with a larger --max-context)")
        feeds = {"inputs_embeds": dec.embeds(ids, image_embeds), "attention_mask": np.ones((b, t), np.int64),
                 "cache_mask": self.cache_mask, "position_ids": self.positions(t),
                 **dict(zip(dec.past, self.buffers))}
        out = dec.graphs["decoder"].run(feeds)
        for buf, name in zip(self.buffers, dec.present):
            buf[:, :, w:w + t] = out[name]
        self.cache_mask[:, w:w + t] = 1
        return out["hidden_states"]

    def _pair(self, other: "OrtStaticStream", pads: np.ndarray) -> "OrtStaticStream":
        width = int(max(self.width, other.width))
        out = OrtStaticStream(self.dec, 2, None)
        for row, (stream, pad) in enumerate(((self, int(pads[0])), (other, int(pads[1])))):
            n = stream.width
            for dst, src in zip(out.buffers, stream.buffers):
                dst[row, :, pad:width] = src[0, :, :n]
            out.cache_mask[row, pad:width] = 1
        return out

    def _row(self, i: int) -> "OrtStaticStream":
        pad, w = int(self.pads[i]), self.width
        out = OrtStaticStream(self.dec, 1, None)
        for dst, src in zip(out.buffers, self.buffers):
            dst[0, :, : w - pad] = src[i, :, pad:w]
        out.cache_mask[0, : w - pad] = 1
        return out

    def _truncate(self, width: int) -> None:
        self.cache_mask[:, width:] = 0  # the rows past `width` are overwritten by the next append
