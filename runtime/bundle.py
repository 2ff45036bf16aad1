"""Opening a bundle folder: the manifest validated, files checked, the tables and tokenizer loaded.

It knows the manifest layout (written by armor_export.manifest) and refuses, in one sentence,
a folder that is not a bundle, a bundle of another schema version, a missing or altered
file. It does not open graphs (see backends.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.constants import (BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, EMBEDDINGS_FILE, MANIFEST_FILE,
                               TOKENIZER_FILE)
from runtime.errors import BundleError
from runtime.graphs import GraphSpec, bundle_graphs

log = logging.getLogger(__name__)


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
        if not mpath.is_file():
            raise BundleError(f"{path} is not a bundle (no {MANIFEST_FILE}; an interrupted export leaves none): "
                              f"run armor-export again")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): "
                              f"re-export the bundle") from e
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an ARMOR bundle (format {manifest.get('format')!r})")
    if manifest.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{path} has bundle schema version {manifest.get('schema_version')!r}; this runtime reads "
                          f"version {BUNDLE_SCHEMA_VERSION}: re-export it with the matching armor-export")
    for name, entry in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path} is incomplete: {name} is missing; re-export the bundle")
        if f.stat().st_size != entry["bytes"]:
            raise BundleError(f"{f} has {f.stat().st_size} bytes, the manifest says {entry['bytes']}: "
                              f"the file is truncated or altered; re-export the bundle")
        if verify_hashes and sha256(f) != entry["sha256"]:
            raise BundleError(f"{f} does not match its sha256 in the manifest: the file is corrupt or altered")
    graphs = _graph_specs(manifest, mpath)
    embeddings = np.load(path / EMBEDDINGS_FILE, mmap_mode="r")
    m = manifest["model"]
    if embeddings.shape != (m["vocab_size"], m["hidden_size"]):
        raise BundleError(f"{EMBEDDINGS_FILE} has shape {embeddings.shape}, expected "
                          f"({m['vocab_size']}, {m['hidden_size']})")
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    return Bundle(path, manifest, graphs, embeddings, tokenizer)


def _graph_specs(manifest: dict, mpath: Path) -> dict[str, GraphSpec]:
    """The graph I/O the manifest declares, which must be what this runtime reads for its model."""
    try:
        expected = bundle_graphs(manifest["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{mpath} has no valid model summary ({e.__class__.__name__}: {e}): re-export the bundle") from e
    floats = "float16" if manifest.get("dtype") == "fp16" else "float32"
    specs = {}
    for name, spec in expected.items():
        try:
            declared = GraphSpec.from_dict(name, manifest["graphs"][name])
        except (KeyError, TypeError) as e:
            raise BundleError(f"{mpath} does not declare the I/O of graph {name} ({e}): re-export the bundle") from e
        if declared != spec.resolved(floats):
            raise BundleError(f"{mpath} declares {name}'s I/O differently from what this runtime reads for its "
                              f"model summary: re-export the bundle with the matching armor-export")
        specs[name] = declared
    return specs


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
