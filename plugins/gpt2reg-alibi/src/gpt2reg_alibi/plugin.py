"""The hook implementations gpt2reg calls; components are named by import path so nothing heavy loads."""

from gpt2reg import hookimpl

_PKG = "gpt2reg_alibi"


@hookimpl
def register_positional_encodings(register):
    register("alibi", f"{_PKG}.alibi:ALiBi", description="ALiBi: per-head linear distance penalty on attention scores")


@hookimpl
def register_activations(register):
    register("star_relu", f"{_PKG}.star_relu:StarReLU", description="StarReLU: s * relu(x)^2 + b, learned s and b")


@hookimpl
def register_norms(register):
    register("dyt", f"{_PKG}.dyt:DyT", description="DyT: weight * tanh(alpha * x) + bias, no statistics")
