"""The OpenAI completions API's shapes: a request body checked field by field, and the response bodies.

Every problem with a request is an ``APIError`` carrying the HTTP status and an OpenAI-style body
(``{"error": {"message", "type", "param", "code"}}``), so a client sees what to fix, never a traceback.
Fields the API has that we do not implement are refused when they would change the result
(penalties, ``logit_bias``, ``best_of``, ``suffix``) and ignored when they would not (``user``).

``echo`` returns the prompt before the completion, as OpenAI's legacy completions and vLLM do; with
``logprobs`` the prompt's tokens get theirs too (the first ``null``: nothing precedes it), which is how
lm-evaluation-harness scores text, often with ``max_tokens: 0`` (allowed only with ``echo``).
The chat API's shapes are in ``gpt2reg.serve.chat``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import InputError
from ..generation import GenerationOptions, encode_prompts
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

    model_names: tuple[str, ...]  # the first is the one responses name
    vocab_size: int
    block_size: int
    max_tokens: int  # --max-tokens, at most the context minus one
    max_batch: int

    @property
    def model_id(self) -> str:
        return self.model_names[0]


@dataclass
class CompletionRequest:
    prompts: list[list[int]]
    options: GenerationOptions  # max_new_tokens 0 only with echo: the prompt alone
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool = False


_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object", type(None): "null"}


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def get_field(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``body[name]`` if present and not null, checked to be one of ``kinds`` (bool is never an int here)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what}, not {json_type(value)}", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number, not {value}", param=name)
    return value


def get_integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    bound = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    value = get_field(body, name, (int,), bound)
    if value is not None and (value < low or high is not None and value > high):
        raise APIError(400, f"'{name}' must be {bound}, not {value}", param=name)
    return value


def get_number(body: dict[str, Any], name: str) -> float | None:
    value = get_field(body, name, (int, float), "a number")
    return None if value is None else float(value)


def check_object(body: Any) -> dict[str, Any]:
    """``body`` if it is a JSON object; else the 400 that says so."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {json_type(body)}")
    return body


def check_model(body: dict[str, Any], limits: Limits) -> None:
    """A ``model`` field, when given, must name the served model (any of its names)."""
    model = get_field(body, "model", (str,), "a string")
    if model is not None and model not in limits.model_names:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{limits.model_id}'",
                       param="model", code="model_not_found")


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """Check a ``POST /v1/completions`` body and encode its prompts; raises ``APIError`` with what to fix."""
    body = check_object(body)
    check_model(body, limits)
    echo = bool(get_field(body, "echo", (bool,), "a boolean"))
    refuse_unsupported(body)
    if get_field(body, "suffix", (str,), "a string"):
        raise APIError(400, "'suffix' is not supported (no insertion)", param="suffix")
    return parse_sampling(body, limits, _prompts(body, limits), max_tokens_name="max_tokens",
                          logprobs=get_integer(body, "logprobs", 0, MAX_LOGPROBS), echo=echo)


def parse_sampling(body: dict[str, Any], limits: Limits, prompts: list[list[int]], *, max_tokens_name: str,
                   logprobs: int | None, echo: bool = False) -> CompletionRequest:
    """The fields completions and chat share (length, sampling, n, stop, streaming), checked against ``limits``."""
    max_tokens = get_integer(body, max_tokens_name, 0 if echo else 1)
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, limits.max_tokens)
    elif max_tokens > limits.max_tokens:
        raise APIError(400, f"{max_tokens_name}={max_tokens} is more than this server allows ({limits.max_tokens})",
                       param=max_tokens_name)
    temperature = get_number(body, "temperature")
    top_p = get_number(body, "top_p")
    top_k = get_integer(body, "top_k", 1)
    seed = get_integer(body, "seed", 0)
    n = get_integer(body, "n", 1) or 1
    best_of = get_integer(body, "best_of", 1)
    if best_of is not None and best_of != n:
        raise APIError(400, "'best_of' is not supported; use n", param="best_of")
    stream = bool(get_field(body, "stream", (bool,), "a boolean"))
    stream_options = get_field(body, "stream_options", (dict,), "an object") or {}
    include_usage = bool(get_field(stream_options, "include_usage", (bool,), "a boolean"))
    stop = _stop_strings(body)
    get_field(body, "user", (str,), "a string")
    try:
        options = GenerationOptions(1.0 if temperature is None else temperature, top_k, top_p, max_new_tokens=max_tokens,
                                    seed=seed, num_samples=n, stop=[s for s in stop if s])  # "" stops nothing
    except InputError as exc:
        param = str(exc).split("=", 1)[0]
        raise APIError(400, str(exc), param=param) from None

    for i, ids in enumerate(prompts):
        if len(ids) + max_tokens > limits.block_size:
            label = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
            raise APIError(
                400,
                f"{label} has {len(ids)} tokens and {max_tokens_name} is {max_tokens}: {len(ids) + max_tokens} "
                f"tokens, more than the model's context of {limits.block_size}; shorten the prompt or lower "
                f"{max_tokens_name}",
                param="prompt", code="context_length_exceeded",
            )
    if len(prompts) * n > limits.max_batch:
        raise APIError(400, f"{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} sequences, more than this "
                            f"server decodes at once ({limits.max_batch}); send fewer", param="n")
    return CompletionRequest(prompts, options, stream, include_usage, logprobs, echo)


def _prompts(body: dict[str, Any], limits: Limits) -> list[list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required: a string, an array of strings, or token ids", param="prompt")
    if not isinstance(prompt, str | list):
        raise APIError(400, f"'prompt' must be a string, an array of strings, or token ids, not {json_type(prompt)}",
                       param="prompt")
    if not prompt:
        raise APIError(400, "'prompt' is empty; give some text (or \"<|endoftext|>\" for an unconditional sample)",
                       param="prompt")
    for text in [prompt] if isinstance(prompt, str) else prompt:
        if isinstance(text, str):
            check_fits(text, limits, "prompt")
    try:
        return encode_prompts(prompt, limits.vocab_size)
    except InputError as exc:
        raise APIError(400, str(exc), param="prompt") from None


@lru_cache(maxsize=1)
def _longest_token_bytes() -> int:
    tokenizer = get_tokenizer()
    return max(len(tokenizer.decode_single_token_bytes(t)) for t in range(tokenizer.n_vocab))


def check_fits(text: str, limits: Limits, param: str) -> None:
    """Refuse, without tokenizing it, a text whose bytes could not fit the context even in the longest tokens."""
    most = limits.block_size * _longest_token_bytes()
    if len(text) > most // 4 and len(text.encode("utf-8")) > most:
        raise APIError(400, f"the {param} is {len(text.encode('utf-8')):,} bytes: more than the model's context of "
                            f"{limits.block_size} tokens can hold (at most {most:,} bytes); shorten it",
                       param=param, code="context_length_exceeded")


def encode_text(text: str, vocab_size: int, param: str = "messages") -> list[int]:
    """``text`` as token ids (``<|endoftext|>`` is the special token), or the 400 that says why not."""
    try:
        return encode_prompts(text, vocab_size)[0]
    except InputError as exc:
        raise APIError(400, str(exc), param=param) from None


def _stop_strings(body: dict[str, Any]) -> list[str]:
    stop = get_field(body, "stop", (str, list), "a string or an array of strings")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stops):
        raise APIError(400, "'stop' must be a string or an array of strings", param="stop")
    if len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' has {len(stops)} strings; at most {MAX_STOP}", param="stop")
    return stops


def refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields that would change the result in a way this server does not implement: refuse, never ignore."""
    for name in ("presence_penalty", "frequency_penalty"):
        if get_number(body, name):
            raise APIError(400, f"'{name}' is not supported; leave it at 0", param=name)
    if get_field(body, "logit_bias", (dict,), "an object"):
        raise APIError(400, "'logit_bias' is not supported", param="logit_bias")


# -- responses ----------------------------------------------------------------------------------


def token_text(token: int) -> str:
    """A token as text for ``logprobs``; a token that is not whole UTF-8 is ``bytes:\\xNN...`` as OpenAI writes it."""
    raw = get_tokenizer().decode_single_token_bytes(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def logprobs_body(tokens: list[int], logprobs: list[float | None], tops: list[dict[int, float] | None],
                  offset: int) -> dict[str, Any]:
    """The completions API's ``logprobs`` object for these tokens, the first at text offset ``offset``.

    A ``None`` log-probability or top is the echoed prompt's first token's (nothing precedes it);
    ``top_logprobs`` is ``None`` when no token has tops (``logprobs: 0``).
    """
    texts = [token_text(t) for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    top = None if all(t is None for t in tops) else [
        None if t is None else {token_text(k): v for k, v in t.items()} for t in tops
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
