"""The chat completions API: messages rendered to one prompt by a chat template, and the chat shapes.

The template is the model folder's own where it has one (``chat_template.jinja``, else the
``chat_template`` of ``tokenizer_config.json``, as Hugging Face keeps them; for an ``.onnx`` file its
folder, or the folder above an ``onnx/`` one), else ``PLAIN_TEMPLATE``: GPT-2 was never tuned to chat,
so a transcript a base model can continue is the honest default::

    System: You are terse.

    User: Hello

    Assistant:

Templates render in Jinja's sandbox, as Hugging Face renders them (``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``raise_exception``). The reply is the completion of that prompt: same
batcher, same sampling, same stop strings and seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..tokenizer import EOT_TOKEN
from .protocol import (
    APIError,
    CompletionRequest,
    Limits,
    check_fits,
    check_model,
    check_object,
    encode_text,
    get_field,
    get_integer,
    json_type,
    parse_sampling,
    refuse_unsupported,
    token_text,
)

PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
MAX_TOP_LOGPROBS = 20  # the chat API's bound
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from (``source``: a file, or "plain")."""

    text: str
    source: str

    @cached_property
    def _compiled(self) -> Any:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.text)
        except TemplateError as exc:
            raise InputError(f"the chat template in {self.source} does not compile: {exc}") from None

    def check(self) -> None:
        """Compile now, so a broken template stops the server at start, not at the first chat request."""
        self._compiled  # noqa: B018

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages``, ending where the assistant's answer begins; 400 if the template refuses."""
        from jinja2.exceptions import TemplateError

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=True, bos_token=EOT_TOKEN,
                                         eos_token=EOT_TOKEN)
        except TemplateError as exc:
            raise APIError(400, f"the chat template refused these messages: {exc}", param="messages") from None


def find_chat_template(model: str) -> ChatTemplate:
    """The chat template of the model at ``model`` (a folder or an ``.onnx`` file), else the plain one."""
    path = Path(model)
    folders = [path] if path.is_dir() else [path.parent] + ([path.parent.parent] if path.parent.name == "onnx" else [])
    for folder in folders:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return ChatTemplate(jinja.read_text(encoding="utf-8"), str(jinja))
        config = folder / "tokenizer_config.json"
        if config.is_file():
            try:
                template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            except (ValueError, AttributeError) as exc:
                raise InputError(f"{config}: not a JSON object ({exc})") from None
            if isinstance(template, list):  # named templates: the default one
                template = next((t.get("template") for t in template if t.get("name") == "default"), None)
            if isinstance(template, str) and template:
                return ChatTemplate(template, str(config))
    return ChatTemplate(PLAIN_TEMPLATE, "plain")


def parse_chat(body: Any, limits: Limits, template: ChatTemplate) -> CompletionRequest:
    """Check a ``POST /v1/chat/completions`` body and render its messages into one encoded prompt."""
    body = check_object(body)
    check_model(body, limits)
    refuse_unsupported(body)
    for name in ("tools", "functions"):
        if get_field(body, name, (list,), "an array"):
            raise APIError(400, f"'{name}' is not supported (no tool calls)", param=name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise APIError(400, f"'{name}' is not supported (no tool calls)", param=name)
    response_format = get_field(body, "response_format", (dict,), "an object")
    if response_format and response_format.get("type") != "text":
        raise APIError(400, "'response_format' other than {\"type\": \"text\"} is not supported",
                       param="response_format")
    want = get_field(body, "logprobs", (bool,), "a boolean")
    top = get_integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    text = template.render(chat_messages(body))
    check_fits(text, limits, "messages")
    prompt = encode_text(text, limits.vocab_size)
    return parse_sampling(body, limits, [prompt], max_tokens_name=name, logprobs=(top or 0) if want else None)


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        what = "missing" if messages is None else f"{json_type(messages)}" if not isinstance(messages, list) else "empty"
        raise APIError(400, f"'messages' must be a non-empty array of {{role, content}} objects, not {what}",
                       param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content', not {json_type(message)}",
                           param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role must be one of {', '.join(ROLES)}, not {json.dumps(role)}"
                           + (" (no tool calls here)" if role == "tool" else ""), param="messages")
        if message.get("tool_calls"):
            raise APIError(400, f"{where}.tool_calls is not supported (no tool calls)", param="messages")
        out.append({"role": role, "content": _content(message.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of an array of parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else json_type(part)
                raise APIError(400, f"{where}.content: only text parts are supported, not {json.dumps(kind)}",
                               param="messages")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where}.content must be a string or an array of text parts, not {json_type(content)}",
                   param="messages")


# -- responses ----------------------------------------------------------------------------------


def chat_logprobs(tokens: list[int], logprobs: list[float], tops: list[dict[int, float] | None],
                  top: int) -> dict[str, Any]:
    """The chat API's ``logprobs`` object: per token its text, bytes, log-probability and ``top`` alternatives."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        from ..tokenizer import get_tokenizer

        return {"token": token_text(token), "logprob": logprob,
                "bytes": list(get_tokenizer().decode_single_token_bytes(token))}

    content = []
    for token, logprob, alternatives in zip(tokens, logprobs, tops, strict=True):
        best = sorted((alternatives or {}).items(), key=lambda item: -item[1])[:top]
        content.append(entry(token, logprob) | {"top_logprobs": [entry(t, v) for t, v in best]})
    return {"content": content}


def chat_body(request_id: str, created: int, model: str, choices: list[dict[str, Any]],
              usage: dict[str, int] | None, *, chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk" if chunk else "chat.completion",
                            "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
