"""``gpt2reg compare``: real ``gpt2reg train`` processes on a tiny model and corpus.

The expensive comparison (a 2x2 grid x 2 seeds) runs once per module and several tests read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

from gpt2reg.cli import cli
from gpt2reg.compare import Comparison, grid, load_toml, parse_variant, run_comparison
from gpt2reg.compare.report import build_report
from gpt2reg.compare.spec import train_command
from gpt2reg.errors import ConfigError
from gpt2reg.plugins import get_registry
from gpt2reg.training.metrics import read_metrics

VERSE = "The woods are lovely, dark and deep,\nBut I have promises to keep,\nAnd miles to go before I sleep.\n"
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_steps=6, eval_interval=3,
            eval_batches=2, warmup_steps=2, lr=3e-3, sample_tokens=0)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# The example plugin's ALiBi when it is installed (make install does): plugin components are variants too.
PLUGIN_POS = "alibi" if get_registry().find("pos", "alibi") else "rope"


def cli_args(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "verse.txt"
    path.write_text(VERSE * 60, encoding="utf-8")
    return path


@contextlib.contextmanager
def grid_lock(out_dir: Path, shared: bool = False):
    """Held while a test (in any xdist worker) runs the shared grid comparison again or copies its folder,
    so that two workers never run it at once (compare's own lock refuses that) nor copy it mid-write."""
    with open(out_dir.parent.parent / "compare-grid.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """learned/plugin pos x gelu_tanh/swiglu, 2 seeds, two runs at a time: trained once per session, whichever
    xdist worker gets there first (the other one's run_comparison then finds every run done)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers
    folder = root / "compare-grid"
    folder.mkdir(exist_ok=True)
    with grid_lock(folder / "cmp"):
        corpus = folder / "verse.txt"
        if not corpus.exists():
            corpus.write_text(VERSE * 60, encoding="utf-8")
        comparison = Comparison(folder / "cmp", grid({"pos": ["learned", PLUGIN_POS], "act": ["gelu_tanh", "swiglu"]}),
                                settings={"data": str(corpus), **TINY}, seeds=2)
        results = run_comparison(comparison, jobs=2)
    return comparison, results


def test_a_grid_with_seeds_leaves_every_run_folder_and_a_report(grid_run) -> None:
    comparison, results = grid_run
    out = comparison.out_dir
    names = [f"{p}-{a}-s{s}" for p in ("learned", PLUGIN_POS) for a in ("gelu_tanh", "swiglu") for s in (0, 1)]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(names)
    for name in names:  # ordinary, finished gpt2reg train run folders
        run = out / "runs" / name
        assert (run / "model" / "model.safetensors").exists() and (run / "run.json").exists()
        assert read_metrics(run / "metrics.jsonl")[-1]["step"] == TINY["max_steps"]
    for file in ("report.md", "report.html", "results.json", "results.csv", "val_loss.png"):
        assert (out / file).stat().st_size > 0
    assert not results["failed"] and not results["interrupted"]
    assert results["baseline"] == "learned-gelu_tanh"
    assert not list(out.glob(".*.tmp*"))  # every file written atomically
    md = (out / "report.md").read_text()
    assert "| learned-swiglu |" in md and "![validation loss](val_loss.png)" in md


def test_the_report_numbers_are_those_of_the_runs_metrics(grid_run) -> None:
    comparison, _ = grid_run
    out = comparison.out_dir
    results = json.loads((out / "results.json").read_text())
    csv_rows = {row.split(",")[0]: row.split(",") for row in (out / "results.csv").read_text().splitlines()[1:]}

    def finals(variant: str) -> list[float]:
        return [[r for r in read_metrics(out / "runs" / f"{variant}-s{s}" / "metrics.jsonl") if "val_loss" in r][-1]
                ["val_loss"] for s in (0, 1)]

    base = finals("learned-gelu_tanh")
    for v in results["variants"]:
        losses = finals(v["name"])
        assert v["val_loss"]["mean"] == pytest.approx(statistics.fmean(losses), abs=1e-12)
        assert v["val_loss"]["std"] == pytest.approx(statistics.stdev(losses), abs=1e-12)
        assert v["params"] == comparison.params[v["name"]]
        assert float(csv_rows[v["name"]][3]) == pytest.approx(v["val_loss"]["mean"], abs=1e-12)
        records = read_metrics(out / "runs" / f"{v['name']}-s0" / "metrics.jsonl")
        per_step = records[0]["tokens"]  # the first step is left out as warm-up
        speed_s0 = per_step * (len(records) - 1) / sum(per_step / r["tokens_per_s"] for r in records[1:])
        assert v["runs"][0]["train_tokens_per_s"] == pytest.approx(speed_s0, rel=1e-9)
        if v["name"] == "learned-gelu_tanh":
            assert v["vs_baseline"] is None
            continue
        expected = stats.ttest_ind(losses, base, equal_var=False)
        assert v["vs_baseline"]["diff"] == pytest.approx(statistics.fmean(losses) - statistics.fmean(base), abs=1e-12)
        assert v["vs_baseline"]["p_value"] == pytest.approx(float(expected.pvalue), rel=1e-9)
        assert v["vs_baseline"]["ci95"] == pytest.approx(list(expected.confidence_interval(0.95)), rel=1e-9)
        significant = expected.pvalue < 0.05
        assert v["vs_baseline"]["verdict"].startswith(("better", "worse") if significant else ("not significant",))
        assert v["vs_baseline"]["verdict"] in (out / "report.md").read_text()


def test_every_variant_saw_the_same_batches_and_validation_windows_per_seed(grid_run, tmp_path: Path) -> None:
    comparison, results = grid_run
    out = comparison.out_dir
    for seed in (0, 1):
        logs = {v.name: [r["batch_sha256"] for r in read_metrics(out / "runs" / f"{v.name}-s{seed}" / "metrics.jsonl")]
                for v in comparison.variants}
        assert len(set(map(tuple, logs.values()))) == 1, logs  # same windows at every step, whatever the model
        assert len(next(iter(logs.values()))) == TINY["max_steps"]
        val = {json.loads((out / "runs" / f"{v.name}-s{seed}" / "run.json").read_text())["val_windows_sha256"]
               for v in comparison.variants}
        assert len(val) == 1 and None not in val
        assert results["same_data"][str(seed)] == {"runs": 4, "same_batches": True, "same_val_windows": True}
    s0 = [r["batch_sha256"] for r in read_metrics(out / "runs" / "learned-gelu_tanh-s0" / "metrics.jsonl")]
    s1 = [r["batch_sha256"] for r in read_metrics(out / "runs" / "learned-gelu_tanh-s1" / "metrics.jsonl")]
    assert s0 != s1  # the seed does change the data order
    # ... and a run whose batches differ is reported as such.
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    metrics = copy / "runs" / "learned-swiglu-s0" / "metrics.jsonl"
    records = read_metrics(metrics)
    records[2]["batch_sha256"] = "0" * 16
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    tampered = build_report(copy)
    assert tampered["same_data"]["0"]["same_batches"] is False and tampered["same_data"]["1"]["same_batches"]
    assert "WARNING the runs did not see the same data" in (copy / "report.md").read_text()


def test_running_the_same_comparison_again_trains_nothing(grid_run) -> None:
    comparison, _ = grid_run
    stamps = {p: p.stat().st_mtime_ns for p in (comparison.out_dir / "runs").rglob("*") if p.is_file()}
    lines: list[str] = []
    with grid_lock(comparison.out_dir):
        again = run_comparison(comparison, jobs=2, echo=lines.append)
    assert "(8 already done)" in lines[0] and not any("training" in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [v["val_loss"] for v in again["variants"]] == [v["val_loss"] for v in grid_run[1]["variants"]]


def test_report_only_rebuilds_the_same_results_from_the_folders(grid_run, tmp_path: Path) -> None:
    comparison, _ = grid_run
    copy = tmp_path / "elsewhere"
    with grid_lock(comparison.out_dir, shared=True):
        shutil.copytree(comparison.out_dir, copy)
    for file in ("results.json", "report.md", "report.html"):
        (copy / file).unlink()
    result = CliRunner().invoke(cli, ["compare", "-o", str(copy), "--report-only"])
    assert result.exit_code == 0, result.output
    assert "learned-swiglu" in result.output and "baseline" in result.output
    assert json.loads((copy / "results.json").read_text()) == json.loads(
        (comparison.out_dir / "results.json").read_text())
    (copy / "compare.json").unlink()  # runs made by hand: variants from the folder names
    result = CliRunner().invoke(cli, ["compare", "-o", str(copy), "--report-only", "--baseline", "learned-swiglu"])
    assert result.exit_code == 0, result.output
    found = json.loads((copy / "results.json").read_text())
    assert found["baseline"] == "learned-swiglu" and len(found["variants"]) == 4


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_html_report_shows_its_plot_in_a_real_browser(grid_run, tmp_path: Path) -> None:
    from matplotlib import image

    comparison, _ = grid_run
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,1400", f"--screenshot={shot}", (comparison.out_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr
    assert "CONSOLE" not in proc.stderr and "Uncaught" not in proc.stderr, proc.stderr
    pixels = (image.imread(shot)[..., :3] * 255).round().astype(int)
    # The plot's lines are matplotlib's tab:blue and tab:orange; nothing else on the page has those colours,
    # and nothing but the plot is in colour at all.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert ((abs(pixels - colour).sum(-1)) < 30).sum() > 20, f"no plot line of colour {colour} rendered"
    assert ((pixels.max(-1) - pixels.min(-1)) > 60).sum() > 2000


def test_print_commands_prints_the_commands_the_runs_ran(grid_run, corpus: Path, tmp_path: Path) -> None:
    comparison, _ = grid_run
    for run in comparison.runs():  # what the runner ran is exactly train_command, through this python
        executed = (comparison.out_dir / "logs" / f"{run.name}.log").read_text().splitlines()[0]
        assert executed == "$ " + shlex.join(train_command(run, python=sys.executable))
        assert shlex.join(train_command(run)) == shlex.join(["gpt2reg", *train_command(run, python="py")[3:]])
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", "--data", str(corpus), "-o", str(out), "--pos", "learned,rope",
                                      "--seeds", "2", "--print-commands", *cli_args(TINY)])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("gpt2reg train")]
    expected = Comparison(out, grid({"pos": ["learned", "rope"]}), settings={"data": str(corpus), **TINY}, seeds=2)
    assert commands == [shlex.join(train_command(run)) for run in expected.runs()]
    assert f"-o {out}/runs/rope-s1 --pos rope --n-layer 2" in commands[3] and "--seed 1" in commands[3]
    assert not (out / "runs").exists() and json.loads((out / "compare.json").read_text())["baseline"] == "learned"


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_comparison_continues_without_retraining_finished_runs(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    settings = {**TINY, "max_steps": 40, "eval_interval": 40}  # the stopped run checkpoints as it stops
    cmd = [sys.executable, "-m", "gpt2reg", "compare", "--data", str(corpus), "-o", str(out),
           "--variant", "name=first,pos=learned", "--variant", "name=second,pos=rope", *cli_args(settings)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = out / "runs" / "second-s0"
    wait_for(lambda: (second / "metrics.jsonl").exists() and len(read_metrics(second / "metrics.jsonl")) >= 3)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: its runs are told by the kernel
    proc.wait()
    lock = os.open(out / ".compare.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # released once the orphaned run has checkpointed and stopped
    os.close(lock)
    first = out / "runs" / "first-s0"
    assert read_metrics(first / "metrics.jsonl")[-1]["step"] == 40
    stopped_at = read_metrics(second / "metrics.jsonl")[-1]["step"]
    assert stopped_at < 40
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "second-s0: resuming" in again.stderr and "first-s0: training" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished run was not touched
    steps = [r["step"] for r in read_metrics(second / "metrics.jsonl")]
    assert steps == list(range(1, 41))  # resumed from its checkpoint: each step once
    results = json.loads((out / "results.json").read_text())
    assert [v["status"] for v in results["variants"]] == ["1 finished", "1 finished"]


def test_a_diverging_variant_is_reported_and_the_others_complete_and_deploy(corpus: Path, tmp_path: Path) -> None:
    comparison = Comparison(tmp_path / "cmp", [parse_variant("name=calm,pos=rope"),
                                               parse_variant("name=hot,pos=rope,lr=1e6,grad_clip=0,warmup_steps=0")],
                            settings={"data": str(corpus), **TINY})
    results = run_comparison(comparison, jobs=2, deploy=True)
    calm, hot = results["variants"]
    assert calm["status"] == "1 finished" and hot["status"] == "1 diverged" and not results["failed"]
    assert hot["val_loss"]["mean"] is None and hot["deploy"] is None
    md = (comparison.out_dir / "report.md").read_text()
    assert "| hot |" in md and "1 diverged" in md
    deploy = calm["deploy"]
    assert deploy["exports"] and deploy["validates"] and deploy["max_abs_diff"] < 1e-3
    assert deploy["onnx_mb"] > 0 and deploy["decode_tokens_per_s"] > 0
    assert "ORT decode tok/s" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1  # "max |diff|" escaped


def test_an_unknown_component_fails_before_any_training(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="variant 'nope': unknown positional encoding 'nope'"):
        Comparison(tmp_path / "api", grid({"pos": ["learned", "nope"]}), settings={"data": str(corpus), **TINY})
    result = CliRunner().invoke(cli, ["compare", "--data", str(corpus), "-o", str(tmp_path / "cli"),
                                      "--act", "gelu_tanh,nope", *cli_args(TINY)])
    assert result.exit_code == 1 and "unknown activation 'nope'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("text,message", [
    ("pos=rope,colour=red", "unknown setting 'colour'"),
    ("pos=rope,max_steps=10", "'max_steps' in variant 'pos=rope,max_steps=10': it decides the data or the budget"),
    ("pos=rope,lr=fast", "lr='fast' in variant 'pos=rope,lr=fast': expected float"),
    ("pos", "write KEY=VALUE pairs"),
    ("name=x", "sets nothing besides its name"),
])
def test_bad_variants_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_variant(text)


def test_variants_take_any_model_or_training_setting(corpus: Path, tmp_path: Path) -> None:
    variant = parse_variant("pos=rope,act=swiglu,lr=3e-3,bias=false,dropout=0.1,min_lr=none")
    assert variant.name == "rope-swiglu-lr=3e-3-bias=false-dropout=0.1-min_lr=none"
    assert variant.settings == {"pos": "rope", "act": "swiglu", "lr": 3e-3, "bias": False, "dropout": 0.1,
                                "min_lr": None}
    comparison = Comparison(tmp_path, [parse_variant("name=a,pos=learned"), variant],
                            settings={"data": str(corpus), **TINY}, seeds=2)
    runs = comparison.runs()
    assert [r.name for r in runs] == ["a-s0", "a-s1", f"{variant.name}-s0", f"{variant.name}-s1"]
    cmd = train_command(runs[3])
    assert cmd[:2] == ["gpt2reg", "train"] and cmd[cmd.index("--lr") + 1] == "0.003" and "--no-bias" in cmd
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--max-steps") + 1] == "6"
    with pytest.raises(ConfigError, match="given twice"):
        Comparison(tmp_path, [parse_variant("pos=rope"), parse_variant("pos=rope")],
                   settings={"data": str(corpus), **TINY})
    with pytest.raises(ConfigError, match="vocab_size=96"):
        Comparison(tmp_path, [parse_variant("vocab_size=96")], settings={"data": str(corpus), **TINY})


def test_a_toml_file_describes_a_study(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(f"""
seeds = 3
match_params = true
[settings]
data = "{corpus}"
n_layer = 2
max_steps = 10
[axes]
pos = ["learned", "rope"]
[[variant]]
name = "rope-fast"
pos = "rope"
lr = 3e-3
""")
    study = load_toml(path)
    assert study["seeds"] == 3 and study["settings"]["max_steps"] == 10
    assert [v.name for v in study["variants"]] == ["rope-fast"] and study["variants"][0].settings["lr"] == 3e-3
    result = CliRunner().invoke(cli, ["compare", "--config", str(path), "-o", str(tmp_path / "cmp"), "--n-embd", "64",
                                      "--n-head", "2", "--block-size", "32", "--print-commands"])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("gpt2reg")]
    assert len(commands) == 9 and all("--n-layer 2 --n-head 2 --n-embd 64" in c and "--max-steps 10" in c for c in commands)
    assert "rope-fast-s2 --pos rope" in commands[-1] and "--lr 0.003" in commands[-1]
    path.write_text("[settings]\nmax_steps = 'ten'\n")
    with pytest.raises(ConfigError, match="max_steps='ten'"):
        load_toml(path)
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_toml(path)


def test_match_params_brings_swiglu_within_one_percent_of_gelu(corpus: Path, tmp_path: Path) -> None:
    settings = {"data": str(corpus), "n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 64}
    variants = grid({"act": ["gelu_tanh", "swiglu"]})
    plain = Comparison(tmp_path, variants, settings=settings)
    gap = plain.params["swiglu"] / plain.params["gelu_tanh"] - 1
    assert gap > 0.05  # the gated unit's third matrix: a bigger model that would win by size
    matched = Comparison(tmp_path, variants, settings=settings, match_params=True)
    assert abs(matched.params["swiglu"] / matched.params["gelu_tanh"] - 1) < 0.01
    assert matched.models["swiglu"].hidden_size == 682 and matched.models["gelu_tanh"].hidden_size == 1024
    assert "MLP hidden 1024 -> 682" in matched.notes["swiglu"] and "vs gelu_tanh" in matched.notes["swiglu"]
    result = CliRunner().invoke(cli, ["compare", "--data", str(corpus), "-o", str(tmp_path / "c"), "--act",
                                      "gelu_tanh,swiglu", "--match-params", "--print-commands", *cli_args(settings)[2:]])
    assert result.exit_code == 0 and "--act swiglu" in result.output and "--mlp-ratio 2.6640625" in result.output


TWIN_PLUGIN = '''
import gpt2reg

@gpt2reg.hookimpl
def register_activations(register):
    register("gelu_twin", "gpt2reg.components.activations:GeluTanh", description="gelu_tanh under another name")
'''


def test_a_variant_compared_with_itself_is_not_significantly_different(corpus: Path, tmp_path: Path) -> None:
    from gpt2reg.components import activations

    assert hasattr(activations, "GeluTanh")
    site = tmp_path / "site"  # an installed plugin distribution, as the train processes will find it
    (site / "gpt2reg_twin-0.1.dist-info").mkdir(parents=True)
    (site / "gpt2reg_twin.py").write_text(TWIN_PLUGIN)
    (site / "gpt2reg_twin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: gpt2reg-twin\n"
                                                                  "Version: 0.1\n")
    (site / "gpt2reg_twin-0.1.dist-info" / "entry_points.txt").write_text("[gpt2reg]\ntwin = gpt2reg_twin\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), ENV.get("PYTHONPATH", "")])}
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "gpt2reg", "compare", "--data", str(corpus), "-o", str(out),
                           "--act", "gelu_tanh,gelu_twin", "--seeds", "2", "--jobs", "2", *cli_args(TINY)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    twin = results["variants"][1]
    assert twin["name"] == "gelu_twin" and twin["val_loss"]["n"] == 2
    assert twin["vs_baseline"]["verdict"].startswith("not significant")
    assert "not significant" in (out / "report.md").read_text()


def test_jobs_split_the_cores_or_the_gpus(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from gpt2reg.compare.runner import _slots

    comparison = Comparison(tmp_path, grid({"pos": ["learned", "rope"]}), settings={"data": str(corpus), **TINY})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert _slots(comparison, 1, 1) == [{}]  # one run: torch's own default
    assert _slots(comparison, 2, 1) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert _slots(comparison, 2, 2) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _slots(comparison, 2, 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert _slots(comparison, 4, 1) == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in (4, 5, 6, 7)]
    with pytest.raises(ConfigError, match="needs 6 GPUs; 4 visible"):
        _slots(comparison, 3, 2)
    cpu = Comparison(tmp_path, grid({"pos": ["learned", "rope"]}), settings={"data": str(corpus), **TINY,
                                                                             "device": "cpu"})
    assert _slots(cpu, 2, 1) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    commands = [train_command(r, nproc_per_node=2) for r in comparison.runs()]
    assert commands[0][:5] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"]
