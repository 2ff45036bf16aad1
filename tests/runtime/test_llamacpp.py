"""`--backend llamacpp`: llama.cpp serves the decoder and the text head from text.gguf, ORT the
adapter + visual head, vision encoder and VQ decoder; one conversation on two engines.

Greedy tokens identical to the PyTorch reference on the shipped `tiny` (text, VQA, t2i with
CFG on and off, interleaved); hidden states and text logits against the ORT backend (f32
weights, f32 KV cache: atol 1e-4); the stream operations (pair, row, truncate) on llama.cpp
sequences; bad bundles refused in one line. Skips where llama-cpp-python is not installed."""

import shutil

import numpy as np
import pytest

from runtime import constants as C

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'armor-edge[gguf]')")
pytest.importorskip("gguf", reason="gguf-py is not installed (pip install 'armor-edge[gguf]')")

ATOL = 1e-4  # llama.cpp f32 vs ORT fp32: hidden states and text logits


def _with_gguf(src, checkpoint, out, gguf_type="f32"):
    from armor_export.gguf import export_gguf

    shutil.copytree(src, out)
    export_gguf(checkpoint, out, gguf_type)
    return out


@pytest.fixture(scope="module")
def random_gguf(tmp_path_factory, random_bundle, random_checkpoint):
    return _with_gguf(random_bundle, random_checkpoint, tmp_path_factory.mktemp("llama") / "random")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_bundle, tiny_checkpoint):
    return _with_gguf(tiny_bundle, tiny_checkpoint, tmp_path_factory.mktemp("llama") / "tiny")


@pytest.fixture(scope="module")
def models(random_gguf):
    from runtime.bundle import open_bundle
    from runtime.model import BundleModel

    bundle = open_bundle(random_gguf)
    ort, llama = BundleModel.open(bundle, "ort"), BundleModel.open(bundle, "llamacpp")
    yield ort, llama
    ort.close()
    llama.close()


def _prompt(model, text="what is 3 plus 4?"):
    from runtime.chat import format_chat

    return model.bundle.tokenizer.encode(format_chat([{"role": "user", "content": text}], model.n_image_tokens),
                                         add_special_tokens=False).ids


def test_hidden_states_and_text_logits_match_ort(models):
    ort, llama = models
    ids = _prompt(ort)
    a, b = ort.start(ids), llama.start(ids)
    for token in (7, 9, 11):
        np.testing.assert_allclose(b.text_logits(), a.text_logits(), atol=ATOL)
        a.append([token]), b.append([token])
    np.testing.assert_allclose(b.context()[0], a.context()[0], atol=ATOL)
    assert llama.decoder.ort_text_head_calls == 0  # the text head came from llama.cpp's decode


def test_an_adapter_reading_an_earlier_layer_gets_it_from_llama_cpp(reads_checkpoint, tmp_path):
    """`adapter_reads`: llama.cpp's eval callback gives decoder layer k beside the last; the
    export's verification compares both halves with PyTorch, and the stream's states [last |
    layer k] (prompt and input image) and the adapter's image logits match the ORT backend's."""
    from armor_export.export import export_bundle
    from runtime.bundle import open_bundle
    from runtime.model import BundleModel

    export_bundle(reads_checkpoint, tmp_path / "b", progress=False)
    bundle = open_bundle(_with_gguf(tmp_path / "b", reads_checkpoint, tmp_path / "g"))
    report = bundle.manifest["gguf"]["verification"]
    assert report["passed"] and report["max_abs_diff_hidden"] < 1e-3
    ort, llama = BundleModel.open(bundle, "ort"), BundleModel.open(bundle, "llamacpp")
    try:
        h, img_bos = bundle.model["hidden_size"], bundle.model["special_token_ids"]["img_bos"]
        ids = _prompt(ort, "describe the image.")
        ids = ids[:3] + [ort.image_token_id] * ort.n_image_tokens + ids[3:]
        emb = np.random.default_rng(0).normal(size=(ort.n_image_tokens, h)).astype(np.float32) * 0.05
        a, b = ort.start(ids, emb[None]), llama.start(ids, emb[None])
        for token in (7, img_bos):
            a.append([token]), b.append([token])
        (ca, mask), (cb, _) = a.context(), b.context()
        assert ca.shape[-1] == 2 * h
        np.testing.assert_allclose(cb, ca, atol=ATOL)
        assert np.abs(cb[..., h:] - cb[..., :h]).max() > 1e-2  # the second half is another layer
        np.testing.assert_allclose(llama.image_cursor(cb, mask).prefill(), ort.image_cursor(ca, mask).prefill(),
                                   atol=ATOL)
    finally:
        ort.close()
        llama.close()


def test_input_image_embeddings_go_through_the_batch(models):
    ort, llama = models
    ids = _prompt(ort)
    ids = ids[:3] + [ort.image_token_id] * ort.n_image_tokens + ids[3:]
    emb = np.random.default_rng(0).normal(size=(ort.n_image_tokens, ort.table.shape[1])).astype(np.float32) * 0.05
    a, b = ort.start(ids, emb[None]), llama.start(ids, emb[None])
    np.testing.assert_allclose(b.context()[0], a.context()[0], atol=ATOL)
    np.testing.assert_allclose(b.text_logits(), a.text_logits(), atol=ATOL)


def test_cfg_pair_row_and_truncate_on_llama_sequences(models):
    """A pair of unequal rows (one llama.cpp batch, two sequences, each at its true positions)
    against ORT's left-padded batch-2 cache; row() and truncate() keep them in step."""
    ort, llama = models
    long_ids, short_ids = _prompt(ort, "draw a large red circle at the top left."), _prompt(ort, "")
    pa = ort.start(long_ids).pair(ort.start(short_ids))
    pb = llama.start(long_ids).pair(llama.start(short_ids))
    assert pb.seqs and len(pb.seqs) == 2
    for token in (600, 601, 602):
        ha, hb = pa.append([token]), pb.append([token])
        np.testing.assert_allclose(hb, ha, atol=ATOL)
    np.testing.assert_allclose(pb.context()[0], pa.context()[0], atol=ATOL)
    pa.truncate(pa.length - 2), pb.truncate(pb.length - 2)
    np.testing.assert_allclose(pb.append([605]), pa.append([605]), atol=ATOL)
    ra, rb = pa.row(0), pb.row(0)
    assert len(llama.decoder.free) == llama.decoder.n_seq - 1  # the unconditional sequence went back
    ra.truncate(ra.length - 1), rb.truncate(rb.length - 1)
    np.testing.assert_allclose(rb.text_logits(), ra.text_logits(), atol=ATOL)  # ORT text head after a truncate
    assert llama.decoder.ort_text_head_calls == 1
    np.testing.assert_allclose(rb.append([606, 607]), ra.append([606, 607]), atol=ATOL)
    np.testing.assert_allclose(rb.text_logits(), ra.text_logits(), atol=ATOL)


def test_dropped_streams_give_their_sequences_back(models):
    import gc

    _, llama = models
    for _ in range(3 * llama.decoder.n_seq):
        s = llama.start(_prompt(llama))
        del s
    gc.collect()
    llama.decoder.flush()
    assert len(llama.decoder.free) == llama.decoder.n_seq


# --- parity with the PyTorch reference on the shipped tiny ------------------------------------------
# the same answer extraction as the ORT parity tests: (text segments, image codes) of each side
from tests.runtime.test_parity import _reference, _runtime  # noqa: E402

def _cases():
    from training_ref import world

    scene = world.render(world.sample_scene(np.random.default_rng(5)))
    return {
        "text": [{"role": "user", "content": "what is 3 plus 4?"}],
        "vqa": [{"role": "user", "content": [{"type": "image", "image": scene},
                                             {"type": "text", "text": "describe the image."}]}],
        "image_cfg": [{"role": "user", "content": "draw a large red circle at the top left and a small blue square "
                                                  "in the center."}],
        "interleaved": [{"role": "user", "content": "draw a picture with 3 shapes and tell me what it shows."}],
    }


@pytest.fixture(scope="module")
def tiny_pair(tiny_gguf, tiny_checkpoint):
    from runtime import ArmorPipeline
    from training_ref.checkpoint import load_checkpoint

    model, tok = load_checkpoint(tiny_checkpoint)
    with ArmorPipeline.load(tiny_gguf, backend="llamacpp") as pipe:
        yield model, tok, pipe


@pytest.mark.slow
@pytest.mark.parametrize("case, cfg_scale", [("text", 3.0), ("vqa", 3.0), ("image_cfg", 3.0), ("image_cfg", 1.0),
                                             ("interleaved", 3.0), ("interleaved", 1.0)])
def test_greedy_tokens_match_the_pytorch_reference_on_tiny(tiny_pair, case, cfg_scale):
    model, tok, pipe = tiny_pair
    messages = _cases()[case]
    kw = dict(max_new_tokens=48, cfg_scale=cfg_scale)
    rt_text, rt_codes = _runtime(pipe, messages, **kw)
    ref_text, ref_codes = _reference(model, tok, messages, **kw)
    assert rt_text == ref_text
    assert rt_codes == ref_codes
    if case in ("image_cfg", "interleaved"):
        assert len(rt_codes) == 1, "the trained model answers these prompts with an image"


@pytest.mark.slow
def test_same_seed_same_tokens_as_the_reference_on_tiny(tiny_pair):
    model, tok, pipe = tiny_pair
    messages = _cases()["interleaved"]
    kw = dict(max_new_tokens=48, cfg_scale=3.0, temperature=0.8, top_k=40, top_p=0.95, seed=11)
    assert _runtime(pipe, messages, **kw) == _reference(model, tok, messages, **kw)


@pytest.mark.slow
def test_armor_run_llamacpp_answers_text_image_text(tiny_gguf, tmp_path, capsys):
    from runtime.cli import main

    code = main([str(tiny_gguf), "--backend", "llamacpp", "--out", str(tmp_path / "o"),
                 "--prompt", "draw a picture with 3 shapes and tell me what it shows."])
    out = capsys.readouterr().out
    assert code == 0, out
    head, _, tail = out.partition("[image 0:")
    assert head.strip() and (tmp_path / "o" / "image_0.png").is_file()
    assert tail.split("]", 1)[1].replace("timings:", "").strip(), out


# --- bad bundles ----------------------------------------------------------------------------------
def _open(path, **kw):
    from runtime import ArmorPipeline

    return ArmorPipeline.load(path, backend="llamacpp", **kw)


def test_bundle_without_text_gguf_is_refused(random_bundle):
    from runtime.errors import BundleError

    with pytest.raises(BundleError, match="--target gguf"):
        _open(random_bundle)


def test_truncated_or_altered_text_gguf_is_refused(random_gguf, tmp_path):
    from runtime.errors import BundleError

    bad = tmp_path / "b"
    shutil.copytree(random_gguf, bad)
    data = (bad / C.GGUF_FILE).read_bytes()
    (bad / C.GGUF_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        _open(bad)
    (bad / C.GGUF_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="sha256"):
        _open(bad)


def test_truncated_gguf_is_one_line_from_llama_cpp(random_gguf, tmp_path):
    from runtime.backends.llamacpp import LlamaText
    from runtime.errors import BundleError

    data = (random_gguf / C.GGUF_FILE).read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="cannot load"):
        LlamaText(tmp_path / "t.gguf", n_ctx=64)


def test_text_gguf_of_another_armor_gguf_version_is_refused(random_gguf, random_checkpoint, tmp_path, monkeypatch,
                                                           capsys):
    """A text.gguf written by an exporter of another ARMOR GGUF version: one line, exit 1."""
    import json

    from armor_export import gguf as g
    from runtime.bundle import sha256
    from runtime.cli import main
    from training_ref.checkpoint import load_checkpoint

    bad = tmp_path / "b"
    shutil.copytree(random_gguf, bad)
    manifest = json.loads((bad / C.MANIFEST_FILE).read_text())
    monkeypatch.setattr(C, "GGUF_FORMAT_VERSION", C.GGUF_FORMAT_VERSION + 1)  # the writer's version only
    model, tok = load_checkpoint(random_checkpoint)
    g.write_f32(model, tok, bad / C.GGUF_FILE, None, manifest["files"][C.EMBEDDINGS_FILE]["sha256"])
    monkeypatch.undo()
    manifest["files"][C.GGUF_FILE].update(bytes=(bad / C.GGUF_FILE).stat().st_size, sha256=sha256(bad / C.GGUF_FILE))
    (bad / C.MANIFEST_FILE).write_text(json.dumps(manifest))
    code = main([str(bad), "--backend", "llamacpp", "--prompt", "hi", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "version" in err, err


@pytest.mark.slow
def test_text_gguf_of_another_bundle_is_refused(random_gguf, tiny_gguf, tmp_path, capsys):
    import json

    from runtime.bundle import sha256
    from runtime.cli import main

    bad = tmp_path / "b"
    shutil.copytree(tiny_gguf, bad)
    shutil.copy(random_gguf / C.GGUF_FILE, bad / C.GGUF_FILE)  # listed with its true hash: only its origin is wrong
    manifest = json.loads((bad / C.MANIFEST_FILE).read_text())
    manifest["files"][C.GGUF_FILE].update(bytes=(bad / C.GGUF_FILE).stat().st_size, sha256=sha256(bad / C.GGUF_FILE))
    (bad / C.MANIFEST_FILE).write_text(json.dumps(manifest))
    code = main([str(bad), "--backend", "llamacpp", "--prompt", "hi", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "another bundle" in err, err


def test_a_layer_llama_cpp_cannot_give_is_one_clear_error(random_gguf):
    """The eval callback cannot raise into llama.cpp: a tensor it cannot read stops the decode,
    and the error comes out of `decode` as one DeviceError; a layer beyond the model's is refused."""
    from runtime.backends import DeviceError
    from runtime.backends.llamacpp import LlamaText
    from runtime.errors import BundleError

    path = random_gguf / C.GGUF_FILE
    with pytest.raises(BundleError, match=r"has \d+ layers; the adapter reads layer 99"):
        LlamaText(path, n_ctx=32, n_seq=1, also_layer=99)
    with LlamaText(path, n_ctx=32, n_seq=1, also_layer=1) as engine:
        hidden, _ = engine.decode([(0, 0, np.arange(5, 9), None)])
        assert hidden[0].shape == (4, 2 * engine.n_embd)
        engine.tap.n_embd += 1  # as if the tensor had another width
        with pytest.raises(DeviceError, match="reading decoder layer 1 out of llama.cpp failed: ValueError"):
            engine.decode([(0, 4, np.arange(5, 9), None)])
