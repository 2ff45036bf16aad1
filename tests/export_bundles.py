"""Export the bundles the test fixtures use into one folder (`python tests/export_bundles.py DIR`),
for running the runtime's tests where only the runtime is installed (ARMOR_TEST_BUNDLES=DIR).
Needs the `train` extra; the same settings as tests/conftest.py."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> int:
    import torch

    from armor_export.export import export_bundle
    from training_ref.checkpoint import save_checkpoint, tiny_config
    from training_ref.model import ArmorModel
    from training_ref.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(vocab_size=512, n_texts=3000, seed=0)
    torch.manual_seed(0)
    ckpt = save_checkpoint(ArmorModel(tiny_config(tokenizer)), tokenizer, out / "checkpoint-random")
    tiny = ROOT / "training_ref" / "checkpoints" / "tiny"
    for name, source, kw in (("random", ckpt, {}),
                             ("random-static", ckpt, {"with_text_model": False, "kv_cache": "static",
                                                      "max_context": 160}),
                             ("tiny", tiny, {}),
                             ("tiny-static", tiny, {"with_text_model": False, "kv_cache": "static"})):
        export_bundle(source, out / name, progress=False, overwrite=True, **kw)
    print(f"bundles in {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(Path(sys.argv[1])))
