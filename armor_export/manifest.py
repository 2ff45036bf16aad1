"""The bundle manifest: files with role, dtype and sha256, the model summary, the graph I/O,
the verification report. Written last and atomically (temporary file, then rename).

Torch-free (calibration writes its manifests with it). It knows the manifest layout; the
runtime reads it back in `runtime.bundle`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.bundle import sha256
from runtime.constants import BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, MANIFEST_FILE
from runtime.graphs import GraphSpec


def build_manifest(out: Path, summary: dict, specs: dict[str, GraphSpec], files: dict[str, dict], dtype: str,
                   report: dict, tokenizer_config: Path, source: str, export_seconds: float) -> dict:
    from armor_export import __version__

    listed = {}
    for name, entry in sorted(files.items()):
        path = out / name
        listed[name] = {**entry, "dtype": entry.get("dtype", dtype), "bytes": path.stat().st_size,
                        "sha256": sha256(path)}
    elem = "float16" if dtype == "fp16" else "float32"
    graphs = {}
    for name, spec in specs.items():
        d = spec.to_dict()
        for t in d["inputs"] + d["outputs"]:
            t["dtype"] = elem if t["dtype"] == "float" else t["dtype"]
        graphs[name] = {"file": spec.filename, **d}
    chat_template = json.loads(Path(tokenizer_config).read_text()).get("chat_template")
    return {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA_VERSION, "exporter": f"armor-export {__version__}",
        "source": source, "dtype": dtype, "model": summary, "chat_template": chat_template,
        "graphs": graphs, "files": listed, "verification": report,
        "export_seconds": round(export_seconds, 2),
    }


def write_manifest(out: Path, manifest: dict) -> Path:
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / MANIFEST_FILE)
    return out / MANIFEST_FILE
