"""ARMOR Edge reference: the PyTorch model, the shapes world, WoHG training, the oracle generator."""

import runtime as _runtime  # noqa: E402
from runtime._origin import check_ours as _check_ours  # noqa: E402

_check_ours(_runtime)
