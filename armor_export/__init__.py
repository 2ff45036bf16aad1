"""armor-export: split an ARMOR checkpoint into the bundle's ONNX graphs, verified against PyTorch."""

__version__ = "0.1.0"

import runtime as _runtime  # noqa: E402
from runtime._origin import check_ours as _check_ours  # noqa: E402

_check_ours(_runtime)
