"""``tune(model)``: the one call that makes a model decode as fast as this machine allows."""

from __future__ import annotations

from ..model import GPT
from .hugepages import use_huge_pages
from .kernels import use_fastest_kernels


def tune(model: GPT) -> GPT:
    """Tune ``model`` for inference on this machine, in place; returns it.

    What changes: the model goes into eval mode; its CPU parameters move into huge pages (same
    ``Parameter`` objects and values, new memory: ``gpt2reg.accel.hugepages``); each CPU fp32 linear
    layer and the tied head get the kernel measured fastest here for their shape (their classes become
    ``CalibratedLinear`` / ``CalibratedTiedHead``, weights not copied: ``gpt2reg.accel.kernels``). Logits
    stay those of PyTorch's own kernels within fp32 rounding; training, autograd and export still run
    PyTorch's kernels. Nothing in the library calls this for you: the CLI (``generate``, ``eval``,
    ``serve``) and the bench do.
    """
    model.eval()
    use_huge_pages(model)
    use_fastest_kernels(model)
    return model


__all__ = ["tune"]
