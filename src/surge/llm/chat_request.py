"""`POST /v1/chat/completions` bodies: parsed once, checked field by field, every fault
a 400 that names the field and what to send instead.

Only the fields surge understands are read, and only those are sent on to a backend:
a client's body is untrusted, so an unknown field is ignored rather than relayed to a
provider under our API key. Fields that would change the answer's shape in ways the
gateway does not relay (tools, several choices, audio) are refused, not silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from surge.core.errors import bad_input
from surge.llm.stream import ChatCall

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_MESSAGES = 1024
MAX_STOP = 4
MAX_USER_CHARS = 256
# Fields that change what an answer is made of; a gateway that dropped them would hand
# back an answer the client did not ask for.
REFUSED = {
    "tools": "tools and function calling are not supported by this gateway yet",
    "functions": "function calling is not supported by this gateway yet",
    "tool_choice": "tools and function calling are not supported by this gateway yet",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    call: ChatCall  # max_tokens is the client's (0 when unset) until the model sets it
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    max_tokens_asked: int | None
    prompt_chars: int  # characters of every message's text: what rules and counting see
    body_bytes: int


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_input("request body must be a JSON object")
    model = doc.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_input("'model' is required: the name of a chat model or route")
    for name, why in REFUSED.items():
        if doc.get(name) is not None:
            raise bad_input(f"'{name}': {why}")
    n = doc.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise bad_input(f"'n' must be 1 (one answer per request), got {_show(n)}")
    messages, chars = _messages(doc.get("messages"))
    stream = _bool(doc, "stream", False)
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_input("'stream_options' must be an object, e.g. {\"include_usage\": true}")
    include_usage = bool(options and _bool(options, "include_usage", False))
    if options and not stream:
        raise bad_input("'stream_options' is only allowed with 'stream': true")
    max_tokens = _int(doc, "max_completion_tokens", 1, None)
    if max_tokens is None:
        max_tokens = _int(doc, "max_tokens", 1, None)
    logprobs = _bool(doc, "logprobs", False)
    top_logprobs = _int(doc, "top_logprobs", 0, 20)
    if top_logprobs is not None and not logprobs:
        raise bad_input("'top_logprobs' needs 'logprobs': true")
    user = doc.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise bad_input(f"'user' must be a string of at most {MAX_USER_CHARS} characters")
    call = ChatCall(
        messages=messages,
        max_tokens=max_tokens or 0,
        temperature=_number(doc, "temperature", 0.0, 2.0),
        top_p=_number(doc, "top_p", 0.0, 1.0),
        stop=_stop(doc.get("stop")),
        seed=_int(doc, "seed", -(2**63), 2**63 - 1),
        presence_penalty=_number(doc, "presence_penalty", -2.0, 2.0),
        frequency_penalty=_number(doc, "frequency_penalty", -2.0, 2.0),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        user=user,
    )
    return ChatRequest(model, call, stream, include_usage, max_tokens, chars, len(body))


def _messages(raw: Any) -> tuple[tuple[dict[str, Any], ...], int]:
    if not isinstance(raw, list) or not raw:
        raise bad_input("'messages' must be a non-empty list of {role, content} objects")
    if len(raw) > MAX_MESSAGES:
        raise bad_input(f"'messages' has {len(raw)} items; at most {MAX_MESSAGES}")
    out, chars = [], 0
    for i, message in enumerate(raw):
        where = f"'messages[{i}]'"
        if not isinstance(message, dict):
            raise bad_input(f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_input(f"{where}.role must be one of {sorted(ROLES)}, got {_show(role)}")
        if message.get("tool_calls") is not None or message.get("function_call") is not None:
            raise bad_input(f"{where}: tool calls are not supported by this gateway yet")
        text = _content(message.get("content"), where)
        chars += len(text)
        clean: dict[str, Any] = {"role": role, "content": text}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str) or not 0 < len(name) <= 64:
                raise bad_input(f"{where}.name must be a string of 1 to 64 characters")
            clean["name"] = name
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise bad_input(f"{where}: a tool message needs 'tool_call_id'")
            clean["tool_call_id"] = call_id
        out.append(clean)
    return tuple(out), chars


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts joined (images and audio
    parts are refused: the gateway relays text models only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_input(
                    f'{where}.content[{j}] must be a text part ({{"type": "text", '
                    f'"text": ...}}); {_show(kind)} parts are not supported'
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_input(f"{where}.content[{j}].text must be a string")
            parts.append(text)
        return "".join(parts)
    raise bad_input(f"{where}.content must be a string or a list of text parts")


def _bool(doc: dict[str, Any], name: str, default: bool) -> bool:
    value = doc.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_input(f"'{name}' must be true or false, got {_show(value)}")
    return value


def _int(doc: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise bad_input(f"'{name}' must be a whole number {bounds}, got {_show(value)}")
    return value


def _number(doc: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise bad_input(f"'{name}' must be a number in [{low}, {high}], got {_show(value)}")
    if not low <= value <= high:
        raise bad_input(f"'{name}' must be a number in [{low}, {high}], got {_show(value)}")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP
        or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in value)
    ):
        raise bad_input(f"'stop' must be a string or a list of at most {MAX_STOP} strings")
    return tuple(value)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def prompt_text(call: ChatCall) -> str:
    """Every message's text, one per line: what a local count and a review item read."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in call.messages)


def count_tokens_estimate(chars: int) -> int:
    """Tokens a prompt of `chars` characters is taken to have when no tokenizer of the
    model is at hand: about 4 characters per token for English text (OpenAI's rule of
    thumb), rounded up. Named "chars/4" wherever it stands in for a provider's count."""
    return max(1, -(-chars // 4))


ESTIMATE_METHOD = "counted:chars/4"
