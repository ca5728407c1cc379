"""``python -m openrouter_direct check``: is the configured endpoint ready for a training run?

Runs, against ``--base-url`` (else ``OPENAI_API_BASE``, else OpenRouter) with the key from the
environment, the checks DR-Tulu's own check script makes plus the ones that explain the usual
failures, and prints one line per check with ✓ or ✗, the reason, and for a failure a hint:

    base URL · key (``GET {base}/key``) · basic call · rubric-style JSON reply ·
    N concurrent calls · sync call · an invalid model returns "" without raising

Every call goes through the package's own functions (strict mode, so the status and message of a
failure are at hand); only ``GET /key`` uses urllib, with the key, proxy and CA bundle that the
extension says a call would use (``_native.endpoint``), not read again here. Exit status 0 only
when every check passed; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Callable, TextIO

from . import _api, errors
from ._progress import Progress

DEFAULT_BASE = "https://openrouter.ai/api/v1"  # for the help text; calls use the extension's
DEFAULT_MODEL = "openai/gpt-4o-mini"
INVALID_MODEL = "fake/no-such-model"   # no "fake" provider exists on OpenRouter (nor elsewhere)

JUDGE_SYSTEM = ("You grade answers against a rubric. Reply with a JSON object only, of the form "
                '{"score": S} where S is 0, 1 or 2.')
JUDGE_USER = ("Question: What is the boiling point of water at sea level, in Celsius?\n"
              "Response: 100 degrees Celsius.\n"
              "Rubric: the response states 100 °C.\n"
              "Grade the response against the rubric.")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    ms: float | None = None


# ------------------------------------------------ what a call would use, as the extension says

def _endpoint(base: str | None = None) -> dict[str, Any]:
    """What a call made now would use (base URL, key and its source, proxy, CA bundle) with this
    base URL, or the environment's when None: the extension's answer (csrc/endpoint.c), from the
    code every call runs."""
    native: Any = _api._load()
    answer: dict[str, Any] = native.endpoint(base)
    return answer


def _host_of(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _is_openrouter(url: str) -> bool:
    return bool(_endpoint(url)["openrouter"])


def _proxy_for(url: str) -> str | None:
    """The proxy libcurl is given for ``url``, or None: none, or no_proxy names the host (that
    match is libcurl's own; urllib's is close enough for a hint and for ``GET /key``)."""
    ep = _endpoint(url)
    proxy: str | None = ep["proxy"]
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    if proxy and bypass(_host_of(url), {"no": ep["noproxy"] or ""}):
        return None
    return proxy


def _safe_url(url: str) -> str:
    """A URL with any user:password@ taken out, fit to print."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc="…@" + netloc))


def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=_endpoint()["cainfo"])


def _opener(url: str) -> urllib.request.OpenerDirector:
    proxy = _proxy_for(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    proxies = {scheme: proxy} if proxy else {}
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies),
                                       urllib.request.HTTPSHandler(context=_ssl_context()))


def _key_from_env() -> tuple[str | None, str]:
    ep = _endpoint()
    return ep["key"], ep["key_source"] or ""


# ------------------------------------------------------------------------------ diagnostics

KEY_HINT = ("check OPENAI_API_KEY (or OPENROUTER_API_KEY): OpenRouter keys start with sk-or-; "
            "make one at https://openrouter.ai/keys")
CREDITS_HINT = "the account is out of credits: add some at https://openrouter.ai/settings/credits"
BASE_HINT = "OpenRouter's base URL ends in /api/v1: export OPENAI_API_BASE=https://openrouter.ai/api/v1"


def _model_hint(model: str) -> str:
    hint = "OpenRouter model ids carry a provider prefix (openai/gpt-4.1, not gpt-4.1)"
    if "/" not in model:
        hint += f"; try --model openai/{model}"
    return hint + ", see https://openrouter.ai/models; OPENROUTER_MODEL_MAP=name=id maps a name"


def _looks_like_bad_model(status: int | None, message: str) -> bool:
    text = message.lower()
    return status in (400, 404) and ("model" in text or "no endpoints" in text)


def _base_lacks_api_v1(base: str) -> bool:
    return _is_openrouter(base) and not urllib.parse.urlsplit(base).path.rstrip("/").endswith(
        "/api/v1")


def diagnose(exc: BaseException, base: str, model: str) -> tuple[str, str]:
    """(what went wrong, what to do) for an exception of strict mode."""
    if isinstance(exc, errors.OpenRouterError):
        status = exc.status_code
        text = exc.message
        if isinstance(exc, errors.AuthenticationError):
            if status is None:
                return text, "export OPENAI_API_KEY=sk-or-... (or OPENROUTER_API_KEY)"
            return f"the key was refused: {text}", KEY_HINT
        if status == 402:
            return f"no credits: {text}", CREDITS_HINT
        if _looks_like_bad_model(status, text):
            return f"unknown model {model!r}: {text}", _model_hint(model)
        if status == 404 and _base_lacks_api_v1(base):
            return text, BASE_HINT
        if status == 403:
            return text, "the key may not use this model, or the prompt was flagged by moderation"
        if isinstance(exc, errors.RateLimitError):
            return text, "rate limited: lower OPENROUTER_MAX_CONCURRENT_CALLS (or --concurrency)"
        if isinstance(exc, errors.APIConnectionError):
            return text, _connection_hint(text, base)
        return text, ""
    return f"{type(exc).__name__}: {exc}", ""


def _connection_hint(text: str, base: str) -> str:
    proxy = _proxy_for(base)
    if proxy:
        return (f"a proxy is set for this URL ({_safe_url(proxy)}): check that it is up and "
                f"lets {_host_of(base)} through, or add the host to no_proxy")
    low = text.lower()
    if "certificate" in low or "ssl" in low:
        return ("TLS failed: SSL_CERT_FILE (or CURL_CA_BUNDLE) must name a CA bundle that "
                "signs this server's certificate")
    return f"could not reach {_host_of(base) or base}: check the base URL, DNS and firewall"


# ----------------------------------------------------------------------------------- checks

def check_base(base: str) -> Check:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Check("base URL", False, f"{base!r} is not an http(s) URL",
                     f"set OPENAI_API_BASE (or --base-url) to {DEFAULT_BASE}")
    if _base_lacks_api_v1(base):
        return Check("base URL", False, f"{_safe_url(base)} has no /api/v1: calls would go to "
                     f"{_safe_url(base.rstrip('/'))}/chat/completions", BASE_HINT)
    note = "" if _is_openrouter(base) else " (not openrouter.ai: model names are sent as given)"
    return Check("base URL", True, _safe_url(base) + note)


def _money(v: Any) -> str:
    return f"${v:,.4f}".rstrip("0").rstrip(".") if isinstance(v, (int, float)) else str(v)


def check_key(base: str, timeout: float) -> Check:
    key, source = _key_from_env()
    if not key:
        return Check("key", False, "no key in the environment",
                     "export OPENAI_API_KEY=sk-or-... (or OPENROUTER_API_KEY)")
    url = base.rstrip("/") + "/key"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}",
                                               "Accept": "application/json"})
    t0 = time.perf_counter()
    try:
        with _opener(url).open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        ms = (time.perf_counter() - t0) * 1000
        message = _error_message(err)
        if err.code in (401, 403):
            return Check("key", False, f"refused (HTTP {err.code}: {message}), key from {source}",
                         KEY_HINT, ms)
        if err.code == 402:
            return Check("key", False, f"HTTP 402: {message}", CREDITS_HINT, ms)
        if err.code == 404:
            if _base_lacks_api_v1(base):
                return Check("key", False, f"HTTP 404 for {_safe_url(url)}", BASE_HINT, ms)
            if not _is_openrouter(base):
                return Check("key", True, f"this server has no /key (not OpenRouter): skipped; "
                             f"key from {source}", ms=ms)
        return Check("key", False, f"HTTP {err.code} for {_safe_url(url)}: {message}", "", ms)
    except (urllib.error.URLError, OSError) as err:
        ms = (time.perf_counter() - t0) * 1000
        reason = getattr(err, "reason", err)
        return Check("key", False, f"could not reach {_safe_url(url)}: {reason}",
                     _connection_hint(str(reason), base), ms)
    ms = (time.perf_counter() - t0) * 1000
    try:
        data = json.loads(raw).get("data") or {}
    except (ValueError, AttributeError):
        return Check("key", False, f"{_safe_url(url)} answered, but not with JSON", BASE_HINT, ms)
    parts = [f"valid (from {source})"]
    if data.get("label"):
        parts.append(f"label {data['label']!r}")
    if data.get("usage") is not None:
        parts.append(f"usage {_money(data['usage'])}")
    limit = data.get("limit")
    if limit is None:
        parts.append("no limit")
    else:
        left = data.get("limit_remaining")
        parts.append(f"limit {_money(limit)}" + (f" ({_money(left)} left)" if left is not None
                                                  else ""))
        if isinstance(left, (int, float)) and left <= 0:
            return Check("key", False, ", ".join(parts), CREDITS_HINT, ms)
    return Check("key", True, ", ".join(parts), ms=ms)


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        return str(body["error"]["message"])
    except Exception:  # noqa: BLE001 - any body at all
        return err.reason if isinstance(err.reason, str) else str(err.code)


def _quote(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= n else text[: n - 1] + "…", ensure_ascii=False)


def extract_json(text: str) -> Any:
    """The JSON object in a reply (also inside prose or a ```json fence), or None."""
    start, end = text.find("{"), text.rfind("}")
    while start != -1 and start < end:
        try:
            return json.loads(text[start:end + 1])
        except ValueError:
            start = text.find("{", start + 1)
    return None


class Checker:
    def __init__(self, base: str, model: str, concurrency: int, timeout: float,
                 show_progress: bool) -> None:
        self.base = base
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.show_progress = show_progress
        self.kw: dict[str, Any] = {"api_base": base, "timeout": timeout, "num_retries": 2,
                                   "raise_on_error": True}

    def _fail(self, name: str, exc: BaseException, ms: float | None = None) -> Check:
        detail, hint = diagnose(exc, self.base, self.model)
        return Check(name, False, detail, hint, ms)

    async def basic(self) -> Check:
        t0 = time.perf_counter()
        try:
            text = await _api.run_openrouter_async(
                self.model, "Reply with the single word: pong", max_tokens=200, **self.kw)
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            return self._fail("basic call", exc, (time.perf_counter() - t0) * 1000)
        ms = (time.perf_counter() - t0) * 1000
        if not text.strip():
            return Check("basic call", False, "the reply was empty", "a reasoning model may spend "
                         "max_tokens on reasoning: try another --model", ms)
        return Check("basic call", True, f"replied {_quote(text)} in {ms:,.0f} ms", ms=ms)

    async def rubric_json(self) -> Check:
        t0 = time.perf_counter()
        try:
            text = await _api.run_openrouter_async(
                self.model, JUDGE_USER, JUDGE_SYSTEM, max_tokens=200,
                response_format={"type": "json_object"}, **self.kw)
        except Exception as exc:  # noqa: BLE001
            return self._fail("rubric JSON", exc, (time.perf_counter() - t0) * 1000)
        ms = (time.perf_counter() - t0) * 1000
        obj = extract_json(text)
        if not isinstance(obj, dict):
            return Check("rubric JSON", False, f"the reply does not parse as JSON: {_quote(text)}",
                         "judging needs a model that follows JSON instructions: try another "
                         "--model", ms)
        shown = json.dumps({"score": obj["score"]}) if "score" in obj else _quote(text)
        return Check("rubric JSON", True, f"parsed {shown} in {ms:,.0f} ms", ms=ms)

    async def concurrent(self) -> Check:
        n = self.concurrency
        name = f"{n} concurrent"
        bar = Progress(f"{n} concurrent calls", n) if self.show_progress else None
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(_api.run_openrouter_async(
            self.model, f"Reply with the number {i} and nothing else.", max_tokens=50, **self.kw))
            for i in range(n)]
        done, ok, first_error = 0, 0, None
        for fut in asyncio.as_completed(tasks):
            try:
                if (await fut).strip():
                    ok += 1
            except Exception as exc:  # noqa: BLE001
                first_error = first_error or exc
            done += 1
            if bar:
                bar.update(done)
        if bar:
            bar.close(done)
        ms = (time.perf_counter() - t0) * 1000
        cap = _api.configure()["max_concurrent_calls"]
        if ok == n:
            return Check(name, True, f"{n}/{n} replied in {ms / 1000:.2f} s "
                         f"(at most {cap} on the wire)", ms=ms)
        if first_error is not None:
            detail, hint = diagnose(first_error, self.base, self.model)
            return Check(name, False, f"{ok}/{n} replied; first failure: {detail}", hint, ms)
        return Check(name, False, f"{ok}/{n} replied; the others were empty", "", ms)

    def sync(self) -> Check:
        t0 = time.perf_counter()
        try:
            text = _api.run_openrouter(self.model, "Reply with the single word: pong",
                                       max_tokens=200, **self.kw)
        except Exception as exc:  # noqa: BLE001
            return self._fail("sync call", exc, (time.perf_counter() - t0) * 1000)
        ms = (time.perf_counter() - t0) * 1000
        if not text.strip():
            return Check("sync call", False, "the reply was empty", "", ms)
        return Check("sync call", True, f"replied {_quote(text)} in {ms:,.0f} ms", ms=ms)

    async def invalid_model(self, logged: list[logging.LogRecord]) -> Check:
        before = len(logged)
        t0 = time.perf_counter()
        try:
            text = await _api.run_openrouter_async(
                INVALID_MODEL, "ping", api_base=self.base, timeout=self.timeout, num_retries=2,
                raise_on_error=False)
        except Exception as exc:  # noqa: BLE001
            return Check("invalid model", False, f"raised {type(exc).__name__}: {exc}",
                         "DR-Tulu expects \"\" from a failed call",
                         (time.perf_counter() - t0) * 1000)
        ms = (time.perf_counter() - t0) * 1000
        if text != "":
            return Check("invalid model", False, f"{INVALID_MODEL} replied {_quote(text)}",
                         "this endpoint accepts any model name", ms)
        lines = [r.getMessage() for r in logged[before:] if r.levelno >= logging.ERROR]
        why = lines[-1].split("]: ", 1)[-1] if lines else "failure logged"
        return Check("invalid model", True, f"{INVALID_MODEL} returned \"\" without raising "
                     f"({why})", ms=ms)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_checks(base: str, model: str, concurrency: int, timeout: float,
               show_progress: bool, on_result: Callable[[Check], None]) -> tuple[list[Check],
                                                                                  list[str]]:
    """Run every check in order, calling ``on_result`` as each ends; returns (checks, notes)."""
    log = logging.getLogger("openrouter_direct")
    keep = _Keep()
    saved = (log.propagate, log.level)
    log.addHandler(keep)
    log.propagate = False
    if log.level == logging.NOTSET or log.level > logging.WARNING:
        log.setLevel(logging.WARNING)
    previous_cap = _api.configure()["max_concurrent_calls"]
    if previous_cap < concurrency:
        _api.configure(max_concurrent_calls=concurrency)
    results: list[Check] = []

    def add(c: Check) -> None:
        results.append(c)
        on_result(c)

    try:
        add(check_base(base))
        add(check_key(base, timeout))
        checker = Checker(base, model, concurrency, timeout, show_progress)
        basic = asyncio.run(checker.basic())
        add(basic)
        if not basic.ok:
            for name in ("rubric JSON", f"{concurrency} concurrent", "sync call", "invalid model"):
                add(Check(name, False, "skipped: the basic call failed"))
        else:
            add(asyncio.run(checker.rubric_json()))
            add(asyncio.run(checker.concurrent()))
            add(checker.sync())
            add(asyncio.run(checker.invalid_model(keep.records)))
    finally:
        log.removeHandler(keep)
        log.propagate = saved[0]
        log.setLevel(saved[1])
        _api.configure(max_concurrent_calls=previous_cap)
    notes = sorted({r.getMessage() for r in keep.records if r.levelno == logging.WARNING})
    return results, notes


def _symbols(stream: TextIO) -> tuple[str, str]:
    try:
        "✓✗→…".encode(stream.encoding or "ascii")
        return "✓", "✗"
    except (UnicodeEncodeError, LookupError):
        return "OK", "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openrouter_direct check",
        description="Check the configured OpenRouter endpoint, key and model: one line per check "
                    "with the reason, and a hint for each failure. Exit status 0 only when all "
                    "pass. A few cheap calls are made (well under a cent on a small model).")
    parser.add_argument("--base-url",
                        help=f"endpoint (default: $OPENAI_API_BASE, else {DEFAULT_BASE})")
    parser.add_argument("--model", help=f"model to call (default: $RUBRIC_JUDGE_MODEL, else "
                                         f"{DEFAULT_MODEL})")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="calls made at once in the concurrency check (20)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each attempt may take (60)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    base = _endpoint(args.base_url or None)["base"].strip()
    model = args.model or os.environ.get("RUBRIC_JUDGE_MODEL") or DEFAULT_MODEL

    out = sys.stdout
    good, bad = _symbols(out)
    width = len(f"{args.concurrency} concurrent") + 2

    def show(c: Check) -> None:
        if args.json:
            return
        out.write(f"{good if c.ok else bad} {c.name:<{max(width, 14)}} {c.detail}\n")
        if c.hint:
            out.write(f"  {' ' * max(width, 14)} hint: {c.hint}\n")
        out.flush()

    if not args.json:
        out.write(f"openrouter_direct check: {_safe_url(base)}, model {model}\n")
        out.flush()
    results, notes = run_checks(base, model, args.concurrency, args.timeout,
                                show_progress=not args.json, on_result=show)
    failed = [c for c in results if not c.ok]
    if args.json:
        json.dump({"ok": not failed, "base_url": _safe_url(base), "model": model,
                   "checks": [dict(asdict(c), ms=None if c.ms is None else round(c.ms, 1))
                              for c in results], "notes": notes}, out, indent=2,
                  ensure_ascii=False)
        out.write("\n")
    else:
        for note in notes:
            out.write(f"note: {note}\n")
        if failed:
            out.write(f"{len(failed)} of {len(results)} checks failed\n")
        else:
            out.write(f"all {len(results)} checks passed\n")
    return 1 if failed else 0
