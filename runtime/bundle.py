"""Opening a bundle folder: the manifest validated, files checked, the tables and tokenizer loaded.

A bundle is data from elsewhere, so nothing in it is trusted before it is checked, in this
order: the manifest parses and has the shape runtime.schema declares (format and schema
version first, for their own messages); every listed file name is a plain relative path
that, with symlinks resolved, stays inside the bundle folder; each file exists with its
listed size (and sha256 unless `verify_hashes=False`); every ONNX external-data location
is a listed file inside the bundle and the ranges fit in it (runtime.onnx_refs); the graph
I/O is what this runtime reads; the embeddings' .npy header (dtype, shape, order, size)
matches the model summary and the file before it is memory-mapped (never unpickled); the
tokenizer loads. Every refusal is one BundleError sentence naming the file or field. It does
not open graphs (see backends/).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.constants import (BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, EMBEDDINGS_FILE, MANIFEST_FILE,
                               TOKENIZER_FILE)
from runtime.errors import BundleError
from runtime.graphs import GraphSpec, bundle_graphs
from runtime.onnx_refs import GraphFileError, external_data_refs
from runtime.schema import SchemaError, safe_relative_name, validate_manifest

log = logging.getLogger(__name__)

REEXPORT = "write the bundle again (armor-export, or armor-calibrate for a quantized one)"
MAX_MANIFEST_BYTES = 64 * 2**20  # a manifest is kilobytes; refuse to read a huge file as one


@dataclass
class Bundle:
    path: Path
    manifest: dict
    graphs: dict[str, GraphSpec]
    embeddings: np.ndarray  # [V + n_new, H], memory-mapped
    tokenizer: Tokenizer

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graphs[name].filename

    def float_type(self, graph: str, tensor: str) -> str:
        """The element type the manifest declares for a graph's tensor (float32 or float16)."""
        g = self.manifest["graphs"][graph]
        for t in g["inputs"] + g["outputs"]:
            if t["name"] == tensor:
                return t["dtype"]
        raise KeyError(f"{graph} has no tensor {tensor}")


def open_bundle(path: str | Path, verify_hashes: bool = True, manifest: dict | None = None) -> Bundle:
    """Open the bundle folder `path`. `manifest`, if given, is checked and used instead of the
    folder's manifest.json (a tool's draft before it writes its manifest, last)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle folder not found: {path}")
    mpath = path / MANIFEST_FILE
    if manifest is None:
        manifest = read_manifest(path)
    check_manifest(manifest, mpath)
    root = path.resolve()
    names = list(manifest["files"])
    for name in names:  # every name first: nothing is opened before all of them are known to be inside
        _inside(root, path / name, name, mpath)
    for name in names:
        _check_file(path, name, manifest["files"][name], verify_hashes)
    for name in names:
        if name.endswith(".onnx"):
            _check_external_data(path, root, name, manifest["files"])
    graphs = _graph_specs(manifest, mpath)
    embeddings = _load_embeddings(path / EMBEDDINGS_FILE, manifest)
    tokenizer = _load_tokenizer(path / TOKENIZER_FILE, manifest["model"])
    return Bundle(path, manifest, graphs, embeddings, tokenizer)


def read_manifest(path: Path) -> dict:
    """The parsed manifest.json of the bundle folder `path` (any JSON value: check it next)."""
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle (no {MANIFEST_FILE}; an interrupted armor-export or "
                          f"armor-calibrate leaves none): run the command that writes it again")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} has {mpath.stat().st_size} bytes, far more than a manifest: {REEXPORT}")
    try:
        return json.loads(mpath.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{mpath} is not UTF-8 text (byte {e.start}): {REEXPORT}") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                          f"{REEXPORT}") from e
    except RecursionError as e:  # thousands of nested brackets
        raise BundleError(f"{mpath} is not valid JSON (nested too deeply): {REEXPORT}") from e


def check_manifest(manifest, mpath: Path) -> None:
    """Format, schema version and the declared schema (runtime.schema), as one BundleError."""
    if not isinstance(manifest, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(manifest), "number")
        raise BundleError(f"{mpath} is not a bundle manifest (a JSON {kind}, not an object): {REEXPORT}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath.parent} is not an ARMOR bundle (format {manifest.get('format')!r})")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{mpath}: field schema_version must be a whole number, got {version!r}; {REEXPORT}")
    if version != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{mpath.parent} has bundle schema version {manifest.get('schema_version')!r}; this "
                          f"runtime reads version {BUNDLE_SCHEMA_VERSION}: re-export it with the matching "
                          f"armor-export")
    try:
        validate_manifest(manifest, required_files=(EMBEDDINGS_FILE, TOKENIZER_FILE))
    except SchemaError as e:
        raise BundleError(f"{mpath}: {e}; {REEXPORT}") from None


def _inside(root: Path, f: Path, name: str, mpath: Path) -> Path:
    """`f` with symlinks resolved, refused unless it lies inside the (resolved) bundle folder."""
    try:
        real = f.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise BundleError(f"{mpath} lists {name!r}, which cannot be resolved ({e.__class__.__name__}): "
                          f"{REEXPORT}") from e
    if real != root and root not in real.parents:
        raise BundleError(f"{mpath} lists {name!r}, which resolves to {real}, outside the bundle folder: refused "
                          f"(a symlink out of the bundle); {REEXPORT}")
    return real


def _check_file(path: Path, name: str, entry: dict, verify_hashes: bool) -> None:
    f = path / name
    if not f.is_file():
        what = "is not a file" if f.exists() else "is missing"
        raise BundleError(f"{path} is incomplete: {name} {what}; {REEXPORT}")
    size = f.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(f"{f} has {size} bytes, the manifest says {entry['bytes']}: "
                          f"the file is truncated or altered; {REEXPORT}")
    if verify_hashes and sha256(f) != entry["sha256"]:
        raise BundleError(f"{f} does not match its sha256 in the manifest: the file is corrupt or altered")


def _check_external_data(path: Path, root: Path, name: str, files: dict) -> None:
    """Every external-data location of graph `name` is a listed file inside the bundle, and each
    (offset, length) range fits in it: onnxruntime reads where the graph says, so the graph is
    checked like the manifest before any engine sees it."""
    f = path / name
    try:
        refs = external_data_refs(f)
    except GraphFileError as e:
        raise BundleError(f"{f} {e}: not a valid ONNX graph; {REEXPORT}") from None
    folder = Path(name).parent
    for ref in refs:
        try:
            safe_relative_name(ref.location)
        except ValueError as e:
            raise BundleError(f"{f} stores tensor {ref.tensor!r} in {ref.location!r}, which is refused ({e}); "
                              f"{REEXPORT}") from None
        listed = (folder / ref.location).as_posix()
        if listed not in files:
            raise BundleError(f"{f} stores tensor {ref.tensor!r} in {ref.location!r}, a file the manifest does "
                              f"not list: refused; {REEXPORT}")
        _inside(root, path / listed, listed, path / MANIFEST_FILE)
        size = files[listed]["bytes"]
        end = ref.offset + (ref.length if ref.length is not None else 0)
        if ref.offset > size or end > size:
            raise BundleError(f"{f} reads tensor {ref.tensor!r} from bytes {ref.offset}..{end} of {listed}, which "
                              f"has {size}: {REEXPORT}")


def _graph_specs(manifest: dict, mpath: Path) -> dict[str, GraphSpec]:
    """The graph I/O the manifest declares, which must be what this runtime reads for its model."""
    try:
        expected = bundle_graphs(manifest["model"])
    except (KeyError, TypeError, ValueError) as e:  # the schema has checked every field: a safety net
        raise BundleError(f"{mpath} has no valid model summary ({e.__class__.__name__}: {e}): {REEXPORT}") from e
    floats = "float16" if manifest["dtype"] == "fp16" else "float32"
    specs = {}
    for name, spec in expected.items():
        declared = GraphSpec.from_dict(name, manifest["graphs"][name])
        if declared != spec.resolved(floats):
            raise BundleError(f"{mpath} declares {name}'s I/O differently from what this runtime reads for its "
                              f"model summary: re-export the bundle with the matching armor-export")
        specs[name] = declared
    return specs


def _load_embeddings(f: Path, manifest: dict) -> np.ndarray:
    """The embedding table, memory-mapped once its .npy header agrees with the manifest and the
    file's size; read with allow_pickle=False (an object array is refused, never unpickled)."""
    m = manifest["model"]
    want_dtype = np.dtype(np.float16 if manifest["dtype"] == "fp16" else np.float32).newbyteorder("<")
    want_shape = (m["vocab_size"], m["hidden_size"])
    try:
        with open(f, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unknown .npy format version {version}")
            offset = fh.tell()
    except (ValueError, SyntaxError, OSError, EOFError, TypeError) as e:
        reason = " ".join(str(e).split())[:120]
        raise BundleError(f"{f} is not a readable .npy array ({e.__class__.__name__}: {reason}): {REEXPORT}") from None
    if dtype != want_dtype:
        raise BundleError(f"{f} holds {dtype} values, the manifest's dtype {manifest['dtype']} needs "
                          f"{want_dtype}: {REEXPORT}")
    if tuple(shape) != want_shape:
        raise BundleError(f"{EMBEDDINGS_FILE} has shape {tuple(shape)}, expected {want_shape} (model.vocab_size, "
                          f"model.hidden_size): {REEXPORT}")
    if fortran:
        raise BundleError(f"{f} is stored in Fortran order; the runtime reads row-major tables: {REEXPORT}")
    need = offset + want_shape[0] * want_shape[1] * want_dtype.itemsize
    size = os.path.getsize(f)
    if size != need:
        raise BundleError(f"{f} has {size} bytes; its header describes {need}: the file is truncated or altered; "
                          f"{REEXPORT}")
    return np.load(f, mmap_mode="r", allow_pickle=False)


def _load_tokenizer(f: Path, m: dict) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(f))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - tokenizers raises bare Exception, a Rust panic BaseException
        reason = " ".join(str(e).split())[:120]
        raise BundleError(f"{f} is not a tokenizer this runtime can load ({reason}): {REEXPORT}") from None
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > m["n_text_vocab"]:
        raise BundleError(f"{f} has {n} tokens, more than the model's text vocabulary (model.n_text_vocab "
                          f"{m['n_text_vocab']}): a tokenizer from another model; {REEXPORT}")
    return tokenizer


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
