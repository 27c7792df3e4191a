"""The built-in components, registered through the same hooks a third-party plugin implements.

Targets are import paths, so listing components never imports torch or the implementations.
"""

from ..hookspecs import hookimpl

_POS = "gpt2reg.components.positional"
_ACT = "gpt2reg.components.activations"
_NORM = "gpt2reg.components.norms"


@hookimpl
def register_positional_encodings(register):
    register("learned", f"{_POS}:LearnedPositions", description="learned absolute position table (GPT-2)")
    register("sinusoidal", f"{_POS}:SinusoidalPositions", description="fixed sin/cos table added to embeddings")
    register("rope", f"{_POS}:RotaryPositions", description="rotary embeddings on queries and keys (real cos/sin)")
    register("none", f"{_POS}:NoPositions", description="no positional information (causal mask only)")


@hookimpl
def register_activations(register):
    register("gelu_tanh", f"{_ACT}:GeluTanh", description="tanh-approximate GELU, GPT-2's original")
    register("gelu", f"{_ACT}:Gelu", description="exact (erf) GELU, as in nanoGPT")
    register("relu", f"{_ACT}:Relu", description="ReLU")
    register("silu", f"{_ACT}:Silu", description="SiLU / swish")
    register("relu2", f"{_ACT}:ReluSquared", description="squared ReLU (Primer)")
    register("swiglu", f"{_ACT}:SwiGLU", description="gated SiLU unit; widens the up-projection 2x")
    register("geglu", f"{_ACT}:GeGLU", description="gated GELU unit; widens the up-projection 2x")


@hookimpl
def register_norms(register):
    register("layernorm", f"{_NORM}:LayerNorm", description="LayerNorm with bias (GPT-2)")
    register("rmsnorm", f"{_NORM}:RMSNorm", description="RMSNorm, scale only")
