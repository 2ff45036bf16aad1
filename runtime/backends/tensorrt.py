"""Native TensorRT: the bundle's engines (`engines/<graph>.engine`) run through cuda-python.

`open_engines` deserializes each engine once (`trt.Runtime.deserialize_cuda_engine`), after
refusing in one line a bundle without engines, engines built by another TensorRT version or on
another device (as `manifest["tensorrt"]["engines"]` records them) and a machine without a CUDA
device. `TrtGraph` runs one engine: device buffers for every input and output allocated once,
at the largest shape of its optimization profiles (`manifest["tensorrt"]["graphs"][g]["profiles"]`,
in build order); per call it picks the profile that covers the shapes, then
`set_optimization_profile_async` / `set_input_shape` / `set_tensor_address` /
`execute_async_v3` on one CUDA stream. `TrtDecoder` keeps the static KV cache on the device:
cache slabs at capacity for batch 2, taken by each `TrtStaticStream` and returned when it is
consumed or collected; each step's new key/value rows are copied into the slab with
cudaMemcpy2DAsync (the offsets are the pure functions `append_copy` / `rows_copy`).

CUDA goes through cuda-python only (no torch, no pycuda). tensorrt and cuda-python are imported
when a bundle is opened, never at import, so this module imports on any machine. Written from
NVIDIA's TensorRT 10 Python API documentation and type-checked against tensorrt-stubs 10.13
(scripts/typecheck.sh); it has not run on a GPU here. It knows engines, device buffers and the
static cache layout; it knows nothing about tokens, modes or sampling.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends import DeviceError
from runtime.backends.ort import OrtDecoder
from runtime.cache import ContextFull, Stream, Timed
from runtime.errors import BundleError
from runtime.graphs import bundle_graphs, engine_file, io_mismatch

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

GRAPHS = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")
# TensorRT DataType member name -> numpy type (getattr: members differ between 10.3 and 11)
DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
          "INT8": np.int8, "UINT8": np.uint8}
BUILD_HERE = ("rebuild them on this device: armor-export {path} --target tensorrt --out {path} --overwrite")


# --- the static cache's offsets: pure arithmetic (tested against numpy) -----------------------------
@dataclass(frozen=True)
class Copy2D:
    """One cudaMemcpy2DAsync: `height` rows of `width` bytes, from src + r*spitch to dst + r*dpitch."""
    dst: int
    dpitch: int
    src: int
    spitch: int
    width: int
    height: int


def append_copy(batch: int, kv: int, capacity: int, head_dim: int, itemsize: int, start: int, t: int) -> Copy2D:
    """The new rows `present [batch, kv, t, D]` (contiguous) into a cache `[batch, kv, capacity, D]`
    at positions start..start+t: one row per (batch, head)."""
    row = head_dim * itemsize
    return Copy2D(dst=start * row, dpitch=capacity * row, src=0, spitch=t * row, width=t * row, height=batch * kv)


def rows_copy(kv: int, capacity: int, head_dim: int, itemsize: int, src_row: int, src_start: int,
              dst_row: int, dst_start: int, n: int) -> Copy2D:
    """Positions src_start..+n of batch row `src_row` of one cache `[B, kv, capacity, D]` to
    dst_start..+n of batch row `dst_row` of another of the same layout (pair / row)."""
    row = head_dim * itemsize
    plane = kv * capacity * row  # one batch row
    return Copy2D(dst=dst_row * plane + dst_start * row, dpitch=capacity * row,
                  src=src_row * plane + src_start * row, spitch=capacity * row, width=n * row, height=kv)


def pick_profile(profiles: list[dict[str, Any]], shapes: dict[str, tuple[int, ...]]) -> int:
    """The index of the profile whose [min, max] covers every input shape, the nearest to its opt
    where several do (a decode step takes the decode profile); ValueError if none does."""
    best, dist = -1, None
    for k, p in enumerate(profiles):
        if all(all(lo <= s <= hi for s, lo, hi in zip(shape, p["min"][n], p["max"][n]))
               for n, shape in shapes.items() if n in p["min"]):
            d = sum(abs(s - o) for n, shape in shapes.items() if n in p["opt"] for s, o in zip(shape, p["opt"][n]))
            if dist is None or d < dist:
                best, dist = k, d
    if best < 0:
        raise ValueError(f"no optimization profile covers the input shapes {shapes}")
    return best


# --- the manifest's engines, checked before TensorRT or CUDA is touched -----------------------------
def engine_plan(bundle: Any, graphs: tuple[str, ...] = GRAPHS) -> dict[str, Path]:
    """{graph: engine path} from `manifest["tensorrt"]["engines"]`; one line if any is missing."""
    section = bundle.manifest.get("tensorrt")
    if not section:
        raise DeviceError(f"{bundle.path} has no TensorRT form: run armor-export {bundle.path} --target tensorrt "
                          f"--out {bundle.path} (and build its engines on the device)")
    engines = section.get("engines") or {}
    if not engines:
        raise DeviceError(f"{bundle.path} has no TensorRT engines (engines/): build them with armor-export "
                          f"{bundle.path} --target tensorrt --out {bundle.path} --overwrite on the device")
    missing = [g for g in graphs if g not in engines]
    if missing:
        raise BundleError(f"{bundle.path} has no engine for {', '.join(missing)}: "
                          + BUILD_HERE.format(path=bundle.path))
    return {g: bundle.path / engine_file(g) for g in graphs}


def check_built_here(bundle: Any, trt_version: str, device_name: str, graphs: tuple[str, ...] = GRAPHS) -> None:
    """Refuse engines that another TensorRT version or another device built (engines are neither
    portable across versions nor across GPUs unless built version/hardware compatible)."""
    for g in graphs:
        e = bundle.manifest["tensorrt"]["engines"][g]
        if e["tensorrt_version"] != trt_version:
            raise DeviceError(f"{bundle.path}: {e['file']} was built by TensorRT {e['tensorrt_version']}; this is "
                              f"TensorRT {trt_version}: " + BUILD_HERE.format(path=bundle.path))
        if e["device"] != device_name:
            raise DeviceError(f"{bundle.path}: {e['file']} was built on {e['device']!r}; this device is "
                              f"{device_name!r}: " + BUILD_HERE.format(path=bundle.path))


def trt_float(bundle: Any) -> str:
    """The float type of the TensorRT form's I/O (fp16 graphs of an fp32 bundle have float16 I/O)."""
    fp16 = bundle.manifest["tensorrt"]["precision"] == "fp16" or bundle.dtype == "fp16"
    return "float16" if fp16 else "float32"


# --- CUDA through cuda-python --------------------------------------------------------------------
def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise DeviceError("--backend tensorrt needs cuda-python: pip install 'armor-edge[gpu]' "
                              f"({e.__class__.__name__}: {e})") from e
    return cudart


class Cuda:
    """The few CUDA runtime calls the backend makes, on one device and one stream; each checked."""

    def __init__(self, index: int = 0) -> None:
        self.rt = _cudart()
        err, count = self.rt.cudaGetDeviceCount()
        if int(err) != 0 or count <= index:
            raise DeviceError(f"--backend tensorrt needs a CUDA device; cudaGetDeviceCount says "
                              f"{self._name(err) if int(err) else f'{count} device(s)'}")
        self.call(self.rt.cudaSetDevice(index))
        name = self.call(self.rt.cudaGetDeviceProperties(index)).name
        self.device_name = (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")
        self.stream = self.call(self.rt.cudaStreamCreate())
        self.handle = int(self.stream)  # execute_async_v3 and set_optimization_profile_async take the raw handle
        self.allocated: list[int] = []

    def _name(self, err: Any) -> str:
        return str(getattr(err, "name", err))

    def call(self, result: Any) -> Any:
        """cuda-python returns (error, *values): raise on an error, return the value(s)."""
        err, rest = result[0], result[1:]
        if int(err) != 0:
            raise DeviceError(f"CUDA error {self._name(err)}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        ptr = int(self.call(self.rt.cudaMalloc(max(int(nbytes), 1))))
        self.allocated.append(ptr)
        return ptr

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        if host.nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self.call(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        if host.nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self.call(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))

    def copy2d(self, dst: int, src: int, c: Copy2D) -> None:
        if c.width and c.height:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            self.call(self.rt.cudaMemcpy2DAsync(dst + c.dst, c.dpitch, src + c.src, c.spitch, c.width, c.height,
                                                kind, self.stream))

    def zero(self, ptr: int, nbytes: int) -> None:
        self.call(self.rt.cudaMemsetAsync(ptr, 0, nbytes, self.stream))

    def sync(self) -> None:
        self.call(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in self.allocated:
            self.rt.cudaFree(ptr)
        self.allocated = []
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


def _check_tensorrt() -> str:
    """The installed TensorRT's version; one line if `tensorrt` is not the real package."""
    import tensorrt

    if not hasattr(tensorrt, "Runtime"):  # a namespace package: stubs or bindings without the libraries
        raise DeviceError("this `tensorrt` has no Runtime (a stubs-only or bindings-only install?): "
                          "pip install 'armor-edge[gpu]' or, on a Jetson, JetPack's python3-libnvinfer")
    return tensorrt.__version__


def _dims(d: trt.Dims) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (-1 marks a dynamic axis)."""
    return tuple(int(d[i]) for i in range(len(d)))


# --- one engine ------------------------------------------------------------------------------------
class TrtGraph:
    """One engine with its own buffers (the `Backend` protocol, plus device-level calls for the cache)."""

    def __init__(self, runtime: trt.Runtime, cuda: Cuda, path: Path, profiles: list[dict[str, Any]]) -> None:
        import tensorrt as trt

        self.cuda, self.path, self.profiles = cuda, path, profiles
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:  # the binding returns None on a corrupt or incompatible plan (its log says why)
            raise BundleError(f"TensorRT {trt.__version__} cannot deserialize {path}: "
                              + BUILD_HERE.format(path=path.parent.parent))
        self.engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes: dict[str, Any] = {}
        for n in names:
            dt = engine.get_tensor_dtype(n)
            self.dtypes[n] = next((np.dtype(t) for k, t in DTYPES.items() if getattr(trt.DataType, k, None) == dt),
                                  None)
            if self.dtypes[n] is None:
                raise BundleError(f"{path}: tensor {n!r} has the TensorRT type {dt}, which the runtime does not feed")
        self.ranks = {n: len(_dims(engine.get_tensor_shape(n))) for n in names}
        if engine.num_optimization_profiles != len(profiles):
            raise BundleError(f"{path} has {engine.num_optimization_profiles} optimization profiles, the manifest "
                              f"{len(profiles)}: " + BUILD_HERE.format(path=path.parent.parent))
        context = engine.create_execution_context()
        if context is None:
            raise DeviceError(f"TensorRT could not create an execution context for {path} (out of device memory?)")
        self.context: trt.IExecutionContext = context
        self.profile = -1
        self.buffers = {n: cuda.malloc(b) for n, b in self._max_bytes().items()}  # once, at the largest shapes
        self.shapes: dict[str, tuple[int, ...]] = {}

    def _max_bytes(self) -> dict[str, int]:
        """Bytes of every tensor at the largest shape any profile allows (outputs as TensorRT infers them)."""
        most = {n: 0 for n in self.input_names + self.output_names}
        for k, p in enumerate(self.profiles):
            self._select(k)
            for n in self.input_names:
                shape = tuple(int(d) for d in p["max"][n])
                if not self.context.set_input_shape(n, shape):
                    raise BundleError(f"{self.path}: profile {k} does not take {n} {list(shape)} (engine and "
                                      f"manifest differ): " + BUILD_HERE.format(path=self.path.parent.parent))
                most[n] = max(most[n], int(np.prod(shape)) * self.dtypes[n].itemsize)
            for n in self.output_names:
                shape = _dims(self.context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise BundleError(f"{self.path}: output {n} has a data-dependent shape {list(shape)}")
                most[n] = max(most[n], int(np.prod(shape)) * self.dtypes[n].itemsize)
        return most

    def _select(self, k: int) -> None:
        if k != self.profile:
            if not self.context.set_optimization_profile_async(k, self.cuda.handle):
                raise DeviceError(f"{self.path}: TensorRT refused optimization profile {k}")
            self.profile, self.shapes = k, {}

    def io(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        def described(ns: list[str]) -> list[tuple[str, str, int]]:
            return [(n, self.dtypes[n].name, self.ranks[n]) for n in ns]

        return described(self.input_names), described(self.output_names)

    def order_like(self, inputs: list[str], outputs: list[str]) -> None:
        """List the I/O in the manifest's order where the names agree (tensors are bound by name:
        TensorRT's index order is not part of the contract)."""
        if sorted(inputs) == sorted(self.input_names) and sorted(outputs) == sorted(self.output_names):
            self.input_names, self.output_names = list(inputs), list(outputs)

    def enqueue(self, feeds: dict[str, np.ndarray], bound: dict[str, tuple[int, tuple[int, ...]]] | None = None) -> None:
        """Queue one execution: host `feeds` copied into this graph's input buffers, `bound` inputs
        or outputs ({name: (device address, shape)}, e.g. the KV cache) used where they are."""
        bound = bound or {}
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        shapes.update({n: s for n, (_, s) in bound.items() if n in self.input_names})
        try:
            self._select(pick_profile(self.profiles, shapes))
        except ValueError as e:
            raise ContextFull(f"{self.path.name}: {e} (the engine's profiles; export with a larger --max-context "
                              f"or --max-batch)") from e
        for n in self.input_names:
            if shapes[n] != self.shapes.get(n):
                if not self.context.set_input_shape(n, shapes[n]):
                    raise DeviceError(f"{self.path.name}: TensorRT refused the shape {list(shapes[n])} for {n}")
                self.shapes[n] = shapes[n]
        for n, value in feeds.items():
            host = np.ascontiguousarray(value, self.dtypes[n])
            self.cuda.to_device(self.buffers[n], host)
            feeds[n] = host  # keep the host copy alive until the stream has read it (sync in fetch)
        for n in self.input_names + self.output_names:
            address = bound[n][0] if n in bound else self.buffers[n]
            self.context.set_tensor_address(n, address)
        if not self.context.execute_async_v3(self.cuda.handle):
            raise DeviceError(f"{self.path.name}: TensorRT failed to enqueue the engine (see its log)")

    def fetch(self, names: list[str]) -> dict[str, np.ndarray]:
        """Copy outputs `names` (at the shapes of the last enqueue) to the host; waits for the stream."""
        out = {n: np.empty(_dims(self.context.get_tensor_shape(n)), self.dtypes[n]) for n in names}
        for n, host in out.items():
            self.cuda.to_host(host, self.buffers[n])
        self.cuda.sync()
        return out

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        self.enqueue(dict(feeds))
        return self.fetch(list(outputs or self.output_names))

    def close(self) -> None:
        self.context = None  # type: ignore[assignment]
        self.engine = None  # type: ignore[assignment]


# --- the decoder and its device-resident static cache -------------------------------------------------
class Slab:
    """One stream's cache on the device: every layer's key and value `[2, kv, capacity, D]` in one
    allocation (a batch-1 stream uses batch row 0, which is a batch-1 cache of the same layout)."""

    def __init__(self, cuda: Cuda, n_tensors: int, tensor_bytes: int) -> None:
        self.tensor_bytes = tensor_bytes
        self.base = cuda.malloc(n_tensors * tensor_bytes)
        self.total = n_tensors * tensor_bytes

    def tensor(self, i: int) -> int:
        return self.base + i * self.tensor_bytes


class TrtDecoder(OrtDecoder):
    """The decoder engine and a pool of cache slabs (allocated once each, reused by later streams)."""

    def __init__(self, bundle: Any, graphs: dict[str, Any], cuda: Cuda, max_batch: int) -> None:
        super().__init__(bundle, graphs)
        if self.form != "static":
            raise BundleError(f"{bundle.path}: the TensorRT backend runs the static-cache decoder; export with "
                              f"--target tensorrt")
        self.cuda, self.max_batch = cuda, min(max_batch, 2)
        self.graph: TrtGraph = graphs["decoder"].inner
        self.float = self.graph.dtypes["inputs_embeds"].type
        self.itemsize = np.dtype(self.float).itemsize
        kv, d = self.kv_shape
        self.tensor_bytes = self.max_batch * kv * self.capacity * d * self.itemsize
        self.free: list[Slab] = []

    def take(self) -> Slab:
        slab = self.free.pop() if self.free else Slab(self.cuda, len(self.past), self.tensor_bytes)
        self.cuda.zero(slab.base, slab.total)  # masked slots must hold finite values: 0 * NaN is NaN
        return slab

    def give(self, slab: Slab | None) -> None:
        if slab is not None and self.cuda.stream is not None:
            self.free.append(slab)

    def start(self, ids: Any, image_embeds: np.ndarray | None = None, text_head: Any = None) -> Stream:
        stream = TrtStaticStream(self, 1, text_head)
        stream.append(ids, image_embeds)
        return stream

    def close(self) -> None:
        self.free = []
        self.cuda.close()  # every buffer of this bundle's engines and slabs, and the stream


class TrtStaticStream(Stream):
    """A static-cache stream whose cache is a device slab; the mask stays on the host (fed per step)."""

    def __init__(self, dec: TrtDecoder, batch: int, text_head: Any) -> None:
        super().__init__([], np.zeros(batch, np.int64), text_head)
        if batch > dec.max_batch:
            raise DeviceError(f"the engines were built for batch <= {dec.max_batch}; a CFG pair needs 2 "
                              f"(export with --max-batch 2)")
        self.dec, self.slab = dec, dec.take()
        self.cache_mask = np.zeros((batch, dec.capacity), np.int64)
        self._release = weakref.finalize(self, dec.give, self.slab)  # back to the pool when collected

    def _done(self) -> None:
        self._release()  # the slab goes back to the pool once; later streams reuse it

    def _cache_shape(self) -> tuple[int, ...]:
        kv, d = self.dec.kv_shape
        return (self.batch, kv, self.dec.capacity, d)

    def _forward(self, ids: np.ndarray, image_embeds: np.ndarray | None) -> np.ndarray:
        dec, (b, t), w = self.dec, ids.shape, self.width
        if w + t > dec.capacity:
            raise ContextFull(f"the static cache holds {dec.capacity} tokens; {w + t} asked "
                              f"(export with a larger --max-context)")
        graph, shape = dec.graph, self._cache_shape()
        feeds = {"inputs_embeds": dec.embeds(ids, image_embeds), "attention_mask": np.ones((b, t), np.int64),
                 "cache_mask": self.cache_mask, "position_ids": self.positions(t)}
        bound = {name: (self.slab.tensor(i), shape) for i, name in enumerate(dec.past)}
        runner = dec.graphs["decoder"]
        t0 = time.perf_counter()
        graph.enqueue(feeds, bound)
        # The new rows land in the graph's own `present` buffers, then one 2-D copy per tensor puts
        # them at positions w..w+t of the cache, on the same stream. Binding `present` straight into
        # the cache would need [B, kv, t, D] to be contiguous inside [B, kv, capacity, D], true only
        # for B * kv == 1, and the engine would write memory it reads as past_key_values in the same
        # launch, which TensorRT does not define (Edge-LLM's attention plugin owns that write instead).
        kv, d = dec.kv_shape
        copy = append_copy(b, kv, dec.capacity, d, dec.itemsize, w, t)
        for i, name in enumerate(dec.present):
            dec.cuda.copy2d(self.slab.tensor(i), graph.buffers[name], copy)
        hidden = graph.fetch(["hidden_states"])["hidden_states"]
        if isinstance(runner, Timed):  # the loop reads the runner's seconds, as with ORT
            runner.seconds += time.perf_counter() - t0
            runner.calls += 1
        self.cache_mask[:, w:w + t] = 1
        return hidden

    def _pair(self, other: Stream, pads: np.ndarray) -> Stream:
        assert isinstance(other, TrtStaticStream)
        dec, width = self.dec, int(max(self.width, other.width))
        kv, d = dec.kv_shape
        out = TrtStaticStream(dec, 2, None)
        for row, (stream, pad) in enumerate(((self, int(pads[0])), (other, int(pads[1])))):
            copy = rows_copy(kv, dec.capacity, d, dec.itemsize, 0, 0, row, pad, stream.width)
            for i in range(len(dec.past)):
                dec.cuda.copy2d(out.slab.tensor(i), stream.slab.tensor(i), copy)
            out.cache_mask[row, pad:width] = 1
        dec.cuda.sync()  # the inputs' slabs go back to the pool: their rows must be read first
        self._done()
        other._done()
        return out

    def _row(self, i: int) -> Stream:
        dec, pad, w = self.dec, int(self.pads[i]), self.width
        kv, d = dec.kv_shape
        out = TrtStaticStream(dec, 1, None)
        copy = rows_copy(kv, dec.capacity, d, dec.itemsize, i, pad, 0, 0, w - pad)
        for t in range(len(dec.past)):
            dec.cuda.copy2d(out.slab.tensor(t), self.slab.tensor(t), copy)
        out.cache_mask[0, : w - pad] = 1
        dec.cuda.sync()
        self._done()
        return out

    def _truncate(self, width: int) -> None:
        self.cache_mask[:, width:] = 0  # the rows past `width` are overwritten by the next append


# --- opening a bundle ----------------------------------------------------------------------------
def _device_index(device: str) -> int:
    """cuda, cuda:N, tensorrt, or cpu (armor-run's --device default, which names ORT's devices)."""
    if device in ("cpu", "cuda", "tensorrt"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise DeviceError(f"--backend tensorrt runs on a CUDA device (cuda or cuda:N), got {device!r}")


def open_engines(bundle: Any, device: str = "cuda", threads: int | None = None,
                 graphs: tuple[str, ...] = GRAPHS, **options: Any) -> tuple[dict[str, Any], TrtDecoder | None]:
    """Engines for `graphs` (checked against the manifest) and the decoder with its device cache."""
    if options:
        raise DeviceError(f"--backend tensorrt takes no option {', '.join(sorted(options))} (ORT options)")
    index = _device_index(device)
    paths = engine_plan(bundle, graphs)
    version = _check_tensorrt()
    import tensorrt as trt

    cuda = Cuda(index)
    runners: dict[str, Any] = {}
    try:
        check_built_here(bundle, version, cuda.device_name, graphs)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        section = bundle.manifest["tensorrt"]
        specs = bundle_graphs(bundle.model)
        floats = trt_float(bundle)
        for g in graphs:
            graph = TrtGraph(runtime, cuda, paths[g], section["graphs"][g]["profiles"])
            spec = specs[g].resolved(floats)
            graph.order_like(spec.input_names, spec.output_names)
            problem = io_mismatch(spec, *graph.io())
            if problem:
                raise BundleError(f"{paths[g]} does not match the manifest's graph declaration: {problem}: "
                                  + BUILD_HERE.format(path=bundle.path))
            runners[g] = Timed(graph)  # type: ignore[no-untyped-call]  # runtime.cache is not annotated
        decoder = TrtDecoder(bundle, runners, cuda, int(section["max_batch"])) if "decoder" in runners else None
    except BaseException:
        for r in runners.values():
            r.close()
        cuda.close()
        raise
    log.info("TensorRT %s: %d engines on %s", version, len(runners), cuda.device_name)
    return runners, decoder
