"""gpt2reg-alibi: ALiBi, StarReLU and DyT for gpt2reg, added through its public hooks only.

Kept empty on purpose: gpt2reg imports ``gpt2reg_alibi.plugin`` at start-up, and that must not pull in
torch. The components live in ``alibi``, ``star_relu`` and ``dyt`` and are imported when a model uses
them.
"""

__version__ = "0.1.0"
