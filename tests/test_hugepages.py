"""Weights in huge pages (gpt2reg.accel.hugepages): same parameters and values, only where they live changes.

Whether the OS really backs the memory with huge pages is its business (and not asserted); the move
itself, its alignment, its idempotence, its off switch and its fallback are.
"""

from __future__ import annotations

import logging

import pytest
import torch

import gpt2reg
from gpt2reg.accel import hugepages, tune
from gpt2reg.checkpoints import load_model, save_model
from gpt2reg.testing import TINY

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
needs_huge_pages = pytest.mark.skipif(not hugepages.available(), reason="no transparent huge pages on this OS")


@pytest.fixture(autouse=True)
def small_models_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny test models are far below MIN_BYTES; move them anyway, in several blocks."""
    monkeypatch.delenv("GPT2REG_HUGE_PAGES", raising=False)
    monkeypatch.setattr(hugepages, "MIN_BYTES", 0)
    monkeypatch.setattr(hugepages, "BLOCK_BYTES", 16 * 1024)


def tiny(**overrides) -> gpt2reg.GPT:
    return gpt2reg.build_model(**{**TINY, "init_std": 0.2, **overrides}, seed=0).eval()


def snapshot(model: gpt2reg.GPT) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    with torch.inference_mode():
        return {k: v.clone() for k, v in model.state_dict().items()}, model(IDS)


@needs_huge_pages
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_weights_move_and_nothing_else_changes(tie_embeddings: bool) -> None:
    model = tiny(tie_embeddings=tie_embeddings)
    values, logits = snapshot(model)
    params = list(model.parameters())
    pointers = [p.data_ptr() for p in params]

    moved = hugepages.use_huge_pages(model)

    assert moved == sum(p.numel() * p.element_size() for p in params)
    assert list(model.parameters()) == params  # the same Parameter objects, a tied head still tied
    assert all(p.data_ptr() != old and p.data_ptr() % hugepages.ALIGN == 0 for p, old in zip(params, pointers, strict=True))
    assert params[0].data_ptr() % hugepages.HUGE_PAGE == 0
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)  # a storage each, as loaded
    after_values, after_logits = snapshot(model)
    assert all(torch.equal(after_values[k], v) for k, v in values.items())
    torch.testing.assert_close(after_logits, logits, rtol=0, atol=0)
    assert hugepages.use_huge_pages(model) == 0  # idempotent: nothing moves twice


@needs_huge_pages
def test_a_moved_model_saves_loads_and_trains(tmp_path) -> None:
    model = tiny()
    assert hugepages.use_huge_pages(model) > 0
    save_model(model, tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.h[0].mlp.c_fc.weight.detach().clone()
    model.loss(IDS, IDS).backward()
    optimizer.step()
    assert not torch.equal(model.h[0].mlp.c_fc.weight, before)


def test_tune_moves_the_weights_where_it_can() -> None:
    model = tiny()
    values, logits = snapshot(model)
    tune(model)
    assert hugepages.use_huge_pages(model) == 0  # already done (or impossible here)
    after_values, after_logits = snapshot(model)
    assert all(torch.equal(after_values[k], v) for k, v in values.items())
    torch.testing.assert_close(after_logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("why", ["switched off", "small model", "failure"])
def test_weights_stay_where_they_are(why: str, monkeypatch, caplog) -> None:
    if why == "switched off":
        monkeypatch.setenv("GPT2REG_HUGE_PAGES", "off")
    elif why == "small model":
        monkeypatch.setattr(hugepages, "MIN_BYTES", 2**40)
    else:
        monkeypatch.setattr(hugepages, "available", lambda: True)
        monkeypatch.setattr(hugepages, "_mapping", lambda nbytes: (_ for _ in ()).throw(OSError("no memory map")))
    model = tiny()
    values, logits = snapshot(model)
    pointers = [p.data_ptr() for p in model.parameters()]
    with caplog.at_level(logging.WARNING, logger="gpt2reg.accel.hugepages"):
        assert hugepages.use_huge_pages(model) == 0
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert ("no memory map" in caplog.text) == (why == "failure")  # a failure is logged, never raised
    after_values, after_logits = snapshot(model)
    assert all(torch.equal(after_values[k], v) for k, v in values.items())
    torch.testing.assert_close(after_logits, logits, rtol=0, atol=0)


def test_blocks_keep_order_and_bound_the_copy() -> None:
    sizes = [1000, 3000, 200, 5000, 100]  # floats
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    blocks = hugepages._blocks(params)
    assert [p for block in blocks for p in block] == params
    assert all(len(b) == 1 or sum(hugepages._padded(p) for p in b) <= hugepages.BLOCK_BYTES for b in blocks)
    assert len(blocks) > 1
