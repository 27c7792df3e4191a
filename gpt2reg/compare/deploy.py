"""How a trained variant deploys: ONNX export, validation against torch under onnxruntime, decode speed.

The decode figure is greedy ``OnnxGPT.generate`` on the KV-cache graph (as ``gpt2reg generate --onnx``
runs it), the best of a few timed runs on the CPU provider: a property of the architecture at this size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import first_line


def deploy_check(model_dir: str | os.PathLike, onnx_path: str | os.PathLike, *, prompt_tokens: int = 16,
                 new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Export ``model_dir`` to ``onnx_path``, validate it and time decoding; failures are reported, not raised."""
    import numpy as np

    from ..checkpoints import load_model
    from ..onnx import export_onnx, validate_onnx
    from ..ort.runtime import OnnxGPT

    model = load_model(model_dir)
    path = Path(onnx_path)
    try:
        export_onnx(model, path, model_name=Path(model_dir).parent.name)
    except Exception as exc:  # an architecture the exporter cannot trace: that is the finding
        return {"exports": False, "validates": None, "error": first_line(exc, with_type=True)}
    files = [path, *path.parent.glob(path.name + ".data")]
    result: dict[str, Any] = {"exports": True, "onnx_mb": sum(f.stat().st_size for f in files) / 1e6,
                              "onnx_file": str(path)}
    try:
        report = validate_onnx(path, model, provider="cpu")
    except Exception as exc:  # onnxruntime cannot load or run the file: also a finding
        return {**result, "validates": False, "error": first_line(exc, with_type=True)}
    result.update(validates=report.passed, max_abs_diff=report.max_abs_diff, top1_agreement=report.top1_agreement,
                  reason=report.reason)
    block = model.config.block_size
    prompt_tokens = min(prompt_tokens, max(1, block // 4))
    new_tokens = min(new_tokens, block - prompt_tokens)
    prompt = np.random.default_rng(0).integers(0, min(model.config.vocab_size, 50257), prompt_tokens).tolist()
    onnx_model = OnnxGPT(path, provider="cpu")

    def decode() -> None:
        onnx_model.generate(prompt, max_new_tokens=new_tokens, greedy=True, eos_token_id=None)

    decode()  # warm-up
    result["decode_tokens_per_s"] = new_tokens / min(_seconds(decode) for _ in range(repeats))
    result["decode_prompt_tokens"], result["decode_new_tokens"] = prompt_tokens, new_tokens
    return result


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
