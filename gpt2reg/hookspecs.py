"""The plugin contract: one hook per component kind. These docstrings are the plugin documentation.

A plugin is a module (or object) with functions decorated by ``gpt2reg.hookimpl`` whose names match
the hooks below, published under the ``gpt2reg`` entry-point group::

    [project.entry-points.gpt2reg]
    alibi = "gpt2reg_alibi.plugin"

Every hook receives a ``register`` callback owned by gpt2reg::

    register(name, component, *, description="", override=False)

- ``name``: lower-case identifier, ``[a-z][a-z0-9_]*``; what users type after ``--pos``/``--act``/``--norm``.
- ``component``: the class (or factory) to build, or - preferred, so that start-up never imports
  torch - an import path ``"package.module:ClassName"`` resolved only when a model is built.
  It is called as ``component(config)`` with the model's ``GPTConfig`` and must return an
  ``nn.Module`` following the interface of its kind (see ``gpt2reg.components.base``).
- ``description``: one line shown by ``gpt2reg components``.
- ``override``: replace a component of the same name registered by another plugin. Without it a
  name taken twice is an error that names both plugins.

Built-in components are registered through these same hooks (``gpt2reg.components``).
"""

from __future__ import annotations

import pluggy

PROJECT = "gpt2reg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_positional_encodings(register):
    """Register positional encodings (``--pos NAME``).

    A positional encoding is an ``nn.Module`` subclassing
    ``gpt2reg.components.base.PositionalEncoding``. It may act at any of three places, each a method
    whose default does nothing:

    - ``embed(x, positions)``: on the token embeddings ``x`` (batch, seq, n_embd) before the first
      block - learned and sinusoidal tables;
    - ``rotate(q, k, positions)``: on queries and keys (batch, heads, seq, head_dim) inside every
      attention layer, before keys enter the KV cache - RoPE;
    - ``score_bias(q_positions, k_positions)``: an additive bias broadcastable to
      (batch, heads, q_len, k_len) on the attention scores - ALiBi.

    ``positions`` are absolute token positions (batch, seq), int64; with a KV cache they continue
    from the cached length, and with left padding they skip the pads. Use only exportable ops
    (real cos/sin, no complex numbers) so the model exports to ONNX.
    Optionally define ``check_config(config)`` as a classmethod raising ``ValueError`` for settings the
    encoding cannot support (RoPE rejects an odd head size).
    """


@hookspec
def register_activations(register):
    """Register MLP activations (``--act NAME``).

    An activation is an ``nn.Module`` subclassing ``gpt2reg.components.base.Activation``; its
    ``forward`` maps the up-projection's output to the down-projection's input. Set the class
    attribute ``gated = True`` for a gated unit (SwiGLU, GeGLU): the up-projection is then widened to
    twice the hidden size and ``forward`` receives both halves concatenated on the last dimension.
    """


@hookspec
def register_norms(register):
    """Register normalization layers (``--norm NAME``).

    A norm is an ``nn.Module`` built as ``component(config)`` that normalizes the last dimension
    (``config.n_embd``), honouring ``config.norm_eps`` and, where it has a bias, ``config.bias``.
    It is used before attention, before the MLP and after the last block.
    """
