"""text.gguf (armor-export --target gguf): what the file holds, that llama.cpp reads it the way
PyTorch computes it, the quantized types' accuracy, and bad input (one line, non-zero exit,
nothing left that looks valid). Tests that load the file in llama.cpp skip where
llama-cpp-python (the `gguf` extra) is not installed."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from runtime import constants as C

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (pip install 'armor-edge[gguf]')")
pytest.importorskip("gguf", reason="gguf-py is not installed (pip install 'armor-edge[gguf]')")

from armor_export.gguf import GGUFExportError  # noqa: E402  (after the skip: it imports gguf)


def test_file_holds_the_unified_vocabulary_text_head_and_armor_keys(tiny_model, tokenizer, tmp_path):
    import gguf

    from armor_export.gguf import write_f32

    cfg = tiny_model.config
    path = write_f32(tiny_model, tokenizer, tmp_path / "text.gguf", "TEMPLATE", "f" * 64)
    r = gguf.GGUFReader(str(path))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "qwen2"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size
    assert tokens[cfg.img_bos_id] == C.IMG_BOS and tokens[cfg.code_offset + 7] == C.GGUF_CODE_TOKEN.format(7)
    assert tokens[:6] == list(C.SPECIAL_TEXT_TOKENS)
    assert field("tokenizer.chat_template") == "TEMPLATE" and field("tokenizer.ggml.eos_token_id") == cfg.eos_token_id
    assert field(C.GGUF_KEY_IMG_BOS) == cfg.img_bos_id and field(C.GGUF_KEY_IMAGE_GRID) == list(cfg.image_grid)
    assert field(C.GGUF_KEY_ADAPTER_CONTEXT_START) == cfg.n_grid + 1
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 + 1 + 12 * cfg.text_config.num_hidden_layers  # embd, output, norm; q/k/v with bias
    table = np.asarray(tensors["token_embd.weight"].data)
    np.testing.assert_array_equal(table, tiny_model.embedding.table().detach().numpy())
    head = np.asarray(tensors["output.weight"].data)
    np.testing.assert_array_equal(head[: cfg.n_text_vocab], tiny_model.mllm.lm_head.weight.detach().numpy())
    np.testing.assert_array_equal(head[cfg.img_bos_id], tiny_model.imgbos_head.weight.detach().numpy()[0])
    assert not head[cfg.code_offset:cfg.img_bos_id].any() and not head[cfg.img_end_id:].any()


def test_llama_qk_permutation_maps_rotate_half_to_interleaved_pairs():
    """HF's rope (rotate-half within a head) on q equals llama.cpp's (adjacent pairs) on the
    permuted rows, un-permuted: what the `llama` architecture needs."""
    from armor_export.gguf import _permute_qk

    rng = np.random.default_rng(0)
    heads, d, pos = 3, 8, 5
    w = rng.normal(size=(heads * d, 4))
    x = rng.normal(size=4)
    inv = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    ang = pos * inv  # [d/2]
    q = (w @ x).reshape(heads, d)
    half = np.concatenate([-q[:, d // 2:], q[:, : d // 2]], 1)
    hf = q * np.tile(np.cos(ang), 2) + half * np.tile(np.sin(ang), 2)
    p = (_permute_qk(w, heads) @ x).reshape(heads, d, )
    a, b = p[:, 0::2], p[:, 1::2]
    inter = np.empty_like(p)
    inter[:, 0::2] = a * np.cos(ang) - b * np.sin(ang)
    inter[:, 1::2] = a * np.sin(ang) + b * np.cos(ang)
    # un-permute: interleaved pair i of a head is HF's (i, i + d/2)
    np.testing.assert_allclose(np.concatenate([inter[:, 0::2], inter[:, 1::2]], 1), hf, atol=1e-12)


@pytest.fixture(scope="module")
def random_gguf_bundle(tmp_path_factory, random_bundle, random_checkpoint):
    """The random bundle with an f32 text.gguf added."""
    from armor_export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "random"
    shutil.copytree(random_bundle, out)
    manifest = export_gguf(random_checkpoint, out, "f32", verify_file=importlib.util.find_spec("llama_cpp") is not None)
    return out, manifest


def test_export_adds_text_gguf_to_the_manifest(random_gguf_bundle):
    from runtime.bundle import open_bundle, sha256

    out, manifest = random_gguf_bundle
    entry = manifest["files"][C.GGUF_FILE]
    assert entry["dtype"] == "f32" and entry["sha256"] == sha256(out / C.GGUF_FILE)
    assert manifest["gguf"]["architecture"] == "qwen2" and manifest["gguf"]["text_head"] == "llama.cpp"
    assert not list(out.glob("*.tmp"))
    assert open_bundle(out).manifest["files"][C.GGUF_FILE] == entry  # the bundle still opens, hashes checked


@needs_llama
def test_llama_cpp_f32_matches_pytorch(random_gguf_bundle):
    report = random_gguf_bundle[1]["gguf"]["verification"]
    assert report["passed"] and report["top1_agreement"] == 1.0
    assert report["max_abs_diff_logits"] < 1e-3 and report["max_abs_diff_hidden"] < 1e-3


# q4_k_m of the shipped v2 tiny loses 2 of 40 images (ShapeEval 82.5 -> 77.5, gate 3 points) and
# is refused (docs/benchmarks.md); strict, so that a q4_k_m that passes turns this into a failure
Q4_REFUSED = pytest.mark.xfail(strict=True, raises=GGUFExportError,
                               reason="q4_k_m of the v2 tiny drops ShapeEval 5 points on 40 prompts (gate 3)")


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", pytest.param("q4_k_m", marks=Q4_REFUSED)])
def test_quantized_types_by_llama_cpp_with_their_report(tmp_path, tiny_bundle, tiny_checkpoint, gguf_type):
    import gguf

    from armor_export.gguf import FTYPES, export_gguf

    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    manifest = export_gguf(tiny_checkpoint, out, gguf_type)  # no force: a failed gate would raise here
    report = manifest["gguf"]["verification"]
    print(gguf_type, json.dumps(report))
    assert report["against"] == "f32 text.gguf" and report["passed"], report
    e2e = report["end_to_end"]  # ShapeEval and VQA of the answers on llama.cpp, this type vs f32
    assert e2e["passed"] and e2e["quantized"]["n_t2i"] == 40 and e2e["f32"]["shapeeval_all_correct"] > 0.5, e2e
    r = gguf.GGUFReader(str(out / C.GGUF_FILE))
    assert r.fields["general.file_type"].contents() == FTYPES[gguf_type]
    types = {t.tensor_type.name for t in r.tensors}
    # llama.cpp's K-quants need rows of 256: narrower ones fall back (Q4_K -> Q5_0, Q6_K -> Q8_0)
    k_rows = manifest["model"]["hidden_size"] % 256 == 0
    expected = {"f16": {"F16"}, "q8_0": {"Q8_0"},
                "q4_k_m": {"Q4_K", "Q6_K"} if k_rows else {"Q5_0", "Q8_0"}}[gguf_type]
    assert expected <= types, types


@needs_llama
def test_a_quantized_type_beyond_its_gates_is_refused_without_force(random_bundle, random_checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    """q8_0 against gates no file can meet: one line, exit 1, the bundle as it was; --force keeps it."""
    from armor_export import gguf as g

    out = tmp_path / "b"
    shutil.copytree(random_bundle, out)
    before = (out / C.MANIFEST_FILE).read_bytes()
    monkeypatch.setitem(g.GATES, "q8_0", (1.01, -1.0))  # top-1 above 1 and a negative KL: unreachable
    monkeypatch.setattr(g, "E2E_PROMPTS", {"vqa": 4, "t2i": 2})  # the forced run's end-to-end scores, kept short
    argv = [str(random_checkpoint), "--target", "gguf", "--gguf-type", "q8_0", "--out", str(out)]
    code, err = _cli(argv, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "failed its verification" in err and "--force" in err, err
    assert (out / C.MANIFEST_FILE).read_bytes() == before and not (out / C.GGUF_FILE).exists()
    assert not list(out.glob("*.tmp"))
    code, err = _cli(argv + ["--force"], capsys)
    report = json.loads((out / C.MANIFEST_FILE).read_text())["gguf"]["verification"]
    assert code == 0 and (out / C.GGUF_FILE).is_file() and report["passed"] is False
    assert report["end_to_end"]["quantized"]["n_t2i"] == 2 and not list(out.glob("*.tmp"))


def _cli(argv, capsys):
    from armor_export.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # a usage error: argparse's one line and exit 2
        code = e.code
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_refuses_an_unsupported_type_in_one_line(random_checkpoint, tmp_path, capsys):
    code, err = _cli([str(random_checkpoint), "--target", "gguf", "--gguf-type", "q3_k", "--out", str(tmp_path / "b")],
                     capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "q3_k" in err
    assert not (tmp_path / "b").exists()


def test_cli_refuses_a_second_gguf_and_a_foreign_bundle(random_gguf_bundle, tiny_checkpoint, random_checkpoint,
                                                        tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(random_gguf_bundle[0], out)
    before = (out / C.MANIFEST_FILE).read_bytes()
    code, err = _cli([str(random_checkpoint), "--target", "gguf", "--out", str(out), "--no-verify"], capsys)
    assert code == 1 and "--overwrite" in err and len(err.splitlines()) == 1
    code, err = _cli([str(tiny_checkpoint), "--target", "gguf", "--out", str(out), "--overwrite", "--no-verify"],
                     capsys)
    assert code == 1 and "another" in err and len(err.splitlines()) == 1
    assert (out / C.MANIFEST_FILE).read_bytes() == before and not list(out.glob("*.tmp"))


def test_a_failed_write_leaves_the_bundle_as_it_was(random_gguf_bundle, random_checkpoint, tmp_path, monkeypatch):
    """A crash while the new file is written: no temporary file, the old manifest and text.gguf."""
    from armor_export import gguf as g

    out = tmp_path / "b"
    shutil.copytree(random_gguf_bundle[0], out)
    before = (out / C.MANIFEST_FILE).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(g.gguf_writer_class(), "write_tensors_to_file", boom)
    with pytest.raises(OSError):
        g.export_gguf(random_checkpoint, out, "f32", overwrite=True, verify_file=False)
    assert (out / C.MANIFEST_FILE).read_bytes() == before and not list(out.glob("*.tmp"))
    from runtime.bundle import open_bundle

    open_bundle(out)  # still a valid bundle, its text.gguf untouched


def _bpe(n_tokens: int):
    """A byte-level BPE tokenizer of exactly `n_tokens` ids (the last one a special token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(n_tokens - 1)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|eos|>"])
    return tok


def test_a_padded_embedding_gets_unused_pad_tokens_before_the_codes():
    gguf = pytest.importorskip("gguf")
    from types import SimpleNamespace

    from armor_export.gguf import GGUFExportError, vocabulary

    cfg = SimpleNamespace(n_text_vocab=12, n_codes=4, n_new=4 + len(C.NEW_SPECIAL_TOKENS))  # n_new: codes + specials
    tokens, types, _, pre = vocabulary(_bpe(9), cfg)  # 9 tokens, 12 embedding rows (Qwen2.5-style padding)
    assert len(tokens) == len(types) == 12 + cfg.n_new and pre == "gpt-2"
    assert tokens[8] == "<|eos|>" and types[8] == gguf.TokenType.CONTROL and types[0] == gguf.TokenType.NORMAL
    assert tokens[9:12] == ["[PAD9]", "[PAD10]", "[PAD11]"] and set(types[9:12]) == {gguf.TokenType.UNUSED}
    assert tokens[12] == C.GGUF_CODE_TOKEN.format(0) and tokens[-len(C.NEW_SPECIAL_TOKENS):] == list(C.NEW_SPECIAL_TOKENS)
    with pytest.raises(GGUFExportError, match="gaps or extras"):
        vocabulary(_bpe(13), cfg)  # more tokens than embedding rows
