"""Exception types of calibration: each is one sentence naming what is wrong and what to do."""

from runtime.errors import ArmorError


class CalibrationError(ArmorError):
    """Calibration cannot proceed (bad source bundle, options, missing checkpoint, existing output)."""


class GateError(CalibrationError):
    """The quantized bundle loses more accuracy than the gates allow; no manifest was written.

    `report` is the accuracy report that failed (printed by the CLI)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}
