"""ARMOR Edge runtime: loads a bundle and drives the autoregressive text/image loop.

Torch-free on purpose: on a Jetson the runtime is numpy, an inference engine, `tokenizers`
and Pillow. This package must never import torch or transformers; engines load lazily.
"""

from runtime._origin import check_distribution

check_distribution()
__armor_edge__ = True  # what ARMOR Edge's other packages look for (runtime._origin)

from runtime.errors import ArmorError, BundleError, InputError, SamplingError  # noqa: E402
from runtime.generation import Done, ImageDone, ImageProgress, ImageStarted, TextDelta  # noqa: E402
from runtime.pipeline import ArmorPipeline  # noqa: E402

__all__ = ["ArmorPipeline", "ArmorError", "BundleError", "InputError", "SamplingError",
           "TextDelta", "ImageStarted", "ImageProgress", "ImageDone", "Done"]
