"""ARMOR Edge calibration: fp32 bundle -> INT8 (Q/DQ) or weight-only INT8/INT4 bundle.

    armor-calibrate bundles/tiny --out bundles/tiny-int8 --scheme int8

    from calibration import Settings, calibrate_bundle
    manifest = calibrate_bundle("bundles/tiny", "bundles/tiny-int4", Settings(scheme="int4-weight"))

Modules: readers (calibration inputs of each graph, recorded from the runtime), quantize
(one graph: Q/DQ or MatMulNBits), accuracy (the report against fp32 and the gates),
calibrate (the bundle in, the bundle out, manifest last), cli. Runs on the workstation: it
may use torch (the checkpoint's VQGAN encoder); the bundles it writes need only the runtime.
"""

__version__ = "0.1.0"

import runtime as _runtime  # noqa: E402
from runtime._origin import check_ours as _check_ours  # noqa: E402

_check_ours(_runtime)

from calibration.calibrate import PLANS, SCHEMES, Settings, calibrate_bundle  # noqa: E402
from calibration.errors import CalibrationError, GateError  # noqa: E402

__all__ = ["calibrate_bundle", "Settings", "SCHEMES", "PLANS", "CalibrationError", "GateError"]
