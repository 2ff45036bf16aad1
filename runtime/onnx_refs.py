"""The external-data references of an ONNX file, read straight from protobuf's wire format.

A bundle is data from elsewhere: before onnxruntime opens a graph, runtime.bundle checks that
every tensor stored outside the graph file names a file the manifest lists, inside the bundle.
The runtime must not need the `onnx` package, and onnxruntime does not report where it will
read external data from (it only fails, or not, when it does), so this module reads the few
messages that can hold tensors: ModelProto.graph / functions / training_info, GraphProto's
initializers, sparse initializers and node attributes (tensors and subgraphs, recursively), and
of each TensorProto only its `external_data` key/value pairs and `data_location`. Everything
else is skipped by length, which also proves the file is not truncated. Field numbers are
onnx.proto's (ONNX IR 3-10). It knows the wire format and those field numbers, nothing else.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# onnx.proto field numbers (stable since ONNX IR version 3)
MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 20, 25
TRAINING_INIT, TRAINING_ALGORITHM = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
FUNCTION_NODE, FUNCTION_ATTRIBUTE = 7, 11
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

MAX_DEPTH = 64  # subgraphs nest (If / Loop bodies); a hostile file must not exhaust the stack
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class GraphFileError(ValueError):
    """The file is not a well-formed ONNX protobuf (the message is a phrase for a sentence)."""


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str  # as written: relative to the graph file's folder
    offset: int
    length: int | None  # None: to the end of the file


def external_data_refs(path: Path) -> list[ExternalRef]:
    """Every external-data reference in the ONNX file `path`; GraphFileError if the file is not
    a well-formed ModelProto with a graph."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise GraphFileError("is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            refs: list[ExternalRef] = []
            has_graph = False
            for num, kind, a, b in _fields(buf, 0, size):
                if kind != LENGTH:
                    continue
                if num == MODEL_GRAPH:
                    has_graph = True
                    _graph(buf, a, b, refs, 1)
                elif num == MODEL_FUNCTIONS:
                    _function(buf, a, b, refs, 1)
                elif num == MODEL_TRAINING_INFO:
                    for n, k, a2, b2 in _fields(buf, a, b):
                        if k == LENGTH and n in (TRAINING_INIT, TRAINING_ALGORITHM):
                            _graph(buf, a2, b2, refs, 2)
            if not has_graph:
                raise GraphFileError("has no graph")
            return refs


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, a, b) of one message's fields: a is the value of a varint,
    (a, b) the byte span of a length-delimited field; both 0 for fixed-size fields."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, kind = key >> 3, key & 7
        if num == 0:
            raise GraphFileError(f"is not an ONNX protobuf (field number 0 at byte {pos})")
        if kind == VARINT:
            value, pos = _varint(buf, pos, end)
            yield num, kind, value, 0
        elif kind == LENGTH:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise GraphFileError(f"is truncated (a field of {n} bytes at byte {pos} runs past its end)")
            yield num, kind, pos, pos + n
            pos += n
        elif kind in (FIXED64, FIXED32):
            pos += 8 if kind == FIXED64 else 4
            if pos > end:
                raise GraphFileError("is truncated (a fixed-size field runs past its end)")
            yield num, kind, 0, 0
        else:  # 3/4 are protobuf groups, which ONNX never uses; 6/7 do not exist
            raise GraphFileError(f"is not an ONNX protobuf (wire type {kind} at byte {pos})")


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise GraphFileError("is truncated (in the middle of a number)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphFileError(f"is not an ONNX protobuf (a number longer than 10 bytes at byte {pos})")


def _text(buf, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise GraphFileError(f"is not an ONNX protobuf (a string that is not UTF-8 at byte {start})") from None


def _deeper(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise GraphFileError(f"nests subgraphs more than {MAX_DEPTH} deep")
    return depth + 1


def _graph(buf, start: int, end: int, refs: list, depth: int) -> None:
    depth = _deeper(depth)
    for num, kind, a, b in _fields(buf, start, end):
        if kind != LENGTH:
            continue
        if num == GRAPH_INITIALIZER:
            _tensor(buf, a, b, refs)
        elif num == GRAPH_SPARSE_INITIALIZER:
            _sparse(buf, a, b, refs)
        elif num == GRAPH_NODE:
            _node(buf, a, b, refs, depth)


def _function(buf, start: int, end: int, refs: list, depth: int) -> None:
    depth = _deeper(depth)
    for num, kind, a, b in _fields(buf, start, end):
        if kind == LENGTH and num == FUNCTION_NODE:
            _node(buf, a, b, refs, depth)
        elif kind == LENGTH and num == FUNCTION_ATTRIBUTE:
            _attribute(buf, a, b, refs, depth)


def _node(buf, start: int, end: int, refs: list, depth: int) -> None:
    for num, kind, a, b in _fields(buf, start, end):
        if kind == LENGTH and num == NODE_ATTRIBUTE:
            _attribute(buf, a, b, refs, depth)


def _attribute(buf, start: int, end: int, refs: list, depth: int) -> None:
    for num, kind, a, b in _fields(buf, start, end):
        if kind != LENGTH:
            continue
        if num in (ATTR_T, ATTR_TENSORS):
            _tensor(buf, a, b, refs)
        elif num in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
            _sparse(buf, a, b, refs)
        elif num in (ATTR_G, ATTR_GRAPHS):
            _graph(buf, a, b, refs, depth)


def _sparse(buf, start: int, end: int, refs: list) -> None:
    for num, kind, a, b in _fields(buf, start, end):
        if kind == LENGTH and num in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(buf, a, b, refs)


def _tensor(buf, start: int, end: int, refs: list) -> None:
    name, entries, location_kind = "", {}, 0
    for num, kind, a, b in _fields(buf, start, end):
        if num == TENSOR_NAME and kind == LENGTH:
            name = _text(buf, a, b)
        elif num == TENSOR_DATA_LOCATION and kind == VARINT:
            location_kind = a
        elif num == TENSOR_EXTERNAL_DATA and kind == LENGTH:
            key = val = ""
            for n, k, a2, b2 in _fields(buf, a, b):
                if k == LENGTH and n == ENTRY_KEY:
                    key = _text(buf, a2, b2)
                elif k == LENGTH and n == ENTRY_VALUE:
                    val = _text(buf, a2, b2)
            entries[key] = val
    if location_kind != EXTERNAL and not entries:
        return
    if "location" not in entries:
        raise GraphFileError(f"stores tensor {name!r} outside the file without naming where")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise GraphFileError(f"gives tensor {name!r} an external-data offset or length that is not a number") \
            from None
    if offset < 0 or (length is not None and length < 0):
        raise GraphFileError(f"gives tensor {name!r} a negative external-data offset or length")
    refs.append(ExternalRef(name, entries["location"], offset, length))
