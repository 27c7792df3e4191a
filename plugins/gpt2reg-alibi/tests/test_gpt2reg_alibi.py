"""The plugin's components pass gpt2reg's own component checks, and ALiBi computes what the paper says."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2reg.testing import CHECKS, SLOW_CHECKS, check_component, plugin_components, tiny_config

EXPECTED = {("pos", "alibi"), ("act", "star_relu"), ("norm", "dyt")}


def test_plugin_registers_its_components() -> None:
    assert set(plugin_components("alibi")) == EXPECTED


# Every check of the kit for every component: build, backward, train, decode with the KV cache (cached
# equals recompute), save/load. The slow onnx check (~10 s an export) runs once, on the model below
# that uses all three components, which puts each of them through export and validation.
@pytest.mark.parametrize("check", [c for c in CHECKS if c not in SLOW_CHECKS])
@pytest.mark.parametrize("kind,name", sorted(EXPECTED), ids=lambda v: str(v))
def test_component(kind: str, name: str, check: str) -> None:
    check_component(kind, name, checks=[check])


TOGETHER = dict(act="star_relu", norm="dyt", n_head=3, n_embd=48)  # 3 heads: not a power of two


@pytest.mark.parametrize("check", list(CHECKS))
def test_all_three_together(check: str) -> None:
    """One model using all of the plugin's components at once; for ``onnx``: the ALiBi model's export
    (prefill, cached decoding, left padding) agrees with torch within 1e-4 under onnxruntime."""
    check_component("pos", "alibi", checks=[check], **TOGETHER)


def test_the_checks_would_see_alibi_missing() -> None:
    """At the kit's weights, dropping ALiBi's bias moves the logits far more than the 1e-4 the cache and
    ONNX checks allow: agreement within 1e-4 means the bias is really there."""
    import copy

    from gpt2reg.components.positional import NoPositions
    from gpt2reg.model import build_model
    from gpt2reg.testing import CHECK_INIT_STD

    model = build_model(tiny_config(pos="alibi", init_std=CHECK_INIT_STD, **TOGETHER), seed=0).eval()
    without = copy.deepcopy(model)
    without.pos = NoPositions(model.config)
    x = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x) - without(x)).abs().max().item() > 100 * 1e-4


def test_alibi_slopes_match_the_paper() -> None:
    from gpt2reg_alibi.alibi import alibi_slopes

    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    # Not a power of two: the 8-head slopes, then every other slope of the 16-head set.
    sixteen = [2.0 ** (-(i + 1) / 2) for i in range(16)]
    assert alibi_slopes(12) == pytest.approx(alibi_slopes(8) + sixteen[0::2][:4])
    assert all(0 < s < 1 for s in alibi_slopes(12)) and len(set(alibi_slopes(12))) == 12


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    from gpt2reg.model import build_model

    model = build_model(tiny_config(pos="alibi", n_head=4), seed=0)
    q = torch.tensor([[3, 4]])
    k = torch.tensor([[0, 1, 2, 3, 4]])
    bias = model.pos.score_bias(q, k)
    assert bias.shape == (1, 4, 2, 5)
    slope = 2.0 ** (-8 / 4)  # head 0
    assert bias[0, 0, 1, 0].item() == pytest.approx(-slope * 4)
    assert bias[0, 0, 1, 4].item() == 0.0
    # No position table: the model has no parameters beyond a position-free one's.
    assert model.num_parameters() == build_model(tiny_config(pos="none", n_head=4), seed=0).num_parameters()


def test_generation_with_the_cache_equals_recompute() -> None:
    """gpt2reg's own generate(): batched prompts of different lengths (left padding), sampled with one
    seed, KV cache on or off: the same tokens."""
    from gpt2reg.generation import generate
    from gpt2reg.model import build_model
    from gpt2reg.testing import CHECK_INIT_STD

    model = build_model(tiny_config(pos="alibi", init_std=CHECK_INIT_STD, **TOGETHER), seed=0).eval()
    prompts = [[5, 17, 3, 44, 9, 60, 2], [71, 8]]
    runs = [
        generate(model, prompts, max_new_tokens=24, seed=0, eos_token_id=None, use_cache=cache)
        for cache in (True, False)
    ]
    cached, recomputed = ([s.generated_ids for s in run] for run in runs)
    assert cached == recomputed
    assert all(len(ids) == 24 for ids in cached) and len(set(cached[0])) > 3


def test_dyt_and_star_relu_values() -> None:
    from gpt2reg_alibi.dyt import DyT
    from gpt2reg_alibi.star_relu import StarReLU

    config = tiny_config(norm="dyt", act="star_relu")
    x = torch.linspace(-3, 3, config.n_embd).expand(2, 5, -1)
    norm = DyT(config)
    assert torch.allclose(norm(x), torch.tanh(0.5 * x))
    assert DyT(config.replace(bias=False)).bias is None
    act = StarReLU(config)
    y = act(torch.tensor([-1.0, 0.0, 2.0]))
    assert torch.allclose(y, torch.tensor([-0.4472, -0.4472, 0.8944 * 4 - 0.4472]))
    # Its scale and shift put a standard normal input at roughly zero mean, unit variance.
    z = act(torch.randn(200_000, generator=torch.Generator().manual_seed(0)))
    assert abs(z.mean().item()) < 0.02 and math.isclose(z.std().item(), 1.0, abs_tol=0.05)
