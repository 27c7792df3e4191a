"""The comparison's report, rebuilt from the run folders alone (so runs trained elsewhere report the same).

Written into the comparison folder, each file atomically: ``results.json`` (everything), ``results.csv``
(one row per variant), ``val_loss.png`` (validation loss against training tokens, mean over seeds with a
band of one standard deviation), ``report.md`` and ``report.html`` (self-contained: the plot is embedded).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import write_bytes, write_text
from ..training.metrics import METRICS_FILE, read_metrics
from . import stats
from .spec import RUNS_DIR, check_plan, check_records, check_run, read_plan

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOT_FILE = "val_loss.png"
DEPLOY_DIR = "deploy"


def run_state(run_dir: Path) -> dict[str, Any]:
    """What a run folder holds: status (pending, partial, finished, diverged), its records and settings.

    A loss that is not a finite number (NaN, an infinity: a diverged run, or an edited log) makes the run
    diverged, wherever it is: such a run never counts as finished, so never as the best."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        return {"status": "pending", "records": [], "run": None}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{run_dir / 'run.json'}: unreadable ({exc}); fix or remove that run folder") from None
    run = check_run(run, run_dir / "run.json")
    records = check_records(read_metrics(run_dir / METRICS_FILE), run_dir / METRICS_FILE)
    last = records[-1] if records else {}
    if last.get("diverged") or any(not math.isfinite(r[k]) for r in records for k in ("loss", "val_loss")
                                   if r.get(k) is not None):
        status = "diverged"
    elif last.get("step", 0) >= run["train"]["max_steps"] and (run_dir / "model").is_dir():
        status = "finished"
    else:
        status = "partial"
    return {"status": status, "records": records, "run": run}


def _plan_or_discover(out_dir: Path) -> dict[str, Any]:
    """The plan ``compare`` saved; for run folders made without one, variants from ``<variant>-s<seed>`` names."""
    plan = read_plan(out_dir)
    if plan is not None:
        return plan
    runs = sorted(p for p in (out_dir / RUNS_DIR).glob("*") if (p / "run.json").exists())
    if not runs:
        raise InputError(f"{out_dir}: no comparison here (no {RUNS_DIR}/*/run.json and no compare.json)")
    from .spec import count_parameters

    variants: dict[str, dict[str, Any]] = {}
    plan_runs = []
    for run_dir in runs:
        match = re.match(r"^(.+)-s(\d+)$", run_dir.name)
        variant, seed = (match.group(1), int(match.group(2))) if match else (run_dir.name, 0)
        if variant not in variants:
            state = run_state(run_dir)
            model = state["run"]["model"] if state["run"] else {}
            try:
                from ..config import GPTConfig

                params = count_parameters(GPTConfig.from_dict(model))
            except Exception:  # a component not installed here: the count is unknown, the losses still are
                params = None
            variants[variant] = {"name": variant, "settings": {}, "model": model, "params": params, "note": ""}
        plan_runs.append({"name": run_dir.name, "variant": variant, "seed": seed, "dir": f"{RUNS_DIR}/{run_dir.name}"})
    plan = {"format": "gpt2reg-compare", "baseline": next(iter(variants)), "variants": list(variants.values()),
            "runs": plan_runs, "settings": {}}
    plan = check_plan(plan, f"{out_dir / RUNS_DIR} (the run folders' names)")
    return {**plan, "seeds": sorted({r["seed"] for r in plan_runs})}


def collect(out_dir: str | os.PathLike, baseline: str | None = None) -> dict[str, Any]:
    """Every number the report shows, recomputed from the run folders' ``metrics.jsonl`` and ``run.json``."""
    out_dir = Path(out_dir)
    plan = _plan_or_discover(out_dir)
    names = [v["name"] for v in plan["variants"]]
    baseline = baseline or plan["baseline"]
    if baseline not in names:
        raise InputError(f"baseline '{baseline}' is not a variant; variants: {', '.join(names)}")
    variants = []
    seen: dict[int, dict[str, Any]] = {}  # per seed: each step's batch digests, validation window digests
    for spec in plan["variants"]:
        runs = []
        for r in (r for r in plan["runs"] if r["variant"] == spec["name"]):
            state = run_state(out_dir / r["dir"])
            records, run = state["records"], state["run"] or {}
            curve = stats.val_curve(records)
            if state["status"] != "pending":
                data = seen.setdefault(r["seed"], {"runs": 0, "steps": {}, "val": set()})
                data["runs"] += 1
                data["val"].add(run.get("val_windows_sha256"))
                for record in records:
                    data["steps"].setdefault(record["step"], set()).add(record.get("batch_sha256"))
            runs.append({
                "name": r["name"], "seed": r["seed"], "dir": r["dir"], "status": state["status"],
                "steps": records[-1]["step"] if records else 0,
                "max_steps": run.get("train", {}).get("max_steps"),
                "tokens": records[-1]["tokens"] if records else 0,
                "final_val_loss": curve[-1][1] if curve and state["status"] == "finished" else None,
                "train_tokens_per_s": stats.train_tokens_per_s(records),
                "data_sha256": stats.data_digest(records),
                "val_windows_sha256": run.get("val_windows_sha256"),
                "curve": curve,
            })
        finals = [r["final_val_loss"] for r in runs if r["final_val_loss"] is not None]
        mean, std = stats.mean_std(finals)
        speeds = [r["train_tokens_per_s"] for r in runs if r["train_tokens_per_s"]]
        deploy_file = out_dir / DEPLOY_DIR / f"{spec['name']}.json"
        variants.append({
            "name": spec["name"], "settings": spec["settings"], "model": spec["model"], "params": spec["params"],
            "note": spec.get("note", ""), "runs": runs,
            "val_loss": {"mean": mean, "std": std, "n": len(finals), "values": finals},
            "train_tokens_per_s": stats.mean_std(speeds)[0],
            "status": _status_line(runs),
            "deploy": json.loads(deploy_file.read_text()) if deploy_file.exists() else None,
            "curve": stats.mean_curve([r["curve"] for r in runs if r["status"] != "diverged"]),
        })
    variants.sort(key=lambda v: v["name"] != baseline)
    base = variants[0]
    for v in variants:
        v["vs_baseline"] = None if v is base else stats.welch(base["val_loss"]["values"], v["val_loss"]["values"])
    return {"format": "gpt2reg-compare-results", "baseline": baseline, "settings": plan.get("settings", {}),
            "seeds": plan.get("seeds", []), "jobs": plan.get("jobs"), "variants": variants, "same_data": _same_data(seen)}


def _same_data(seen: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per seed: did every run see the same training batches (step by step, as far as each got) and the
    same validation windows? From the digests the runs themselves logged."""
    return {str(seed): {"runs": data["runs"],
                        "same_batches": all(len(d) == 1 and None not in d for d in data["steps"].values()),
                        "same_val_windows": len(data["val"]) == 1 and None not in data["val"]}
            for seed, data in sorted(seen.items())}


def _status_line(runs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


# -- rendering ------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None or isinstance(value, float) and math.isnan(value) else format(value, spec)


def _loss_cell(v: dict[str, Any]) -> str:
    loss = v["val_loss"]
    if loss["mean"] is None:
        return "–"
    spread = f" ± {loss['std']:.4f}" if loss["std"] is not None else ""
    return f"{loss['mean']:.4f}{spread} (n={loss['n']})"


def _diff_cells(v: dict[str, Any]) -> tuple[str, str]:
    cmp = v["vs_baseline"]
    if cmp is None:
        return "baseline", ""
    ci = f" [{cmp['ci95'][0]:+.4f}, {cmp['ci95'][1]:+.4f}]" if cmp["ci95"] and None not in cmp["ci95"] else ""
    return (_fmt(cmp["diff"], "+.4f") + ci, cmp["verdict"])


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's table: a header and one row per variant."""
    header = ["variant", "parameters", "final val loss (mean ± std)", "Δ vs baseline [95% CI]", "Welch's t-test",
              "train tokens/s", "runs"]
    deploy = any(v["deploy"] for v in results["variants"])
    if deploy:
        header += ["ONNX export", "validates", "max |diff|", "ONNX MB", "ORT decode tok/s"]
    rows = []
    for v in results["variants"]:
        row = [v["name"], f"{v['params']:,}" if v["params"] else "?", _loss_cell(v), *_diff_cells(v),
               _fmt(v["train_tokens_per_s"], ",.0f"), v["status"]]
        if deploy:
            d = v["deploy"] or {}
            row += ["yes" if d.get("exports") else ("no" if d else "–"),
                    {True: "yes", False: "no"}.get(d.get("validates"), "–"), _fmt(d.get("max_abs_diff"), ".2e"),
                    _fmt(d.get("onnx_mb"), ".2f"), _fmt(d.get("decode_tokens_per_s"), ",.0f")]
        rows.append(row)
    return header, rows


def plot(results: dict[str, Any]) -> bytes:
    """PNG: validation loss against training tokens, one line per variant (mean over seeds, ±1 std band)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for v in results["variants"]:
        label = v["name"] + (" (diverged)" if "diverged" in v["status"] else "")
        if not v["curve"]:
            ax.plot([], [], label=label)
            continue
        x = [t for t, _, _ in v["curve"]]
        mean = [m for _, m, _ in v["curve"]]
        (line,) = ax.plot(x, mean, "o-", markersize=3, label=label)
        band = [(t, m, s) for t, m, s in v["curve"] if s is not None]
        if band:
            ax.fill_between([t for t, _, _ in band], [m - s for _, m, s in band], [m + s for _, m, s in band],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    n_seeds = len(results["seeds"])
    ax.set_title(f"validation loss, mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
                 + (" (band: ±1 std)" if n_seeds > 1 else ""), fontsize=10)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    base = results["variants"][0]
    for v in results["variants"]:
        if v["note"]:
            lines.append(f"{v['name']}: {v['note']}")
    for seed, data in results["same_data"].items():
        same, val = data["same_batches"], data["same_val_windows"]
        if same and val:
            lines.append(f"seed {seed}: every run trained on the same batches and was evaluated on the same "
                         "windows (checked from the digests each run logged)")
        else:
            lines.append(f"seed {seed}: WARNING the runs did not see the same data (batches: "
                         f"{'same' if same else 'different'}, validation windows: {'same' if val else 'different'})")
    if (results.get("jobs") or 1) > 1:
        lines.append(f"train tokens/s: measured with {results['jobs']} runs at once (they share the machine); "
                     "compare them within this comparison only")
    ranked = sorted((v for v in results["variants"] if v["val_loss"]["mean"] is not None),
                    key=lambda v: v["val_loss"]["mean"])
    if ranked and base["val_loss"]["mean"] is not None:
        best = ranked[0]
        if best is base:
            lines.append(f"best final validation loss: the baseline, {base['name']}")
        else:
            lines.append(f"best final validation loss: {best['name']}, {best['vs_baseline']['diff']:+.4f} vs "
                         f"{base['name']}: {best['vs_baseline']['verdict']}")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    header, rows = table(results)
    out = [f"# Comparison: {len(results['variants'])} variants x {len(results['seeds'])} seeds", ""]
    out += [f"Baseline: **{results['baseline']}**. Δ is the variant's mean final validation loss minus the "
            f"baseline's (negative is better), with the 95% confidence interval of that difference; Welch's t-test over "
            f"seeds, two-sided, significant at p < {stats.ALPHA}.", ""]
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    out += [cells(header), "|" + "---|" * len(header)]
    out += [cells(row) for row in rows]
    out += ["", f"![validation loss]({PLOT_FILE})", ""]
    out += [f"- {line}" for line in _summary_lines(results)]
    settings = results["settings"]
    if settings:
        out += ["", "Shared settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(out) + "\n"


def render_html(results: dict[str, Any], png: bytes) -> str:
    header, rows = table(results)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    items = "".join(f"<li>{esc(line)}</li>" for line in _summary_lines(results))
    settings = ", ".join(f"{k}={v}" for k, v in results["settings"].items())
    image = base64.b64encode(png).decode()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gpt2reg compare</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; font-weight: bold; }}
img {{ max-width: 100%; }} .small {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>Comparison: {len(results['variants'])} variants &times; {len(results['seeds'])} seeds</h1>
<p>Baseline: <b>{esc(results['baseline'])}</b>. &Delta; is the variant's mean final validation loss minus the
baseline's (negative is better), with the 95% confidence interval of that difference; Welch's t-test over
seeds, two-sided, significant at p &lt; {stats.ALPHA}.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p><img id="plot" alt="validation loss against training tokens" src="data:image/png;base64,{image}"></p>
<ul>{items}</ul>
<p class="small">Shared settings: {esc(settings)}</p>
</body></html>
"""


def write_csv(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    fields = ["variant", "params", "seeds_finished", "val_loss_mean", "val_loss_std", "diff_vs_baseline",
              "diff_ci95_low", "diff_ci95_high", "p_value", "verdict", "train_tokens_per_s", "status", "onnx_exports", "onnx_validates", "onnx_max_abs_diff",
              "onnx_mb", "onnx_decode_tokens_per_s"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for v in results["variants"]:
        cmp, d = v["vs_baseline"] or {}, v["deploy"] or {}
        writer.writerow({
            "variant": v["name"], "params": v["params"], "seeds_finished": v["val_loss"]["n"],
            "val_loss_mean": v["val_loss"]["mean"], "val_loss_std": v["val_loss"]["std"],
            "diff_vs_baseline": cmp.get("diff"), "diff_ci95_low": (cmp.get("ci95") or [None])[0],
            "diff_ci95_high": (cmp.get("ci95") or [None, None])[1], "p_value": cmp.get("p_value"),
            "verdict": cmp.get("verdict", "baseline"), "train_tokens_per_s": v["train_tokens_per_s"],
            "status": v["status"], "onnx_exports": d.get("exports"), "onnx_validates": d.get("validates"),
            "onnx_max_abs_diff": d.get("max_abs_diff"), "onnx_mb": d.get("onnx_mb"),
            "onnx_decode_tokens_per_s": d.get("decode_tokens_per_s"),
        })
    return buffer.getvalue()


def finite(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as strict JSON can hold it: every NaN or infinity (Welch's t of two runs with no spread,
    the loss of a diverged run) becomes null, and ``non_finite`` lists where and what each was."""
    found: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{where}: {value}")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    out = clean({k: v for k, v in results.items() if k != "non_finite"}, "")
    out["non_finite"] = found  # null in this file where the value was not a finite number
    return out


def build_report(out_dir: str | os.PathLike, baseline: str | None = None) -> dict[str, Any]:
    """Collect the results from ``out_dir``'s run folders and write every report file; returns the results
    as written to ``results.json``: strict JSON, nulls where a number was not finite (see ``finite``)."""
    out_dir = Path(out_dir)
    results = collect(out_dir, baseline)
    png = plot(results)
    write_bytes(out_dir / PLOT_FILE, png, what="the loss plot")
    results = finite(results)
    write_text(out_dir / RESULTS_JSON, json.dumps(results, indent=2, allow_nan=False) + "\n", what="the results")
    write_text(out_dir / RESULTS_CSV, write_csv(results), what="the results")
    write_text(out_dir / REPORT_MD, render_markdown(results), what="the report")
    write_text(out_dir / REPORT_HTML, render_html(results, png), what="the report")
    return results
