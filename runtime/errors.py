"""Exception types of the public API: each names what is wrong and what to do.

The CLIs turn these into one line and a non-zero exit; nothing here knows about engines.
"""


class ArmorError(Exception):
    """Base class: a problem the user can fix, stated in one sentence."""


class SamplingError(ArmorError, ValueError):
    """Invalid sampling settings (temperature, top-k, top-p, CFG scale, token budget)."""


class InputError(ArmorError, ValueError):
    """Bad user input: an image of the wrong mode or size, an over-long prompt, a bad message."""


class CheckpointError(ArmorError):
    """A checkpoint directory that is missing, incomplete, corrupt or of another version."""


class BundleError(ArmorError):
    """A bundle that is missing, incomplete, corrupt or of another schema version."""
