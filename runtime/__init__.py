"""ARMOR Edge runtime: loads a bundle and drives the autoregressive text/image loop.

Torch-free on purpose: on a Jetson the runtime is numpy, an inference engine, `tokenizers`
and Pillow. This package must never import torch or transformers; engines load lazily.
"""

from runtime.errors import ArmorError, BundleError, InputError, SamplingError
from runtime.generation import Done, ImageDone, ImageProgress, ImageStarted, TextDelta
from runtime.pipeline import ArmorPipeline

__all__ = ["ArmorPipeline", "ArmorError", "BundleError", "InputError", "SamplingError",
           "TextDelta", "ImageStarted", "ImageProgress", "ImageDone", "Done"]
