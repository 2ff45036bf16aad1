"""Shared fixtures: a tokenizer trained on a small corpus, a tiny random ARMOR model, and
bundles exported from it and from the shipped `tiny`.

With ARMOR_TEST_BUNDLES=DIR the bundle fixtures take DIR/<name> (written by
`python tests/export_bundles.py DIR` in the main environment), so the runtime's tests also run
in an environment with only the runtime installed (no torch: the Python 3.10 check)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def _prebuilt(name: str) -> Path | None:
    folder = os.environ.get("ARMOR_TEST_BUNDLES")
    if not folder:
        return None
    path = Path(folder) / name
    assert (path / "manifest.json").is_file(), f"ARMOR_TEST_BUNDLES has no {name} bundle: {path}"
    return path


def _needs_torch():
    pytest.importorskip("torch", reason="needs the `train` extra (torch): this environment has the runtime only")


@pytest.fixture(scope="session")
def tokenizer():
    _needs_torch()
    from training_ref.tokenizer import train_tokenizer

    return train_tokenizer(vocab_size=512, n_texts=3000, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    import torch

    from training_ref.checkpoint import tiny_config
    from training_ref.model import ArmorModel

    torch.manual_seed(0)
    return ArmorModel(tiny_config(tokenizer)).eval()


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, tokenizer):
    """A tiny random checkpoint folder (untrained: for plumbing, not for quality)."""
    import torch

    from training_ref.checkpoint import save_checkpoint, tiny_config
    from training_ref.model import ArmorModel

    torch.manual_seed(0)
    return save_checkpoint(ArmorModel(tiny_config(tokenizer)), tokenizer, tmp_path_factory.mktemp("ckpt") / "random")


@pytest.fixture(scope="session")
def reads_checkpoint(tmp_path_factory, tokenizer):
    """A tiny random checkpoint whose adapter also reads decoder layer 2 (`adapter_reads`), with
    mixing weights as if `how` had trained them (so the earlier layer counts)."""
    from dataclasses import replace

    import torch

    from training_ref.checkpoint import save_checkpoint, tiny_config
    from training_ref.model import ArmorModel

    torch.manual_seed(0)
    model = ArmorModel(replace(tiny_config(tokenizer), adapter_reads=2)).eval()
    h = model.config.hidden_size
    with torch.no_grad():
        model.adapter.mix[:, h:] = 0.2 * torch.randn(h, h)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "reads")


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory, request):
    if _prebuilt("random"):
        return _prebuilt("random")
    from armor_export.export import export_bundle

    random_checkpoint = request.getfixturevalue("random_checkpoint")
    out = tmp_path_factory.mktemp("bundle") / "random"
    export_bundle(random_checkpoint, out, progress=False)
    return out


@pytest.fixture(scope="session")
def random_static_bundle(tmp_path_factory, request):
    """The same random checkpoint with the static-cache decoder (capacity 160)."""
    if _prebuilt("random-static"):
        return _prebuilt("random-static")
    from armor_export.export import export_bundle

    random_checkpoint = request.getfixturevalue("random_checkpoint")
    out = tmp_path_factory.mktemp("bundle") / "random-static"
    export_bundle(random_checkpoint, out, progress=False, with_text_model=False, kv_cache="static", max_context=160)
    return out


SHIPPED_TINY = Path(__file__).resolve().parents[1] / "training_ref" / "checkpoints" / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The shipped, trained `tiny` checkpoint."""
    assert (SHIPPED_TINY / "config.json").is_file(), f"the shipped checkpoint is missing at {SHIPPED_TINY}"
    return SHIPPED_TINY


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint):
    if _prebuilt("tiny"):
        return _prebuilt("tiny")
    from armor_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(tiny_checkpoint, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_static_bundle(tmp_path_factory, tiny_checkpoint):
    """The shipped checkpoint with the static-cache decoder (capacity: the model's context)."""
    if _prebuilt("tiny-static"):
        return _prebuilt("tiny-static")
    from armor_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny-static"
    export_bundle(tiny_checkpoint, out, progress=False, with_text_model=False, kv_cache="static")
    return out
