"""Config validation, presets and the parameter counts GPT-2 must reproduce exactly."""

from __future__ import annotations

import json

import pytest

from gpt2reg import ConfigError, GPTConfig, UnknownComponentError
from gpt2reg.config import PRESETS
from gpt2reg.model import build_model


def test_defaults_are_gpt2_small() -> None:
    c = GPTConfig()
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (12, 12, 768, 1024, 50257)
    assert (c.pos, c.act, c.norm, c.bias, c.tie_embeddings, c.norm_eps) == (
        "learned", "gelu_tanh", "layernorm", True, True, 1e-5
    )


@pytest.mark.parametrize("pos,expected", [("learned", 124_439_808), ("rope", 123_653_376)])
def test_gpt2_small_parameter_count(pos: str, expected: int) -> None:
    import torch

    with torch.device("meta"):  # counting needs shapes, not memory
        model = build_model(pos=pos)
    assert model.num_parameters() == expected


@pytest.mark.parametrize(
    "preset,layers,width,params",
    [("gpt2-medium", 24, 1024, 354_823_168), ("gpt2-large", 36, 1280, 774_030_080), ("gpt2-xl", 48, 1600, 1_557_611_200)],
)
def test_presets(preset: str, layers: int, width: int, params: int) -> None:
    import torch

    c = GPTConfig.from_preset(preset)
    assert (c.n_layer, c.n_embd) == (layers, width)
    with torch.device("meta"):
        assert build_model(c).num_parameters() == params
    assert PRESETS[preset]["n_head"] == c.n_head


def test_every_field_overridable_and_json_round_trip() -> None:
    c = GPTConfig.from_preset("gpt2-medium", pos="rope", act="swiglu", norm="rmsnorm", dropout=0.1, bias=False)
    assert (c.n_layer, c.pos, c.act, c.norm, c.dropout, c.bias) == (24, "rope", "swiglu", "rmsnorm", 0.1, False)
    assert GPTConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(n_embd=100, n_head=12), "n_embd=100 is not divisible by n_head=12"),
        (dict(n_layer=0), "n_layer=0"),
        (dict(n_embd=-8), "n_embd=-8"),
        (dict(block_size=0), "block_size=0"),
        (dict(dropout=1.5), "dropout=1.5"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(pos="rope", n_embd=30, n_head=6), "RoPE needs an even head size"),
        (dict(n_layer="2"), "n_layer='2': expected int"),
    ],
)
def test_impossible_configs_are_rejected(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        GPTConfig(**overrides)


@pytest.mark.parametrize("kind,label", [("pos", "positional encoding"), ("act", "activation"), ("norm", "norm")])
def test_unknown_component_lists_choices(kind: str, label: str) -> None:
    with pytest.raises(UnknownComponentError) as info:
        GPTConfig(**{kind: "nope"})
    message = str(info.value)
    assert message.startswith(f"unknown {label} 'nope'; choose one of: ")
    assert GPTConfig().to_dict()[kind] in message


def test_unknown_field_and_preset() -> None:
    with pytest.raises(ConfigError, match="unknown config field"):
        GPTConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")


def test_gated_activation_widens_up_projection() -> None:
    from gpt2reg.testing import tiny_config

    plain = build_model(tiny_config(act="gelu"))
    gated = build_model(tiny_config(act="swiglu"))
    assert gated.h[0].mlp.c_fc.out_features == 2 * plain.h[0].mlp.c_fc.out_features
    assert gated.h[0].mlp.c_proj.in_features == plain.h[0].mlp.c_proj.in_features


def test_init_scales_residual_projections() -> None:
    import torch

    torch.manual_seed(0)
    model = build_model(n_layer=8, n_embd=256, n_head=4, vocab_size=1000, block_size=64)
    std_fc = model.h[0].mlp.c_fc.weight.std().item()
    std_proj = model.h[0].mlp.c_proj.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4) < 0.0005  # 1/sqrt(2 * 8)
    assert model.h[0].attn.c_attn.bias.abs().max().item() == 0.0
