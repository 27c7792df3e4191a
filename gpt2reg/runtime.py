"""Deprecated location: use ``gpt2reg.ort`` (``from gpt2reg.ort import OnnxGPT``)."""

import warnings

from .ort.runtime import InPlaceKV, OnnxGPT, load

warnings.warn("gpt2reg.runtime moved to gpt2reg.ort; import OnnxGPT from gpt2reg.ort", DeprecationWarning,
              stacklevel=2)

__all__ = ["InPlaceKV", "OnnxGPT", "load"]
