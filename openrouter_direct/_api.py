"""The public call functions: argument defaults, logging and the exit hook. One crossing into C
per call; everything else (JSON, HTTP, retries, the process-wide cap) happens in ``_native``."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from typing import Any

from . import _native, errors

log = logging.getLogger("openrouter_direct")

_submit = _native.submit
_cancel = _native.cancel
_call = _native.call


async def run_openrouter_async(model_name: str, user_prompt: str | None = None,
                               system_prompt: str | None = None,
                               messages: list[dict[str, Any]] | None = None,
                               **chat_kwargs: Any) -> str:
    """Drop-in for DR-Tulu's ``run_litellm_async``: the reply text, or "" when the call failed."""
    fut, key = _submit(model_name, user_prompt, system_prompt, messages, chat_kwargs, 16384)
    try:
        return await fut
    except BaseException:
        # Cancelled (or interrupted): abort the transfer and free its slot. A no-op when the
        # result was already delivered.
        _cancel(key)
        raise


def run_openrouter(model_name: str, user_prompt: str | None = None,
                   system_prompt: str | None = None,
                   messages: list[dict[str, Any]] | None = None, **chat_kwargs: Any) -> str:
    """Drop-in for DR-Tulu's ``run_litellm``: blocks this thread (GIL released) until the reply."""
    return _call(model_name, user_prompt, system_prompt, messages, chat_kwargs, 800)


call_openrouter_async = run_openrouter_async
call_openrouter = run_openrouter


def stats() -> dict[str, Any]:
    """Process-wide counters since start (or since fork, in a child)."""
    return _native.stats()


def configure(*, max_concurrent_calls: int | None = None) -> dict[str, Any]:
    """Change process-wide settings at run time; returns the settings now in force.

    ``max_concurrent_calls`` caps the calls on the wire across every loop and thread
    (default: ``OPENROUTER_MAX_CONCURRENT_CALLS``, else 10)."""
    if max_concurrent_calls is not None:
        _native.set_limit(max_concurrent_calls)
    return {"max_concurrent_calls": _native.set_limit(None)}


def _on_failure(reason: str, status: int | None, message: str, model: str, request_id: int,
                attempts: int, strict: bool, exc_name: str):
    """Called by the engine (loop or caller thread, GIL held) for each failed call."""
    if strict:
        cls = getattr(errors, exc_name, errors.OpenRouterError)
        text = f"HTTP {status}: {message}" if status else message
        return cls(text, reason=reason, status_code=status, attempts=attempts, model=model,
                   request_id=request_id)
    log.error("call %d (%s) failed after %d attempt(s) [%s]: %s%s", request_id, model, attempts,
              reason, f"HTTP {status}: " if status else "", message)
    return ""


def _on_attempts(request_id: int, model: str, attempts: list[tuple[int, str, int]]) -> None:
    for n, (status, curl_error, ms) in enumerate(attempts, 1):
        log.debug("call %d model=%s attempt=%d status=%s ms=%d", request_id, model, n,
                  status if status else (curl_error or "-"), ms)


def _on_warning(kind: str, subject: str, detail: str) -> None:
    """Called once per process for each (kind, subject)."""
    if kind == "model":
        log.warning("model %r has no provider prefix; sending %r to OpenRouter "
                    "(OPENROUTER_MODEL_MAP can map it differently)", subject, detail)
    elif kind == "plain_http":
        log.warning("%s is plain http:// to a host that is not loopback: the API key and "
                    "prompts travel unencrypted", detail)


def _apply_loglevel() -> None:
    level = os.environ.get("LOGLEVEL", "").strip().upper()
    if not level or not isinstance(logging.getLevelName(level), int):
        return
    log.setLevel(level)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)


_apply_loglevel()
_native.set_hooks(_on_failure, _on_attempts, functools.partial(log.isEnabledFor, logging.DEBUG),
                  _on_warning)

# At interpreter exit, fail what is still in flight so that threads blocked in a call return
# "" and the process ends promptly. threading's hook runs before non-daemon threads are joined.
try:
    threading._register_atexit(_native.shutdown)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):
    atexit.register(_native.shutdown)
