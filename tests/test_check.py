"""``python -m openrouter_direct check``: one line per check, a hint per failure, exit 0 only when
all pass. Run in-process against the fake server (the environment from conftest points at it),
with its failures scripted; one run goes through a fresh interpreter end to end."""

import http.server
import json
import socket
import threading

import pytest

from helpers import run_py
from openrouter_direct import _check
from openrouter_direct.__main__ import main as cli

NAMES = ["base URL", "key", "basic call", "rubric JSON", "20 concurrent", "sync call",
         "invalid model"]


@pytest.fixture(autouse=True)
def no_judge_model_env(monkeypatch):
    monkeypatch.delenv("RUBRIC_JUDGE_MODEL", raising=False)


def check(capsys, *args):
    code = _check.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def check_json(capsys, *args):
    code, out, err = check(capsys, "--json", *args)
    return code, json.loads(out), err


def by_name(report):
    return {c["name"]: c for c in report["checks"]}


def line(out, name):
    hits = [x for x in out.splitlines() if x[2:].startswith(name)]
    assert len(hits) == 1, out
    return hits[0]


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_all_checks_pass_against_the_local_server(capsys, server, api_key):
    code, out, err = check(capsys)
    assert code == 0, out
    assert [x[2:].split("  ")[0].strip() for x in out.splitlines()[1:8]] == NAMES
    assert all(x.startswith("✓ ") for x in out.splitlines()[1:8]), out
    assert out.splitlines()[-1] == "all 7 checks passed"
    assert "20/20 replied" in out and 'returned "" without raising' in out
    assert api_key not in out + err
    # what reached the server
    keys = [r for r in server.requests if r["path"].endswith("/key")]
    assert len(keys) == 1 and keys[0]["headers"]["authorization"] == "Bearer " + api_key
    assert len(server.requests_for("Reply with the number")) == 20
    rubric = server.requests_for("Grade the response")
    assert len(rubric) == 1 and rubric[0]["body"]["response_format"] == {"type": "json_object"}
    assert len([r for r in server.chat_requests() if r["body"]["model"] == _check.INVALID_MODEL]) == 1
    # the progress bar, on stderr: one finished line when stderr is not a terminal
    bars = [x for x in err.splitlines() if "concurrent calls" in x]
    assert len(bars) == 1 and "20/20" in bars[0], err


def test_json_output_for_scripts(capsys, server):
    code, report, err = check_json(capsys, "--concurrency", "5")
    assert code == 0 and report["ok"] is True
    assert report["base_url"] == server.base_url and report["model"] == _check.DEFAULT_MODEL
    assert [c["name"] for c in report["checks"]] == [n.replace("20", "5") for n in NAMES]
    assert all(c["ok"] and c["detail"] for c in report["checks"])
    assert len(server.requests_for("Reply with the number")) == 5
    assert "concurrent calls" not in err                  # no progress bar with --json


def test_model_and_base_url_options(capsys, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:%d/api/v1" % closed_port())
    code, report, _ = check_json(capsys, "--base-url", server.base_url, "--model", "x/judge",
                                 "--concurrency", "3")
    assert code == 0, report
    assert report["model"] == "x/judge"
    assert {r["body"]["model"] for r in server.requests_for("pong")} == {"x/judge"}


def test_default_model_comes_from_rubric_judge_model(capsys, server, monkeypatch):
    monkeypatch.setenv("RUBRIC_JUDGE_MODEL", "y/judge")
    code, report, _ = check_json(capsys, "--concurrency", "2")
    assert code == 0 and report["model"] == "y/judge"


def test_bad_key_points_at_the_key(capsys, server, api_key):
    server.api_keys = {"sk-or-the-right-one"}
    try:
        code, out, err = check(capsys)
    finally:
        server.api_keys = None
    assert code == 1
    assert line(out, "key").startswith("✗") and "HTTP 401" in line(out, "key")
    assert "hint: check OPENAI_API_KEY" in out
    assert line(out, "basic call").startswith("✗") and "refused" in line(out, "basic call")
    assert "skipped: the basic call failed" in line(out, "sync call")
    assert out.splitlines()[-1] == "6 of 7 checks failed"
    assert api_key not in out + err


def test_no_key_says_so(capsys, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    code, report, _ = check_json(capsys)
    checks = by_name(report)
    assert code == 1 and not checks["key"]["ok"] and "no key" in checks["key"]["detail"]
    assert "OPENAI_API_KEY" in checks["basic call"]["hint"]


def test_no_credits_points_at_credits(capsys, server):
    server.script(status=402, message="Insufficient credits", times=None)
    code, report, _ = check_json(capsys)
    basic = by_name(report)["basic call"]
    assert code == 1 and not basic["ok"]
    assert "402" in basic["detail"] and "credits" in basic["hint"]


def test_key_without_credit_left_fails_the_key_check(capsys, server):
    server.key_data = {"label": "tight", "limit": 5, "usage": 5, "limit_remaining": 0}
    try:
        code, report, _ = check_json(capsys)
    finally:
        server.key_data = {"label": "test", "limit": None, "usage": 0}
    key = by_name(report)["key"]
    assert code == 1 and not key["ok"] and "credits" in key["hint"]


def test_key_limit_and_usage_are_shown(capsys, server):
    server.key_data = {"label": "trainer", "limit": 10, "usage": 2.5, "limit_remaining": 7.5}
    try:
        code, out, _ = check(capsys)
    finally:
        server.key_data = {"label": "test", "limit": None, "usage": 0}
    assert code == 0
    detail = line(out, "key")
    assert "'trainer'" in detail and "usage $2.5" in detail and "limit $10 ($7.5 left)" in detail


def test_unknown_model_gets_the_provider_prefix_hint(capsys, server):
    server.script(status=400, message="gpt-4.1 is not a valid model ID", model="gpt-4.1",
                  times=None)
    code, out, _ = check(capsys, "--model", "gpt-4.1")
    assert code == 1
    assert line(out, "basic call").startswith("✗ ") and "unknown model" in out
    assert "provider prefix" in out and "try --model openai/gpt-4.1" in out


def test_connection_failure_with_a_proxy_set_points_at_the_proxy(capsys, server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://user:secret@127.0.0.1:%d" % closed_port())
    code, report, _ = check_json(capsys)
    checks = by_name(report)
    assert code == 1
    for name in ("key", "basic call"):
        assert not checks[name]["ok"]
        assert "proxy" in checks[name]["hint"] and "no_proxy" in checks[name]["hint"]
        assert "secret" not in checks[name]["hint"]


def test_no_proxy_for_the_host_means_no_proxy_hint(capsys, server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % closed_port())
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    code, report, _ = check_json(capsys, "--concurrency", "2")
    assert code == 0, report


def test_connection_failure_without_proxy(capsys, server):
    base = "http://127.0.0.1:%d/api/v1" % closed_port()
    code, report, _ = check_json(capsys, "--base-url", base)
    basic = by_name(report)["basic call"]
    assert code == 1 and not basic["ok"] and "could not reach 127.0.0.1" in basic["hint"]


def test_openrouter_base_url_without_api_v1_is_flagged(capsys, server, monkeypatch):
    """Requests to openrouter.ai go through http_proxy to the fake server, which answers."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % server.port)
    code, out, _ = check(capsys, "--base-url", "http://openrouter.ai", "--concurrency", "2")
    assert code == 1
    assert line(out, "base URL").startswith("✗ ") and "/api/v1" in line(out, "base URL")
    assert "hint: OpenRouter's base URL ends in /api/v1" in out
    assert out.splitlines()[-1] == "1 of 7 checks failed"
    assert "note: " in out and "plain http" in out          # the engine's WARNING, as a note


def test_rubric_reply_that_is_not_json_fails(capsys, server):
    server.script(reply="It is quite good, I would say.", match="Grade the response")
    code, report, _ = check_json(capsys)
    rubric = by_name(report)["rubric JSON"]
    assert code == 1 and not rubric["ok"] and "does not parse as JSON" in rubric["detail"]


def test_rubric_reply_in_prose_or_a_fence_still_parses(capsys, server):
    server.script(reply='Sure!\n```json\n{"score": 1}\n```', match="Grade the response")
    code, report, _ = check_json(capsys)
    assert code == 0 and '{"score": 1}' in by_name(report)["rubric JSON"]["detail"]


def test_empty_reply_fails_the_basic_call(capsys, server):
    server.script(reply="", match="pong")
    code, report, _ = check_json(capsys)
    assert code == 1 and "empty" in by_name(report)["basic call"]["detail"]


def test_some_concurrent_calls_failing_is_reported_with_the_reason(capsys, server, adaptive_off):
    server.script(status=429, match="Reply with the number 3 ", times=None)
    code, report, _ = check_json(capsys)
    conc = by_name(report)["20 concurrent"]
    assert code == 1 and not conc["ok"]
    assert conc["detail"].startswith("19/20 replied") and "429" in conc["detail"]
    assert "OPENROUTER_MAX_CONCURRENT_CALLS" in conc["hint"]


def test_invalid_model_check_fails_if_the_endpoint_accepts_anything(capsys, server):
    server.script(reply="happy to help", model=_check.INVALID_MODEL)
    code, report, _ = check_json(capsys)
    assert code == 1 and not by_name(report)["invalid model"]["ok"]


def test_invalid_model_returns_empty_even_in_strict_mode_env(capsys, server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_RAISE_ON_ERROR", "1")
    code, report, _ = check_json(capsys)
    assert code == 0, report


def test_concurrency_cap_is_raised_for_the_check_and_put_back(capsys, server, od,
                                                              concurrency_cap):
    concurrency_cap(4)
    code, report, _ = check_json(capsys, "--concurrency", "12")
    assert code == 0 and "at most 12 on the wire" in by_name(report)["12 concurrent"]["detail"]
    assert od.configure()["max_concurrent_calls"] == 4


def test_logger_is_left_as_found(capsys, server):
    import logging
    log = logging.getLogger("openrouter_direct")
    before = (log.propagate, log.level, list(log.handlers))
    check(capsys, "--concurrency", "2")
    assert (log.propagate, log.level, list(log.handlers)) == before


def test_server_without_key_route_is_not_openrouter_and_is_skipped(capsys):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        result = _check.check_key("http://127.0.0.1:%d/v1" % srv.server_port, 5)
        assert result.ok and "not OpenRouter" in result.detail
        result = _check.check_key("http://127.0.0.1:%d/api/v1" % closed_port(), 5)
        assert not result.ok and "could not reach" in result.detail
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("base, ok", [
    ("https://openrouter.ai/api/v1", True), ("https://openrouter.ai/api/v1/", True),
    ("https://openrouter.ai", False), ("https://openrouter.ai/v1", False),
    ("http://localhost:8000/v1", True), ("openrouter.ai/api/v1", False), ("", False),
])
def test_base_url_check(base, ok):
    assert _check.check_base(base).ok is ok


def test_cli_dispatch_and_usage(capsys, server):
    assert cli(["check", "--json", "--concurrency", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert cli([]) == 0
    usage = capsys.readouterr().out
    for command in ("demo", "check", "patch-run-utils"):
        assert command in usage
    assert cli(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_end_to_end_in_a_fresh_interpreter_and_ascii_terminal(server):
    proc = run_py("import sys; from openrouter_direct.__main__ import main; "
                  "sys.exit(main(['check', '--concurrency', '3']))",
                  env={"OPENAI_API_BASE": server.base_url, "OPENAI_API_KEY": "k",
                       "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\nOK ") == 7 and "all 7 checks passed" in proc.stdout


def test_the_check_asks_the_extension_what_a_call_would_use(monkeypatch):
    """Key and its source, base URL, proxy and CA bundle come from _native.endpoint, the code
    every call runs (csrc/endpoint.c, env.c), not from a second reading of the environment."""
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "no_proxy", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-second")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("http_proxy", "")                  # empty: unset, as libcurl has it
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/tmp/bundle.pem")
    ep = _check._endpoint()
    assert ep["base"] == "https://openrouter.ai/api/v1" and ep["openrouter"] is True
    assert ep["url"] == "https://openrouter.ai/api/v1/chat/completions"
    assert (ep["key"], ep["key_source"]) == ("sk-or-second", "OPENROUTER_API_KEY")
    assert (ep["proxy"], ep["noproxy"]) == ("http://proxy.example:3128", "internal.example")
    assert ep["cainfo"] == "/tmp/bundle.pem"
    assert _check._key_from_env() == ("sk-or-second", "OPENROUTER_API_KEY")
    assert _check._proxy_for("https://openrouter.ai/api/v1") == "http://proxy.example:3128"
    assert _check._proxy_for("https://internal.example/v1") is None        # no_proxy names it
    assert _check._proxy_for("http://10.1.2.3:8000/v1") is None             # http_proxy empty
    plain = _check._endpoint("http://10.1.2.3:8000/v1/")
    assert plain["plain_http"] is True and plain["openrouter"] is False
    assert plain["url"] == "http://10.1.2.3:8000/v1/chat/completions"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-or-first")
    assert _check._key_from_env() == ("sk-or-first", "OPENAI_API_KEY")
