"""The OpenAI completions API's shapes: a request body checked field by field, and the response bodies.

Every problem with a request is an ``APIError`` carrying the HTTP status and an OpenAI-style body
(``{"error": {"message", "type", "param", "code"}}``), so a client sees what to fix, never a traceback.
Fields the API has that we do not implement are refused when they would change the result
(``echo``, penalties, ``logit_bias``, ``best_of``, ``suffix``) and ignored when they would not (``user``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..generation import SamplingOptions, encode_prompts
from ..tokenizer import get_tokenizer

DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default
MAX_LOGPROBS = 5  # the OpenAI API's bound on top log-probabilities per token
MAX_STOP = 16

# decode's finish reasons -> the API's: the end-of-text token is a "stop" there too.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        error_type = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": error_type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What the served model and the server's options allow."""

    model_id: str
    vocab_size: int
    block_size: int
    max_tokens: int  # --max-tokens, at most the context minus one
    max_batch: int


@dataclass
class CompletionRequest:
    prompts: list[list[int]]
    max_tokens: int
    options: SamplingOptions
    seed: int | None
    n: int
    stop: list[str]
    stream: bool
    include_usage: bool
    logprobs: int | None


_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``body[name]`` if present and not null, checked to be one of ``kinds`` (bool is never an int here)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what}, not {_json_type(value)}", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number, not {value}", param=name)
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    bound = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    value = _field(body, name, (int,), bound)
    if value is not None and (value < low or high is not None and value > high):
        raise APIError(400, f"'{name}' must be {bound}, not {value}", param=name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = _field(body, name, (int, float), "a number")
    return None if value is None else float(value)


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """Check a ``POST /v1/completions`` body and encode its prompts; raises ``APIError`` with what to fix."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_json_type(body)}")
    model = _field(body, "model", (str,), "a string")
    if model is not None and model != limits.model_id:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{limits.model_id}'",
                       param="model", code="model_not_found")

    max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, limits.max_tokens)
    elif max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is more than this server allows ({limits.max_tokens})",
                       param="max_tokens")
    temperature = _number(body, "temperature")
    top_p = _number(body, "top_p")
    top_k = _integer(body, "top_k", 1)
    try:
        options = SamplingOptions(1.0 if temperature is None else temperature, top_k, top_p)
    except InputError as exc:
        param = str(exc).split("=", 1)[0]
        raise APIError(400, str(exc), param=param) from None
    seed = _integer(body, "seed", 0)
    n = _integer(body, "n", 1) or 1
    _refuse_unsupported(body, n)
    logprobs = _integer(body, "logprobs", 0, MAX_LOGPROBS)
    stream = bool(_field(body, "stream", (bool,), "a boolean"))
    stream_options = _field(body, "stream_options", (dict,), "an object") or {}
    include_usage = bool(_field(stream_options, "include_usage", (bool,), "a boolean"))
    stop = _stop_strings(body)

    prompts = _prompts(body, limits.vocab_size)
    for i, ids in enumerate(prompts):
        if len(ids) + max_tokens > limits.block_size:
            label = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
            raise APIError(
                400,
                f"{label} has {len(ids)} tokens and max_tokens is {max_tokens}: {len(ids) + max_tokens} tokens, more "
                f"than the model's context of {limits.block_size}; shorten the prompt or lower max_tokens",
                param="prompt", code="context_length_exceeded",
            )
    if len(prompts) * n > limits.max_batch:
        raise APIError(400, f"{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} sequences, more than this "
                            f"server decodes at once ({limits.max_batch}); send fewer", param="n")
    return CompletionRequest(prompts, max_tokens, options, seed, n, stop, stream, include_usage, logprobs)


def _prompts(body: dict[str, Any], vocab_size: int) -> list[list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required: a string, an array of strings, or token ids", param="prompt")
    if not isinstance(prompt, str | list):
        raise APIError(400, f"'prompt' must be a string, an array of strings, or token ids, not {_json_type(prompt)}",
                       param="prompt")
    if not prompt:
        raise APIError(400, "'prompt' is empty; give some text (or \"<|endoftext|>\" for an unconditional sample)",
                       param="prompt")
    try:
        return encode_prompts(prompt, vocab_size)
    except InputError as exc:
        raise APIError(400, str(exc), param="prompt") from None


def _stop_strings(body: dict[str, Any]) -> list[str]:
    stop = _field(body, "stop", (str, list), "a string or an array of strings")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stops):
        raise APIError(400, "'stop' must be a string or an array of strings", param="stop")
    if len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' has {len(stops)} strings; at most {MAX_STOP}", param="stop")
    return stops


def _refuse_unsupported(body: dict[str, Any], n: int) -> None:
    """Fields that would change the result in a way this server does not implement: refuse, never ignore."""
    if _field(body, "echo", (bool,), "a boolean"):
        raise APIError(400, "'echo' is not supported; prepend the prompt yourself", param="echo")
    if _field(body, "suffix", (str,), "a string"):
        raise APIError(400, "'suffix' is not supported (no insertion)", param="suffix")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name):
            raise APIError(400, f"'{name}' is not supported; leave it at 0", param=name)
    if _field(body, "logit_bias", (dict,), "an object"):
        raise APIError(400, "'logit_bias' is not supported", param="logit_bias")
    best_of = _integer(body, "best_of", 1)
    if best_of is not None and best_of != n:
        raise APIError(400, "'best_of' is not supported; use n", param="best_of")
    _field(body, "user", (str,), "a string")


# -- responses ----------------------------------------------------------------------------------


def token_text(token: int) -> str:
    """A token as text for ``logprobs``; a token that is not whole UTF-8 is ``bytes:\\xNN...`` as OpenAI writes it."""
    raw = get_tokenizer().decode_single_token_bytes(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def logprobs_body(tokens: list[int], logprobs: list[float], tops: list[dict[int, float] | None],
                  offset: int) -> dict[str, Any]:
    """The completions API's ``logprobs`` object for these tokens, the first at text offset ``offset``."""
    texts = [token_text(t) for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    top = None if all(t is None for t in tops) else [
        {token_text(k): v for k, v in (t or {}).items()} for t in tops
    ]
    return {"tokens": texts, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, created: int, model: str, choices: list[dict[str, Any]],
                    usage: dict[str, int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "object": "text_completion", "created": created, "model": model,
                            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
