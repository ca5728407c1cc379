"""Failure reporting: the one log line, strict mode exceptions, programming errors,
a missing key, header injection, and the key never leaking."""

import asyncio
import logging
import socket

import pytest

from helpers import arun, await_until, bounded, uniq

LOGGER = "openrouter_direct"


def failure_records(caplog):
    return [r for r in caplog.records
            if r.name.startswith(LOGGER) and r.levelno >= logging.WARNING]


def closed_port_base():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d/api/v1" % port


# ----------------------------------------------------------------- the log line
def test_failure_logs_one_line_with_status_and_server_message(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert arun(od.run_openrouter_async("fake/status-503", uniq(), num_retries=2)) == ""
    recs = failure_records(caplog)
    assert len(recs) == 1, [r.getMessage() for r in recs]
    msg = recs[0].getMessage()
    assert "503" in msg and "fake status 503" in msg


def test_sync_failure_logs_one_line(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert bounded(od.run_openrouter, "fake/status-401", uniq()) == ""
    recs = failure_records(caplog)
    assert len(recs) == 1
    assert "401" in recs[0].getMessage() and "fake status 401" in recs[0].getMessage()


def test_provider_error_in_200_logs_its_code_and_message(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert arun(od.run_openrouter_async("fake/error200-502", uniq(), num_retries=0)) == ""
    recs = failure_records(caplog)
    assert len(recs) == 1
    assert "502" in recs[0].getMessage() and "provider failed" in recs[0].getMessage()


def test_connection_refused_logs_libcurl_error_text(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0,
                                       api_base=closed_port_base()))
    assert out == ""
    recs = failure_records(caplog)
    assert len(recs) == 1
    assert "connect" in recs[0].getMessage().lower()


def test_timeout_failure_log_mentions_timeout(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert arun(od.run_openrouter_async("fake/stall", uniq(), timeout=0.3, num_retries=0)) == ""
    recs = failure_records(caplog)
    assert len(recs) == 1
    assert "time" in recs[0].getMessage().lower()


def test_success_logs_nothing_at_warning_or_above(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = uniq()
    assert arun(od.run_openrouter_async("fake/flaky-1-503", p)) == "echo: " + p
    assert failure_records(caplog) == []


def test_cancelled_call_logs_no_failure(od, server, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        t = asyncio.ensure_future(od.run_openrouter_async("fake/stall", uniq()))
        assert await await_until(lambda: server.in_progress == 1)  # on the wire
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
    arun(main())
    assert failure_records(caplog) == []


# ------------------------------------------------------------------ strict mode
def test_exception_hierarchy(od):
    assert issubclass(od.OpenRouterError, Exception)
    assert issubclass(od.APIStatusError, od.OpenRouterError)
    assert issubclass(od.AuthenticationError, od.APIStatusError)
    assert issubclass(od.RateLimitError, od.APIStatusError)
    assert issubclass(od.APIConnectionError, od.OpenRouterError)
    assert issubclass(od.APITimeoutError, od.APIConnectionError)
    assert not issubclass(od.APIConnectionError, od.APIStatusError)


def strict(od, model, **kw):
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async(model, uniq(), raise_on_error=True, **kw))
    return info.value


def test_strict_mode_raises_status_error_after_retries(od, server):
    exc = strict(od, "fake/status-503", num_retries=2)
    assert type(exc) is od.APIStatusError
    assert exc.status_code == 503
    assert exc.reason == "http_status"
    assert exc.attempts == 3
    assert "fake status 503" in str(exc)


def test_strict_mode_401_is_authentication_error_tried_once(od):
    exc = strict(od, "fake/status-401", num_retries=3)
    assert type(exc) is od.AuthenticationError
    assert exc.status_code == 401 and exc.attempts == 1


@pytest.mark.parametrize("model", ["fake/status-429", "fake/retry-after-0"])
def test_strict_mode_429_is_rate_limit_error(od, model, adaptive_off):
    exc = strict(od, model, num_retries=1)
    assert type(exc) is od.RateLimitError
    assert exc.status_code == 429 and exc.attempts == 2


@pytest.mark.parametrize("status", [400, 402, 403, 404])
def test_strict_mode_other_client_errors_are_status_errors(od, status):
    exc = strict(od, "fake/status-%d" % status, num_retries=3)
    assert type(exc) is od.APIStatusError
    assert exc.status_code == status and exc.attempts == 1 and exc.reason == "http_status"


def test_strict_mode_connection_refused_is_connection_error(od):
    exc = strict(od, "fake/echo", num_retries=1, api_base=closed_port_base())
    assert type(exc) is od.APIConnectionError
    assert exc.reason == "connection" and exc.attempts == 2


@pytest.mark.parametrize("model", ["fake/reset", "fake/reset-midbody"])
def test_strict_mode_reset_is_connection_error(od, model):
    exc = strict(od, model, num_retries=0)
    assert isinstance(exc, od.APIConnectionError) and not isinstance(exc, od.APITimeoutError)
    assert exc.reason == "connection"


def test_strict_mode_stall_is_timeout_error(od):
    exc = strict(od, "fake/stall", num_retries=1, timeout=0.3)
    assert type(exc) is od.APITimeoutError
    assert exc.reason == "timeout" and exc.attempts == 2


@pytest.mark.parametrize("model", ["fake/garbage", "fake/truncated"])
def test_strict_mode_unparsable_reply_is_invalid_response(od, model):
    exc = strict(od, model, num_retries=1)
    assert exc.reason == "invalid_response" and exc.attempts == 2
    assert not isinstance(exc, od.APIConnectionError)


def test_strict_mode_error_in_200_is_provider_error_with_its_code(od):
    exc = strict(od, "fake/error200-502", num_retries=1)
    assert isinstance(exc, od.APIStatusError)
    assert exc.status_code == 502
    assert exc.reason == "provider_error" and exc.attempts == 2
    assert "provider failed" in str(exc)


def test_strict_mode_from_env(od, monkeypatch):
    monkeypatch.setenv("OPENROUTER_RAISE_ON_ERROR", "1")
    with pytest.raises(od.APIStatusError):
        arun(od.run_openrouter_async("fake/status-500", uniq(), num_retries=0))
    with pytest.raises(od.APIStatusError):
        bounded(od.run_openrouter, "fake/status-500", uniq(), num_retries=0)


def test_strict_mode_sync_raises(od, adaptive_off):
    with pytest.raises(od.RateLimitError) as info:
        bounded(od.run_openrouter, "fake/status-429", uniq(), num_retries=0,
                raise_on_error=True)
    assert info.value.attempts == 1


def test_strict_mode_success_returns_normally(od):
    p = uniq()
    assert arun(od.run_openrouter_async("fake/flaky-1-502", p, raise_on_error=True)) == "echo: " + p


def test_strict_mode_failure_is_not_also_logged_as_error_twice(od, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    strict(od, "fake/status-503", num_retries=0)
    assert len(failure_records(caplog)) <= 1


# ---------------------------------------------------------- programming errors
BAD_CALLS = {
    "model_not_str": (lambda od: dict(model_name=123, user_prompt="x")),
    "model_none": (lambda od: dict(model_name=None, user_prompt="x")),
    "messages_not_list": (lambda od: dict(model_name="fake/echo", messages="hello")),
    "messages_items_not_dicts": (lambda od: dict(model_name="fake/echo", messages=["hi", 3])),
    "unencodable_kwarg": (lambda od: dict(model_name="fake/echo", user_prompt="x",
                                          seed=object())),
    "unencodable_nested_kwarg": (lambda od: dict(model_name="fake/echo", user_prompt="x",
                                                 provider={"order": [object()]})),
    "no_prompt_no_messages": (lambda od: dict(model_name="fake/echo")),
    "nan_kwarg": (lambda od: dict(model_name="fake/echo", user_prompt="x",
                                  temperature=float("nan"))),
    "set_kwarg": (lambda od: dict(model_name="fake/echo", user_prompt="x", stop={"a"})),
    "user_prompt_not_str": (lambda od: dict(model_name="fake/echo", user_prompt=123)),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_programming_errors_raise_type_error_async(od, server, case):
    kwargs = BAD_CALLS[case](od)

    async def main():
        await od.run_openrouter_async(**kwargs)

    with pytest.raises(TypeError):
        arun(main())
    assert server.chat_requests() == []


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_programming_errors_raise_type_error_sync(od, server, case):
    kwargs = BAD_CALLS[case](od)
    with pytest.raises(TypeError):
        bounded(od.run_openrouter, **kwargs)
    assert server.chat_requests() == []


# ---------------------------------------------------------------- missing key
def test_missing_key_fails_without_sending(od, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert arun(od.run_openrouter_async("fake/echo", uniq())) == ""
    assert bounded(od.run_openrouter, "fake/echo", uniq()) == ""
    assert server.requests == []
    assert len(failure_records(caplog)) == 2


def test_missing_key_in_strict_mode_is_authentication_error_without_status(od, server,
                                                                          monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(od.AuthenticationError) as info:
        arun(od.run_openrouter_async("fake/echo", uniq(), raise_on_error=True))
    assert info.value.status_code is None
    assert isinstance(info.value.reason, str) and info.value.reason
    assert server.requests == []


# ------------------------------------------------------------- header injection
INJECTIONS = [
    ("env", "OPENROUTER_TITLE", "Title\r\nX-Injected: yes"),
    ("env", "OPENROUTER_REFERER", "http://x\nX-Injected: yes"),
    ("env", "OPENAI_API_KEY", "sk-or-abc\r\nX-Injected: yes"),
    ("kw", "extra_headers", {"X-Ok": "a\rb"}),
    ("kw", "extra_headers", {"X-Ok": "fine\nX-Injected: yes"}),
    ("kw", "api_key", "sk\nX-Injected: yes"),
]


@pytest.mark.parametrize("where,name,value", INJECTIONS,
                         ids=["title", "referer", "env_key", "extra_cr", "extra_lf", "kw_key"])
def test_header_injection_is_refused_and_nothing_is_sent(od, server, monkeypatch, caplog,
                                                         where, name, value):
    caplog.set_level(logging.INFO, logger=LOGGER)
    kw = {}
    if where == "env":
        monkeypatch.setenv(name, value)
    else:
        kw[name] = value
    assert arun(od.run_openrouter_async("fake/echo", uniq(), **kw)) == ""
    assert server.requests == []
    recs = failure_records(caplog)
    assert len(recs) == 1
    msg = recs[0].getMessage()
    assert "header" in msg.lower()
    assert "\n" not in msg and "\r" not in msg  # the log line itself stays one line


def test_header_injection_in_strict_mode_reason_is_bad_header(od, server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_TITLE", "a\r\nb: c")
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/echo", uniq(), raise_on_error=True))
    assert info.value.reason == "bad_header"
    assert server.requests == []


# ------------------------------------------------------------ the key stays secret
def test_api_key_never_appears_in_logs_or_exceptions(od, server, api_key, caplog, capfd,
                                                     monkeypatch):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    models = ["fake/status-401", "fake/status-503", "fake/error200-502", "fake/garbage",
              "fake/reset", "fake/headers", "fake/echo"]
    for m in models:
        arun(od.run_openrouter_async(m, uniq(), num_retries=1))
    arun(od.run_openrouter_async("fake/stall", uniq(), num_retries=0, timeout=0.2))
    arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0,
                                 api_base=closed_port_base()))
    texts = []
    for m in models + ["fake/stall"]:
        try:
            arun(od.run_openrouter_async(m, uniq(), num_retries=0, timeout=0.3,
                                         raise_on_error=True))
        except od.OpenRouterError as exc:
            texts += [str(exc), repr(exc), repr(exc.args)]
    # a key carrying a newline is refused; the refusal must not echo the key either
    bad_key = api_key + "\nX-Evil: 1"
    arun(od.run_openrouter_async("fake/echo", uniq(), api_key=bad_key))
    try:
        arun(od.run_openrouter_async("fake/echo", uniq(), api_key=bad_key, raise_on_error=True))
    except od.OpenRouterError as exc:
        texts += [str(exc), repr(exc)]
    assert caplog.records, "expected at least one log record"
    for r in caplog.records:
        texts.append(r.getMessage())
        if r.exc_text:
            texts.append(r.exc_text)
    out, err = capfd.readouterr()
    texts += [out, err]
    secret = api_key[len("test-key-"):]
    for t in texts:
        assert secret not in t, t
