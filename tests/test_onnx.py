"""ONNX export: every registered component and combination exports and matches torch under onnxruntime.

Driven by the registry: a plugin's component is exported and validated with no new test code. The
full pos x act x norm product uses the full-sequence graph on a one-layer model (export dominates the
time); every single component also gets the KV-cache graph with the thorough case set (past 0 and
> 0, left padding, lengths 1, 7, 100 and the full context, batch 1-4).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from gpt2reg.cli import cli
from gpt2reg.errors import InputError
from gpt2reg.generation import generate
from gpt2reg.model import build_model
from gpt2reg.onnx import ProviderError, export_onnx, validate_onnx
from gpt2reg.onnx.quantize import RECIPES
from gpt2reg.onnx.validate import describe, make_cases
from gpt2reg.ort.metadata import BATCH, DEFAULT_OPSET, KEPT, LOGITS_TO_KEEP, PAST, QUANTIZATIONS, SEQ, TOTAL
from gpt2reg.ort.providers import CPU, create_session
from gpt2reg.ort.runtime import InPlaceKV, OnnxGPT
from gpt2reg.testing import component_names

# Context 128 so the cases reach length 100 and the full context; example sizes used by the exporter
# (batch 2, seq 3, past 5) appear nowhere in the checks below.
SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=101)
DEFAULTS = {"pos": "learned", "act": "gelu_tanh", "norm": "layernorm"}
# Exports that repeat a model (another quantization, a fusion turned off) reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")


def _combinations() -> list:
    """Every pos x act x norm combination; those outside a pairwise covering set are in the slow tier.

    The default run still exports every pair of components of different kinds together at least once
    (greedy covering array), so a component that breaks only beside another one is caught there too.
    """
    kinds = [component_names("pos"), component_names("act"), component_names("norm")]
    product = list(itertools.product(*kinds))

    def pairs(c: tuple[str, str, str]) -> set[tuple[int, str, str]]:
        return {(0, c[0], c[1]), (1, c[0], c[2]), (2, c[1], c[2])}

    uncovered = set().union(*map(pairs, product))
    covering: list[tuple[str, str, str]] = []
    while uncovered:
        best = max(product, key=lambda c: len(pairs(c) & uncovered))
        covering.append(best)
        uncovered -= pairs(best)
    return [pytest.param(*c, id="-".join(c), marks=() if c in covering else pytest.mark.slow) for c in product]


@pytest.mark.parametrize("pos,act,norm", _combinations())
def test_every_combination_exports_and_matches_torch(tmp_path: Path, pos: str, act: str, norm: str) -> None:
    model = build_model(**{**SMALL, "n_layer": 1, "n_embd": 16}, pos=pos, act=act, norm=norm, seed=0)
    path = export_onnx(model, tmp_path / "m.onnx", kv_cache=False)
    report = validate_onnx(path, model, provider="cpu", cases=4)  # lengths 1, 7, full context, 100; batch 1 and 3
    assert {(c["batch"], c["seq"]) for c in report.cases} == {(1, 1), (3, 7), (1, 128), (3, 100)}
    assert report.passed, report.summary()
    assert report.kept_max_abs_diff is not None and report.kept_max_abs_diff <= 1e-6  # last-k logits = their slice


def _single_components() -> list[tuple[str, str]]:
    return [(kind, name) for kind in ("pos", "act", "norm") for name in component_names(kind)]


@pytest.mark.parametrize("kind,name", _single_components(), ids=[f"{k}={n}" for k, n in _single_components()])
def test_kv_cache_graph_of_every_component_matches_torch(tmp_path: Path, kind: str, name: str) -> None:
    model = build_model(**SMALL, **{**DEFAULTS, kind: name}, seed=3)  # seed 3 as below: shared traces
    path = export_onnx(model, tmp_path / "m.onnx")
    report = validate_onnx(path, model, provider="cpu", cases=10)
    seen = {(c["past"], c["seq"], c["padded"]) for c in report.cases}
    assert (0, 1, False) in seen and (0, 128, False) in seen and (127, 1, False) in seen  # prefill, full context
    assert any(p > 0 and pad for p, _, pad in seen) and any(p == 0 and pad for p, _, pad in seen)
    assert report.passed, report.summary()
    assert report.max_abs_diff <= 1e-4 and report.present_max_abs_diff <= 1e-4
    assert report.kept_max_abs_diff is not None and report.kept_max_abs_diff <= 1e-6  # last-k logits = their slice


@pytest.fixture(scope="module")
def rope_export(tmp_path_factory) -> tuple[object, Path]:
    """A RoPE model with a larger init, so its greedy continuations are not one repeated token."""
    model = build_model(**SMALL, pos="rope", init_std=0.25, seed=3)
    return model, export_onnx(model, tmp_path_factory.mktemp("rope") / "rope.onnx", model_name="tiny-rope")


def test_graph_io_is_optimum_layout_and_fully_dynamic(rope_export) -> None:
    _, path = rope_export
    graph = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}
    assert dims["input_ids"] == [BATCH, SEQ] and dims["position_ids"] == [BATCH, SEQ]
    assert dims["attention_mask"] == [BATCH, TOTAL]
    assert dims["past_key_values.1.value"] == [BATCH, 2, PAST, 16]
    assert dims["present.0.key"] == [BATCH, 2, TOTAL, 16]
    assert dims["logits"] == [BATCH, KEPT, 101] and dims[LOGITS_TO_KEEP] == []
    assert [v.name for v in graph.output] == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert LOGITS_TO_KEEP not in {t.name for t in graph.initializer}  # a required input, no default


def test_logits_to_keep_all_and_last_k_under_onnxruntime(rope_export) -> None:
    _, path = rope_export
    session = create_session(str(path), "cpu").session
    ids = np.random.default_rng(0).integers(0, 101, (2, 6))
    feed = {"input_ids": ids, "attention_mask": np.ones((2, 6), dtype=np.int64),
            "position_ids": np.tile(np.arange(6), (2, 1)),
            **{f"past_key_values.{i}.{kv}": np.zeros((2, 2, 0, 16), dtype=np.float32) for i in range(2) for kv in ("key", "value")}}
    every = session.run(["logits"], {**feed, LOGITS_TO_KEEP: np.array(0)})[0]  # 0: every position
    assert every.shape == (2, 6, 101)
    for keep, want in [(0, every), (1, every[:, -1:]), (4, every[:, -4:]), (6, every), (50, every)]:
        got = session.run(["logits"], {**feed, LOGITS_TO_KEEP: np.array(keep)})[0]
        assert got.shape == want.shape and np.array_equal(got, want), keep


def test_onnxruntime_loads_the_file_without_a_warning(rope_export) -> None:
    """At onnxruntime's default log level (a user's plain session) nothing is printed on load."""
    import subprocess
    import sys

    code = f"import onnxruntime as ort; ort.InferenceSession({str(rope_export[1])!r}, providers=['CPUExecutionProvider'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr.strip() == "" and run.stdout.strip() == "", run.stderr


def test_metadata_describes_the_file(rope_export) -> None:
    model, path = rope_export
    d = describe(path)
    assert d.graph == "kv_cache" and d.dtype == "fp32" and d.quantize == "none" and d.tokenizer == "gpt2"
    assert d.config == model.config.to_dict() and d.model_name == "tiny-rope" and d.version
    names = [i["name"] for i in d.io["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and names[-1] == LOGITS_TO_KEEP
    assert len(names) == 3 + 2 * 2 + 1 and "default" not in d.io["inputs"][-1]


def test_tied_embedding_is_stored_once(rope_export) -> None:
    model, path = rope_export
    shapes = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    table = (model.config.vocab_size, model.config.n_embd)
    assert table in shapes and (table[1], table[0]) not in shapes
    assert shapes.count(table) == 1


def test_greedy_onnx_generation_equals_torch_with_left_padding(rope_export) -> None:
    model, path = rope_export
    runtime = OnnxGPT(path, provider="cpu")
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [40]]  # different lengths: left-padded batch
    want = generate(model, prompts, max_new_tokens=24, greedy=True, eos_token_id=None)
    got = runtime.generate(prompts, max_new_tokens=24, greedy=True, eos_token_id=None)
    assert [s.generated_ids for s in got] == [s.generated_ids for s in want]
    assert len(set(want[1].generated_ids)) > 3  # a continuation worth comparing
    alone = runtime.generate(prompts[1], max_new_tokens=24, greedy=True, eos_token_id=None)
    assert alone[0].generated_ids == want[1].generated_ids  # padding does not change a row


def test_seeded_sampling_onnx_equals_torch(rope_export) -> None:
    model, path = rope_export
    runtime = OnnxGPT(path, provider="cpu")
    kw = dict(max_new_tokens=16, temperature=0.8, top_k=40, top_p=0.95, seed=7, num_samples=3, eos_token_id=None)
    want = generate(model, [[3, 1, 4, 1, 5]], **kw)
    got = runtime.generate([[3, 1, 4, 1, 5]], **kw)
    assert [s.generated_ids for s in got] == [s.generated_ids for s in want]
    assert len({tuple(s.generated_ids) for s in got}) == 3  # samples differ from each other


def test_validate_fails_for_a_different_model(rope_export, tmp_path: Path) -> None:
    _, path = rope_export
    other = build_model(**SMALL, pos="rope", init_std=0.25, seed=4)
    report = validate_onnx(path, other, provider="cpu", cases=2)
    assert not report.passed and report.max_abs_diff > 1e-2 and "atol" in report.reason
    bigger = build_model(**{**SMALL, "n_layer": 3}, pos="rope", seed=3)
    report = validate_onnx(path, bigger, provider="cpu")
    assert not report.passed and "n_layer 2 (ONNX) vs 3 (model)" in report.reason


def test_validate_cli_exit_status(rope_export, tmp_path: Path) -> None:
    from gpt2reg.checkpoints import save_model

    model, path = rope_export
    save_model(model, tmp_path / "same")
    save_model(build_model(**SMALL, pos="rope", init_std=0.25, seed=5), tmp_path / "other")
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(path), str(tmp_path / "same"), "--provider", "cpu", "--cases", "3"])
    assert ok.exit_code == 0 and "PASS" in ok.output and CPU in ok.output, ok.output
    bad = runner.invoke(cli, ["validate", str(path), str(tmp_path / "other"), "--provider", "cpu", "--json"])
    assert bad.exit_code == 1 and '"passed": false' in bad.output
    missing = runner.invoke(cli, ["validate", str(tmp_path / "nope.onnx"), str(tmp_path / "same")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and "no such ONNX file" in missing.output


def test_cuda_provider_that_cannot_load_is_an_error(rope_export, tmp_path: Path) -> None:
    _, path = rope_export
    auto = create_session(str(path), "auto")
    if auto.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA really loads here")
    assert auto.provider == CPU
    assert auto.note  # auto says that it fell back (or that this build has no CUDA)
    with pytest.raises(ProviderError, match="CUDA"):
        create_session(str(path), "cuda")
    from gpt2reg.checkpoints import save_model

    save_model(rope_export[0], tmp_path / "m")
    result = CliRunner().invoke(cli, ["validate", str(path), str(tmp_path / "m"), "--provider", "cuda"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "CUDA" in result.output


@pytest.mark.parametrize("dtype,quantize", [("fp16", None), ("fp32", "int8"), ("fp32", "int4")])
def test_reduced_precision_exports_validate_with_their_tolerances(tmp_path: Path, dtype: str, quantize: str | None) -> None:
    model = build_model(**SMALL, pos="rope", seed=3)
    path = export_onnx(model, tmp_path / "m.onnx", dtype=dtype, quantize=quantize)
    report = validate_onnx(path, model, provider="cpu", cases=4)
    assert report.passed, report.summary()
    assert report.variant == (quantize or dtype) and report.atol > 1e-4
    assert report.max_abs_diff > 1e-6  # really reduced precision, not an fp32 graph
    assert describe(path).quantize == (quantize or "none")
    tight = validate_onnx(path, model, provider="cpu", cases=4, atol=report.max_abs_diff / 4)
    assert not tight.passed and "> atol" in tight.reason  # the tolerance is what passes it
    if quantize:  # every MatMul with a weight -> MatMulNBits, the tied head included (N = 101 outputs, K = 32)
        graph = onnx.load(str(path)).graph
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        scales = {n.input[2] for n in nbits}  # the per-block scales
        fp32_matrices = [tuple(t.dims) for t in graph.initializer
                         if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and t.name not in scales]
        assert fp32_matrices == []  # the embedding lookup reads the quantized head (test_onnx_quantize.py)
        attrs = [{a.name: a.i for a in n.attribute} for n in nbits]
        assert len(nbits) == 2 * 4 + 1 and {"N": 101, "K": 32} in [{k: a[k] for k in ("N", "K")} for a in attrs]
        assert all(a["bits"] == RECIPES[quantize].bits and a["accuracy_level"] == 4 for a in attrs)
        initializers = {t.name for t in graph.initializer}
        assert not [n for n in graph.node if n.op_type == "MatMul" and any(i in initializers for i in n.input)]


@pytest.mark.slow  # the default run covers int4 with every positional encoding (below) and each component in fp32
@pytest.mark.parametrize("kind,name", _single_components(), ids=[f"{k}={n}" for k, n in _single_components()])
def test_int4_kv_cache_graph_of_every_component_validates(tmp_path: Path, kind: str, name: str) -> None:
    model = build_model(**SMALL, **{**DEFAULTS, kind: name}, seed=1)
    path = export_onnx(model, tmp_path / "m.onnx", quantize="int4")
    report = validate_onnx(path, model, provider="cpu", cases=3)
    assert report.passed, report.summary()


def test_weight_bytes_per_token_counts_what_a_decode_step_reads(tmp_path: Path) -> None:
    import torch

    from gpt2reg.onnx.weights import weight_bytes_per_token

    model = build_model(**{**SMALL, "n_layer": 1, "n_embd": 128}, pos="learned", seed=0)  # K: whole int4 blocks
    with torch.no_grad():  # every weight distinct: the exporter stores equal constants (fresh norms) once
        for param in model.parameters():
            param.normal_()
    sizes = {q: weight_bytes_per_token(export_onnx(model, tmp_path / f"{q}.onnx", quantize=q)) for q in (None, "int8", "int4")}
    position_table = model.config.block_size * model.config.n_embd
    # Every parameter but the position table (only looked up), the tied table once (read by the head);
    # the graph's few scalar constants are the rest.
    assert sizes[None] == pytest.approx(4 * (model.num_parameters() - position_table), rel=1e-3)
    # Quantized: each matrix (the head too: vocab outputs of n_embd inputs) as bits/8 bytes per weight
    # plus one fp32 scale per block of its input dimension; biases and norms stay fp32.
    matrices = [tuple(p.shape) for name, p in model.named_parameters() if p.ndim == 2 and name != "pos.weight"]
    fp32_rest = model.num_parameters() - position_table - sum(n * k for n, k in matrices)
    for q, recipe in RECIPES.items():
        block = recipe.block_for([k for _, k in matrices])
        packed = sum(n * k * recipe.bits // 8 + n * -(-k // block) * 4 for n, k in matrices)
        assert sizes[q] == pytest.approx(4 * fp32_rest + packed, rel=1e-3), q
    assert sizes["int4"] < sizes["int8"] < sizes[None] / 2


def test_quantization_blocks_divide_every_input_size() -> None:
    from gpt2reg.onnx.quantize import NBitsRecipe

    assert NBitsRecipe(bits=4, block=256).block_for([768, 3072]) == 256  # GPT-2 small: whole blocks
    assert NBitsRecipe(bits=4, block=256).block_for([384, 1536]) == 128  # 384 would pad 256-blocks to 512
    assert NBitsRecipe(bits=8, block=128).block_for([32, 128]) == 32
    assert NBitsRecipe(bits=4, block=256).block_for([24]) == 16  # onnxruntime's smallest; the rest is padding


def test_external_data_and_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    import gpt2reg.onnx.export as export_module

    monkeypatch.setattr(export_module, "MAPPED_TENSOR_BYTES", 1024)  # a tiny model's matrices go out too
    model = build_model(**SMALL, seed=3)
    path = export_onnx(model, tmp_path / "out" / "m.onnx", external_data=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert Path(f"{path}.data").stat().st_size > 0.8 * 4 * model.num_parameters()  # the weights are outside
    assert validate_onnx(path, model, provider="cpu", cases=2).passed
    export_onnx(model, path)  # re-export inline: the stale data file goes, no temporary folder stays
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]


def test_export_cli_default_path_and_validation(tmp_path: Path, monkeypatch) -> None:
    from gpt2reg.checkpoints import save_model

    save_model(build_model(**SMALL, pos="sinusoidal", seed=0), tmp_path / "models" / "tiny-sin")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["export", "models/tiny-sin", "--provider", "cpu", "--cases", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exports" / "tiny-sin.onnx").is_file() and "PASS" in result.output
    bad = CliRunner().invoke(cli, ["export", "models/tiny-sin", "--dtype", "fp16", "--quantize", "int4"])
    assert bad.exit_code == 2 and "int4 starts from fp32 weights; drop --dtype fp16" in bad.output


def test_cases_cover_what_the_issue_asks() -> None:
    cases = make_cases(1024, kv_cache=True, n=8)
    assert {c.batch for c in cases} >= {1, 3, 4}
    assert {c.seq for c in cases} >= {1, 7, 100, 1024}
    assert any(c.past == 0 for c in cases) and any(c.past + c.seq == 1024 and c.past for c in cases)
    assert any(c.padded and c.past for c in cases)
    assert all(1 <= c.seq and c.past + c.seq <= 1024 for c in make_cases(16, True, 30, seed=1))
    assert np.all([c.past == 0 for c in make_cases(64, False, 10)])
    # files whose GroupQueryAttention extends a past by several tokens one row at a time: such cases get one row
    capped = make_cases(64, True, 30, seed=1, extend_rows=1)
    assert all(c.batch == 1 for c in capped if c.past and c.seq > 1) and any(c.past and c.seq > 1 for c in capped)
    assert any(c.batch > 1 and c.past for c in capped) and any(c.batch > 1 and c.seq > 1 for c in capped)


def test_onnxruntime_and_onnxruntime_gpu_together_is_an_error(rope_export, monkeypatch) -> None:
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda dist: "1.31.0")  # as if both wheels were installed
    with pytest.raises(ProviderError, match="onnxruntime and onnxruntime-gpu are both installed"):
        create_session(str(rope_export[1]), "cpu")


@pytest.mark.parametrize("pos", component_names("pos"))
def test_opset_18_graph_matches_torch(tmp_path: Path, pos: str) -> None:
    """Opset 18 (attention as MatMul/Softmax) stays available for providers without the opset-23 Attention op."""
    model = build_model(**SMALL, pos=pos, norm="rmsnorm", seed=1)
    path = export_onnx(model, tmp_path / "m.onnx", opset=18)
    assert onnx.load(str(path)).opset_import[0].version == 18
    report = validate_onnx(path, model, provider="cpu")
    assert report.passed, report.summary()


def test_default_export_uses_the_attention_op(rope_export) -> None:
    graph = onnx.load(str(rope_export[1])).graph
    assert {o.version for o in onnx.load(str(rope_export[1])).opset_import if o.domain == ""} == {DEFAULT_OPSET}
    assert DEFAULT_OPSET >= 23 and sum(n.op_type == "Attention" for n in graph.node) == SMALL["n_layer"]


def _run_steps(path: Path, model, seed: int = 0) -> list[np.ndarray]:
    """A padded prefill of 5 tokens then one decode step, batch 2, through onnxruntime: every output."""
    session = create_session(str(path), "cpu").session
    rng = np.random.default_rng(seed)
    n, layers = model.config.n_head, model.config.n_layer
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, n, 0, model.config.head_dim), np.float32)
            for i in range(layers) for kv in ("key", "value")}
    mask = np.ones((2, 5), np.int64)
    mask[1, :2] = 0
    every = {LOGITS_TO_KEEP: np.array(0)}
    feed = {"input_ids": rng.integers(0, 101, (2, 5)), "attention_mask": mask,
            "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None), **past, **every}
    first = session.run(None, feed)
    feed = {"input_ids": rng.integers(0, 101, (2, 1)), "attention_mask": np.ones((2, 6), np.int64),
            "position_ids": np.array([[5], [3]]), **dict(zip(past, first[1:], strict=True)), **every}
    return first + session.run(None, feed)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_attention_fusion_changes_no_result(tmp_path: Path, monkeypatch, pos: str) -> None:
    import gpt2reg.onnx.export as export_module

    model = build_model(**SMALL, pos=pos, seed=3)
    fused = export_onnx(model, tmp_path / "fused.onnx")
    monkeypatch.setattr(export_module, "fuse_attention", lambda m: 0)
    plain = export_onnx(model, tmp_path / "plain.onnx")
    graphs = {name: onnx.load(str(p)).graph for name, p in (("fused", fused), ("plain", plain))}
    attention = [n for n in graphs["fused"].node if n.op_type == "Attention"]
    # The past goes in and the presents come out of the op itself: no Concat writes a present any more.
    assert len(attention) == SMALL["n_layer"] and all(len(n.input) == 6 and len(n.output) == 3 for n in attention)
    presents = {o.name for o in graphs["fused"].output} - {"logits"}
    assert {o for n in attention for o in n.output[1:]} == presents
    assert not [n for n in graphs["fused"].node if n.op_type == "Concat" and set(n.output) & presents]
    if pos == "learned":  # plain head splits: (batch, seq, hidden) in and out, no Transpose left
        assert all({a.name for a in n.attribute} >= {"q_num_heads", "kv_num_heads"} for n in attention)
        assert not [n for n in graphs["fused"].node if n.op_type == "Transpose"
                    and [list(a.ints) for a in n.attribute if a.name == "perm"] == [[0, 2, 1, 3]]]
    else:  # RoPE rotates the heads: they stay heads-first
        assert not any(a.name == "q_num_heads" for n in attention for a in n.attribute)
    assert len(graphs["fused"].node) <= len(graphs["plain"].node) - 2 * SMALL["n_layer"]  # two Concats a layer, at least
    for got, want in zip(_run_steps(fused, model), _run_steps(plain, model), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _calls(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batch 2: a left-padded prompt of 15 tokens, then two decode steps."""
    mask = np.ones((2, 15), np.int64)
    mask[1, :2] = 0
    calls = [(rng.integers(0, 101, (2, 15)), mask)]
    for _ in range(2):
        mask = np.concatenate((mask, np.ones((2, 1), np.int64)), axis=1)
        calls.append((rng.integers(0, 101, (2, 1)), mask))
    return calls


@pytest.mark.parametrize("pos,quantize", [(p, q) for p in component_names("pos") for q in QUANTIZATIONS])
def test_quantized_graph_extends_the_cache_in_place_with_the_attention_ops_results(
        tmp_path: Path, monkeypatch, pos: str, quantize: str) -> None:
    """GroupQueryAttention against the Attention op it replaces, same quantized weights: the same logits
    and presents for prompts with padding and decode steps; and through ``InPlaceKV`` (buffers with
    room, bound as past and present) the same again, written in place. The one call GroupQueryAttention
    refuses (several rows extending a past by several tokens) is a clear error, said in the metadata."""
    import gpt2reg.onnx.export as export_module
    from gpt2reg.components.base import PositionalEncoding

    model = build_model(**SMALL, pos=pos, seed=3)
    path = export_onnx(model, tmp_path / "gqa.onnx", quantize=quantize)
    report = validate_onnx(path, model, provider="cpu", cases=5)  # padding, past, a prompt after a past (one row)
    assert report.passed, report.summary()
    monkeypatch.setattr(export_module, "fuse_group_query_attention", lambda m: 0)
    plain = OnnxGPT(export_onnx(model, tmp_path / "plain.onnx", quantize=quantize), provider="cpu")
    gqa = OnnxGPT(path, provider="cpu")
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert gqa.in_place and describe(path).kv_in_place and not plain.in_place
    assert describe(path).kv_extend_rows == 1 and plain.description.kv_extend_rows is None
    assert report.in_place_max_abs_diff is not None and report.in_place_max_abs_diff <= 1e-6  # validation checks it
    assert ops.count("GroupQueryAttention") == SMALL["n_layer"] and "If" not in ops and "Attention" not in ops
    if type(model.pos).rotate is PositionalEncoding.rotate:  # the packed QKV goes in whole
        assert "Split" not in ops
    else:  # RoPE rotates q and k before the op: they go in rotated, moved back to (batch, seq, hidden)
        assert ops.count("Mul") >= 4 * SMALL["n_layer"] and ops.count("Split") == 3 * SMALL["n_layer"]
    onnx.checker.check_model(onnx.load(str(path)))  # still sorted, valid ONNX
    heads, head_dim = SMALL["n_head"], SMALL["n_embd"] // SMALL["n_head"]
    cache, pasts, grown = InPlaceKV(gqa, [np.zeros((2, heads, 0, head_dim), np.float32)] * (2 * SMALL["n_layer"])), \
        {"gqa": None, "plain": None}, []
    calls = _calls(np.random.default_rng(0))
    for ids, mask in calls:
        outputs = {}
        for name, m in (("gqa", gqa), ("plain", plain)):
            logits, pasts[name] = m.run(ids, mask, pasts[name])
            outputs[name] = [logits, *pasts[name]]
        buffers = [b.__array_interface__["data"][0] for b in cache.buffers]
        outputs["in place"] = [cache.run(ids, mask), *cache.arrays]
        grown.append([b.__array_interface__["data"][0] for b in cache.buffers] != buffers)
        for got, want in zip(outputs["gqa"], outputs["plain"], strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        for got, want in zip(outputs["in place"], outputs["gqa"], strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Lengths 15, 16, 17: a new cache has room for 16 (``room``), so the prompt and the first step are
    # written into the same buffers; the second step outgrows them, into room for twice its length.
    assert grown == [False, False, True] and cache.capacity == 34
    # Two rows extending the past by 3 tokens: refused before onnxruntime sees it, by both paths;
    # the file without GroupQueryAttention takes it, and so does the in-place file one row at a time.
    ids, mask = np.ones((2, 3), np.int64), np.ones((2, 20), np.int64)
    for run in (lambda: gqa.run(ids, mask, pasts["gqa"]), lambda: cache.run(ids, mask)):
        with pytest.raises(InputError, match=r"extends a past by several tokens in at most 1 row\(s\) per call, not 2"):
            run()
    plain.run(ids, mask, pasts["plain"])
    gqa.run(ids[:1], mask[:1], [p[:1] for p in pasts["gqa"]])


def test_quantized_export_keeps_residual_add_and_layer_norm_standard(tmp_path: Path) -> None:
    # onnxruntime's SkipLayerNormalization is ~5x slower than the pair on the CPU at 16 rows (fusions.py).
    model = build_model(**SMALL, pos="learned", seed=3)
    graph = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", quantize="int8"))).graph
    ops = [n.op_type for n in graph.node]
    # Every norm reads a residual sum: embeddings + positions, then attention and MLP outputs.
    assert ops.count("LayerNormalization") == 2 * SMALL["n_layer"] + 1 and "SkipLayerNormalization" not in ops
