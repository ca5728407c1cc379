"""The public call functions: argument defaults, logging and the exit hook. One crossing into C
per call; everything else (JSON, HTTP, retries, the process-wide cap) happens in ``_native``.

Importing the package loads neither the extension nor ``logging``: dlopen of libcurl and its ~30
libraries alone costs ~5 ms, and a trainer imports this module whether or not it ever calls. The
first call (or ``stats()`` / ``configure()``) loads them, once; after that the call functions reach
the extension through module globals rebound by ``_load``, with no check on the hot path.
"""

from __future__ import annotations

import _thread
import os

from . import errors
from ._response import ChatResponse, from_bytes as _from_bytes

# Annotations are never evaluated (postponed), so typing is imported for type checkers only: at
# run time it alone would cost more than the whole import budget.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_load_lock = _thread.allocate_lock()
_native: Any = None
log: Any = None  # logging.getLogger("openrouter_direct"), set by _load


def _load() -> Any:
    """Import the extension and wire its hooks; returns the module. Raises ImportError (for
    example, a libcurl older than the one it was built against) at the first call."""
    global _native, _submit, _cancel, _call, log
    with _load_lock:
        if _native is not None:
            return _native
        import atexit
        import functools
        import logging

        from . import _native as native

        native.set_governor(*_governor_env())
        native.set_hedge(*_hedge_env())
        if log is None:
            log = logging.getLogger("openrouter_direct")
            _apply_loglevel(logging)
        native.set_hooks(_on_failure, _on_attempts,
                         functools.partial(log.isEnabledFor, logging.DEBUG), _on_warning)
        # At interpreter exit, fail what is still in flight so that daemon threads blocked in a
        # call return "" and the process ends promptly. atexit's hooks run after Python has
        # joined the non-daemon threads, so those still finish their calls, as Python promises
        # them; threading's own hook would run before that join and refuse their calls.
        atexit.register(native.shutdown)
        _submit, _cancel, _call = native.submit, native.cancel, native.call
        _native = native
        return native


def _submit(*args: Any) -> Any:
    return _load().submit(*args)


def _cancel(key: int | None, fut: Any = None, /) -> None:
    _load().cancel(key, fut)


def _call(*args: Any) -> Any:
    return _load().call(*args)


async def run_openrouter_async(model_name: str, user_prompt: str | None = None,
                               system_prompt: str | None = None,
                               messages: list[dict[str, Any]] | None = None,
                               **chat_kwargs: Any) -> str:
    """Drop-in for DR-Tulu's ``run_litellm_async``: the reply text, or "" when the call failed."""
    fut, key = _submit(model_name, user_prompt, system_prompt, messages, chat_kwargs, 16384)
    try:
        text: str = await fut
        return text
    except BaseException:
        # Cancelled (or interrupted, or the coroutine closed after its loop was): abort the
        # transfer and free its slot. A no-op when the result was already delivered.
        _cancel(key, fut)
        raise


def run_openrouter(model_name: str, user_prompt: str | None = None,
                   system_prompt: str | None = None,
                   messages: list[dict[str, Any]] | None = None, **chat_kwargs: Any) -> str:
    """Drop-in for DR-Tulu's ``run_litellm``: blocks this thread (GIL released) until the reply."""
    text: str = _call(model_name, user_prompt, system_prompt, messages, chat_kwargs, 800)
    return text


async def run_openrouter_async_raw(model_name: str, user_prompt: str | None = None,
                                   system_prompt: str | None = None,
                                   messages: list[dict[str, Any]] | None = None,
                                   **chat_kwargs: Any) -> ChatResponse:
    """Drop-in for open-instruct's ``run_litellm_async_raw``: the same request as
    ``run_openrouter_async``, returning the whole reply as a ``ChatResponse`` (attribute and
    mapping access, ``model_dump()``). Failures raise ``OpenRouterError`` subclasses, as in strict
    mode; never returns None."""
    fut, key = _submit(model_name, user_prompt, system_prompt, messages, chat_kwargs, 16384, True)
    try:
        raw = await fut
    except BaseException:
        _cancel(key, fut)
        raise
    return _from_bytes(raw)


def run_openrouter_raw(model_name: str, user_prompt: str | None = None,
                       system_prompt: str | None = None,
                       messages: list[dict[str, Any]] | None = None,
                       **chat_kwargs: Any) -> ChatResponse:
    """The synchronous ``run_openrouter_async_raw`` (``run_openrouter``'s defaults)."""
    return _from_bytes(_call(model_name, user_prompt, system_prompt, messages, chat_kwargs, 800,
                             True))


call_openrouter_async = run_openrouter_async
call_openrouter = run_openrouter
call_openrouter_async_raw = run_openrouter_async_raw
call_openrouter_raw = run_openrouter_raw


def stats() -> dict[str, Any]:
    """Process-wide counters since start (or since fork, in a child)."""
    counters: dict[str, Any] = (_native or _load()).stats()
    return counters


def metrics(prefix: str = "openrouter/") -> dict[str, float]:
    """What changed since the last ``metrics()`` read, as a flat dict of numbers for
    ``wandb.log``: calls, succeeded, failed, ``failed/<reason>``, cancelled, retries,
    rate_limited (attempts answered 429), hedges (sent) and hedges_won, cost,
    prompt/completion/total tokens, p50/p95 latency (ms) of the calls finished in the interval,
    and the in_flight / queued gauges; every key starts with ``prefix``."""
    from ._metrics import metrics as read
    return read(_native or _load(), prefix)


def configure(*, max_concurrent_calls: int | None = None, max_cost: float | None = None,
              adaptive: bool | None = None, rate_limit_wait: float | None = None,
              hedge: str | bool | None = None, hedge_budget: float | None = None) -> dict[str, Any]:
    """Change process-wide settings at run time; returns the settings now in force.

    ``max_concurrent_calls`` caps the calls on the wire across every loop and thread
    (default: ``OPENROUTER_MAX_CONCURRENT_CALLS``, else 10); with ``adaptive`` on (the default,
    ``OPENROUTER_ADAPTIVE``) it is the ceiling the governor adapts under. ``max_cost`` is this
    process's budget in OpenRouter credits (USD), 0 for none (``OPENROUTER_MAX_COST``);
    ``rate_limit_wait`` the seconds a call may wait out rate limits
    (``OPENROUTER_RATE_LIMIT_WAIT``). ``hedge`` is when a slow attempt gets a second one: a
    percentile such as ``"p99.5"`` (the default) or ``"p99"``, or ``"off"`` / ``False``
    (``OPENROUTER_HEDGE``); ``hedge_budget`` the share of calls that may be hedged, 0 to 1
    (``OPENROUTER_HEDGE_BUDGET``, default 0.05). docs/HEDGING.md has the whole story."""
    global _budget_logged
    native = _native or _load()
    if max_concurrent_calls is not None:
        native.set_limit(max_concurrent_calls)
    if adaptive is not None and not isinstance(adaptive, bool):
        raise TypeError("adaptive must be a bool")
    wait = -1.0 if rate_limit_wait is None else _number("rate_limit_wait", rate_limit_wait)
    cost = -1.0 if max_cost is None else _number("max_cost", max_cost)
    if max_cost is not None:
        _budget_logged = False
    q = -1.0 if hedge is None else _hedge_quantile("hedge", hedge)
    share = -1.0 if hedge_budget is None else _share("hedge_budget", _number("hedge_budget",
                                                                             hedge_budget))
    gov = native.set_governor(-1 if adaptive is None else int(adaptive), wait, cost)
    hedging = native.set_hedge(q, share)
    return {"max_concurrent_calls": native.set_limit(None), **gov,
            "hedge": _hedge_name(hedging["hedge"]), "hedge_budget": hedging["hedge_budget"]}


def _hedge_quantile(name: str, value: Any) -> float:
    """'off' (or False) -> 0.0; 'p95' / 'p99.5' -> 0.95 / 0.995; anything else: ValueError."""
    if value is False:
        return 0.0
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("off", "0", "false", "no"):
        return 0.0
    if text and text[0] == "p":
        try:
            pct = float(text[1:])
        except ValueError:
            pct = float("nan")
        if 50.0 <= pct < 100.0:
            return pct / 100.0
    raise ValueError(f"{name} must be 'off' or a percentile from p50 to p99.9 (such as 'p99'), "
                     f"not {value!r}")


def _hedge_name(q: float) -> str:
    return "off" if q <= 0 else "p%g" % round(q * 100.0, 6)


def _share(name: str, v: float) -> float:
    if v > 1.0:
        raise ValueError(f"{name} must be a share of calls from 0 to 1, not {v!r}")
    return v


def _hedge_env() -> tuple[float, float]:
    """OPENROUTER_HEDGE, OPENROUTER_HEDGE_BUDGET, checked as the governor's variables are."""
    env = os.environ
    raw = env.get("OPENROUTER_HEDGE", "").strip()
    q = _hedge_quantile("OPENROUTER_HEDGE", raw) if raw else -1.0
    text = env.get("OPENROUTER_HEDGE_BUDGET", "").strip()
    share = -1.0
    if text:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"OPENROUTER_HEDGE_BUDGET must be a number, not {text!r}") from None
        share = _share("OPENROUTER_HEDGE_BUDGET", _finite("OPENROUTER_HEDGE_BUDGET", v, text))
    return q, share


def _finite(name: str, v: float, shown: Any) -> float:
    if v != v or v in (float("inf"), float("-inf")) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {shown!r}")
    return v


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return _finite(name, float(value), value)


def _governor_env() -> tuple[int, float, float]:
    """OPENROUTER_ADAPTIVE, OPENROUTER_RATE_LIMIT_WAIT, OPENROUTER_MAX_COST, checked; a bad value
    raises ValueError naming the variable (at the first call, where the extension loads)."""
    env = os.environ
    raw = env.get("OPENROUTER_ADAPTIVE", "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        adaptive = 1
    elif raw in ("0", "false", "no", "off"):
        adaptive = 0
    else:
        raise ValueError(f"OPENROUTER_ADAPTIVE must be 1/true/on or 0/false/off, not {raw!r}")

    def number(var: str, default: float) -> float:
        text = env.get(var, "").strip()
        if not text:
            return default
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{var} must be a number, not {text!r}") from None
        return _finite(var, v, text)

    return (adaptive, number("OPENROUTER_RATE_LIMIT_WAIT", 600.0),
            number("OPENROUTER_MAX_COST", 0.0))


_budget_logged = False


def _on_failure(reason: str, status: int | None, message: str, model: str, request_id: int,
                attempts: int, strict: bool, exc_name: str) -> str | errors.OpenRouterError:
    """Called by the engine (loop or caller thread, GIL held) for each failed call."""
    global _budget_logged
    if reason == "budget" and not strict:
        # One ERROR line when the budget runs out, not one per refused call.
        if _budget_logged:
            log.debug("call %d (%s) refused [budget]: %s", request_id, model, message)
        else:
            _budget_logged = True
            log.error("%s; every new call returns \"\" until configure(max_cost=...) raises the "
                      "budget (call %d, %s)", message, request_id, model)
        return ""
    if strict:
        cls = getattr(errors, exc_name, errors.OpenRouterError)
        text = f"HTTP {status}: {message}" if status else message
        return cls(text, reason=reason, status_code=status, attempts=attempts, model=model,
                   request_id=request_id)
    log.error("call %d (%s) failed after %d attempt(s) [%s]: %s%s", request_id, model, attempts,
              reason, f"HTTP {status}: " if status else "", message)
    return ""


def _on_attempts(request_id: int, model: str, attempts: list[tuple[int, str, int]]) -> None:
    for url, old, new, why in _native.governor_events():
        log.debug("governor %s: limit %d -> %d (%s)", url, old, new, why)
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


def _apply_loglevel(logging: Any) -> None:
    level = os.environ.get("LOGLEVEL", "").strip().upper()
    if not level or not isinstance(logging.getLevelName(level), int):
        return
    log.setLevel(level)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)


# LOGLEVEL takes effect at import, as the trainer's own modules read it; logging is only imported
# here when the variable is set.
if os.environ.get("LOGLEVEL"):
    import logging as _logging

    log = _logging.getLogger("openrouter_direct")
    _apply_loglevel(_logging)
