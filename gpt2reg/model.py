"""GPT-2 assembled from registry components: embeddings, pre-norm blocks, final norm, tied head.

Read top to bottom: the attention, the MLP, the block, then the model. Nothing here names a built-in
component; positional encoding, activation and norm come from the registry by the names in the config.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import GPTConfig
from .errors import InputError
from .memory import check_fits, model_bytes
from .plugins import get_registry


class GrowingKV:
    """One layer's cached keys and values with room to grow: ``extend`` writes the new tokens in place
    and returns views of the whole cache, where ``torch.cat`` copies the whole cache at every step.

    ``past[0]``/``past[1]`` are the keys/values so far, (batch, heads, len, head_dim), as in a tuple. A
    cache is extended in place: a decoder that wants an earlier state back keeps tuples instead.
    ``limit`` (the model's context) caps the room, so doubling never reserves more than a full context.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, limit: int | None = None) -> None:
        self._keys, self._values, self.length, self.limit = keys, values, keys.shape[2], limit

    @classmethod
    def wrap(cls, past: KVCache, limit: int | None = None) -> list[GrowingKV]:
        """``past`` with every layer a ``GrowingKV`` (those already one kept), so later steps extend in place."""
        return [p if isinstance(p, GrowingKV) else cls(*p, limit) for p in past]

    def __getitem__(self, index: int) -> torch.Tensor:
        return (self._keys, self._values)[index][:, :, : self.length]

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[2]
        if end > self._keys.shape[2]:  # double the room: copies stay proportional to the final length
            room = 2 * self._keys.shape[2] if self.limit is None else min(2 * self._keys.shape[2], self.limit)
            self._keys, self._values = (self._grown(buffer, max(end, room)) for buffer in (self._keys, self._values))
        self._keys[:, :, self.length : end] = keys
        self._values[:, :, self.length : end] = values
        self.length = end
        return self[0], self[1]

    def _grown(self, buffer: torch.Tensor, capacity: int) -> torch.Tensor:
        B, H, _, D = buffer.shape
        grown = buffer.new_empty(B, H, capacity, D)
        grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown


# per layer (key, value), each (batch, heads, len, head_dim): tuples, or GrowingKV to extend in place
KVCache = list[tuple[torch.Tensor, torch.Tensor] | GrowingKV]


@dataclass
class AttentionInputs:
    """What every attention layer of one forward pass shares, computed once by the model."""

    positions: torch.Tensor  # (batch, seq) absolute positions of the new tokens
    mask: torch.Tensor | None  # bool "may attend" or float additive, (batch|1, heads|1, seq, past+seq)
    is_causal: bool  # no mask needed: plain causal attention over the new tokens only
    rotate: object  # the positional encoding's rotate(q, k, positions)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        inputs: AttentionInputs,
        past: tuple[torch.Tensor, torch.Tensor] | GrowingKV | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | GrowingKV]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = inputs.rotate(q, k, inputs.positions)
        if isinstance(past, GrowingKV):
            k, v = past.extend(k, v)
            present = past
        else:
            if past is not None:
                k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            present = (k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=inputs.mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=inputs.is_causal,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), present


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.act = get_registry().create("act", config.act, config)
        widen = 2 if getattr(self.act, "gated", False) else 1
        self.c_fc = nn.Linear(config.n_embd, widen * config.hidden_size, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        registry = get_registry()
        self.ln_1 = registry.create("norm", config.norm, config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = registry.create("norm", config.norm, config)
        self.mlp = MLP(config)

    def forward(self, x, inputs: AttentionInputs, past=None):
        a, present = self.attn(self.ln_1(x), inputs, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class TiedHead(nn.Module):
    """The output projection tied to the token embedding: logits = x @ embedding.T, no weight of its own.

    A module rather than a bare ``F.linear`` call so that it is found, and can be given another kernel,
    the way an untied ``nn.Linear`` head is (see ``gpt2reg.accel``).
    """

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)


class GPT(nn.Module):
    """GPT-2 built from ``config``; ``model(input_ids)`` returns logits (batch, seq, vocab).

    The architecture only: nothing here depends on the machine. ``gpt2reg.accel.tune(model)`` makes a
    model decode faster on this machine, when the caller asks for it.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        if torch.empty(0).device.type == "cpu":  # where weights are really allocated (not meta, not a GPU)
            check_fits(model_bytes(config), f"a model of {config.n_layer} layers of width {config.n_embd} "
                       f"with {config.vocab_size:,} tokens", "choose a smaller --n-layer, --n-embd or --vocab-size")
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = get_registry().create("pos", config.pos, config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = get_registry().create("norm", config.norm, config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tied_head = TiedHead() if config.tie_embeddings else None
        if self.wte.weight.device.type != "meta":  # on meta the loader assigns weights; init is wasted time
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    def prepare_for_inference(self) -> GPT:
        """Deprecated: ``gpt2reg.accel.tune(model)`` (eval mode, huge pages, the fastest linear kernels)."""
        warnings.warn("GPT.prepare_for_inference() is deprecated; call gpt2reg.accel.tune(model) to tune a model "
                      "for this machine", DeprecationWarning, stacklevel=2)
        from .accel import tune  # the deprecated path only: the model itself depends on no machine tuning

        return tune(self)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied output projection counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- the forward pass ---------------------------------------------------------------------
    def _attention_inputs(
        self,
        input_ids: torch.Tensor,
        past_len: int,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> AttentionInputs:
        B, T = input_ids.shape
        device = input_ids.device
        total = past_len + T
        if attention_mask is not None:
            # Left padding: positions count real tokens only; pads sit at position 0.
            all_positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            all_positions = torch.arange(total, device=device).unsqueeze(0).expand(B, total)
        positions = position_ids if position_ids is not None else all_positions[:, past_len:]
        k_positions = torch.cat((all_positions[:, :past_len], positions), dim=1)
        bias = self.pos.score_bias(positions, k_positions)
        if attention_mask is None and bias is None and (past_len == 0 or T == 1):
            # causal over the new tokens only; or one new token, which may attend to every key: no mask
            return AttentionInputs(positions, None, past_len == 0, self.pos.rotate)
        q_index = torch.arange(T, device=device).unsqueeze(1) + past_len
        k_index = torch.arange(total, device=device).unsqueeze(0)
        allowed = (k_index <= q_index).view(1, 1, T, total)
        if attention_mask is not None:
            # A pad row would attend to nothing (NaN); letting it see itself keeps the math finite.
            allowed = (allowed & attention_mask.bool().view(B, 1, 1, total)) | (k_index == q_index)
        if bias is None:
            return AttentionInputs(positions, allowed, False, self.pos.rotate)
        dtype = self.wte.weight.dtype
        mask = bias.to(dtype).masked_fill(~allowed, float("-inf"))
        return AttentionInputs(positions, mask, False, self.pos.rotate)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Final-norm hidden states (batch, seq, n_embd) and the updated KV cache.

        ``attention_mask`` (batch, past+seq) marks real tokens with 1 and left pads with 0;
        ``position_ids`` (batch, seq) default to the count of real tokens before each one.
        """
        B, T = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if not torch.compiler.is_compiling() and past_len + T > self.config.block_size:
            raise InputError(
                f"sequence of {past_len + T} tokens exceeds the context of {self.config.block_size} (block_size)"
            )
        inputs = self._attention_inputs(input_ids, past_len, position_ids, attention_mask)
        x = self.drop(self.pos.embed(self.wte(input_ids), inputs.positions))
        presents: KVCache = []
        for i, block in enumerate(self.h):
            x, present = block(x, inputs, past_key_values[i] if past_key_values else None)
            presents.append(present)
        return self.ln_f(x), presents

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits; the output projection is the token embedding when tied."""
        if self.lm_head is None:
            return self.tied_head(x, self.wte.weight)
        return self.lm_head(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab) for ``input_ids`` (batch, seq)."""
        x, _ = self.hidden_states(input_ids, None, position_ids, attention_mask)
        return self.head(x)

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits and the KV cache extended by ``input_ids``; ``last_only`` keeps the last position."""
        x, presents = self.hidden_states(input_ids, past_key_values, position_ids, attention_mask)
        if last_only:
            x = x[:, -1:]
        return self.head(x), presents

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy of ``targets`` (same shape as ``input_ids``)."""
        logits = self(input_ids)
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=ignore_index
        )


def build_model(config: GPTConfig | None = None, /, *, seed: int | None = None, **overrides) -> GPT:
    """A freshly initialised model from ``config`` (or GPT-2 small) with any fields overridden.

    ``preset="gpt2-medium"`` picks a preset as the base; ``seed`` makes the init reproducible.
    """
    preset = overrides.pop("preset", None)
    if config is None:
        config = GPTConfig.from_preset(preset or "gpt2", **overrides)
    elif overrides or preset:
        base = GPTConfig.from_preset(preset).to_dict() if preset else config.to_dict()
        config = GPTConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}})
    if seed is not None:
        torch.manual_seed(seed)
    return GPT(config)
