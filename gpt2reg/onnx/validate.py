"""Does an exported file compute what the torch model computes? Random cases under onnxruntime, one report.

Cases cover batch sizes 1-4 and sequence lengths 1, odd ones and the full context; for the KV-cache
graph also past lengths 0 and > 0 (the past computed by the torch model from a real prefix) and
left-padded rows. Logits are compared at real (unpadded) positions; the KV-cache graph's presents too.
Every case runs the graph as a file's user would for perplexity (``logits_to_keep`` 0: every
position) and once more keeping the last k positions, as generation does (k = 1 and half the
sequence, alternating), which must equal the same slice of the full output. A file whose
graph writes the KV cache in place (``kv_in_place``, the quantized ones) runs every KV-cache case a
third time on the CPU as ``gpt2reg.ort.runtime`` decodes it, the past in buffers with room bound as the
presents (``InPlaceKV``), which must equal the copying run within the same tolerance.

Tolerances per variant (``TOLERANCES``) are absolute differences on logits against the torch model in
its own dtype, plus a least top-1 agreement. fp32 must agree to 1e-4 (measured: ~7e-6 on a random
124M model, from CPU or CUDA torch). fp16 rounds every activation to 11 bits: atol 2e-2 (measured
2.4e-3 at 124M) and 95% of top-1 tokens. int8 (8-bit ``MatMulNBits``, blocks of 128) moved a random
124M model's logits by max 0.089, mean 0.012 (onnxruntime's dynamic quantization, the earlier
default: 0.15, 0.020): atol 0.5 and 80% top-1. int4 (4-bit, blocks of 256) moves them ~10x as much
as int8: a random 124M model measured max 1.04, mean 0.14 (blocks of 128: 0.96, 0.13), so atol 2.0
and 30% top-1. The top-1 floors are low because random-weight models, which the tests use, have
near-ties: among 50257 logits of std ~0.5 the best two are often < 0.01 apart (a random 124M model
measured 99.3% fp16, 94.8% int8 and 38.3% int4 agreement); a trained model's predictions are far more
decided (the README's poem model: 99.8% int8, 99.6% int4), and its perplexity is the measure of
quantization quality that means something (``gpt2reg eval FILE.onnx``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..ort.metadata import LOGITS_TO_KEEP, OnnxDescription, past_names
from ..ort.providers import create_session


@dataclass(frozen=True)
class Tolerance:
    atol: float
    min_top1: float  # least fraction of positions whose top-1 token matches torch's


TOLERANCES: dict[str, Tolerance] = {
    # fp32: the atol bounds any top-1 flip to a near-tie (gap < 2 * atol), so top-1 is not required.
    "fp32": Tolerance(atol=1e-4, min_top1=0.0),
    "fp16": Tolerance(atol=2e-2, min_top1=0.95),
    "int8": Tolerance(atol=0.5, min_top1=0.80),
    "int4": Tolerance(atol=2.0, min_top1=0.30),
}
DEFAULT_CASES = 8
# Fields that change what the graph computes; dropout and init_std do not.
_ARCH_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio", "bias", "norm_eps",
                "tie_embeddings", "pos", "act", "norm")


@dataclass(frozen=True)
class Case:
    batch: int
    past: int
    seq: int
    padded: bool = False


@dataclass
class ValidationReport:
    """The outcome: worst and mean logit difference, top-1 agreement, the provider that really ran."""

    passed: bool
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    provider: str
    atol: float
    min_top1: float
    variant: str = "fp32"
    graph: str = ""
    requested_provider: str = "auto"
    provider_note: str = ""
    present_max_abs_diff: float | None = None
    kept_max_abs_diff: float | None = None  # last-k logits against the same slice of all positions' logits
    in_place_max_abs_diff: float | None = None  # kv_in_place files: the cache in buffers with room, bound in place
    reason: str = ""
    cases: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"graph {self.graph}, {self.variant}, provider {self.provider} (asked: {self.requested_provider})",
        ]
        if self.provider_note:
            lines.append(f"  note: {self.provider_note}")
        for c in self.cases:
            lines.append(
                f"  batch {c['batch']} past {c['past']:>4} seq {c['seq']:>4}{' padded' if c['padded'] else '       '}"
                f"  max |diff| {c['max_abs_diff']:.2e}  top-1 {c['top1_agreement']:.1%}"
            )
        if self.cases:
            lines.append(
                f"max |diff| {self.max_abs_diff:.2e} (atol {self.atol:g}), mean |diff| {self.mean_abs_diff:.2e}, "
                f"top-1 agreement {self.top1_agreement:.2%}"
                + (f", presents max |diff| {self.present_max_abs_diff:.2e}" if self.present_max_abs_diff is not None else "")
                + (f", last-k logits vs slice {self.kept_max_abs_diff:.2e}" if self.kept_max_abs_diff is not None else "")
                + (f", in place vs copied {self.in_place_max_abs_diff:.2e}" if self.in_place_max_abs_diff is not None else "")
            )
        lines.append(("PASS" if self.passed else "FAIL") + (f": {self.reason}" if self.reason else ""))
        return "\n".join(lines)


def describe(onnx_path: str | os.PathLike) -> OnnxDescription:
    """The gpt2reg metadata of an exported file (``InputError`` for other ONNX files)."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file" if not path.exists() else f"{path} is not a file (an exported .onnx file is)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf errors have no common base class
        raise InputError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
    try:
        return OnnxDescription.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    except ValueError as exc:
        raise InputError(str(exc)) from None


def make_cases(block_size: int, kv_cache: bool, n: int, seed: int = 0, extend_rows: int | None = None) -> list[Case]:
    """Fixed cases first (length 1, odd, full context; past 0 and > 0; padding), then random ones.

    ``extend_rows`` (a file's ``kv_extend_rows``) caps the batch of a case extending a past by several tokens.
    """
    rng = np.random.default_rng(seed)

    def fit(batch: int, past: int, seq: int, padded: bool = False) -> Case:
        past = min(past, block_size - 1)
        seq = max(1, min(seq, block_size - past))
        if extend_rows is not None and past and seq > 1:
            batch = min(batch, extend_rows)
        return Case(batch, past, seq, padded)

    mid = max(1, block_size // 3) | 1
    if kv_cache:
        fixed = [
            fit(1, 0, 1),
            fit(3, 0, 7, padded=True),
            fit(4, mid, 1, padded=True),
            fit(1, 0, block_size),
            fit(2, mid, 5, padded=True),
            fit(1, block_size - 1, 1),
            fit(3, 0, 100, padded=True),
        ]
    else:
        fixed = [fit(1, 0, 1), fit(3, 0, 7), fit(1, 0, block_size), fit(3, 0, 100), fit(4, 0, 2 * mid + 1)]
    cases = fixed[:n]
    while len(cases) < n:
        batch = int(rng.integers(1, 5))
        if kv_cache:
            past = int(rng.integers(0, block_size // 2 + 1))
            cases.append(fit(batch, past, int(rng.integers(1, 17)), padded=bool(rng.integers(0, 2))))
        else:
            cases.append(fit(batch, 0, int(rng.integers(1, 65))))
    return cases


def _left_padded_mask(case: Case, rng: np.random.Generator) -> np.ndarray:
    total = case.past + case.seq
    mask = np.ones((case.batch, total), dtype=np.int64)
    if case.padded and total > 1:
        for row in range(1, case.batch) if case.batch > 1 else range(1):
            mask[row, : int(rng.integers(1, total))] = 0  # at least the last token stays real
    return mask


def _config_mismatch(description: OnnxDescription, config: dict[str, Any]) -> str:
    diffs = [f"{k} {description.config.get(k)!r} (ONNX) vs {config.get(k)!r} (model)"
             for k in _ARCH_FIELDS if description.config.get(k) != config.get(k)]
    return "the ONNX file was exported from a different architecture: " + ", ".join(diffs) if diffs else ""


@dataclass
class _Outputs:
    """One case run both ways: logits (batch, seq, vocab) and presents, as float32 numpy."""

    got: np.ndarray
    want: np.ndarray
    got_presents: list[np.ndarray]
    want_presents: list[np.ndarray]
    real: np.ndarray  # (batch, seq) True where the token is not a left pad
    kept_diff: float | None = None  # max |last-k logits - got[:, -k:]|; None for a graph without the input
    feed: dict[str, np.ndarray] | None = None  # the KV-cache graph's inputs


def _kept_diff(session, feed: dict[str, np.ndarray], got: np.ndarray, keep: int) -> float | None:
    """Run ``feed`` again keeping the last ``keep`` positions; their max difference from ``got``'s slice.
    None for a graph without ``logits_to_keep`` (``export --format hf``'s)."""
    if LOGITS_TO_KEEP not in feed:
        return None
    kept = session.run(["logits"], {**feed, LOGITS_TO_KEEP: np.array(keep, dtype=np.int64)})[0].astype(np.float32)
    want = got[:, -keep:]
    return float("inf") if kept.shape != want.shape else float(np.abs(kept - want).max())


def _run_case(session, model: torch.nn.Module, description: OnnxDescription, case: Case,
              rng: np.random.Generator, keep: int) -> _Outputs:
    """Random tokens and padding for ``case``; the KV-cache graph gets the past torch computed for a prefix."""
    config = model.config
    device = next(model.parameters()).device
    ids = rng.integers(0, config.vocab_size, (case.batch, case.past + case.seq), dtype=np.int64)
    mask = _left_padded_mask(case, rng)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    def n(x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    new = slice(case.past, None)
    every = ({LOGITS_TO_KEEP: np.array(0, dtype=np.int64)}
             if LOGITS_TO_KEEP in {i.name for i in session.get_inputs()} else {})
    with torch.no_grad():
        if not description.kv_cache:
            feed = {"input_ids": ids, **every}
            got = session.run(["logits"], feed)[0].astype(np.float32)
            return _Outputs(got, n(model(t(ids))), [], [], mask.astype(bool), _kept_diff(session, feed, got, keep))
        pasts: list = []
        if case.past:
            old = slice(0, case.past)
            _, pasts = model.forward_cached(t(ids[:, old]), None, t(positions[:, old]), t(mask[:, old]))
        want, presents = model.forward_cached(t(ids[:, new]), pasts or None, t(positions[:, new]), t(mask))
    float_np = np.float16 if description.dtype == "fp16" else np.float32
    empty = np.zeros((case.batch, config.n_head, 0, config.head_dim), dtype=float_np)
    flat = [n(x).astype(float_np) for pair in pasts for x in pair] or [empty] * (2 * config.n_layer)
    feed = {"input_ids": ids[:, new], "attention_mask": mask, "position_ids": positions[:, new],
            **dict(zip(past_names(config.n_layer), flat, strict=True)), **every}
    got, *got_presents = session.run(None, feed)
    got = got.astype(np.float32)
    return _Outputs(got, n(want), [p.astype(np.float32) for p in got_presents],
                    [n(x) for pair in presents for x in pair], mask[:, new].astype(bool), _kept_diff(session, feed, got, keep),
                    feed)


def _in_place_diff(model, out: _Outputs) -> float:
    """The case again through ``InPlaceKV`` (the past in buffers with room, bound as the presents, as
    ``gpt2reg.ort.runtime`` decodes): its max difference from the copying run, logits and presents."""
    from ..ort.runtime import InPlaceKV

    n_layer = model.description.n_layer
    cache = InPlaceKV(model, [out.feed[name] for name in past_names(n_layer)])
    logits = cache.run(out.feed["input_ids"], out.feed["attention_mask"])
    diffs = [np.abs(logits - out.got).max()] + [np.abs(a - p).max() for a, p in zip(cache.arrays, out.got_presents, strict=True)]
    return float(max(diffs))


def validate_onnx(
    onnx_path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    provider: str = "auto",
    atol: float | None = None,
    cases: int = DEFAULT_CASES,
    seed: int = 0,
) -> ValidationReport:
    """Run ``cases`` random inputs through the file under onnxruntime and through ``model``; compare.

    The model runs on its own device and dtype (a CUDA or bf16 model is compared as it is). ``atol``
    overrides the variant's default from ``TOLERANCES``. Raises ``ProviderError`` when ``provider``
    cannot load; a file from another architecture gives a failed report.
    """
    if cases < 1:
        raise InputError(f"cases={cases}: need at least one case")
    description = describe(onnx_path)
    tolerance = TOLERANCES[description.variant]
    atol = tolerance.atol if atol is None else atol
    # A few cases: not worth moving the session into huge pages. A file that writes the KV cache in
    # place is opened as the runtime opens it, so its decoding path (InPlaceKV) is checked on the same session.
    if description.kv_in_place:
        from ..ort.runtime import OnnxGPT

        runtime = OnnxGPT(onnx_path, provider=provider, huge_pages=False)
        session, actual, note = runtime.session, runtime.provider, runtime.provider_note
    else:
        info = create_session(str(onnx_path), provider, huge_pages=False)
        session, actual, note = info.session, info.provider, info.note
        try:
            description.check_io(session, str(onnx_path))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    report = ValidationReport(
        passed=False, max_abs_diff=float("nan"), mean_abs_diff=float("nan"), top1_agreement=float("nan"),
        provider=actual, atol=atol, min_top1=tolerance.min_top1, variant=description.variant,
        graph=description.graph, requested_provider=provider, provider_note=note,
    )
    mismatch = _config_mismatch(description, model.config.to_dict())
    if mismatch:
        report.reason = mismatch
        return report
    in_place = runtime if description.kv_in_place and runtime.in_place else None
    if in_place is not None:
        report.in_place_max_abs_diff = 0.0
    rng = np.random.default_rng(seed)
    abs_sum, compared, agree, present_max = 0.0, 0, 0, 0.0
    kept_max: float | None = None
    was_training = model.training
    model.eval()
    try:
        for i, case in enumerate(make_cases(model.config.block_size, description.kv_cache, cases, seed,
                                            description.kv_extend_rows)):
            out = _run_case(session, model, description, case, rng, keep=1 if i % 2 == 0 else max(1, case.seq // 2))
            if out.kept_diff is not None:
                kept_max = max(kept_max or 0.0, out.kept_diff)
            if in_place is not None:
                report.in_place_max_abs_diff = max(report.in_place_max_abs_diff, _in_place_diff(in_place, out))
            diff = np.abs(out.got - out.want)[out.real]  # (real positions, vocab)
            case_agree = int((out.got.argmax(-1) == out.want.argmax(-1))[out.real].sum())
            abs_sum, compared, agree = abs_sum + float(diff.sum()), compared + diff.size, agree + case_agree
            for got_p, want_p in zip(out.got_presents, out.want_presents, strict=True):
                present_max = max(present_max, float(np.abs(got_p - want_p).max()))
            report.cases.append({**asdict(case), "max_abs_diff": float(diff.max()),
                                 "top1_agreement": case_agree / int(out.real.sum())})
    finally:
        model.train(was_training)
    report.max_abs_diff = max(c["max_abs_diff"] for c in report.cases)
    report.mean_abs_diff = abs_sum / compared
    report.top1_agreement = agree / (compared // model.config.vocab_size)
    if description.kv_cache:
        report.present_max_abs_diff = present_max
    report.kept_max_abs_diff = kept_max
    failures = []
    if not report.max_abs_diff <= atol:  # NaN fails too
        failures.append(f"max |diff| {report.max_abs_diff:.3g} > atol {atol:g}")
    if report.present_max_abs_diff is not None and not report.present_max_abs_diff <= atol:
        failures.append(f"presents max |diff| {report.present_max_abs_diff:.3g} > atol {atol:g}")
    if report.in_place_max_abs_diff is not None and not report.in_place_max_abs_diff <= atol:
        failures.append(f"the cache written in place differs from the copied one by {report.in_place_max_abs_diff:.3g} "
                        f"> atol {atol:g}")
    if kept_max is not None and not kept_max <= atol:
        failures.append(f"last-k logits differ from the same positions of all logits by {kept_max:.3g} > atol {atol:g}")
    if report.top1_agreement < tolerance.min_top1:
        failures.append(f"top-1 agreement {report.top1_agreement:.1%} < {tolerance.min_top1:.0%}")
    report.passed = not failures
    report.reason = "; ".join(failures)
    return report
