"""Corpus: malformed and hostile bundles are refused with one BundleError line, odd-but-valid
ones open.

Each case copies the session's random bundle, damages the copy one way (a manifest of the
wrong shape, a missing or mistyped field, a file name or ONNX external-data location that
leaves the bundle, a symlink out of it, a garbage .npy header or tokenizer with the hash
check off, ...) and asserts `runtime.errors.BundleError` with a one-line message matching
the case. A few cases go through `armor-run` too: exit code 1, exactly one stderr line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime import ArmorPipeline, BundleError
from runtime.bundle import open_bundle, sha256
from runtime.constants import EMBEDDINGS_FILE, MANIFEST_FILE, TOKENIZER_FILE


@pytest.fixture
def bundle(random_bundle, tmp_path):
    """A private copy of the session's random bundle (symlinks copied as links)."""
    out = tmp_path / "bundle"
    shutil.copytree(random_bundle, out, symlinks=True)
    return out


# --- helpers the cases use ------------------------------------------------------------------------
def manifest(b: Path) -> dict:
    return json.loads((b / MANIFEST_FILE).read_text())


def write(b: Path, m) -> None:
    (b / MANIFEST_FILE).write_text(json.dumps(m))


def edit(fn):
    """A case that edits the parsed manifest in place (fn(m) may also return a replacement)."""
    def damage(b: Path):
        m = manifest(b)
        out = fn(m)
        write(b, m if out is None else out)
    return damage


def relist(b: Path, name: str, m: dict | None = None) -> None:
    """Update (or add) the manifest entry of `name` to the file's current size and hash."""
    m = m or manifest(b)
    entry = m["files"].setdefault(name, {"role": "extra", "dtype": "fp32"})
    entry.update(bytes=(b / name).stat().st_size, sha256=sha256(b / name))
    write(b, m)


def replace_file(name: str, data_fn):
    """A case that rewrites a listed file (data_fn(old bytes) -> new bytes) and relists it, so
    only the content checks (not size or hash) can tell."""
    def damage(b: Path):
        f = b / name
        f.write_bytes(data_fn(f.read_bytes()))
        relist(b, name)
    return damage


def save_npy(array_fn):
    def damage(b: Path):
        table = np.load(b / EMBEDDINGS_FILE)
        np.save(b / EMBEDDINGS_FILE, array_fn(table), allow_pickle=True)
        relist(b, EMBEDDINGS_FILE)
    return damage


def symlink_out(name: str):
    """`name` becomes a symlink to an identical copy outside the bundle (size and hash still match)."""
    def damage(b: Path):
        outside = b.parent / ("outside-" + name.replace("/", "_"))
        src = b / name
        if src.is_dir():
            shutil.copytree(src, outside)
            shutil.rmtree(src)
        else:
            shutil.copyfile(src, outside)
            src.unlink()
        src.symlink_to(outside.resolve(), target_is_directory=outside.is_dir())
    return damage


def external_data(location: str, listed: str | None = "same", length_extra: int = 0, symlink: bool = False):
    """text_head.onnx's weights moved to text_head.onnx.data, then the location written into the
    graph replaced by `location` (the data file stays where onnx wrote it, so nothing is ever
    written outside the bundle). `listed`: which name the manifest lists ('same' = location)."""
    def damage(b: Path):
        import onnx

        graph = b / "text_head.onnx"
        proto = onnx.load(str(graph))
        onnx.save_model(proto, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="text_head.onnx.data", size_threshold=0)
        proto = onnx.load(str(graph), load_external_data=False)
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
                elif e.key == "length" and length_extra:
                    e.value = str(int(e.value) + length_extra)
        graph.write_bytes(proto.SerializeToString())
        m = manifest(b)
        relist(b, "text_head.onnx", m)
        name = location if listed == "same" else listed
        if name is not None and (b / "text_head.onnx.data").exists():
            if name != "text_head.onnx.data":
                (b / name).parent.mkdir(parents=True, exist_ok=True)
                (b / "text_head.onnx.data").rename(b / name)
            if symlink:
                outside = b.parent / "outside.data"
                shutil.move(b / name, outside)
                (b / name).symlink_to(outside.resolve())
            relist(b, name, m)
    return damage


def graph_truncated(b: Path):
    f = b / "vq_decoder.onnx"
    f.write_bytes(f.read_bytes()[:-1000])
    relist(b, "vq_decoder.onnx")


def listed_directory(b: Path):
    m = manifest(b)
    (b / "adir").mkdir()
    m["files"]["adir"] = {"role": "extra", "bytes": 0, "sha256": "0" * 64}
    write(b, m)


def symlink_loop(b: Path):
    m = manifest(b)
    (b / "loop").symlink_to("loop")
    m["files"]["loop"] = {"role": "extra", "bytes": 0, "sha256": "0" * 64}
    write(b, m)


def fortran(table):
    return np.asfortranarray(table)


def drop(*path):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return fn


def put(value, *path):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return fn


def rename_entry(old: str, new: str):
    def fn(m):
        m["files"][new] = m["files"].pop(old)
    return fn


def raw_manifest(text: bytes):
    def damage(b: Path):
        (b / MANIFEST_FILE).write_bytes(text)
    return damage


GARBAGE_NPY_HEADER = b"\x93NUMPY\x01\x00\x10\x00{garbage!!!!!!}\n"  # the magic, then no dict


# --- the corpus -----------------------------------------------------------------------------------
# (case id, damage(bundle), message regex); every case opens with verify_hashes=False, so only
# the checks that do not depend on the hashes can refuse it.
REFUSED = [
    # manifests of the wrong shape
    ("manifest-list", edit(lambda m: []), r"not a bundle manifest \(a JSON list"),
    ("manifest-string", edit(lambda m: "bundle"), r"not a bundle manifest \(a JSON string"),
    ("manifest-null", raw_manifest(b"null"), r"not a bundle manifest \(a JSON null"),
    ("manifest-empty-object", edit(lambda m: {}), r"is not an ARMOR bundle \(format None\)"),
    ("manifest-not-utf8", raw_manifest(b'{"format": "\xff\xfe"}'), r"is not UTF-8 text"),
    ("manifest-nested-deep", raw_manifest(b"[" * 200000 + b"]" * 200000), r"not valid JSON|not a bundle manifest"),
    ("schema-version-string", edit(put("3", "schema_version")),
     r"field schema_version must be a whole number, got '3'"),
    ("files-missing", edit(drop("files")), r"field files is missing"),
    ("files-a-list", edit(put([], "files")), r"field files must be an object, got a list"),
    ("files-empty", edit(put({}, "files")), r"field files must have at least 1 entry, got 0"),
    ("file-entry-a-string", edit(put("abc", "files", "decoder.onnx")), r"files\['decoder.onnx'\] must be an object"),
    ("file-entry-no-bytes", edit(drop("files", "decoder.onnx", "bytes")), r"files\['decoder.onnx'\]\.bytes is missing"),
    ("file-entry-no-sha256", edit(drop("files", "decoder.onnx", "sha256")), r"\.sha256 is missing"),
    ("file-entry-no-role", edit(drop("files", "decoder.onnx", "role")), r"\.role is missing"),
    ("file-bytes-negative", edit(put(-1, "files", "decoder.onnx", "bytes")), r"\.bytes must be >= 0, got -1"),
    ("file-bytes-string", edit(put("3356690", "files", "decoder.onnx", "bytes")), r"\.bytes must be a whole number"),
    ("file-bytes-bool", edit(put(True, "files", "decoder.onnx", "bytes")),
     r"\.bytes must be a whole number, got a boolean"),
    ("file-sha256-not-hex", edit(put("xyz", "files", "decoder.onnx", "sha256")), r"\.sha256 must be 64 lowercase hex"),
    ("graph-file-unlisted", edit(drop("files", "decoder.onnx")), r"files\['decoder.onnx'\] is missing"),
    ("embeddings-unlisted", edit(drop("files", EMBEDDINGS_FILE)), r"files\['embeddings.npy'\] is missing"),
    ("model-missing", edit(drop("model")), r"field model is missing"),
    ("model-a-list", edit(put([1, 2], "model")), r"field model must be an object"),
    ("model-no-hidden-size", edit(drop("model", "hidden_size")), r"field model\.hidden_size is missing"),
    ("model-hidden-size-negative", edit(put(-128, "model", "hidden_size")), r"model\.hidden_size must be in 1\.\."),
    ("model-hidden-size-float", edit(put(128.0, "model", "hidden_size")), r"model\.hidden_size must be a whole number"),
    ("model-hidden-size-huge", edit(put(2**40, "model", "hidden_size")), r"model\.hidden_size must be in 1\.\."),
    ("model-grid-one-entry", edit(put([8], "model", "image_grid")), r"model\.image_grid must have 2 entries"),
    ("model-grid-string", edit(put("8x8", "model", "image_grid")), r"model\.image_grid must be a list"),
    ("model-kv-cache-unknown", edit(put("paged", "model", "kv_cache")),
     r"model\.kv_cache must be one of dynamic, static"),
    ("model-cfg-scale-nan", edit(put(float("nan"), "model", "cfg_scale")), r"model\.cfg_scale must be a finite number"),
    ("model-no-eos", edit(drop("model", "special_token_ids", "eos")), r"model\.special_token_ids\.eos is missing"),
    ("model-id-out-of-vocab", edit(put(10**6, "model", "special_token_ids", "img_bos")),
     r"img_bos must be below vocab_size"),
    ("model-vocab-inconsistent", edit(put(1540, "model", "vocab_size")),
     r"model\.vocab_size must be n_text_vocab \+ n_new"),
    ("model-static-no-capacity", edit(put("static", "model", "kv_cache")), r"model\.kv_capacity is missing"),
    ("model-adapter-heads", edit(put(3, "model", "adapter_heads")), r"model\.adapter_heads must divide hidden_size"),
    ("dtype-unknown", edit(put("int4", "dtype")), r"field dtype must be one of fp32, fp16"),
    ("graphs-no-decoder", edit(drop("graphs", "decoder")), r"field graphs\.decoder is missing"),
    ("graph-io-not-a-list", edit(put({"name": "x"}, "graphs", "decoder", "inputs")),
     r"graphs\.decoder\.inputs must be a list"),
    ("graph-tensor-dtype", edit(put("float64", "graphs", "decoder", "inputs", 0, "dtype")),
     r"graphs\.decoder\.inputs\[0\]\.dtype must be one of"),
    ("graph-tensor-no-axes", edit(drop("graphs", "text_head", "outputs", 0, "axes")),
     r"graphs\.text_head\.outputs\[0\]\.axes is missing"),
    ("graph-axis-negative", edit(put(-1, "graphs", "text_head", "outputs", 0, "axes", 2)),
     r"axes\[2\] must be an axis name or a size"),
    ("graph-file-elsewhere", edit(put("../text_head.onnx", "graphs", "text_head", "file")),
     r"graphs\.text_head\.file must be 'text_head.onnx'"),
    # file names that leave the bundle
    ("name-dotdot", edit(rename_entry("tokenizer_config.json", "../tokenizer_config.json")),
     r"climbs out of the bundle"),
    ("name-dotdot-inner", edit(rename_entry("tokenizer_config.json", "text/../../x.json")),
     r"climbs out of the bundle"),
    ("name-absolute", edit(rename_entry("tokenizer_config.json", "/etc/passwd")), r"is an absolute path"),
    ("name-drive", edit(rename_entry("tokenizer_config.json", "C:/x.json")), r"is an absolute path"),
    ("name-backslash", edit(rename_entry("tokenizer_config.json", "..\\x.json")), r"backslash"),
    ("name-dot-part", edit(rename_entry("tokenizer_config.json", "./tokenizer_config.json")), r"empty or '\.' part"),
    ("name-nul", edit(rename_entry("tokenizer_config.json", "x\u0000.json")), r"control characters"),
    ("symlink-file-out", symlink_out("tokenizer_config.json"), r"outside the bundle folder"),
    ("symlink-graph-out", symlink_out("decoder.onnx"), r"'decoder.onnx', which resolves to .* outside the bundle"),
    ("symlink-folder-out", symlink_out("text"), r"'text/[^']+', which resolves to .* outside the bundle"),
    ("symlink-loop", symlink_loop, r"'loop'.*(cannot be resolved|outside the bundle|is missing|is not a file)"),
    ("listed-directory", listed_directory, r"adir is not a file"),
    # ONNX external data
    ("extdata-dotdot", external_data("../outside.data", listed=None),
     r"'\.\./outside\.data', which is refused \(it climbs out"),
    ("extdata-absolute", external_data("/tmp/armor-test-outside.data", listed=None),
     r"which is refused \(it is an absolute path"),
    ("extdata-unlisted", external_data("text_head.onnx.data", listed=None), r"a file the manifest does not list"),
    ("extdata-symlink-out", external_data("text_head.onnx.data", symlink=True), r"outside the bundle"),
    ("extdata-past-end", external_data("text_head.onnx.data", length_extra=10**6),
     r"reads tensor .* from bytes .* which has"),
    # graph files that are not ONNX (hash check off, size relisted)
    ("graph-truncated", graph_truncated, r"vq_decoder\.onnx is truncated"),
    ("graph-garbage", replace_file("text_head.onnx", lambda d: b"\xff" * len(d)),
     r"text_head\.onnx is not an ONNX protobuf"),
    ("graph-empty", replace_file("text_head.onnx", lambda d: b""), r"text_head\.onnx is empty"),
    ("graph-no-graph", replace_file("text_head.onnx", lambda d: b"\x08\x07"), r"text_head\.onnx has no graph"),
    # embeddings
    ("npy-garbage-header", replace_file(EMBEDDINGS_FILE, lambda d: GARBAGE_NPY_HEADER + d[26:]),
     r"embeddings\.npy is not a readable \.npy array"),
    ("npy-not-npy", replace_file(EMBEDDINGS_FILE, lambda d: b"PK\x03\x04" + d[4:]), r"not a readable \.npy array"),
    ("npy-empty", replace_file(EMBEDDINGS_FILE, lambda d: b""), r"not a readable \.npy array"),
    ("npy-wrong-shape", save_npy(lambda t: t[:, :-1]),
     r"embeddings\.npy has shape \(1539, 127\), expected \(1539, 128\)"),
    ("npy-wrong-rows", save_npy(lambda t: t[:-5]), r"has shape \(1534, 128\)"),
    ("npy-float64", save_npy(lambda t: t.astype(np.float64)), r"holds float64 values"),
    ("npy-big-endian", save_npy(lambda t: t.astype(">f4")), r"holds >f4 values"),
    ("npy-pickled-objects", save_npy(lambda t: np.array([object()] * 4, dtype=object)), r"holds object values"),
    ("npy-fortran", save_npy(fortran), r"Fortran order"),
    ("npy-truncated-relisted", replace_file(EMBEDDINGS_FILE, lambda d: d[:-512]), r"its header describes \d+"),
    # tokenizer
    ("tokenizer-garbage", replace_file(TOKENIZER_FILE, lambda d: b"\x00garbage" * 10),
     r"tokenizer\.json is not a tokenizer"),
    ("tokenizer-wrong-json", replace_file(TOKENIZER_FILE, lambda d: b"{}"), r"tokenizer\.json is not a tokenizer"),
    ("tokenizer-truncated", replace_file(TOKENIZER_FILE, lambda d: d[: len(d) // 2]),
     r"tokenizer\.json is not a tokenizer"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_in_one_line(bundle, damage, message):
    damage(bundle)
    with pytest.raises(BundleError, match=message) as e:
        ArmorPipeline.load(bundle, verify_hashes=False)
    assert "\n" not in str(e.value)


def test_nothing_outside_was_written():
    """The traversal cases never touch anything outside their copy (onnx writes inside)."""
    assert not Path("/tmp/armor-test-outside.data").exists()


CLI_CASES = ["manifest-list", "model-no-hidden-size", "name-dotdot", "symlink-graph-out", "extdata-dotdot",
             "graph-truncated", "npy-garbage-header", "tokenizer-garbage"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_in_one_stderr_line(bundle, tmp_path, capsys, case):
    from runtime.cli import main

    _, damage, message = next(c for c in REFUSED if c[0] == case)
    damage(bundle)
    code = main([str(bundle), "--thread-pool", "session", "--prompt", "hi", "--no-verify-hashes", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("armor-run: error: "), err
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_hash_check_still_refuses_a_relisted_graph_with_the_old_hash(bundle):
    """With the hash check on, a rewritten file whose size is relisted but hash is not is refused."""
    m = manifest(bundle)
    f = bundle / "text_head.onnx"
    f.write_bytes(b"\x00" * f.stat().st_size)
    write(bundle, m)
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(bundle)


@pytest.mark.parametrize("draft, message", [
    ([], r"not a bundle manifest \(a JSON list"),
    ({"format": "armor-bundle", "schema_version": 3}, r"field dtype is missing"),
], ids=["draft-list", "draft-no-dtype"])
def test_a_tools_draft_manifest_is_checked_too(bundle, draft, message):
    """calibration opens its draft bundle with manifest=...: the same schema applies."""
    with pytest.raises(BundleError, match=message):
        open_bundle(bundle, verify_hashes=False, manifest=draft)


# --- odd but valid ------------------------------------------------------------------------------------
def symlink_inside(b: Path):
    """text/tokenizer.json as a symlink to the bundle's own (identical) tokenizer.json."""
    (b / "text" / "tokenizer.json").unlink()
    (b / "text" / "tokenizer.json").symlink_to("../tokenizer.json")


def bundle_is_a_symlink(b: Path):
    """Handled by the test: the bundle folder itself reached through a symlink."""


def unknown_keys(b: Path):
    m = manifest(b)
    m["future_field"] = {"anything": [1, 2]}
    m["model"]["notes"] = "kept"
    m["files"]["decoder.onnx"]["comment"] = "extra keys are allowed"
    write(b, m)


VALID = [
    ("symlink-inside", symlink_inside),
    ("extdata-listed", external_data("text_head.onnx.data")),
    ("extdata-in-subfolder", external_data("weights/text_head.bin")),
    ("unknown-keys", unknown_keys),
    ("bundle-through-symlink", bundle_is_a_symlink),
]


@pytest.mark.parametrize("damage", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_odd_but_valid_bundles_open_and_answer(bundle, tmp_path, damage):
    damage(bundle)
    path = bundle
    if damage is bundle_is_a_symlink:
        path = tmp_path / "link"
        path.symlink_to(bundle, target_is_directory=True)
    with ArmorPipeline.load(path) as pipe:
        assert pipe.chat([{"role": "user", "content": "hi"}], max_new_tokens=2) is not None
