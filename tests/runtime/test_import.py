"""The runtime imports neither torch nor transformers (it runs on a Jetson without them)."""

import subprocess
import sys


def test_runtime_is_torch_free():
    code = ("import sys, runtime, runtime.cli, runtime.bench, runtime.pipeline, runtime.generation, runtime.model, runtime.cache, runtime.soak; "
            "bad = [m for m in ('torch', 'transformers', 'onnx', 'training_ref', 'armor_export') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the runtime pulled in: {out.stdout.strip()}"


def test_runtime_imports_onnxruntime_lazily():
    code = "import sys, runtime; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
