"""A foreign `runtime` (the PyPI distribution of that name) is refused in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, path: Path, argv0: str | None = None):
    env = {"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    if argv0:
        code = f"import sys; sys.argv[0] = {argv0!r}\n" + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_a_distribution_named_runtime_is_refused(tmp_path):
    info = tmp_path / "runtime-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: runtime\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("runtime\n")
    out = _python("import runtime", tmp_path)
    assert out.returncode != 0 and "ImportError: the distribution runtime 1.0 is installed here" in out.stderr
    out = _python("import runtime", tmp_path, argv0="/x/bin/armor-run")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "own virtual environment" in out.stderr


def test_a_shadowing_runtime_is_refused_by_the_other_packages():
    import types

    import pytest

    from runtime._origin import check_ours

    with pytest.raises(ImportError, match="is not ARMOR Edge's runtime"):
        check_ours(types.ModuleType("runtime"))


def test_ours_imports(tmp_path):
    pytest.importorskip("torch", reason="armor_export, calibration and training_ref need the `train` extra")
    assert _python("import runtime, armor_export, calibration, training_ref", tmp_path).returncode == 0
