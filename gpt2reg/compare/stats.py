"""Numbers a comparison reports, from the runs' own ``metrics.jsonl``: final losses, spread, significance.

A variant's score is the validation loss at the end of each seed's run; the difference from the baseline
is tested with Welch's t-test over seeds (unequal variances), two-sided, at ``ALPHA``.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from typing import Any

ALPHA = 0.05


def val_curve(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(tokens, validation loss) at each evaluation of a run."""
    return [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]


def train_tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """Tokens over the time spent in optimizer steps (evaluations and samples excluded), first step excluded
    as warm-up when there are others."""
    steps = [r for r in records if r.get("tokens_per_s")]
    if len(steps) > 1:
        steps = steps[1:]
    if not steps:
        return None
    tokens_per_step = records[0]["tokens"] // records[0]["step"] if records and records[0].get("step") else 0
    seconds = sum(tokens_per_step / r["tokens_per_s"] for r in steps)
    return tokens_per_step * len(steps) / seconds if seconds else None


def data_digest(records: list[dict[str, Any]]) -> str | None:
    """One digest of every step's batches, in order: equal digests mean the runs trained on the same windows."""
    digests = [r.get("batch_sha256") for r in records]
    if not digests or None in digests:
        return None
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than 2 values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def welch(baseline: list[float], other: list[float]) -> dict[str, Any]:
    """``other`` minus ``baseline``: difference of means with its 95% confidence interval, Welch's t and
    two-sided p, and a plain verdict."""
    mean_b, _ = mean_std(baseline)
    mean_o, _ = mean_std(other)
    out: dict[str, Any] = {"diff": None if mean_b is None or mean_o is None else mean_o - mean_b,
                           "t": None, "p_value": None, "ci95": None}
    if len(baseline) < 2 or len(other) < 2:
        out["verdict"] = "n/a, needs >= 2 seeds"
        return out
    if statistics.pvariance(baseline) == 0 and statistics.pvariance(other) == 0:
        # No spread at all: the test is undefined; equal means are the same, different ones certainly differ.
        out["t"], out["p_value"] = (0.0, 1.0) if out["diff"] == 0 else (math.copysign(math.inf, out["diff"]), 0.0)
        out["ci95"] = [out["diff"], out["diff"]]
    else:
        from scipy import stats

        result = stats.ttest_ind(other, baseline, equal_var=False)
        out["t"], out["p_value"] = float(result.statistic), float(result.pvalue)
        low, high = result.confidence_interval(1 - ALPHA)
        out["ci95"] = [float(low), float(high)]
    p = out["p_value"]
    if p < ALPHA:
        out["verdict"] = f"{'better' if out['diff'] < 0 else 'worse'} (p = {p:.2g})"
    else:
        out["verdict"] = f"not significant (p = {p:.2f})"
    return out


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float, float | None]]:
    """(tokens, mean, std) at each token count some run evaluated at, over the runs that did."""
    by_tokens: dict[int, list[float]] = {}
    for curve in curves:
        for tokens, loss in curve:
            by_tokens.setdefault(tokens, []).append(loss)
    out = []
    for tokens in sorted(by_tokens):
        mean, std = mean_std(by_tokens[tokens])
        out.append((tokens, mean, std))
    return out
