"""Bad input, faults and mistakes, driven by tables: every case must end in one line and leave nothing.

For each case: a non-zero exit, exactly one line on stderr, starting with ``Error:``, no traceback,
the expected words in it, and the working folder (plus any folder the case writes to) listed the
same before and after. Add a row when you add an option or a command.

Commands run in-process (click's CliRunner) in a fresh working folder; tiny models are built once
per module. A full disk is a 2 MB tmpfs and a read-only place a read-only tmpfs, mounted where the
tests run as root (skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gpt2reg.cli import cli

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "64"]
TRAIN = ["--data", "{corpus}", *TINY, "--max-steps", "2", "--batch-size", "2", "--eval-interval", "2",
         "--sample-tokens", "0", "--no-progress"]
LONG_NAME = "n" * 300


@dataclass
class Case:
    """``args`` may name the fixtures' paths as ``{tiny}``, ``{corpus}``, ``{ro}``, ``{full}``, ``{nan_model}``..."""

    id: str
    args: list[str]
    expect: str  # words the error line must contain
    needs: tuple[str, ...] = ()  # "root": needs the tmpfs mounts
    env: dict[str, str] = field(default_factory=dict)


def _listing(folder: Path) -> dict[str, int]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths the tables refer to: a tiny model, a corpus, a read-only and a full file system."""
    import gpt2reg

    root = tmp_path_factory.mktemp("bad_inputs")
    tiny = root / "tiny"
    model = gpt2reg.build_model(n_layer=2, n_head=2, n_embd=32, block_size=64, seed=0)
    gpt2reg.save_model(model, tiny)
    corpus = root / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    other = root / "other.txt"
    other.write_text("Another text entirely, about something else. " * 400)
    (root / "small.txt").write_text("Too short for one window of 64 tokens.")
    broken = root / "nan_model"  # a diverged model: every weight NaN
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    gpt2reg.save_model(model, broken)
    run = root / "run"  # a finished training run, to resume
    done = CliRunner().invoke(cli, ["train", *[a.format(corpus=corpus) for a in TRAIN], "-o", str(run)])
    assert done.exit_code == 0, done.output
    paths = {"tiny": str(tiny), "corpus": str(corpus), "other": str(other), "root": str(root), "nan_model": str(broken),
             "run": str(run), "small": str(root / "small.txt")}
    mounts = []
    if os.geteuid() == 0 and shutil.which("mount"):
        for name, options in (("ro", "ro,size=1m"), ("full", "size=2m")):
            target = root / name
            target.mkdir()
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
            if done.returncode == 0:
                mounts.append(target)
                paths[name] = str(target)
    yield paths
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)  # lazily: a memory-mapped file may hold it


def run_case(case: Case, places: dict[str, str], workdir: Path, monkeypatch) -> None:
    if "root" in case.needs and ("ro" not in places or "full" not in places):
        pytest.skip("needs root to mount a read-only and a full tmpfs")
    monkeypatch.chdir(workdir)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args = [a.format(**places, work=str(workdir)) for a in case.args]
    watched = [workdir, Path(places["root"])]
    before = [_listing(w) for w in watched]
    result = CliRunner().invoke(cli, args, prog_name="gpt2reg")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"{case.id}: raised {result.exception!r}"
    )
    assert result.exit_code != 0, f"{case.id}: exited 0\n{result.output}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{case.id}: stderr was\n{result.stderr}"
    assert "Traceback" not in result.output
    assert result.stdout == "", f"{case.id}: printed before failing: {result.stdout[:200]!r}"
    assert case.expect.lower() in lines[0].lower(), f"{case.id}: {lines[0]}"
    after = [_listing(w) for w in watched]
    assert after == before, f"{case.id}: files changed: {set(map(str, after)) ^ set(map(str, before))}"


def cases(*rows: Case):
    return pytest.mark.parametrize("case", rows, ids=[r.id for r in rows])


# -- where files go ------------------------------------------------------------------------------

WRITES = (
    Case("build-o-is-a-file", ["build", *TINY, "-o", "{corpus}"], "is a file"),
    Case("build-o-under-a-file", ["build", *TINY, "-o", "{corpus}/m"], "is a file, not a folder"),
    Case("build-o-long-name", ["build", *TINY, "-o", LONG_NAME], "longer than the file system's limit"),
    Case("build-o-long-inner-name", ["build", *TINY, "-o", f"a/{LONG_NAME}/m"], "use a shorter name"),
    Case("build-o-not-empty", ["build", *TINY, "-o", "{root}"], "pass --force"),
    Case("build-o-read-only", ["build", *TINY, "-o", "{ro}/m"], "read-only", needs=("root",)),
    Case("build-o-read-only-deep", ["build", *TINY, "-o", "{ro}/a/b/m"], "read-only", needs=("root",)),
    Case("build-o-full-disk", ["build", "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "-o", "{full}/m"],
         "no space left on device", needs=("root",)),
    Case("build-o-full-disk-deep", ["build", "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "-o",
                                    "{full}/x/y/m"], "no space left on device", needs=("root",)),
    Case("export-o-directory", ["export", "{tiny}", "-o", "{root}", "--no-validate"], "is a folder"),
    Case("export-o-existing-file", ["export", "{tiny}", "-o", "{corpus}", "--no-validate"], "--force"),
    Case("export-o-long-name", ["export", "{tiny}", "-o", f"{LONG_NAME}.onnx", "--no-validate"], "shorter name"),
    Case("export-o-under-a-file", ["export", "{tiny}", "-o", "{corpus}/x.onnx"], "is a file, not a folder"),
    Case("export-o-read-only", ["export", "{tiny}", "-o", "{ro}/x.onnx"], "read-only", needs=("root",)),
    Case("export-default-in-read-only-cwd", ["export", "{tiny}", "--no-validate"], "read-only", needs=("root",)),
    Case("export-o-full-disk", ["export", "{tiny}", "-o", "{full}/x/y/m.onnx", "--no-validate"],
         "no space left on device", needs=("root",)),
    Case("export-o-empty", ["export", "{tiny}", "-o", "", "--no-validate"], "give a file name"),
    Case("train-o-is-a-file", ["train", *TRAIN, "-o", "{corpus}"], "is a file"),
    Case("train-o-long-name", ["train", *TRAIN, "-o", LONG_NAME], "shorter name"),
    Case("train-o-read-only", ["train", *TRAIN, "-o", "{ro}/run"], "read-only", needs=("root",)),
    Case("train-o-model-folder", ["train", *TRAIN, "-o", "{tiny}"], "is a model folder"),
    Case("train-o-data-folder", ["train", *TRAIN[2:], "--data", "{root}", "-o", "{root}"], "inside the training data"),
    Case("train-o-inside-data-folder", ["train", *TRAIN[2:], "--data", "{root}", "-o", "{root}/run"],
         "inside the training data"),
    Case("train-o-unrelated-files", ["train", *TRAIN, "-o", "{root}/tiny/.."], "not empty"),
)


# -- sizes that cannot fit, devices that are not there, results that are not there -----------------

HUGE = ["--n-layer", "48", "--n-embd", "16384", "--n-head", "16"]
NOT_DONE = (
    Case("build-needs-600-GB", ["build", *HUGE, "-o", "m"], "of memory"),
    Case("build-huge-vocab", ["build", "--vocab-size", "2000000000", "-o", "m"], "of memory"),
    Case("train-needs-600-GB", ["train", *TRAIN[:2], *HUGE, "-o", "run"], "of memory"),
    Case("generate-100000-samples", ["generate", "{tiny}", "-p", "Hi", "-n", "8", "--num-samples", "100000"], "of memory"),
    Case("generate-many-prompts", ["generate", "{tiny}", *["-p", "Hi"] * 20, "-n", "8", "--num-samples", "5000"], "of memory"),
    Case("generate-device-cuda", ["generate", "{tiny}", "-p", "Hi", "--device", "cuda"], "no CUDA GPU"),
    Case("generate-device-tpu", ["generate", "{tiny}", "-p", "Hi", "--device", "tpu"], "unknown device 'tpu'"),
    Case("eval-device-tpu", ["eval", "{tiny}", "--data", "{corpus}", "--device", "tpu"], "unknown device"),
    Case("train-device-tpu", ["train", *TRAIN, "--device", "tpu", "-o", "run"], "unknown device"),
    Case("bench-device-tpu", ["bench", "{tiny}", "--device", "tpu"], "unknown device"),
    Case("bench-device-cuda", ["bench", "{tiny}", "--device", "cuda"], "no CUDA GPU"),
    Case("bench-missing-model", ["bench", "{root}/nothing-here"], "no such file"),
    Case("bench-not-a-model", ["bench", "{corpus}"], "is not a model or checkpoint file"),
    Case("info-device-free-missing", ["info", "{root}/nothing-here"], "no such file"),
    Case("generate-nan-weights", ["generate", "{nan_model}", "-p", "Hi", "-n", "3"], "NaN or inf"),
    Case("generate-nan-weights-greedy", ["generate", "{nan_model}", "-p", "Hi", "-n", "2", "--greedy", "--json"], "NaN or inf"),
    Case("eval-nan-weights", ["eval", "{nan_model}", "--data", "{corpus}", "--no-progress"], "NaN or inf"),
    Case("export-opset-99", ["export", "{tiny}", "-o", "x.onnx", "--opset", "99"], "does not exist yet"),
    Case("export-opset-unloadable", ["export", "{tiny}", "-o", "x.onnx", "--opset", "28", "--no-validate"],
         "does not load in onnxruntime"),
    Case("export-onto-unrelated-file", ["export", "{tiny}", "-o", "{corpus}"], "was not written by gpt2reg"),
    Case("validate-missing-onnx", ["validate", "nothing.onnx", "{tiny}"], "no such ONNX file"),
    Case("validate-not-onnx", ["validate", "{corpus}", "{tiny}"], "not a readable ONNX file"),
    Case("generate-onnx-missing", ["generate", "--onnx", "nothing.onnx", "-p", "Hi"], "no such"),
    Case("generate-onnx-and-model", ["generate", "{tiny}", "--onnx", "x.onnx", "-p", "Hi"], "not both"),
    Case("generate-empty-prompt", ["generate", "{tiny}", "-p", ""], "must not be empty"),
    Case("generate-empty-stop", ["generate", "{tiny}", "-p", "x", "-n", "3", "--stop", ""], "non-empty"),
    Case("generate-onnx-device-file", ["generate", "--onnx", "/dev/null", "-p", "x"], "is not a file"),
    Case("validate-device-file", ["validate", "/dev/null", "{tiny}"], "is not a file"),
    Case("train-data-device-file", ["train", *TRAIN[2:], "--data", "/dev/null", "-o", "run"], "not a text file"),
    Case("eval-data-device-file", ["eval", "{tiny}", "--data", "/dev/null"], "not a text file"),
    Case("generate-greedy-and-temperature", ["generate", "{tiny}", "-p", "x", "--greedy", "-t", "0.5"], "drop"),
    Case("generate-too-many-tokens", ["generate", "{tiny}", "-p", "x", "-n", "64"], "leaves no room"),
    Case("generate-bad-dtype", ["generate", "{tiny}", "-p", "x", "--dtype", "int8"], "--dtype"),
    Case("build-unknown-preset", ["build", "--preset", "gpt3", "-o", "m"], "unknown preset"),
    Case("build-unknown-pos", ["build", *TINY, "--pos", "rotary", "-o", "m"], "unknown positional encoding"),
    Case("build-heads-do-not-divide", ["build", "--n-layer", "1", "--n-head", "4", "--n-embd", "30", "-o", "m"],
         "not divisible"),
    Case("info-not-a-model", ["info", "{corpus}"], "is not a model or checkpoint file"),
    Case("generate-not-a-model", ["generate", "{corpus}", "-p", "x"], "is not a model or checkpoint file"),
    Case("build-pretrained-and-arch", ["build", "--from-pretrained", "{tiny}", "--n-layer", "3", "-o", "m"], "drop"),
    Case("eval-missing-data", ["eval", "{tiny}", "--data", "nothing.txt"], "no such file"),
    Case("eval-seq-len-over-context", ["eval", "{tiny}", "--data", "{corpus}", "--seq-len", "65"], "seq_len=65"),
    Case("eval-stride-over-seq-len", ["eval", "{tiny}", "--data", "{corpus}", "--seq-len", "8", "--stride", "9"],
         "stride=9"),
    Case("train-no-data", ["train", *TINY, "-o", "run"], "--data"),
    Case("train-seq-len-over-context", ["train", *TRAIN, "--seq-len", "65", "-o", "run"], "exceeds the model's context"),
    Case("train-min-lr-over-lr", ["train", *TRAIN, "--lr", "1e-4", "--min-lr", "1e-3", "-o", "run"], "min_lr="),
    Case("train-init-and-arch", ["train", *TRAIN, "--init", "{tiny}", "-o", "run"], "drop"),
    Case("train-small-vocab", ["train", *TRAIN, "--vocab-size", "100", "-o", "run"], "smaller than the GPT-2"),
)

# The run fixture was started with TRAIN: re-running it with --resume added is fine, other values are not.
RESUMES = (
    Case("resume-no-run-here", ["train", "-o", "{root}/tiny", "--resume"], "no training run here"),
    Case("resume-nothing-there", ["train", "-o", "nothing", "--resume"], "no training run here"),
    Case("resume-other-architecture", ["train", "-o", "{run}", "--resume", "--n-layer", "3"],
         "n_layer (run: 2, given: 3)"),
    Case("resume-other-width", ["train", *TRAIN, "--n-embd", "64", "-o", "{run}", "--resume"],
         "n_embd (run: 32, given: 64)"),
    Case("resume-other-preset", ["train", "-o", "{run}", "--resume", "--preset", "gpt2-medium"], "n_layer (run: 2"),
    Case("resume-unknown-preset", ["train", "-o", "{run}", "--resume", "--preset", "gpt3"], "unknown preset"),
    Case("resume-other-init", ["train", "-o", "{run}", "--resume", "--init", "{tiny}"], "init (run: None"),
    Case("resume-other-data", ["train", "-o", "{run}", "--resume", "--data", "{other}"], "data (run: "),
    Case("resume-other-pos", ["train", "-o", "{run}", "--resume", "--pos", "rope"], "pos (run: 'learned'"),
    Case("train-again-without-resume", ["train", *TRAIN, "-o", "{run}"], "pass --resume"),
)


@cases(*NOT_DONE, *RESUMES)
def test_not_done_is_not_success(case: Case, places, tmp_path, monkeypatch) -> None:
    run_case(case, places, tmp_path, monkeypatch)


def test_resume_refuses_a_changed_corpus(places, tmp_path, monkeypatch) -> None:
    """Same path, other text: the corpus fingerprint differs, so the run does not go on on another text."""
    corpus = tmp_path / "corpus.txt"
    shutil.copy(places["corpus"], corpus)
    run = tmp_path / "run"
    args = [a.format(corpus=corpus) for a in TRAIN]
    assert CliRunner().invoke(cli, ["train", *args, "-o", str(run)]).exit_code == 0
    corpus.write_text(places["other"] and Path(places["other"]).read_text())
    case = Case("resume-changed-corpus", ["train", *args, "--max-steps", "4", "-o", str(run), "--resume"],
                "is not the text this run was trained on")
    run_case(case, places, tmp_path, monkeypatch)


def test_resume_with_the_original_options_continues(places, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    args = [a.format(corpus=places["corpus"]) for a in TRAIN]
    assert CliRunner().invoke(cli, ["train", *args, "-o", str(run)]).exit_code == 0
    again = CliRunner().invoke(cli, ["train", *args, "--max-steps", "3", "-o", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    assert "finished step 3" in again.output


def test_bench_where_every_row_fails_exits_1(places, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", places["tiny"], "--rows", "gpt2reg", "--rounds", "1", "--repeats", "1",
                                      "--prefill-tokens", "5000", "--new-tokens", "2"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 1 and last.startswith("Error: no row of the benchmark produced a result"), result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_memory_cap_is_named_in_the_error(tmp_path) -> None:
    """Under RLIMIT_AS, the estimate is compared with what the limit leaves, not with the machine's memory."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30)); "
        "from gpt2reg.cli import main; sys.argv = ['gpt2reg'] + sys.argv[1:]; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code, "build", "--preset", "gpt2-xl", "-o", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "of memory" in lines[0] and "address-space limit" in lines[0]
    assert list(tmp_path.iterdir()) == []


@cases(*WRITES)
def test_writes(case: Case, places, tmp_path, monkeypatch) -> None:
    if case.id == "export-default-in-read-only-cwd":
        if "ro" not in places:
            pytest.skip("needs root to mount a read-only tmpfs")
        tmp_path = Path(places["ro"])
    run_case(case, places, tmp_path, monkeypatch)


def test_full_disk_during_training_leaves_no_temporary(places, tmp_path, monkeypatch) -> None:
    """A disk that fills up at the first checkpoint: one line, and no temporary checkpoint left on it."""
    if "full" not in places:
        pytest.skip("needs root to mount a full tmpfs")
    run = Path(places["full"]) / "run"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", *[a.format(**places) for a in TRAIN], "--n-embd", "64",
                                      "-o", str(run)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "no space left" in lines[0].lower() or "disk full" in lines[0]
    assert not run.exists(), "a run folder without a checkpoint was left"


def test_staged_write_removes_everything_on_any_error(tmp_path) -> None:
    from gpt2reg.errors import OutputError
    from gpt2reg.files import staged

    class LibraryError(Exception):  # as safetensors' own SafetensorError: not an OSError
        pass

    with pytest.raises(OutputError, match="could not write the thing to .*LibraryError: boom"):
        with staged(tmp_path / "a" / "b", what="the thing") as stage:
            stage.path("x.bin").write_bytes(b"partial")
            raise LibraryError("boom\nsecond line")
    assert list(tmp_path.iterdir()) == []


def test_rlimit_file_size_is_a_one_line_error(tmp_path) -> None:
    """A write cut short by RLIMIT_FSIZE (EFBIG): one line, nothing left."""
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
        "from gpt2reg.cli import main; sys.argv = ['gpt2reg'] + sys.argv[1:]; main()"
    )
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-c", code, "build", "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: could not write the model"), proc.stderr
    assert not out.exists()


# -- numbers: every numeric option of every command, generated from the commands themselves -------


def _commands():
    import click

    from gpt2reg.cli import COMMANDS, LazyGroup

    group = LazyGroup()
    ctx = click.Context(cli)
    return {name: group.get_command(ctx, name) for name in sorted(COMMANDS)}


def _numeric_options():
    import click

    found = []
    for name, command in _commands().items():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types._NumberParamTypeBase)):
                found.append((name, param))
    return found


def test_every_numeric_option_is_range_checked() -> None:
    """New options and commands too: a plain int/float option would let nan, inf or -1 through."""
    import click

    from gpt2reg.cli.options import Real

    loose = [f"{cmd} {param.opts[-1]}" for cmd, param in _numeric_options()
             if not isinstance(param.type, (click.IntRange, Real))]
    assert not loose, f"use click.IntRange or gpt2reg.cli.options.Real for: {', '.join(loose)}"
    unbounded_ints = [f"{cmd} {param.opts[-1]}" for cmd, param in _numeric_options()
                      if isinstance(param.type, click.IntRange) and param.type.min is None]
    assert not unbounded_ints, f"give a lower bound to: {', '.join(unbounded_ints)}"


def _bad_values(param) -> list[str]:
    import click

    t = param.type
    values = ["abc", ""]
    if isinstance(t, click.FloatRange):
        values += ["nan", "inf", "-inf"]
    else:
        values += ["1.5", "nan"]
    if t.min is not None:
        values.append(str(t.min - 1) if isinstance(t, click.IntRange) and not t.min_open else str(t.min) if t.min_open
                      else str(t.min - 0.5))
    if t.max is not None:
        values.append(str(t.max + 1) if isinstance(t, click.IntRange) else str(t.max + 0.5) if not t.max_open
                      else str(t.max))
    return values


OPTION_CASES = [(cmd, param.opts[-1], value) for cmd, param in _numeric_options() for value in _bad_values(param)]


@pytest.mark.parametrize("command,option,value", OPTION_CASES,
                         ids=[f"{c}{o}={v or 'empty'}" for c, o, v in OPTION_CASES])
def test_bad_numbers_are_refused_when_parsed(command, option, value, places, tmp_path, monkeypatch) -> None:
    case = Case(f"{command} {option} {value}", [command, f"{option}={value}"], option)
    run_case(case, places, tmp_path, monkeypatch)


# -- the Python API: the same checks without the CLI ------------------------------------------------

NAN, INF = float("nan"), float("inf")


def _gpt_config(**fields):
    from gpt2reg import GPTConfig

    return GPTConfig(**{"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, **fields})


def _train_config(**fields):
    from gpt2reg import TrainConfig

    return TrainConfig(**fields)


def _generate(model_dir, **kwargs):
    import gpt2reg

    return gpt2reg.generate(gpt2reg.load_model(model_dir), "Hello", **{"max_new_tokens": 2, **kwargs})


API_CASES = [
    *[(f"GPTConfig-{k}={v}", _gpt_config, {k: v}, f"{k}=")
      for k, values in {
          "mlp_ratio": [NAN, INF, -1.0, 0.0, "4"], "dropout": [NAN, INF, -0.1, 1.0], "norm_eps": [NAN, INF, 0.0, -1e-5],
          "init_std": [NAN, INF, 0.0], "n_layer": [0, -1, 2.5, True, "2"], "n_head": [0, 1.0],
          "n_embd": [0, -8], "block_size": [0], "vocab_size": [0, -5], "pos": [3], "bias": ["yes"],
      }.items() for v in values],
    *[(f"TrainConfig-{k}={v}", _train_config, {k: v}, f"{k}=")
      for k, values in {
          "lr": [NAN, INF, 0.0, -1.0, "0.1"], "min_lr": [NAN, -1.0, 1.0], "weight_decay": [NAN, INF, -0.1],
          "grad_clip": [NAN, INF, -1.0], "val_fraction": [NAN, 1.0, -0.1], "max_steps": [0, 1.5, NAN],
          "batch_size": [0, 2.0], "grad_accum": [0, 10**11], "warmup_steps": [-1], "seed": [-1, 0.5], "seq_len": [0],
          "checkpoint_interval": [0], "keep_checkpoints": [0], "eval_batches": [0], "sample_tokens": [-1],
          "device": [0],
      }.items() for v in values],
]
GENERATE_CASES = [
    ("temperature", NAN), ("temperature", INF), ("temperature", -1.0), ("temperature", "1"),
    ("top_p", NAN), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0), ("top_k", 2.5), ("top_k", NAN),
    ("seed", -1), ("seed", 1.5), ("num_samples", 0), ("num_samples", NAN), ("max_new_tokens", 0),
    ("max_new_tokens", NAN),
]


@pytest.mark.parametrize("id_,make,fields,expect", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_configs_refuse_bad_numbers(id_, make, fields, expect) -> None:
    from gpt2reg import ConfigError

    with pytest.raises(ConfigError, match=expect.replace("+", r"\+")) as caught:
        make(**fields)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name,value", GENERATE_CASES, ids=[f"{n}={v}" for n, v in GENERATE_CASES])
def test_api_generate_refuses_bad_numbers(name, value, places) -> None:
    from gpt2reg.errors import InputError

    with pytest.raises(InputError, match=f"{name}="):
        _generate(places["tiny"], **{name: value})


# -- plugin mistakes --------------------------------------------------------------------------------


class _Crashing:
    """Hooks registering components that go wrong in the ways plugin authors' components do."""

    @staticmethod
    def _raises(config):
        raise RuntimeError("boom in __init__\nsecond line")

    @staticmethod
    def _not_a_module(config):
        return 42

    @staticmethod
    def _half_width(config):
        from torch import nn

        from gpt2reg.components.base import Activation

        class Glu(Activation):  # a gated unit whose author forgot gated = True
            def forward(self, x):
                a, b = x.chunk(2, dim=-1)
                return a * nn.functional.silu(b)

        return Glu(config)

    @staticmethod
    def _activation(config):
        from gpt2reg.components.base import Activation

        return Activation(config)

    @staticmethod
    def _positional(config):
        from gpt2reg.components.base import PositionalEncoding

        return PositionalEncoding(config)


class CrashingPlugin:
    import gpt2reg as _g

    @_g.hookimpl
    def register_positional_encodings(self, register):
        register("crash", _Crashing._raises)
        register("an_activation", _Crashing._activation)  # an Activation under the positional hook
        register("forty_two", _Crashing._not_a_module)
        register("typo_class", "gpt2reg.components.positional:RotaryPositionz")
        register("typo_module", "gpt2reg.components.positionall:RotaryPositions")

    @_g.hookimpl
    def register_activations(self, register):
        register("half_width", _Crashing._half_width)
        register("crash_act", _Crashing._raises)

    @_g.hookimpl
    def register_norms(self, register):
        register("a_positional", _Crashing._positional)


@pytest.fixture
def crashing_plugin():
    from gpt2reg import plugin_registered

    with plugin_registered(CrashingPlugin(), name="crashing"):
        yield


PLUGIN_CASES = (
    Case("pos-raises-in-init", ["build", *TINY, "--pos", "crash", "-o", "m"],
         "positional encoding 'crash' of plugin 'crashing' failed while being built: RuntimeError: boom"),
    Case("act-raises-in-init", ["build", *TINY, "--act", "crash_act", "-o", "m"], "activation 'crash_act'"),
    Case("activation-registered-as-pos", ["build", *TINY, "--pos", "an_activation", "-o", "m"],
         "is not a positional encoding"),
    Case("pos-registered-as-norm", ["build", *TINY, "--norm", "a_positional", "-o", "m"], "is not a norm"),
    Case("factory-returns-no-module", ["build", *TINY, "--pos", "forty_two", "-o", "m"], "not a torch nn.Module"),
    Case("typo-in-class-path", ["build", *TINY, "--pos", "typo_class", "-o", "m"], "cannot load"),
    Case("typo-in-module-path", ["build", *TINY, "--pos", "typo_module", "-o", "m"], "cannot load"),
    Case("train-with-crashing-pos", ["train", *TRAIN, "--pos", "crash", "-o", "run"], "failed while being built"),
)


@cases(*PLUGIN_CASES)
def test_plugin_mistakes_name_plugin_and_component(case: Case, crashing_plugin, places, tmp_path, monkeypatch) -> None:
    run_case(case, places, tmp_path, monkeypatch)


def test_plugins_lists_unresolvable_paths_as_failed(crashing_plugin) -> None:
    from gpt2reg import list_plugins

    info = next(i for i in list_plugins() if i.name == "crashing")
    assert info.status == "failed" and "'gpt2reg.components.positional:RotaryPositionz'" in info.error
    assert "defines no 'RotaryPositionz'" in info.error or "no module named" in info.error


def test_unresolvable_paths_are_found_without_importing_them() -> None:
    from gpt2reg.plugins import _unresolvable

    assert _unresolvable("gpt2reg.components.positional:RotaryPositions") == ""
    assert "defines no 'Nope'" in _unresolvable("gpt2reg.components.positional:Nope")
    assert "no module named" in _unresolvable("gpt2reg.components.nothing:X")
    assert "cannot be found" in _unresolvable("nowhere_at_all.sub:X")


ENV_CASES = (
    Case("disabled-plugin-named", ["build", *TINY, "--pos", "alibi", "-o", "m"], "GPT2REG_LOAD_PLUGINS leaves it out",
         env={"GPT2REG_LOAD_PLUGINS": ""}),
    Case("disabled-plugin-other-allowed", ["build", *TINY, "--act", "alibi_act_nope", "-o", "m"],
         "unknown activation", env={"GPT2REG_LOAD_PLUGINS": "gpt2reg"}),
    Case("strict-missing-plugin", ["components"], "GPT2REG_STRICT_PLUGINS is set",
         env={"GPT2REG_LOAD_PLUGINS": "nothere", "GPT2REG_STRICT_PLUGINS": "1"}),
    Case("strict-missing-plugin-build", ["build", *TINY, "-o", "m"], "no installed gpt2reg plugin provides",
         env={"GPT2REG_LOAD_PLUGINS": "alibi,nothere", "GPT2REG_STRICT_PLUGINS": "1"}),
)


@cases(*ENV_CASES)
def test_plugin_environment(case: Case, places, tmp_path, monkeypatch) -> None:
    from gpt2reg import plugins

    if case.id.startswith("disabled-plugin-named") and "alibi" not in plugins.get_registry().names("pos"):
        pytest.skip("the example plugin gpt2reg-alibi is not installed")
    plugins.reset()
    try:
        run_case(case, places, tmp_path, monkeypatch)
    finally:
        monkeypatch.undo()
        plugins.reset()


def test_check_component_reports_a_crash_as_a_named_property(crashing_plugin) -> None:
    from gpt2reg.testing import check_component

    with pytest.raises(AssertionError, match=r"^shapes: act 'half_width' raised RuntimeError.*did you forget gated = True"):
        check_component("act", "half_width", checks=["shapes"])
    with pytest.raises(AssertionError, match=r"^shapes: pos 'crash' could not be built: PluginError"):
        check_component("pos", "crash", checks=["shapes"])


def test_plugin_components_takes_the_distribution_name() -> None:
    from gpt2reg.plugins import get_registry
    from gpt2reg.testing import plugin_components

    if "alibi" not in get_registry().names("pos"):
        pytest.skip("the example plugin gpt2reg-alibi is not installed")
    assert plugin_components("gpt2reg-alibi") == plugin_components("alibi") == plugin_components("gpt2reg_alibi")


# -- sampling: every accepted temperature, top-k and top-p gives a distribution ---------------------

TINY_T, HUGE_T = (1e-320, 5e-324, 1e-300, 1e-8), (1e300, sys.float_info.max)
SAMPLING = [(t, k, p) for t in (*TINY_T, 0.7, *HUGE_T)
            for k, p in ((None, None), (1, None), (5, None), (10**9, None), (None, 5e-324), (None, 0.5), (3, 0.999999))]


@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLING, ids=[f"t={t:g},k={k},p={p}" for t, k, p in SAMPLING])
def test_any_accepted_sampling_options_give_a_distribution(temperature, top_k, top_p) -> None:
    """The numpy sampler every path uses (torch, ONNX, the server): finite, non-negative, sums to one; a
    tiny temperature is the greedy choice (a tie for the best shares it), a huge one spreads the mass."""
    import numpy as np

    from gpt2reg.generation import Sampler, SamplingOptions, probabilities

    logits = np.random.default_rng(0).normal(0, 8, size=(3, 50304)).astype(np.float32)
    logits[1, :2] = logits[1].max() + 1  # row 1: two tokens tie for the best
    options = SamplingOptions(temperature, top_k, top_p)
    probs = probabilities(logits, options)
    assert np.isfinite(probs).all() and (probs >= 0).all() and np.allclose(probs.sum(-1), 1)
    best = logits.max(-1, keepdims=True)
    if temperature in TINY_T:
        assert (probs[logits < best] == 0).all() and (probs[[0, 2], logits[[0, 2]].argmax(-1)] == 1).all()
    tokens = Sampler(options, [0, 1, 2], seed=0)(logits)
    assert all(probs[i, t] > 0 for i, t in enumerate(tokens))


def test_a_tiny_temperature_generates_the_greedy_text(places, tmp_path, monkeypatch) -> None:
    """1e-320 used to overflow to NaN and end every sample at once with end-of-text (finish_reason stop)."""
    monkeypatch.chdir(tmp_path)
    args = ["generate", places["tiny"], "-p", "Hello", "-n", "12", "--seed", "0", "--json"]
    greedy = CliRunner().invoke(cli, [*args, "--greedy"])
    tiny = CliRunner().invoke(cli, [*args, "-t", "1e-320"])
    assert greedy.exit_code == tiny.exit_code == 0, tiny.output
    import json

    ours, theirs = json.loads(tiny.stdout)[0], json.loads(greedy.stdout)[0]
    assert ours["generated_ids"] == theirs["generated_ids"] and ours["finish_reason"] == "length", ours


# -- text input: the tokenizer never sees a pathological run in one piece ---------------------------

PATHOLOGICAL = {
    "1M-spaces": " " * 1_000_000,
    "1M-newlines": "\n" * 1_000_000,
    "1M-mixed-whitespace": " \t\n\r" * 250_000,
    "1M-no-break-spaces": "\xa0" * 1_000_000,
    "1M-ideographic-spaces": "\u3000" * 500_000,
    "1M-letters": "a" * 1_000_000,
    "runs-between-words": ("word" + " " * 200_000) * 5,
    "end-of-text-run": "<|endoftext|>" * 80_000,
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_text_tokenizes_in_bounded_pieces(name) -> None:
    from gpt2reg.tokenizer import PIECE_CHARS, encode, encode_batch, get_tokenizer, pieces

    text = PATHOLOGICAL[name]
    assert max(len(p) for p in pieces(text)) <= PIECE_CHARS
    tok = get_tokenizer()
    assert tok.decode(encode(text)) == text and encode_batch([text, "x"])[0] == encode(text)
    special = encode(text, special=True)
    assert tok.decode(special) == text and (50256 in special) == ("<|endoftext|>" in text)


def test_the_unbounded_tokenizer_really_fails_on_them() -> None:
    """Keeps the table above honest: tiktoken itself panics on one of its rows (a Rust stack overflow)."""
    code = "from gpt2reg.tokenizer import get_tokenizer; get_tokenizer().encode_ordinary(' ' * 1_000_000)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "panicked" in proc.stderr


def _varied_text(seed: int) -> str:
    import random

    rng = random.Random(seed)
    words = ["hello", "World", "don't", "we'll", "I'm", "123", "4.56", "!!", "...", "Ünïcödé", "日本語", "😀", "—",
             "<|endoftext|>", "x", "'s", "e=mc²", "\"quoted\"", "(paren)", "\x1c", "tab\there"]
    gaps = [" ", "\n", "  ", " \n", "\t", "\r\n", "\n\n", " \u3000", "\xa0", "   "]
    return "".join(rng.choice(words) + rng.choice(gaps) for _ in range(rng.randint(0, 120)))


@pytest.mark.parametrize("piece_chars", [24, 40, 64, 4096])
def test_bounded_pieces_give_the_unsplit_tokens_on_normal_text(piece_chars) -> None:
    """Cut only where the split pattern starts a new match anyway: on text with such a place in every window,
    the tokens are those of one unsplit encoding, ordinary and with <|endoftext|> special."""
    from gpt2reg.tokenizer import encode, encode_batch, get_tokenizer

    tok = get_tokenizer()
    texts = [_varied_text(seed) for seed in range(300)]
    for text in texts:
        assert encode(text, piece_chars=piece_chars) == tok.encode_ordinary(text), text
        assert encode(text, special=True, piece_chars=piece_chars) == tok.encode(text, allowed_special={"<|endoftext|>"})
    assert encode_batch(texts, piece_chars=piece_chars) == tok.encode_ordinary_batch(texts)


def test_bounded_pieces_give_the_unsplit_tokens_on_this_repository() -> None:
    """Real text (the package's sources and README, ~1 MB): cut at the default size, tokens unchanged."""
    from gpt2reg.tokenizer import PIECE_CHARS, encode, get_tokenizer, pieces

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in sorted([*root.glob("gpt2reg/**/*.py"), *root.glob("*.md")]))
    assert len(list(pieces(text))) > len(text) // PIECE_CHARS
    assert encode(text) == get_tokenizer().encode_ordinary(text)


@pytest.fixture(scope="module")
def spaces_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spaces") / "spaces.txt"
    path.write_text("Some words first. " * 300 + " " * 1_000_000 + "And words after. " * 300)
    return path


def test_train_and_eval_take_a_million_spaces(spaces_corpus, tmp_path, monkeypatch) -> None:
    """train end to end; eval up to its scoring (scoring a million tokens is slow and not what is tested)."""
    from gpt2reg.training import eval as evaluation

    monkeypatch.chdir(tmp_path)
    train = CliRunner().invoke(cli, ["train", *[a.format(corpus=spaces_corpus) for a in TRAIN], "-o", "run"])
    assert train.exit_code == 0 and "Traceback" not in train.output, train.output
    scored = []
    monkeypatch.setattr(evaluation, "evaluate_tokens", lambda model, tokens, **kw: scored.append(tokens) or {})
    evaluation.evaluate(str(tmp_path / "run" / "model"), spaces_corpus)
    assert scored[0].size > 1_000_000 // 2 and (scored[0] == 220).sum() > 0  # " " is token 220


def test_a_prompt_of_a_million_spaces_is_encoded(places) -> None:
    """What generate and the server's prompt parsing call (gpt2reg.generation.encode_prompts)."""
    from gpt2reg.generation import encode_prompts

    (ids,) = encode_prompts(" " * 1_000_000 + "<|endoftext|>", 50257)
    assert len(ids) > 1 and ids[-1] == 50256


# -- compare: study files, options and report inputs, one schema ----------------------------------

COMPARE = ["compare", "--data", "{corpus}", *TINY, "--max-steps", "2", "--batch-size", "2", "--eval-interval", "2",
           "--sample-tokens", "0"]
_STUDY_TAIL = '[[variant]]\nname = "a"\npos = "rope"\n'
STUDIES = {  # file name -> TOML text; each is refused before anything is written
    "seeds-twice": "seeds = [5, 5]\n" + _STUDY_TAIL,
    "seeds-zero": "seeds = 0\n" + _STUDY_TAIL,
    "seeds-empty": "seeds = []\n" + _STUDY_TAIL,
    "seeds-true": "seeds = true\n" + _STUDY_TAIL,
    "seeds-float": "seeds = 1.5\n" + _STUDY_TAIL,
    "seeds-text": 'seeds = "3"\n' + _STUDY_TAIL,
    "seeds-negative": "seeds = [0, -1]\n" + _STUDY_TAIL,
    "seeds-bool-in-list": "seeds = [0, true]\n" + _STUDY_TAIL,
    "seeds-too-many": "seeds = 100000000000\n" + _STUDY_TAIL,
    "match-params-text": 'match_params = "no"\n' + _STUDY_TAIL,
    "match-params-int": "match_params = 1\n" + _STUDY_TAIL,
    "baseline-int": "baseline = 4\n" + _STUDY_TAIL,
    "baseline-unknown": 'baseline = "b"\n' + _STUDY_TAIL,
    "variant-int": "variant = 5\n",
    "variant-name-int": "[[variant]]\nname = 3\npos = \"rope\"\n",
    "variant-empty": '[[variant]]\nname = "a"\n',
    "variant-list-value": '[[variant]]\nname = "a"\nlr = [1, 2]\n',
    "variant-shared-key": '[[variant]]\nname = "a"\nmax_steps = 3\n',
    "variant-unknown-key": '[[variant]]\nname = "a"\nspeed = 3\n',
    "variant-int-for-text": "[[variant]]\npos = 5\n",
    "variants-same-name": _STUDY_TAIL * 2,
    "axes-int": "axes = 5\n",
    "axes-list-of-ints": "[axes]\npos = [1, 2]\n",
    "axes-empty-list": "[axes]\npos = []\n",
    "axes-twice": '[axes]\npos = ["learned", "learned"]\n',
    "axes-unknown-kind": '[axes]\nlr = ["1", "2"]\n',
    "axes-unknown-component": '[axes]\npos = ["learned", "nope"]\n',
    "settings-int": "settings = 3\n" + _STUDY_TAIL,
    "setting-float-for-int": "[settings]\nn_layer = 2.5\n" + _STUDY_TAIL,
    "setting-bool-for-int": "[settings]\nn_layer = true\n" + _STUDY_TAIL,
    "setting-huge-float": "[settings]\nn_layer = 1e400\n" + _STUDY_TAIL,
    "setting-nan": "[settings]\nlr = nan\n" + _STUDY_TAIL,
    "setting-date": "[settings]\nlr = 1970-01-01\n" + _STUDY_TAIL,
    "setting-bool-text": '[settings]\nbias = "maybe"\n' + _STUDY_TAIL,
    "unknown-key": "speed = 3\n" + _STUDY_TAIL,
    "not-toml": "seeds = [\n",
}
STUDY_EXPECT = {"seeds-twice": "given twice", "seeds-zero": "seeds=0", "seeds-empty": "at least one seed",
                "seeds-true": "not true/false", "seeds-float": "not a number", "seeds-text": "not text",
                "seeds-negative": "seed -1", "seeds-bool-in-list": "seed True", "seeds-too-many": "seeds=100000000000",
                "match-params-text": "match_params='no'", "match-params-int": "match_params=1",
                "baseline-int": "baseline=4", "baseline-unknown": "baseline 'b' is not a variant",
                "variant-int": "variant must be tables", "variant-name-int": "name=3 must be text",
                "variant-empty": "sets nothing", "variant-list-value": "not a list",
                "variant-shared-key": "every variant shares it", "variant-unknown-key": "unknown setting 'speed'",
                "variant-int-for-text": "unknown positional encoding", "variants-same-name": "given twice",
                "axes-int": "must be a table of lists", "axes-list-of-ints": "non-empty list of component names",
                "axes-empty-list": "non-empty list", "axes-twice": "learned given twice",
                "axes-unknown-kind": "unknown axis 'lr'", "axes-unknown-component": "nope",
                "settings-int": "settings must be a table", "setting-float-for-int": "expected int",
                "setting-bool-for-int": "expected int", "setting-huge-float": "expected int", "setting-nan": "lr=nan",
                "setting-date": "not date", "setting-bool-text": "expected true/false",
                "unknown-key": "unknown key(s) speed", "not-toml": "not valid TOML"}
COMPARE_CASES = (
    *[Case(f"study-{name}", [*COMPARE, "--config", f"{{studies}}/{name}.toml", "-o", "cmp"], STUDY_EXPECT[name])
      for name in STUDIES],
    *[Case(f"study-{name}-print-commands", [*COMPARE, "--config", f"{{studies}}/{name}.toml", "-o", "cmp",
                                            "--print-commands"], STUDY_EXPECT[name])
      for name in ("seeds-twice", "match-params-text", "variant-int")],
    Case("compare-jobs-huge", [*COMPARE, "--variant", "pos=rope", "--jobs", "99999999999999999999", "-o", "cmp"],
         "--jobs"),
    Case("compare-jobs-over-max", [*COMPARE, "--variant", "pos=rope", "--jobs", "257", "-o", "cmp"], "--jobs"),
    Case("compare-seeds-zero", [*COMPARE, "--variant", "pos=rope", "--seeds", "0", "-o", "cmp"], "--seeds"),
    Case("compare-o-is-a-file", [*COMPARE, "--variant", "pos=rope", "-o", "{corpus}"], "is a file"),
    Case("compare-o-read-only", [*COMPARE, "--variant", "pos=rope", "-o", "{ro}/cmp"], "read-only", needs=("root",)),
    Case("compare-print-commands-read-only", [*COMPARE, "--variant", "pos=rope", "-o", "{ro}/cmp",
                                              "--print-commands"], "read-only", needs=("root",)),
    Case("compare-report-only-nothing-there", ["compare", "-o", "{root}/nothing", "--report-only"], "no comparison here"),
)


@pytest.fixture(scope="module")
def studies(places) -> str:
    folder = Path(places["root"]) / "studies"
    folder.mkdir()
    for name, text in STUDIES.items():
        (folder / f"{name}.toml").write_text(text)
    return str(folder)


@cases(*COMPARE_CASES)
def test_compare_inputs_are_checked_before_anything_runs(case: Case, places, studies, tmp_path, monkeypatch) -> None:
    run_case(case, {**places, "studies": studies}, tmp_path, monkeypatch)


def _study(places, folder: Path) -> Path:
    """A finished comparison folder without training: the plan compare writes, and the fixture's finished run
    as each of its runs (its model folder linked). Variant 'twin' scores 0.1 worse at every evaluation."""
    import json

    args = [a.format(**places) for a in COMPARE]
    made = CliRunner().invoke(cli, [*args, "--variant", "pos=learned", "--variant", "name=twin,pos=learned",
                                    "--seeds", "2", "--print-commands", "-o", str(folder)])
    assert made.exit_code == 0, made.output
    run = Path(places["run"])
    for name in ("learned-s0", "learned-s1", "twin-s0", "twin-s1"):
        target = folder / "runs" / name
        target.mkdir(parents=True)
        for file in ("run.json", "tokens.json"):
            shutil.copy(run / file, target / file)
        (target / "model").symlink_to(run / "model")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for r in records:
            if name.startswith("twin") and r.get("val_loss") is not None:
                r["val_loss"] += 0.1
        (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _edit_json(name: str, change):
    def edit(folder: Path) -> None:
        import json

        path = folder / name
        data = json.loads(path.read_text())
        change(data)  # in place
        path.write_text(json.dumps(data))
    return edit


def _write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def _records(name: str, change):
    def edit(folder: Path) -> None:
        import json

        path = folder / name
        records = [json.loads(line) for line in path.read_text().splitlines()]
        records[-1] = change(records[-1])
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return edit


def _rename_runs(folder: Path) -> None:
    (folder / "compare.json").unlink()  # run folders' names: learned-s1 and learned-s01 are one seed twice
    (folder / "runs" / "twin-s0").rename(folder / "runs" / "learned-s01")


PLAN = "compare.json"
REPORT_INPUTS = [  # (id, how the study is edited, the words of the error)
    ("plan-not-json", _write(PLAN, "{"), "unreadable"),
    ("plan-not-utf8", lambda f: (f / PLAN).write_bytes(b"\xff\xfe{"), "unreadable"),
    ("plan-a-list", _write(PLAN, "[]"), "gpt2reg-compare"),
    ("plan-no-format", _edit_json(PLAN, lambda d: d.pop("format")), "gpt2reg-compare"),
    ("plan-no-variants", _edit_json(PLAN, lambda d: d.update(variants=[])), "non-empty list"),
    ("plan-variant-not-object", _edit_json(PLAN, lambda d: d.update(variants=[5])), "non-empty list of objects"),
    ("plan-variant-name-number", _edit_json(PLAN, lambda d: d["variants"][0].update(name=5)), "variant name 5"),
    ("plan-variant-name-path", _edit_json(PLAN, lambda d: d["variants"][0].update(name="../x")), "folder-safe"),
    ("plan-variant-twice", _edit_json(PLAN, lambda d: d["variants"].append(d["variants"][0])), "distinct"),
    ("plan-variant-model-missing", _edit_json(PLAN, lambda d: d["variants"][0].pop("model")), '"model"'),
    ("plan-params-text", _edit_json(PLAN, lambda d: d["variants"][0].update(params="many")), "params"),
    ("plan-baseline-unknown", _edit_json(PLAN, lambda d: d.update(baseline="nope")), "baseline 'nope'"),
    ("plan-runs-not-list", _edit_json(PLAN, lambda d: d.update(runs={})), '"runs"'),
    ("plan-run-unknown-variant", _edit_json(PLAN, lambda d: d["runs"][0].update(variant="nope")), "variant 'nope'"),
    ("plan-run-seed-true", _edit_json(PLAN, lambda d: d["runs"][0].update(seed=True)), "seed True"),
    ("plan-run-seed-float", _edit_json(PLAN, lambda d: d["runs"][0].update(seed=0.5)), "seed 0.5"),
    ("plan-run-dir-escapes", _edit_json(PLAN, lambda d: d["runs"][0].update(dir="../../etc")), "its folder must be"),
    ("plan-run-twice", _edit_json(PLAN, lambda d: d["runs"].append(dict(d["runs"][0], name="again",
                                                                           dir="runs/again"))), "listed twice"),
    ("plan-seeds-twice", _edit_json(PLAN, lambda d: d.update(seeds=[0, 0])), "distinct seeds"),
    ("plan-settings-list", _edit_json(PLAN, lambda d: d.update(settings=[])), '"settings"'),
    ("plan-jobs-text", _edit_json(PLAN, lambda d: d.update(jobs="2")), '"jobs"'),
    ("run-json-not-json", _write("runs/learned-s0/run.json", "{"), "run.json: unreadable"),
    ("run-json-a-list", _write("runs/learned-s0/run.json", "[]"), "not the run.json"),
    ("run-json-max-steps-text", _edit_json("runs/learned-s0/run.json", lambda d: d["train"].update(max_steps="2")),
     "train.max_steps"),
    ("run-json-no-model", _edit_json("runs/learned-s0/run.json", lambda d: d.pop("model")), "not the run.json"),
    ("metrics-step-text", _records("runs/twin-s1/metrics.jsonl", lambda r: {**r, "step": "2"}), "record 2"),
    ("metrics-record-a-number", _records("runs/twin-s1/metrics.jsonl", lambda r: 5), "record 2"),
    ("metrics-loss-text", _records("runs/twin-s1/metrics.jsonl", lambda r: {**r, "val_loss": "low"}), "record 2"),
    ("metrics-loss-bool", _records("runs/twin-s1/metrics.jsonl", lambda r: {**r, "loss": True}), "record 2"),
    ("names-one-seed-twice", _rename_runs, "listed twice"),
]


@pytest.mark.parametrize("edit,expect", [c[1:] for c in REPORT_INPUTS], ids=[c[0] for c in REPORT_INPUTS])
def test_report_only_checks_what_it_reads(edit, expect, places, tmp_path, monkeypatch) -> None:
    study = _study(places, tmp_path / "study")
    edit(study)
    case = Case("report-only", ["compare", "-o", str(study), "--report-only"], expect)
    run_case(case, places, tmp_path, monkeypatch)


def _strict_json(path: Path):
    import json

    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_loss_is_diverged_never_finished_nor_best(value, places, tmp_path) -> None:
    """An edited (or broken) log: the run is diverged; results.json stays strict JSON, nulls said where."""
    study = _study(places, tmp_path / "study")
    path = study / "runs" / "twin-s0" / "metrics.jsonl"
    path.write_text(path.read_text().replace('"val_loss": ', f'"val_loss": {value}, "was": '))
    result = CliRunner().invoke(cli, ["compare", "-o", str(study), "--report-only", "--json"])
    assert result.exit_code == 0, result.output
    results = _strict_json(study / "results.json")
    import json

    assert json.loads(result.stdout, parse_constant=lambda c: pytest.fail(c)) == results
    twin = next(v for v in results["variants"] if v["name"] == "twin")
    assert [r["status"] for r in twin["runs"]] == ["diverged", "finished"] and twin["val_loss"]["n"] == 1
    assert any(p.startswith("variants[1].runs[0].curve") for p in results["non_finite"]), results["non_finite"]
    assert "best final validation loss: the baseline" in (study / "report.md").read_text()


def test_no_spread_gives_null_not_infinity(places, tmp_path) -> None:
    """Two seeds with equal losses per variant: Welch's t is infinite; results.json says null, and where."""
    study = _study(places, tmp_path / "study")
    result = CliRunner().invoke(cli, ["compare", "-o", str(study), "--report-only"])
    assert result.exit_code == 0, result.output
    results = _strict_json(study / "results.json")
    assert results["variants"][1]["vs_baseline"]["t"] is None
    assert results["non_finite"] == ["variants[1].vs_baseline.t: inf"]


def test_a_changed_corpus_is_an_error_before_training(places, tmp_path, monkeypatch) -> None:
    """A finished run in the folder was trained on the corpus before it changed: more seeds would train on
    another text. Refused before anything is written; --allow-changed-data goes on (not tested: it trains)."""
    corpus = tmp_path / "corpus.txt"
    shutil.copy(places["corpus"], corpus)
    study = _study({**places, "corpus": str(corpus)}, tmp_path / "study")
    for name in ("learned-s0", "learned-s1", "twin-s0", "twin-s1"):  # the runs' token caches, of this corpus
        shutil.copy(Path(places["run"]) / "tokens.bin", study / "runs" / name / "tokens.bin")
    (study / "runs" / "twin-s0" / "run.json").write_text(
        (study / "runs" / "twin-s0" / "run.json").read_text().replace(places["corpus"], str(corpus)))
    corpus.write_text(Path(places["other"]).read_text())
    for name in ("learned-s0", "learned-s1", "twin-s1"):
        shutil.rmtree(study / "runs" / name)
    args = [a.format(**{**places, "corpus": str(corpus)}) for a in COMPARE]
    case = Case("changed-corpus", [*args, "--variant", "pos=learned", "--variant", "name=twin,pos=learned",
                                   "--seeds", "2", "-o", str(study)], "is not the text run(s) twin-s0")
    run_case(case, places, tmp_path, monkeypatch)


def test_runs_that_saw_other_data_fail_the_report(places, tmp_path) -> None:
    """Seed 0 of one variant trained on another text: the report says so, and so do the console and the exit code."""
    import json

    study = _study(places, tmp_path / "study")
    path = study / "runs" / "twin-s0" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "batch_sha256": "0" * 16}) + "\n" for r in records))
    result = CliRunner().invoke(cli, ["compare", "-o", str(study), "--report-only"])
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1].startswith("Error: the runs of seed(s) 0")
    assert "WARNING the runs did not see the same data" in (study / "report.md").read_text()
    allowed = CliRunner().invoke(cli, ["compare", "-o", str(study), "--report-only", "--allow-changed-data"])
    assert allowed.exit_code == 0, allowed.output


# -- plugins that print or hang at import ----------------------------------------------------------

NOISY_PLUGINS = {  # dist name: (entry-point name, module source)
    "chatty-plugin": ("chatty", "print('hello from chatty, imported')\nimport sys\nsys.stdout.write('more\\n')\n"),
    "hanging-plugin": ("hanging", "import time\nprint('about to hang')\ntime.sleep(3600)\n"),
}


@pytest.fixture(scope="module")
def noisy_site(tmp_path_factory) -> Path:
    from test_plugins import install_site

    return install_site(tmp_path_factory.mktemp("noisy_site"), NOISY_PLUGINS)


PLUGIN_IMPORTS = [  # (id, args, extra environment)
    ("components-json", ["components", "--json"], {}),
    ("plugins-json", ["plugins", "--json"], {}),
    ("info-json", ["info", "{tiny}", "--json"], {}),
    ("generate-json", ["generate", "{tiny}", "-p", "Hi", "-n", "2", "--seed", "0", "--json"], {}),
    ("train-json", ["train", *TRAIN, "-o", "{work}/run", "--json"], {}),
]


@pytest.mark.parametrize("args,env", [c[1:] for c in PLUGIN_IMPORTS], ids=[c[0] for c in PLUGIN_IMPORTS])
def test_plugin_imports_neither_print_to_stdout_nor_hang(args, env, noisy_site, places, tmp_path) -> None:
    """Machine-readable stdout stays JSON; the hanging import is skipped after the documented limit, with a
    warning naming the setting; the command finishes well within the time the plugin hangs."""
    import json
    import time

    from test_plugins import gpt2reg_cli

    start = time.monotonic()
    args = [a.format(**places, work=tmp_path) for a in args]
    result = gpt2reg_cli(noisy_site, *args, GPT2REG_PLUGIN_IMPORT_TIMEOUT="2", **env)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # nothing the plugins printed
    assert "hello from chatty" in result.stderr and "more" in result.stderr
    assert "'hanging' (hanging-plugin) failed and was skipped: import of 'hanging_plugin' took longer than 2 s " \
           "(GPT2REG_PLUGIN_IMPORT_TIMEOUT)" in result.stderr
    assert time.monotonic() - start < 60


def test_serve_of_a_model_folder_gets_ready_despite_a_hanging_plugin(noisy_site, places, monkeypatch) -> None:
    """/health said loading forever: the model folder's components come from the registry, which waited."""
    from test_serve import Server

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(noisy_site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("GPT2REG_PLUGIN_IMPORT_TIMEOUT", "2")
    server = Server(Path(places["tiny"]), torch_ok=True)
    try:
        assert server.health()["status"] == "ok"
        assert "took longer than 2 s" in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("args", [["components"], ["build", *TINY, "-o", "{work}/m"]], ids=["components", "build"])
def test_a_hanging_plugin_is_an_error_in_strict_mode(args, noisy_site, tmp_path) -> None:
    from test_plugins import gpt2reg_cli

    args = [a.format(work=tmp_path) for a in args]
    result = gpt2reg_cli(noisy_site, *args, GPT2REG_PLUGIN_IMPORT_TIMEOUT="1", GPT2REG_STRICT_PLUGINS="1",
                         GPT2REG_LOAD_PLUGINS="hanging")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("Error: plugin 'hanging'") and "took longer than 1 s" \
        in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_import_timeout_is_a_one_line_error(value, noisy_site) -> None:
    from test_plugins import gpt2reg_cli

    result = gpt2reg_cli(noisy_site, "components", GPT2REG_PLUGIN_IMPORT_TIMEOUT=value)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "GPT2REG_PLUGIN_IMPORT_TIMEOUT" in lines[0], result.stderr


# -- training: work sizes bounded, and a refused run leaves nothing -------------------------------

TRAINING = (
    Case("train-grad-accum-huge", ["train", *TRAIN, "--grad-accum", "100000000000", "-o", "run"], "--grad-accum"),
    Case("train-val-fraction-0.999999", ["train", *TRAIN, "--val-fraction", "0.999999", "-o", "run"],
         "too few for windows"),
    Case("train-val-fraction-0.999999-seq-len", ["train", *TRAIN, "--val-fraction", "0.999999", "--seq-len", "8",
                                                 "-o", "{work}/a/b/run"], "too few for windows"),
    Case("train-corpus-too-small", ["train", *TRAIN[2:], "--data", "{small}", "-o", "run"], "too few for windows"),
    Case("train-validation-too-small", ["train", *TRAIN, "--val-fraction", "0.001", "-o", "run"],
         "fewer than one window"),
    Case("compare-grad-accum-huge", [*COMPARE, "--variant", "pos=rope", "--grad-accum", "100000000000", "-o", "cmp"],
         "--grad-accum"),
    Case("compare-study-grad-accum-huge", [*COMPARE, "--variant", "pos=rope,grad_accum=100000000000", "-o", "cmp"],
         "grad_accum"),
)


@cases(*TRAINING)
def test_training_refusals_leave_nothing(case: Case, places, tmp_path, monkeypatch) -> None:
    run_case(case, places, tmp_path, monkeypatch)


def test_a_refused_run_in_an_empty_folder_leaves_it_empty(places, tmp_path, monkeypatch) -> None:
    (tmp_path / "run").mkdir()
    case = Case("train-small-into-empty-folder", ["train", *TRAIN[2:], "--data", "{small}", "-o", "run"],
                "too few for windows")
    run_case(case, places, tmp_path, monkeypatch)
    assert list((tmp_path / "run").iterdir()) == []


def test_many_micro_batches_make_the_same_step_as_one_batch(places, tmp_path, monkeypatch) -> None:
    """The step's batches are made (and digested) one micro-batch at a time now: same digests as before."""
    import json

    from gpt2reg.training.loop import _arrays_digest

    monkeypatch.chdir(tmp_path)
    args = [a.format(**places) for a in TRAIN]
    done = CliRunner().invoke(cli, ["train", *args, "--grad-accum", "3", "--max-steps", "1", "-o", "run"])
    assert done.exit_code == 0, done.output
    from gpt2reg.training.data import TokenData, load_tokens

    data = TokenData(load_tokens(tmp_path / "run" / "tokens.bin"), 64, 0.1, 0)
    expected = _arrays_digest(*(a for micro in range(3) for a in data.batch(2, 0, micro)))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["batch_sha256"] == expected


# -- loading: model folders, links and ONNX files that are not what they claim ----------------------

MISFITS = {"wider": {"n_embd": 64}, "deeper": {"n_layer": 3}, "shallower": {"n_layer": 1}, "longer": {"block_size": 128},
           "rope": {"pos": "rope"}, "swiglu": {"act": "swiglu"}, "rmsnorm": {"norm": "rmsnorm"},
           "padded-vocab": {"vocab_size": 50304}, "no-bias": {"bias": False}, "untied": {"tie_embeddings": False},
           "mlp-ratio": {"mlp_ratio": 2.0}}


@pytest.fixture(scope="module")
def loading(places) -> dict[str, str]:
    """Model folders whose config disagrees with their tensors (the tiny model's weights, linked), links that
    lead nowhere, a folder named like an ONNX file, and ONNX files under a real export's metadata whose
    graphs are not ours."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from gpt2reg.ort.metadata import GRAPH_KV, OnnxDescription

    root = Path(places["root"]) / "loading"
    root.mkdir()
    tiny = Path(places["tiny"])
    meta = json.loads((tiny / "gpt2reg.json").read_text())
    for name, change in MISFITS.items():
        folder = root / name
        folder.mkdir()
        (folder / "gpt2reg.json").write_text(json.dumps({**meta, "config": {**meta["config"], **change}}))
        (folder / "model.safetensors").symlink_to(tiny / "model.safetensors")
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "dangling").symlink_to(root / "nothing-there")
    (root / "x.onnx").mkdir()
    props = OnnxDescription(GRAPH_KV, meta["config"]).to_props()
    for name, inputs in (("relu", ["x"]), ("ids-only", ["input_ids"])):
        values = [helper.make_tensor_value_info(i, TensorProto.FLOAT, ["b", "s"]) for i in inputs]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s"])
        graph = helper.make_graph([helper.make_node("Relu", [inputs[0]], ["logits"])], name, values, [out])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        helper.set_model_props(model, props)
        onnx.save(model, root / f"{name}.onnx")
    return {"loading": str(root)}


LOADING = (
    *[Case(f"{command}-config-{name}", [command, f"{{loading}}/{name}", *extra], "does not fit its config")
      for name in MISFITS
      for command, extra in (("info", []), ("generate", ["-p", "Hi", "-n", "2"]))],
    Case("eval-config-wider", ["eval", "{loading}/wider", "--data", "{corpus}"], "does not fit its config"),
    Case("export-config-wider", ["export", "{loading}/wider", "-o", "x.onnx"], "does not fit its config"),
    Case("bench-config-wider", ["bench", "{loading}/wider"], "does not fit its config"),
    *[Case(f"{command}-{link}", [command, f"{{loading}}/{link}", *extra], words)
      for link, words in (("loop1", "a loop of links"), ("dangling", "nothing-there does not exist"))
      for command, extra in (("info", []), ("generate", ["-p", "Hi"]), ("eval", ["--data", "{corpus}"]),
                             ("export", ["-o", "x.onnx"]), ("bench", []))],
    *[Case(f"{command}-foreign-graph-{name}", args, "are not those of a gpt2reg export")
      for name in ("relu", "ids-only")
      for command, args in (("generate", ["generate", "--onnx", f"{{loading}}/{name}.onnx", "-p", "Hi"]),
                            ("validate", ["validate", f"{{loading}}/{name}.onnx", "{tiny}"]),
                            ("eval", ["eval", f"{{loading}}/{name}.onnx", "--data", "{corpus}"]))],
    Case("validate-onnx-folder", ["validate", "{loading}/x.onnx", "{tiny}"], "is a directory"),
    Case("generate-onnx-folder", ["generate", "--onnx", "{loading}/x.onnx", "-p", "Hi"], "is a directory"),
    Case("eval-onnx-folder", ["eval", "{loading}/x.onnx", "--data", "{corpus}"], "is not a file"),
    Case("export-o-without-suffix", ["export", "{tiny}", "-o", "name", "--no-validate"], "use -o name.onnx"),
    Case("export-o-other-suffix", ["export", "{tiny}", "-o", "name.onx", "--no-validate"], "ends in .onnx"),
)


@cases(*LOADING)
def test_loading_what_is_not_what_it_claims(case: Case, places, loading, tmp_path, monkeypatch) -> None:
    run_case(case, {**places, **loading}, tmp_path, monkeypatch)


# -- smaller: bench's rows and MODEL, serve's --max-tokens ----------------------------------------

SMALLER = (
    Case("bench-rows-empty", ["bench", "{tiny}", "--rows", ""], "names no row"),
    Case("bench-rows-only-commas", ["bench", "{tiny}", "--rows", " , "], "names no row"),
    Case("bench-no-model", ["bench"], "Missing argument 'MODEL'"),
    Case("bench-unknown-row", ["bench", "{tiny}", "--rows", "nope"], "nope"),
)


@cases(*SMALLER)
def test_smaller_refusals(case: Case, places, tmp_path, monkeypatch) -> None:
    run_case(case, places, tmp_path, monkeypatch)


def test_bench_lists_its_rows_without_a_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", "--list-rows"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0] == "gpt2reg", result.output


@pytest.mark.slow
def test_bench_onnx_rows_work_from_another_folder(places, tmp_path, monkeypatch) -> None:
    """The export child ran in another working folder: a relative MODEL was looked up on the Hub."""
    import json

    shutil.copytree(places["tiny"], tmp_path / "tiny")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(cli, ["bench", "../tiny", "--rows", "onnxruntime", "--rounds", "1", "--repeats", "1",
                                      "--new-tokens", "2", "--prompt-tokens", "4", "--prefill-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert row["metrics"] and not row.get("note"), row


def test_serve_refuses_max_tokens_beyond_the_context(places, tmp_path) -> None:
    """Not quietly lowered to the context: one error line, exit 1."""
    proc = subprocess.run([sys.executable, "-m", "gpt2reg", "serve", places["tiny"], "--max-tokens", "100000",
                           "--port", "0", "--log-level", "warning"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("Error: cannot serve") and "--max-tokens 100000" in lines[-1]
    assert "Traceback" not in proc.stderr and "(63," in lines[-1], proc.stderr


def test_the_server_samples_at_a_tiny_temperature_and_takes_long_whitespace(places) -> None:
    """The server's request path (in process, the torch engine): temperature 1e-320 is the greedy text, not
    end-of-text; a prompt with a long whitespace run is encoded (it was a 500)."""
    from starlette.testclient import TestClient

    from gpt2reg.serve.app import ServerOptions, create_app
    from gpt2reg.serve.server import _load_torch

    with TestClient(create_app(lambda: _load_torch(places["tiny"], "cpu"), "tiny", ServerOptions())) as client:
        import time

        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        body = {"prompt": "Hello", "max_tokens": 8, "seed": 0}
        greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()
        tiny = client.post("/v1/completions", json={**body, "temperature": 1e-320}).json()
        assert tiny["choices"][0]["text"] == greedy["choices"][0]["text"], tiny
        assert tiny["choices"][0]["finish_reason"] == "length"
        spaces = client.post("/tokenize", json={"prompt": "a" + " " * 200 + "b"})
        assert spaces.status_code == 200 and spaces.json()["count"] > 2
