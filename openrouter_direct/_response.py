"""The response object of the raw functions: a chat completion with attribute and mapping access.

LiteLLM's ``ModelResponse`` is what open-instruct's ``run_litellm_async_raw`` returns, and its
callers read it both ways: ``response.choices[0].message.content`` and
``response["usage"]["prompt_tokens"]``. Here the engine (C) keeps the reply's bytes for a raw
call and hands them to the loop thread; ``from_bytes`` parses them with the standard library's C
JSON decoder, every JSON object becoming a ``ChatObject`` (a ``dict`` subclass, so mapping access,
``in``, ``.get``, iteration and ``json.dumps`` work as on a dict), whose missing attributes are
looked up as keys. Nothing else runs per call: no model classes, no validation.

Why not build the objects from the engine's cJSON tree in C: cJSON keeps every number as a
double, so ``"created": 1767225600`` and ``"cost": 0.0`` could not come back as the int and the
float the reply holds, and integers past 2**53 would lose digits; CPython's own C decoder keeps
them exact, at ~5 us per reply here (bench/raw_cpu.py).

A field LiteLLM always defines (``message.tool_calls``, ``usage.cost``, ...) reads as ``None``
when OpenRouter left it out; any other missing attribute raises ``AttributeError``, so
``hasattr(response, "provider")`` is true only when the reply named one.
"""

from __future__ import annotations

import json
from typing import Any

# Attributes that read as None when the reply lacks them (LiteLLM's models define them all).
_OPTIONAL = frozenset((
    "id", "model", "created", "object", "system_fingerprint", "usage", "choices",
    "content", "role", "reasoning", "reasoning_content", "reasoning_details", "tool_calls",
    "function_call", "refusal", "annotations", "audio",
    "finish_reason", "native_finish_reason", "index", "logprobs", "message",
    "prompt_tokens", "completion_tokens", "total_tokens", "cost", "is_byok", "cost_details",
    "prompt_tokens_details", "completion_tokens_details", "cached_tokens", "reasoning_tokens",
    "audio_tokens", "cache_write_tokens", "image_tokens",
))


class ChatObject(dict[str, Any]):
    """A JSON object of the reply: a dict whose keys are also attributes."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name in _OPTIONAL:
                return None
            raise AttributeError(f"the reply has no {name!r}") from None

    def model_dump(self) -> dict[str, Any]:
        """This object as plain dicts and lists (a deep copy)."""
        plain: dict[str, Any] = _plain(self)
        return plain

    def model_dump_json(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"


class ChatResponse(ChatObject):
    """The whole reply: ``.id``, ``.model``, ``.created``, ``.provider`` (when OpenRouter names
    one), ``.choices[i].message.content`` / ``.role`` / ``.reasoning`` / ``.tool_calls``,
    ``.choices[i].finish_reason``, ``.usage.prompt_tokens`` / ``.completion_tokens`` /
    ``.total_tokens`` / ``.cost`` and the token-detail objects; ``model_dump()`` gives the reply as
    a dict."""

    __slots__ = ()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_decode = json.JSONDecoder(object_hook=ChatObject).decode


def from_bytes(raw: bytes) -> ChatResponse:
    """The response object for one reply's bytes (already judged a chat completion in C)."""
    obj = _decode(raw.decode("utf-8", "replace"))
    return ChatResponse(obj)
