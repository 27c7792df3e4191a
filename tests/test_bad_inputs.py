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
    broken = root / "nan_model"  # a diverged model: every weight NaN
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    gpt2reg.save_model(model, broken)
    run = root / "run"  # a finished training run, to resume
    done = CliRunner().invoke(cli, ["train", *[a.format(corpus=corpus) for a in TRAIN], "-o", str(run)])
    assert done.exit_code == 0, done.output
    paths = {"tiny": str(tiny), "corpus": str(corpus), "other": str(other), "root": str(root), "nan_model": str(broken),
             "run": str(run)}
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
    Case("export-o-directory", ["export", "{tiny}", "-o", "{root}", "--no-validate"], "is a directory"),
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
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    shutil.rmtree(run)


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
          "batch_size": [0, 2.0], "grad_accum": [0], "warmup_steps": [-1], "seed": [-1, 0.5], "seq_len": [0],
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
