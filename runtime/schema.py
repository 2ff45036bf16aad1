"""The bundle manifest's schema, declared in code, and the rules for the file names it lists.

`validate_manifest(m)` checks a parsed manifest.json against `MANIFEST` (every field
armor_export.manifest and calibration write, with its type and range) and a few relations
between model-summary numbers, and raises `SchemaError` naming the first field that is wrong;
`safe_relative_name(name)` refuses a listed file name that is absolute or climbs out of the
bundle. It knows the manifest's shape only: whether files exist, match their hashes, or lie
inside the bundle once symlinks are resolved is runtime.bundle's business. Pure Python, no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

from runtime.graphs import (ELEMENT_TYPES, KV_CACHE_FORMS, TRT_PRECISIONS, TRT_PROFILE_NAMES, TRT_TIERS, engine_file,
                            trt_file)

MAX_COUNT = 2**31 - 1  # model sizes and ids: anything larger is not a model this runtime can hold


class SchemaError(ValueError):
    """A manifest field of the wrong shape: `field` names it (e.g. `model.hidden_size`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field} {problem}")
        self.field, self.problem = field, problem


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# --- the building blocks: each checks one value at `where` or raises SchemaError ------------------
class Spec:
    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


class Whole(Spec):
    """An int (not a bool, not 3.0) in [minimum, maximum]."""

    def __init__(self, minimum: int = 0, maximum: int | None = MAX_COUNT):
        self.minimum, self.maximum = minimum, maximum

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"must be a whole number, got {_kind(value)} {_show(value)}")
        if self.maximum is None and value < self.minimum:
            raise SchemaError(where, f"must be >= {self.minimum}, got {value}")
        if self.maximum is not None and not self.minimum <= value <= self.maximum:
            raise SchemaError(where, f"must be in {self.minimum}..{self.maximum}, got {value}")


class Number(Spec):
    """A finite int or float >= minimum."""

    def __init__(self, minimum: float | None = None):
        self.minimum = minimum

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(where, f"must be a finite number, got {_kind(value)} {_show(value)}")
        if self.minimum is not None and value < self.minimum:
            raise SchemaError(where, f"must be >= {self.minimum:g}, got {value:g}")


class Text(Spec):
    """A string, optionally one of `choices` or matching `pattern` (whole string)."""

    def __init__(self, choices: tuple[str, ...] | None = None, pattern: str | None = None, what: str = ""):
        self.choices, self.pattern, self.what = choices, pattern and re.compile(pattern), what

    def check(self, value, where):
        if not isinstance(value, str):
            raise SchemaError(where, f"must be a string, got {_kind(value)} {_show(value)}")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(where, f"must be one of {', '.join(self.choices)}, got {_show(value)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise SchemaError(where, f"must be {self.what}, got {_show(value)}")


class OneOf(Spec):
    """The first of `specs` that accepts the value; the message lists what was expected."""

    def __init__(self, *specs: Spec, what: str):
        self.specs, self.what = specs, what

    def check(self, value, where):
        for spec in self.specs:
            try:
                spec.check(value, where)
                return
            except SchemaError:
                continue
        raise SchemaError(where, f"must be {self.what}, got {_kind(value)} {_show(value)}")


class Optional(Spec):
    """null or `spec`."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def check(self, value, where):
        if value is not None:
            self.spec.check(value, where)


class ListOf(Spec):
    def __init__(self, item: Spec, length: int | None = None, min_length: int = 0):
        self.item, self.length, self.min_length = item, length, min_length

    def check(self, value, where):
        if not isinstance(value, list):
            raise SchemaError(where, f"must be a list, got {_kind(value)} {_show(value)}")
        if self.length is not None and len(value) != self.length:
            raise SchemaError(where, f"must have {self.length} entries, got {len(value)}")
        if len(value) < self.min_length:
            raise SchemaError(where, f"must have at least {self.min_length} entries, got {len(value)}")
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")


class Record(Spec):
    """An object with `required` and `optional` keys; other keys are allowed (and not read)."""

    def __init__(self, required: dict[str, Spec], optional: dict[str, Spec] | None = None):
        self.required, self.optional = required, optional or {}

    def check(self, value, where):
        if not isinstance(value, dict):
            raise SchemaError(where or "(the whole manifest)", f"must be an object, got {_kind(value)} {_show(value)}")
        for key, spec in self.required.items():
            if key not in value:
                raise SchemaError(_join(where, key), "is missing")
            spec.check(value[key], _join(where, key))
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _join(where, key))


class MapOf(Spec):
    """An object whose keys are names (checked by `key`, a function raising ValueError) and
    whose values all follow `value`."""

    def __init__(self, value: Spec, key=None, min_entries: int = 0):
        self.value, self.key, self.min_entries = value, key, min_entries

    def check(self, value, where):
        if not isinstance(value, dict):
            raise SchemaError(where, f"must be an object, got {_kind(value)} {_show(value)}")
        if len(value) < self.min_entries:
            entries = "entry" if self.min_entries == 1 else "entries"
            raise SchemaError(where, f"must have at least {self.min_entries} {entries}, got {len(value)}")
        for k, v in value.items():
            if self.key is not None:
                try:
                    self.key(k)
                except ValueError as e:
                    raise SchemaError(f"{where}[{k!r}]", f"is not a safe file name: {e}") from None
            self.value.check(v, f"{where}[{k!r}]")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- file names -----------------------------------------------------------------------------------
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relative_name(name: str) -> str:
    """`name` if it is a plain relative path inside a folder ('a/b.onnx'); ValueError otherwise:
    absolute, a drive, `..`, `.` or empty parts, backslashes, control characters."""
    if not isinstance(name, str) or not name:
        raise ValueError("it is empty")
    if any(ord(c) < 32 for c in name):
        raise ValueError("it has control characters")
    if "\\" in name:
        raise ValueError("it has a backslash (use '/' between folders)")
    if name.startswith("/") or _DRIVE.match(name):
        raise ValueError("it is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise ValueError("it climbs out of the bundle with '..'")
    if any(p in ("", ".") for p in parts):
        raise ValueError("it has an empty or '.' part")
    return name


# --- the manifest ---------------------------------------------------------------------------------
def count(minimum: int = 1) -> Whole:
    return Whole(minimum, MAX_COUNT)


TOKEN_ID = Whole(0, MAX_COUNT)
SPECIAL_TOKEN_IDS = Record({k: TOKEN_ID for k in ("img_bos", "img_end", "img_pad", "code_offset",
                                                  "image_context", "eos", "pad")})

# manifest["model"], as armor_export.export.model_summary writes it
MODEL = Record(
    required={
        "kv_cache": Text(KV_CACHE_FORMS),
        "n_layers": count(), "n_heads": count(), "n_kv_heads": count(), "head_dim": count(),
        "hidden_size": count(), "n_text_vocab": count(), "n_codes": count(), "n_new": count(),
        "vocab_size": count(), "image_grid": ListOf(count(), length=2), "image_size": count(),
        "vision_image_size": count(), "n_image_tokens": count(), "adapter_layers": count(),
        "adapter_heads": count(), "adapter_context_start": Whole(0), "context_length": count(),
        "cfg_scale": Number(0), "special_token_ids": SPECIAL_TOKEN_IDS,
    },
    optional={"preset": Text(), "architecture": Text(), "kv_capacity": count(), "parameters": Whole(0, None),
              "adapter_reads": count()},
)

AXIS = OneOf(Text(pattern=r"[A-Za-z_][A-Za-z0-9_]*", what="an axis name"), count(),
             what="an axis name or a size >= 1")
TENSOR = Record({"name": Text(pattern=r"\S+", what="a tensor name"), "dtype": Text(ELEMENT_TYPES),
                 "axes": ListOf(AXIS)})
GRAPH = Record({"file": Text(), "inputs": ListOf(TENSOR, min_length=1), "outputs": ListOf(TENSOR, min_length=1)},
               optional={"precision": Text()})
GRAPH_NAMES = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")

# manifest["tensorrt"], as armor_export.tensorrt writes it: each graph's TensorRT-form file and its
# optimization profiles ({input name: dims} at min, opt and max), engines once built on a device
SHAPES = MapOf(ListOf(Whole(0)), min_entries=1)
PROFILE = Record({"name": Text(TRT_PROFILE_NAMES), "min": SHAPES, "opt": SHAPES, "max": SHAPES})
TENSORRT = Record({
    "tier": Text(TRT_TIERS), "precision": Text(TRT_PRECISIONS), "max_batch": count(), "capacity": count(),
    "graphs": MapOf(Record({"file": Text(), "profiles": ListOf(PROFILE, min_length=1)}), min_entries=1),
    "engines": MapOf(Record({"file": Text(), "tensorrt_version": Text(), "device": Text()})),
})

FILE = Record({"role": Text(), "bytes": Whole(0, None),
               "sha256": Text(pattern=r"[0-9a-f]{64}", what="64 lowercase hex digits")},
              optional={"dtype": Text(), "precision": Text()})

MANIFEST = Record(
    required={
        "format": Text(), "schema_version": Whole(0, None), "dtype": Text(("fp32", "fp16")),
        "model": MODEL,
        "graphs": Record({name: GRAPH for name in GRAPH_NAMES}),
        "files": MapOf(FILE, key=safe_relative_name, min_entries=1),
    },
    optional={
        "exporter": Text(), "source": Text(), "chat_template": Optional(Text()),
        "verification": Record({}), "export_seconds": Number(0), "calibration": Record({}), "accuracy": Record({}),
        "gguf": Record({}), "tensorrt": TENSORRT,
    },
)


def validate_manifest(manifest: Any, required_files: tuple[str, ...] = ()) -> None:
    """Raise SchemaError naming the first field of `manifest` that is missing, of the wrong
    type or out of range, or the first relation between its numbers that does not hold.
    `required_files` must all be listed in `manifest["files"]`."""
    MANIFEST.check(manifest, "")
    m = manifest["model"]
    _relations(m)
    for name in GRAPH_NAMES:
        g = manifest["graphs"][name]
        if g["file"] != f"{name}.onnx":
            raise SchemaError(f"graphs.{name}.file", f"must be '{name}.onnx', got {_show(g['file'])}")
    files = manifest["files"]
    if "tensorrt" in manifest:
        _tensorrt(manifest["tensorrt"], files)
    for name in (*required_files, *(manifest["graphs"][g]["file"] for g in GRAPH_NAMES)):
        if name not in files:
            raise SchemaError(f"files[{name!r}]", "is missing: every file the runtime opens must be listed "
                                                  "with its size and sha256")


def _tensorrt(section: dict, files: dict) -> None:
    """The TensorRT form's graphs and engines are bundle graphs, at their fixed names, listed with their hashes."""
    for name, g in section["graphs"].items():
        if name not in GRAPH_NAMES:
            raise SchemaError(f"tensorrt.graphs[{name!r}]", f"is not a bundle graph ({', '.join(GRAPH_NAMES)})")
        if g["file"] != trt_file(name):
            raise SchemaError(f"tensorrt.graphs.{name}.file", f"must be {trt_file(name)!r}, got {_show(g['file'])}")
    for name, e in section["engines"].items():
        if name not in section["graphs"]:
            raise SchemaError(f"tensorrt.engines[{name!r}]", "has no TensorRT-form graph in tensorrt.graphs")
        if e["file"] != engine_file(name):
            raise SchemaError(f"tensorrt.engines.{name}.file", f"must be {engine_file(name)!r}, got {_show(e['file'])}")
    for entry in (*section["graphs"].values(), *section["engines"].values()):
        if entry["file"] not in files:
            raise SchemaError(f"files[{entry['file']!r}]", "is missing: every TensorRT file must be listed with its "
                                                           "size and sha256")


def _relations(m: dict) -> None:
    """The model summary's numbers that must agree with each other (the exporter derives them)."""
    if m["vocab_size"] != m["n_text_vocab"] + m["n_new"]:
        raise SchemaError("model.vocab_size", f"must be n_text_vocab + n_new = {m['n_text_vocab'] + m['n_new']}, "
                                              f"got {m['vocab_size']}")
    if m["n_new"] < m["n_codes"] + 3:
        raise SchemaError("model.n_new", f"must hold n_codes + 3 special tokens (>= {m['n_codes'] + 3}), "
                                         f"got {m['n_new']}")
    if "adapter_reads" in m and m["adapter_reads"] >= m["n_layers"]:
        raise SchemaError("model.adapter_reads", f"must be a decoder layer below n_layers {m['n_layers']}, "
                                                 f"got {m['adapter_reads']}")
    if m["hidden_size"] % m["adapter_heads"]:
        raise SchemaError("model.adapter_heads", f"must divide hidden_size {m['hidden_size']}, "
                                                 f"got {m['adapter_heads']}")
    for key, value in m["special_token_ids"].items():
        if key in SPECIAL_TOKEN_IDS.required and value >= m["vocab_size"]:
            raise SchemaError(f"model.special_token_ids.{key}", f"must be below vocab_size {m['vocab_size']}, "
                                                                f"got {value}")
    if m["kv_cache"] == "static":
        if "kv_capacity" not in m:
            raise SchemaError("model.kv_capacity", "is missing (the static-cache decoder needs its capacity)")
        if m["kv_capacity"] > m["context_length"]:
            raise SchemaError("model.kv_capacity", f"must be at most context_length {m['context_length']}, "
                                                   f"got {m['kv_capacity']}")
