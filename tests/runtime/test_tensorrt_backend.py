"""The native TensorRT backend (`--backend tensorrt`, runtime/backends/tensorrt.py).

Without a GPU (here, in CI): the module imports without tensorrt or cuda-python; the refusals,
on real TensorRT-form bundles exported by armor_export.tensorrt (no tensorrt installed -> one
line naming the extra, through the factory; no engines; engines recorded as built by another
TensorRT version or on another device; an engine missing; no CUDA device, where cuda-python is
installed); the static cache's cudaMemcpy2D offsets against numpy's slicing (the ORT static
stream's writes); the choice of optimization profile. On a device (marked gpu, skipped with the
reason elsewhere): engines built from tiny give the ORT backend's tokens.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime.backends import DeviceError, open_model
from runtime.backends.tensorrt import (Copy2D, _device_index, append_copy, check_built_here, engine_plan,
                                       pick_profile, rows_copy, trt_float)
from runtime.bundle import open_bundle, sha256
from runtime.errors import BundleError

GRAPHS = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")
GPU_SKIP = "needs TensorRT and a CUDA device"


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory, random_static_bundle):
    """The TensorRT form (fp32, tier 10.3) of the random static-cache bundle; no engines (no GPU here)."""
    pytest.importorskip("onnx", reason="exporting the TensorRT form needs the export extra (onnx)")
    from armor_export.tensorrt import Options, export_tensorrt

    out = tmp_path_factory.mktemp("trt") / "random-trt"
    export_tensorrt(random_static_bundle, out, Options(precision="fp32"))
    return out


def _with_engines(src, dst, version="10.3.0.30", device="Orin", drop=()):
    """A copy of `src` whose manifest records engines for every graph but `drop`, as an export on a
    device writes them. The engine files hold bytes, not plans: these tests stop at the manifest's
    version/device record, before anything is deserialized."""
    from armor_export.manifest import write_manifest

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "engines").mkdir()
    for g in GRAPHS:
        if g in drop:
            continue
        name = f"engines/{g}.engine"
        (dst / name).write_bytes(f"engine bytes of {g} (test data, never deserialized)".encode())
        manifest["files"][name] = {"role": f"engine.{g}", "bytes": (dst / name).stat().st_size,
                                   "sha256": sha256(dst / name)}
        manifest["tensorrt"]["engines"][g] = {"file": name, "tensorrt_version": version, "device": device}
    write_manifest(dst, manifest)
    return open_bundle(dst)  # schema-checked and hashed like any bundle


def _tensorrt_here() -> bool:
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - a bindings wheel without its libraries fails in many ways
        return False
    return hasattr(tensorrt, "Runtime")


# --- import and refusals -------------------------------------------------------------------------------
def test_the_module_imports_without_tensorrt_or_cuda():
    code = ("import sys, runtime.backends.tensorrt as m; "
            "assert 'tensorrt' not in sys.modules and not any(k.split('.')[0] == 'cuda' for k in sys.modules), "
            "sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_tensorrt_the_factory_names_the_extra_in_one_line(trt_bundle):
    if _tensorrt_here():
        pytest.skip("tensorrt is installed here: the missing-package refusal cannot happen")
    with pytest.raises(DeviceError) as e:
        open_model(open_bundle(trt_bundle), backend="tensorrt", device="cuda")
    msg = str(e.value)
    assert "\n" not in msg and "'tensorrt'" in msg and "armor-edge[gpu]" in msg


def test_a_bundle_without_engines_says_to_build_them_on_the_device(trt_bundle, random_static_bundle):
    b = open_bundle(trt_bundle)
    assert b.manifest["tensorrt"]["engines"] == {}
    with pytest.raises(DeviceError, match=r"no TensorRT engines .*armor-export .*--target tensorrt .*on the device"):
        engine_plan(b)
    with pytest.raises(DeviceError, match="has no TensorRT form: run armor-export"):
        engine_plan(open_bundle(random_static_bundle))


def test_engines_of_another_tensorrt_version_or_device_are_refused(trt_bundle, tmp_path):
    b = _with_engines(trt_bundle, tmp_path / "b", version="10.3.0.30", device="Orin")
    paths = engine_plan(b)
    assert paths == {g: b.path / f"engines/{g}.engine" for g in GRAPHS}
    check_built_here(b, "10.3.0.30", "Orin")  # the recorded build: accepted
    with pytest.raises(DeviceError, match=r"built by TensorRT 10\.3\.0\.30; this is TensorRT 11\.4\.0\.1: "
                                          r"rebuild them on this device: armor-export .* --overwrite") as e:
        check_built_here(b, "11.4.0.1", "Orin")
    assert "\n" not in str(e.value)
    with pytest.raises(DeviceError, match=r"built on 'Orin'; this device is 'NVIDIA H200'"):
        check_built_here(b, "10.3.0.30", "NVIDIA H200")


def test_a_missing_engine_is_named(trt_bundle, tmp_path):
    b = _with_engines(trt_bundle, tmp_path / "b", drop=("visual_head",))
    with pytest.raises(BundleError, match="no engine for visual_head"):
        engine_plan(b)
    assert set(engine_plan(b, graphs=("decoder", "text_head"))) == {"decoder", "text_head"}


def test_without_a_cuda_device_cuda_python_is_refused_in_one_line():
    from runtime.backends.tensorrt import Cuda, _cudart

    try:
        rt = _cudart()
    except DeviceError as e:
        assert "cuda-python" in str(e) and "armor-edge[gpu]" in str(e)
        return
    err, count = rt.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a CUDA device is visible here: the no-device refusal cannot happen")
    with pytest.raises(DeviceError, match="needs a CUDA device; cudaGetDeviceCount says cuda"):
        Cuda(0)


def test_devices_and_options():
    assert [_device_index(d) for d in ("cpu", "cuda", "tensorrt", "cuda:1")] == [0, 0, 0, 1]
    for bad in ("cuda:x", "gpu", "metal"):
        with pytest.raises(DeviceError, match="cuda or cuda:N"):
            _device_index(bad)


def test_the_engines_float_type_follows_the_tensorrt_precision(trt_bundle):
    b = open_bundle(trt_bundle)
    assert trt_float(b) == "float32"
    b.manifest["tensorrt"]["precision"] = "fp16"  # an fp16 form of an fp32 bundle has float16 I/O
    assert trt_float(b) == "float16"


# --- the static cache's offsets against numpy ----------------------------------------------------------
def _apply(dst: np.ndarray, src: np.ndarray, c: Copy2D) -> None:
    """cudaMemcpy2D's meaning on host arrays: `height` rows of `width` bytes."""
    d, s = dst.reshape(-1).view(np.uint8), src.reshape(-1).view(np.uint8)
    for r in range(c.height):
        d[c.dst + r * c.dpitch: c.dst + r * c.dpitch + c.width] = s[c.src + r * c.spitch: c.src + r * c.spitch + c.width]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("batch,kv,cap,d,start,t", [(1, 2, 16, 4, 0, 5), (2, 2, 16, 4, 7, 1), (2, 1, 9, 8, 1, 8),
                                                     (1, 3, 12, 2, 11, 1)])
def test_append_copy_writes_the_new_rows_where_numpy_does(dtype, batch, kv, cap, d, start, t):
    rng = np.random.default_rng(0)
    cache = rng.standard_normal((batch, kv, cap, d)).astype(dtype)
    present = rng.standard_normal((batch, kv, t, d)).astype(dtype)
    want = cache.copy()
    want[:, :, start:start + t] = present  # OrtStaticStream._forward's write
    got = cache.copy()
    _apply(got, present, append_copy(batch, kv, cap, d, np.dtype(dtype).itemsize, start, t))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pair_and_row_copies_match_the_ort_static_streams(dtype):
    kv, cap, d, size = 2, 12, 4, np.dtype(dtype).itemsize
    rng = np.random.default_rng(1)
    # two batch-1 caches in batch-2 slabs (row 0 used), widths 7 and 4 -> the second is padded by 3
    a, b = (rng.standard_normal((2, kv, cap, d)).astype(dtype) for _ in range(2))
    wa, wb = 7, 4
    width, pads = max(wa, wb), (0, 3)
    want = np.zeros((2, kv, cap, d), dtype)
    want[0, :, pads[0]:width] = a[0, :, :wa]  # OrtStaticStream._pair
    want[1, :, pads[1]:width] = b[0, :, :wb]
    pair = np.zeros((2, kv, cap, d), dtype)
    for row, (src, w) in enumerate(((a, wa), (b, wb))):
        _apply(pair, src, rows_copy(kv, cap, d, size, 0, 0, row, pads[row], w))
    np.testing.assert_array_equal(pair, want)
    # row 1 back as a batch-1 stream, its padding dropped (OrtStaticStream._row)
    one = np.zeros((2, kv, cap, d), dtype)
    _apply(one, pair, rows_copy(kv, cap, d, size, 1, pads[1], 0, 0, width - pads[1]))
    np.testing.assert_array_equal(one[0, :, :width - pads[1]], pair[1, :, pads[1]:width])
    assert not one[0, :, width - pads[1]:].any() and not one[1].any()
    # a batch-1 cache is the first half of a batch-2 slab: the engine sees [1, kv, cap, D] at its base
    np.testing.assert_array_equal(pair.reshape(-1)[: kv * cap * d].reshape(1, kv, cap, d), pair[:1])


def test_the_profile_is_the_one_that_covers_the_shapes_nearest_its_opt(trt_bundle):
    b = open_bundle(trt_bundle)
    profiles = b.manifest["tensorrt"]["graphs"]["decoder"]["profiles"]
    cap, h = b.model["kv_capacity"], b.model["hidden_size"]
    names = [p["name"] for p in profiles]

    def pick(batch, t):
        return names[pick_profile(profiles, {"inputs_embeds": (batch, t, h), "position_ids": (batch, t)})]

    assert pick(1, 40) == "prefill" and pick(1, cap) == "prefill"
    assert pick(2, 1) == "decode" and pick(1, 1) == "decode" and pick(2, 8) == "decode"
    assert pick(2, 9) == "prefill"  # past the decode window, within the prefill range
    with pytest.raises(ValueError, match="no optimization profile covers"):
        pick(1, cap + 1)
    with pytest.raises(ValueError, match="no optimization profile covers"):
        pick(3, 1)


# --- on a device -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
def test_engines_from_tiny_give_the_ort_backends_tokens(tmp_path, tiny_checkpoint):
    from armor_export.tensorrt import Options, engine_support, export_tensorrt
    from tests.armor_export.test_tensorrt import _tokens

    why = engine_support()
    if why is not None:
        pytest.skip(f"{GPU_SKIP}: {why}")
    out = tmp_path / "tiny-trt"
    manifest, note = export_tensorrt(tiny_checkpoint, out, Options(precision="fp32"))
    assert set(manifest["tensorrt"]["engines"]) == set(GRAPHS), note
    kw = dict(max_new_tokens=48, cfg_scale=3.0)
    for messages in ([{"role": "user", "content": "what is 3 plus 4?"}],
                     [{"role": "user", "content": "draw a large red circle at the top left."}]):  # CFG pairs
        assert _tokens(out, messages, "tensorrt", "cuda", **kw) == _tokens(out, messages, "ort", "cpu", **kw)
