"""llama.cpp: the decoder and the text head from the bundle's text.gguf; ORT runs the rest.

`open_engines` returns ORT runners for vision_encoder, visual_head, vq_decoder and text_head
(`runtime.backends.ort`) and a `LlamaDecoder`, whose streams (`runtime.cache.Stream`) live in
llama.cpp's memory as sequences of one context:

- `append`: one `llama_decode` per call; text and image-code tokens go as token ids (codes are
  ordinary tokens of text.gguf's unified vocabulary); a prompt's input-image embeddings go as
  embedding rows (a `llama_batch` carries either ids or embeddings, so a prompt is decoded as
  runs: ids, the image's embeddings, ids). A CFG pair's step is **one batch, two sequences**.
- The context is made with `embeddings=True`, pooling none: llama.cpp then outputs every
  token, and one decode gives both the hidden state after the final norm (`t_embd`, read with
  `llama_get_embeddings`) and the logits (`llama_get_logits_ith`). The adapter reads those
  hidden states; the text head is llama.cpp's `output` (text rows + `<imgbos>`). After a
  `truncate` the newest token's logits are gone, and the ORT text_head runs on its hidden
  state instead (the one fall-back; counted in `LlamaDecoder.ort_text_head_calls`).
  The cost of `embeddings=True`: the output head runs on every token of a batch (prefill).
- `pair`: the two streams' sequences become one stream's rows, no copy (the base class pads
  the shorter row on the left in its host bookkeeping; each llama.cpp sequence keeps its true
  positions, which are exactly the base class's `positions()`). `row`: the other sequences are
  removed (`llama_memory_seq_rm`). `truncate`: `llama_memory_seq_rm` from the new length on.
  Sequence ids are pooled; a dropped stream gives its sequences back (weakref finalizer).
- KV cache f32 (`type_k = type_v = 0`): with f32 weights the logits match PyTorch to ~1e-5.

- `adapter_reads` k (the adapter reads decoder layer k beside the last): llama.cpp outputs the
  last layer only, so its eval callback (`cb_eval`) copies layer k's output (graph tensor
  `l_out-{k-1}`, all tokens of the batch) out of every decode, and the final RMSNorm (text.gguf's
  `output_norm.weight` and epsilon) is put on it here: the hidden states are `[last | layer k]`
  as in every other backend. The callback makes llama.cpp split its graph at that tensor.

It refuses (one line, `BundleError`) a bundle without text.gguf in its manifest and a text.gguf
of another bundle, model or ARMOR GGUF version. It knows llama.cpp's low-level ctypes API
(llama-cpp-python 0.3.x) and ggml's tensor accessors; it knows nothing about modes, sampling or
guidance.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from runtime import constants as C
from runtime.backends import DeviceError
from runtime.cache import ContextFull, Stream
from runtime.errors import BundleError
from runtime.lifecycle import Closing, close_attr

log = logging.getLogger(__name__)

ORT_GRAPHS = ("vision_encoder", "text_head", "visual_head", "vq_decoder")
_LOGS: dict = {}
_INIT = threading.Lock()


def _lib():
    import llama_cpp

    return llama_cpp


@functools.cache
def amx_build() -> bool:
    """Whether this llama.cpp uses Intel AMX (a native build on an AMX CPU): then the model is
    loaded without llama.cpp's extra weight buffers (AMX and CPU_REPACK), whose AMX matmul
    crashed here on q8_0 and q4_k_m weights; plain CPU kernels, still AVX-512."""
    amx = "AMX_INT8 = 1" in _lib().llama_print_system_info().decode("utf-8", "replace")
    if amx:
        log.info("llama.cpp was built with AMX: loading without its AMX/repacked weight buffers "
                 "(ggml-org/llama.cpp#20824)")
    return amx


def route_logs() -> None:
    """Send llama.cpp's log lines to Python logging (`runtime.backends.llamacpp.native`), once."""
    with _INIT:
        if "callback" in _LOGS:
            return
        L = _lib()
        native = logging.getLogger(__name__ + ".native")
        # ggml: 1 debug, 2 info, 3 warn, 4 error; its warnings (e.g. the pooling type we set on purpose) are
        # info here, its errors warnings: what fails reaches the caller as one BundleError/DeviceError line
        levels = {2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}

        def callback(level, text, user_data):
            try:
                line = text.decode("utf-8", "replace").rstrip()
            except Exception:  # noqa: BLE001 - never raise into C
                return
            if line:
                native.log(levels.get(int(level), logging.DEBUG), "%s", line)

        _LOGS["callback"] = L.llama_log_callback(callback)
        L.llama_log_set(_LOGS["callback"], ctypes.c_void_p(0))
        L.llama_backend_init()


class LlamaText(Closing):
    """One text.gguf loaded in llama.cpp with one context of `n_seq` sequences (unified KV
    cache of `n_ctx` cells, f32), embeddings output on; with `also_layer` k the hidden states are
    `[last | layer k]` (`_LayerTap`). Torch-free, bundle-free: the exporter's verification uses it too."""

    def __init__(self, path: str | Path, n_ctx: int, n_seq: int = 4, threads: int | None = None,
                 gpu_layers: int = 0, n_batch: int | None = None, also_layer: int | None = None):
        L = _lib()
        route_logs()
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path} not found")
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = int(gpu_layers)
        if amx_build():  # llama.cpp's AMX matmul segfaults on quantized weights (ggml-org/llama.cpp#20824)
            mp.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise BundleError(f"llama.cpp cannot load {self.path} (truncated, corrupt or not a GGUF it reads; "
                              f"the log above says which): re-export it with armor-export --target gguf")
        self.ctx = None
        try:
            self.n_embd = int(L.llama_model_n_embd(self.model))
            self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))
            self.n_batch = int(min(n_batch or n_ctx, n_ctx))
            cp = L.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = int(n_ctx), self.n_batch, self.n_batch, int(n_seq)
            # default threads: 1 below 50M parameters (the per-op work is too small to split: tiny
            # 0.4 ms/step on 1 thread, 77-280 ms on 2 of a loaded 2-core VM), else every core
            small = int(L.llama_model_n_params(self.model)) < 50_000_000
            cp.n_threads = cp.n_threads_batch = int(threads or (1 if small else os.cpu_count() or 1))
            cp.embeddings, cp.pooling_type = True, L.LLAMA_POOLING_TYPE_NONE
            cp.type_k = cp.type_v = L.GGML_TYPE_F32
            cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cp.kv_unified = True  # the sequences share the cells: a CFG pair's short row costs nothing
            cp.no_perf = True
            self.tap = None
            if also_layer is not None:
                n_layer = int(L.llama_model_n_layer(self.model))
                if not 1 <= also_layer < n_layer:
                    raise BundleError(f"{self.path} has {n_layer} layers; the adapter reads layer {also_layer}")
                self.tap = _LayerTap(self.path, also_layer, self.n_embd, self.meta)
                cp.cb_eval, cp.cb_eval_user_data = self.tap.callback, None
            self.width = self.n_embd * (1 if self.tap is None else 2)
            self.ctx = L.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise DeviceError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}")
            self.memory = L.llama_get_memory(self.ctx)
            self._tok = L.llama_batch_init(self.n_batch, 0, 1)
            self._emb = L.llama_batch_init(self.n_batch, self.n_embd, 1)
        except BaseException:
            self.close()
            raise
        self.seconds = 0.0

    # --- metadata ------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = _lib().llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    # --- decoding ------------------------------------------------------------------------------
    def decode(self, rows: list, all_logits: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """rows: (seq_id, first position, ids [T], embeds [T, H] or None) -> (hidden [T, W] of
        every row (W = H, or 2H with `also_layer`), logits: the last token's [n_vocab] per row,
        or [T, n_vocab] with all_logits).
        `embeds` rows replace the ids' embeddings where `ids` < 0. Rows of ids only decode in one
        batch (chunked to n_batch); a row with embeddings decodes run by run."""
        hidden = [np.empty((len(r[2]), self.width), np.float32) for r in rows]
        logits: list = [None] * len(rows)
        if all(r[3] is None for r in rows):
            flat = [(i, j) for i, r in enumerate(rows) for j in range(len(r[2]))]
            for a in range(0, len(flat), self.n_batch):
                self._run_tokens(rows, flat[a:a + self.n_batch], hidden, logits, all_logits)
        else:
            for i, (seq, p0, ids, embeds) in enumerate(rows):
                is_emb = np.asarray(ids) < 0
                start = 0
                while start < len(ids):
                    end = start + 1
                    while end < len(ids) and is_emb[end] == is_emb[start] and end - start < self.n_batch:
                        end += 1
                    if is_emb[start]:
                        self._run_embeds(seq, p0 + start, embeds[start:end], hidden[i], start, logits, i, all_logits,
                                         last=end == len(ids))
                    else:
                        self._run_tokens(rows, [(i, j) for j in range(start, end)], hidden, logits, all_logits)
                    start = end
        return hidden, logits

    def _run_tokens(self, rows, items, hidden, logits, all_logits) -> None:
        b, n = self._tok, len(items)
        tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        for k, (i, j) in enumerate(items):
            seq, p0, ids, _ = rows[i]
            tok[k], pos[k], nseq[k], out[k] = int(ids[j]), p0 + j, 1, 1
            b.seq_id[k][0] = seq
        b.n_tokens = n
        self._decode(b, n)
        emb = self._states(n)
        for k, (i, j) in enumerate(items):
            hidden[i][j] = emb[k]
            T = len(rows[i][2])
            if all_logits:
                if logits[i] is None:
                    logits[i] = np.empty((T, self.n_vocab), np.float32)
                logits[i][j] = self._logits(k)
            elif j == T - 1:
                logits[i] = self._logits(k)

    def _run_embeds(self, seq, p0, embeds, hidden, start, logits, i, all_logits, last) -> None:
        b, n = self._emb, len(embeds)
        np.ctypeslib.as_array(b.embd, shape=(self.n_batch * self.n_embd,))[: n * self.n_embd] = \
            np.asarray(embeds, np.float32).reshape(-1)
        pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        for k in range(n):
            pos[k], nseq[k], out[k] = p0 + k, 1, 1
            b.seq_id[k][0] = seq
        b.n_tokens = n
        self._decode(b, n)
        hidden[start:start + n] = self._states(n)
        if all_logits:
            if logits[i] is None:
                logits[i] = np.empty((len(hidden), self.n_vocab), np.float32)
            for k in range(n):
                logits[i][start + k] = self._logits(k)
        elif last:
            logits[i] = self._logits(n - 1)

    def _logits(self, k: int) -> np.ndarray:
        return np.ctypeslib.as_array(_lib().llama_get_logits_ith(self.ctx, k), shape=(self.n_vocab,)).copy()

    def _states(self, n: int) -> np.ndarray:
        """The hidden states [n, W] of the batch just decoded."""
        last = np.ctypeslib.as_array(_lib().llama_get_embeddings(self.ctx), shape=(n, self.n_embd))
        return last if self.tap is None else np.concatenate([last, self.tap.take(n)], 1)

    def _decode(self, batch, n: int) -> None:
        if self.tap is not None:
            self.tap.reset()
        t0 = time.perf_counter()
        rc = _lib().llama_decode(self.ctx, batch)
        self.seconds += time.perf_counter() - t0
        if self.tap is not None and self.tap.error is not None:
            raise DeviceError(f"reading decoder layer {self.tap.layer} out of llama.cpp failed: {self.tap.error}")
        if rc == 1:
            raise ContextFull(f"llama.cpp found no room for {n} more tokens in its {self.path.name} context")
        if rc != 0:
            raise DeviceError(f"llama_decode failed ({rc}) on a batch of {n} tokens")

    # --- memory --------------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if not _lib().llama_memory_seq_rm(self.memory, seq, p0, p1):
            raise DeviceError(f"llama.cpp could not remove positions {p0}.. of sequence {seq}")

    def clear(self) -> None:
        _lib().llama_memory_clear(self.memory, True)

    def close(self) -> None:
        L = _lib()
        for name in ("_tok", "_emb"):
            if getattr(self, name, None) is not None:
                L.llama_batch_free(getattr(self, name))
                setattr(self, name, None)
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None


class _LayerTap:
    """Copies decoder layer `layer`'s output (llama.cpp's graph tensor `l_out-{layer-1}`, one row
    per token of the batch) out of each decode through llama.cpp's eval callback, and puts the
    model's final RMSNorm on it: what the adapter reads beside the last layer (`adapter_reads`).
    Only ggml's exported accessors touch the tensor (no struct layout)."""

    def __init__(self, path: Path, layer: int, n_embd: int, meta):
        import llama_cpp._ggml as ggml  # llama-cpp-python's handle on libggml (0.3.x)

        g = ggml.libggml
        for name, res, args in (("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
                                ("ggml_nelements", ctypes.c_int64, [ctypes.c_void_p]),
                                ("ggml_nrows", ctypes.c_int64, [ctypes.c_void_p]),
                                ("ggml_element_size", ctypes.c_size_t, [ctypes.c_void_p]),
                                ("ggml_is_contiguous", ctypes.c_bool, [ctypes.c_void_p]),
                                ("ggml_backend_tensor_get", None,
                                 [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t])):
            fn = getattr(g, name)
            fn.restype, fn.argtypes = res, args
        self.g, self.layer, self.n_embd = g, layer, n_embd
        self.name = f"l_out-{layer - 1}".encode()
        self.weight, self.eps = _final_norm(path, meta)
        self.rows: list[np.ndarray] = []
        self.error: str | None = None
        self.callback = _lib().ggml_backend_sched_eval_callback(self._observe)  # kept alive with the context

    def reset(self) -> None:
        self.rows, self.error = [], None

    def _observe(self, tensor, ask: bool, _user_data) -> bool:
        try:
            mine = self.g.ggml_get_name(tensor) == self.name
            if ask:  # the scheduler asks which tensors to hand over: only ours
                return mine
            if not mine:
                return True
            g, rows = self.g, int(self.g.ggml_nrows(tensor))
            if (g.ggml_element_size(tensor) != 4 or not g.ggml_is_contiguous(tensor)
                    or int(g.ggml_nelements(tensor)) != rows * self.n_embd):
                raise ValueError(f"{self.name.decode()} is not a contiguous f32 [tokens, {self.n_embd}] tensor")
            out = np.empty((rows, self.n_embd), np.float32)
            g.ggml_backend_tensor_get(tensor, out.ctypes.data_as(ctypes.c_void_p), 0, out.nbytes)
            self.rows.append(out)
            return True
        except Exception as e:  # an exception cannot cross the C callback: stop the compute, raise after it
            self.error = f"{type(e).__name__}: {e}"
            return False

    def take(self, n: int) -> np.ndarray:
        """Layer `layer`'s normed states [n, H] of the batch just decoded."""
        got = sum(len(r) for r in self.rows)
        if got != n:
            raise DeviceError(f"llama.cpp gave {got} rows of decoder layer {self.layer} for a batch of {n} tokens")
        x = np.concatenate(self.rows)
        return x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + self.eps) * self.weight


def _final_norm(path: Path, meta) -> tuple[np.ndarray, float]:
    """text.gguf's final RMSNorm: (`output_norm.weight` [H] float32, epsilon)."""
    import gguf

    arch = meta("general.architecture")
    eps = meta(f"{arch}.attention.layer_norm_rms_epsilon")
    tensor = next((t for t in gguf.GGUFReader(str(path)).tensors if t.name == "output_norm.weight"), None)
    if eps is None or tensor is None or tensor.tensor_type not in (gguf.GGMLQuantizationType.F32,
                                                                     gguf.GGMLQuantizationType.F16):
        raise BundleError(f"{path} has no float output_norm.weight and RMS epsilon to norm an earlier layer with")
    return np.asarray(tensor.data, np.float32).reshape(-1), float(eps)


# --- the bundle's engine ---------------------------------------------------------------------------
def open_engines(bundle, device: str = "cpu", threads: int | None = None, n_seq: int = 4, **options):
    """ORT runners for the graphs llama.cpp does not serve, and the llama.cpp decoder."""
    from runtime.backends import ort

    if device not in ("cpu", "cuda"):
        raise DeviceError(f"--backend llamacpp runs on device cpu or cuda, got {device!r}")
    L = _lib()
    gpu_layers = 0
    if device == "cuda":
        if not L.llama_supports_gpu_offload():
            raise DeviceError("this llama-cpp-python was built without GPU offload; rebuild it with "
                              "CMAKE_ARGS=-DGGML_CUDA=on or use --device cpu")
        gpu_layers = 10**6
    runners, _ = ort.open_engines(bundle, device, threads, graphs=ORT_GRAPHS, **options)
    try:
        decoder = LlamaDecoder(bundle, runners, threads, gpu_layers, n_seq)
    except BaseException:
        for r in runners.values():
            r.close()
        raise
    return runners, decoder


class LlamaDecoder:
    """The bundle's text.gguf in one llama.cpp context; streams are pooled sequences of it."""

    def __init__(self, bundle, graphs: dict, threads: int | None = None, gpu_layers: int = 0, n_seq: int = 4):
        m = bundle.model
        entry = bundle.manifest.get("files", {}).get(C.GGUF_FILE)
        if entry is None:
            raise BundleError(f"{bundle.path} has no {C.GGUF_FILE} in its manifest: add one with "
                              f"armor-export CHECKPOINT --target gguf --out {bundle.path}")
        self.graphs, self.type = graphs, entry.get("dtype", "?")
        self.table = np.asarray(bundle.embeddings)
        self.image_token_id = m["special_token_ids"]["image_context"]
        self.capacity = int(m["context_length"])
        self.n_text, self.img_bos = m["n_text_vocab"], m["special_token_ids"]["img_bos"]
        self.engine = LlamaText(bundle.path / C.GGUF_FILE, n_ctx=2 * self.capacity + 64, n_seq=n_seq,
                                threads=threads, gpu_layers=gpu_layers, n_batch=self.capacity,
                                also_layer=m.get("adapter_reads"))
        try:
            self._check(bundle)
        except BaseException:
            self.engine.close()
            raise
        self.n_seq, self.free, self._pending = n_seq, list(range(n_seq)), []
        self.ort_text_head_calls = 0

    @property
    def seconds(self) -> float:
        return self.engine.seconds if self.engine is not None else 0.0

    def _check(self, bundle) -> None:
        e, m = self.engine, bundle.model
        where = f"{bundle.path / C.GGUF_FILE}"
        version = e.meta(C.GGUF_KEY_FORMAT_VERSION)
        if version is None:
            raise BundleError(f"{where} is not an ARMOR text.gguf (no {C.GGUF_KEY_FORMAT_VERSION}): re-export it")
        if int(version) != C.GGUF_FORMAT_VERSION:
            raise BundleError(f"{where} has ARMOR GGUF version {version}; this runtime reads {C.GGUF_FORMAT_VERSION}: "
                              f"re-export it with the matching armor-export")
        if e.meta(C.GGUF_KEY_EMBEDDINGS_SHA256) != bundle.manifest["files"][C.EMBEDDINGS_FILE]["sha256"]:
            raise BundleError(f"{where} belongs to another bundle (its embeddings differ from this bundle's): "
                              f"re-export it with armor-export --target gguf")
        if (e.n_vocab, e.n_embd) != (m["vocab_size"], m["hidden_size"]):
            raise BundleError(f"{where} has {e.n_vocab} tokens of width {e.n_embd}; the bundle's model has "
                              f"{m['vocab_size']} of width {m['hidden_size']}: re-export it")
        for key, value in ((C.GGUF_KEY_IMG_BOS, self.img_bos), (C.GGUF_KEY_N_TEXT_VOCAB, self.n_text)):
            if e.meta(key) is None or int(e.meta(key)) != value:
                raise BundleError(f"{where} has {key} {e.meta(key)}, the manifest {value}: re-export it")

    # --- sequences -------------------------------------------------------------------------------
    def take(self) -> int:
        self.flush()
        if not self.free:
            raise ContextFull(f"all {self.n_seq} llama.cpp sequences are in use (open the model with a larger n_seq)")
        return self.free.pop(0)

    def release(self, seqs: list) -> None:
        """Give `seqs` back to the pool at the next flush (a finalizer may call this while
        llama.cpp is inside a decode, running our log callback: nothing is removed then)."""
        self._pending.extend(seqs)
        seqs.clear()

    def flush(self) -> None:
        """Remove the released sequences' cells and put them back in the pool."""
        while self._pending and self.engine is not None:
            s = self._pending.pop()
            self.engine.seq_rm(s)
            self.free.append(s)

    def embeds(self, ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """ids [T] -> [T, H] float32 with the input-image embeddings in their placeholders."""
        x = self.table[ids].astype(np.float32)
        slots = ids == self.image_token_id
        if int(slots.sum()) != image_embeds.shape[0]:
            raise ValueError(f"{int(slots.sum())} image placeholders for {image_embeds.shape[0]} image embeddings")
        x[slots] = image_embeds
        return x

    def text_logits(self, full: np.ndarray) -> np.ndarray:
        """llama.cpp's logits over the unified vocabulary [..., n_vocab] -> the text head's [..., V + 1]."""
        return np.concatenate([full[..., : self.n_text], full[..., self.img_bos:self.img_bos + 1]], -1)

    def start(self, ids, image_embeds: np.ndarray | None = None, text_head=None) -> Stream:
        stream = LlamaStream(self, [self.take()], text_head)
        stream.append(ids, image_embeds)
        return stream

    def close(self) -> None:
        close_attr(self, "engine")


class LlamaStream(Stream):
    """Rows = llama.cpp sequences `seqs`; `_logits` [B, V + 1]: the text head at each row's
    newest token when llama.cpp computed it (None after a truncate)."""

    def __init__(self, dec: LlamaDecoder, seqs: list, text_head, logits: np.ndarray | None = None):
        super().__init__([], np.zeros(len(seqs), np.int64), text_head)
        self.dec, self.seqs, self._logits = dec, seqs, logits
        weakref.finalize(self, dec.release, seqs)  # the list, not self: handed-over rows are cleared first

    def text_logits(self) -> np.ndarray:
        self._check()
        if self._logits is not None:
            return self._logits.copy()
        self.dec.ort_text_head_calls += 1
        return super().text_logits()

    def _forward(self, ids, image_embeds):
        dec, (b, t) = self.dec, ids.shape
        if self.width + t - int(self.pads.min()) > dec.capacity:
            raise ContextFull(f"the decoder holds {dec.capacity} tokens; {self.width + t} asked")
        pos = self.positions(t)
        if image_embeds is not None:
            if b != 1:
                raise ValueError("input-image embeddings go into a batch-1 stream")
            x = dec.embeds(ids[0], image_embeds)
            marked = np.where(ids[0] == dec.image_token_id, -1, ids[0])  # -1: decode this row as an embedding
            rows = [(self.seqs[0], int(pos[0, 0]), marked, x)]
        else:
            rows = [(s, int(pos[i, 0]), ids[i], None) for i, s in enumerate(self.seqs)]
        dec.flush()
        hidden, logits = dec.engine.decode(rows)
        self._logits = dec.text_logits(np.stack(logits))
        return np.stack(hidden)

    def _pair(self, other: "LlamaStream", pads: np.ndarray) -> "LlamaStream":
        logits = None
        if self._logits is not None and other._logits is not None:
            logits = np.concatenate([self._logits, other._logits])
        seqs = self.seqs + other.seqs
        self.seqs.clear()
        other.seqs.clear()
        return LlamaStream(self.dec, seqs, None, logits)

    def _row(self, i: int) -> "LlamaStream":
        keep = [self.seqs[i]]
        drop = [s for j, s in enumerate(self.seqs) if j != i]
        self.seqs.clear()
        self.dec.release(drop)
        self.dec.flush()
        return LlamaStream(self.dec, keep, None, None if self._logits is None else self._logits[i:i + 1].copy())

    def _truncate(self, width: int) -> None:
        for i, s in enumerate(self.seqs):
            self.dec.engine.seq_rm(s, width - int(self.pads[i]), -1)
        self._logits = None
