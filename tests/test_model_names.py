"""Model names towards OpenRouter: bare OpenAI names get the ``openai/`` prefix, with one WARNING
per name; OPENROUTER_MODEL_MAP adds and overrides; nothing is mapped for any other host.

Requests for http://openrouter.ai go through ``http_proxy`` pointing at the fake server (it takes
absolute-URI proxy requests), so the test reads the model it really received. That setup also
logs the plain-http-to-non-loopback WARNING once per process; the assertions here filter it out.
"""

import logging
import uuid

import pytest

from helpers import arun, bounded, uniq

LOGGER = "openrouter_direct"


@pytest.fixture
def via_openrouter(server, monkeypatch):
    """OPENAI_API_BASE is OpenRouter's host; the request lands on the fake server."""
    monkeypatch.setenv("OPENAI_API_BASE", "http://openrouter.ai/api/v1")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % server.port)
    monkeypatch.delenv("OPENROUTER_MODEL_MAP", raising=False)
    return server


def sent(server, prompt):
    reqs = server.requests_for(prompt)
    assert len(reqs) == 1, reqs
    return reqs[0]


def model_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING
            and "provider prefix" in r.getMessage()]


def fresh(name):
    """A never-seen model name with the same prefix (warnings are once per name per process)."""
    return "%s-%s" % (name, uuid.uuid4().hex[:10])


def test_request_via_proxy_reaches_the_fake_server_as_openrouter(od, via_openrouter):
    prompt = uniq()
    assert bounded(od.run_openrouter, "openai/gpt-4o-mini", prompt) == "echo: " + prompt
    req = sent(via_openrouter, prompt)
    assert req["headers"]["host"] == "openrouter.ai"
    assert req["path"] == "/api/v1/chat/completions"


@pytest.mark.parametrize("name", ["gpt-4.1", "gpt-4.1-mini", "gpt-4o-mini", "chatgpt-4o-latest",
                                  "o1", "o1-mini", "o3", "o3-mini", "o4-mini"])
def test_bare_openai_names_get_the_openai_prefix_for_openrouter(od, via_openrouter, name):
    prompt = uniq()
    assert arun(od.run_openrouter_async(name, prompt)) == "echo: " + prompt
    assert sent(via_openrouter, prompt)["body"]["model"] == "openai/" + name


@pytest.mark.parametrize("name, expected", [
    ("openai/gpt-4.1", "openai/gpt-4.1"),                   # already prefixed
    ("anthropic/claude-3.5-sonnet", "anthropic/claude-3.5-sonnet"),
    ("claude-3-opus", "claude-3-opus"),                     # bare, but not OpenAI's
    ("llama-3.1-70b", "llama-3.1-70b"),
    ("openrouter/openai/gpt-4.1", "openai/gpt-4.1"),        # LiteLLM's spelling
    ("openrouter/auto", "openrouter/auto"),
])
def test_other_names_are_not_given_a_prefix(od, via_openrouter, name, expected):
    prompt = uniq()
    arun(od.run_openrouter_async(name, prompt))
    assert sent(via_openrouter, prompt)["body"]["model"] == expected


def test_sync_calls_are_mapped_too(od, via_openrouter):
    prompt = uniq()
    assert bounded(od.run_openrouter, "gpt-4.1", prompt) == "echo: " + prompt
    assert sent(via_openrouter, prompt)["body"]["model"] == "openai/gpt-4.1"


def test_fallback_models_are_mapped_like_the_model(od, via_openrouter):
    """DR-Tulu's sync default is fallbacks=["gpt-4.1-mini"]: OpenRouter must get openai/ ids."""
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt, fallbacks=["gpt-4.1-mini", "x/y"]))
    body = sent(via_openrouter, prompt)["body"]
    assert body["model"] == "openai/gpt-4.1"
    assert body["models"] == ["openai/gpt-4.1", "openai/gpt-4.1-mini", "x/y"]


@pytest.mark.parametrize("base", ["http://OpenRouter.AI/api/v1", "http://api.openrouter.ai/api/v1",
                                  "http://openrouter.ai:80/api/v1"])
def test_openrouter_host_is_recognised_in_any_case_subdomain_or_port(od, via_openrouter,
                                                                     monkeypatch, base):
    monkeypatch.setenv("OPENAI_API_BASE", base)
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4o", prompt))
    assert sent(via_openrouter, prompt)["body"]["model"] == "openai/gpt-4o"


@pytest.mark.parametrize("base", ["http://notopenrouter.ai/api/v1",
                                  "http://openrouter.ai.example.com/api/v1",
                                  "http://example.com/openrouter.ai/api/v1"])
def test_other_hosts_get_names_unchanged(od, via_openrouter, monkeypatch, base):
    monkeypatch.setenv("OPENAI_API_BASE", base)
    monkeypatch.setenv("OPENROUTER_MODEL_MAP", "gpt-4.1=somewhere/else")
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt, fallbacks=["gpt-4.1-mini"]))
    body = sent(via_openrouter, prompt)["body"]
    assert body["model"] == "gpt-4.1"
    assert body["models"] == ["gpt-4.1", "gpt-4.1-mini"]


def test_loopback_server_gets_names_unchanged_even_with_a_map(od, server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_MODEL_MAP", "gpt-4.1=openai/gpt-4.1-2025-04-14")
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt))
    assert sent(server, prompt)["body"]["model"] == "gpt-4.1"


def test_per_call_api_base_decides_the_mapping(od, server, monkeypatch):
    """The env points at the loopback server; api_base= names OpenRouter for this call only."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % server.port)
    prompt, other = uniq(), uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt, api_base="http://openrouter.ai/api/v1"))
    arun(od.run_openrouter_async("gpt-4.1", other))
    assert sent(server, prompt)["body"]["model"] == "openai/gpt-4.1"
    assert sent(server, other)["body"]["model"] == "gpt-4.1"


def test_model_map_overrides_the_automatic_prefix_and_adds_names(od, via_openrouter, monkeypatch):
    monkeypatch.setenv("OPENROUTER_MODEL_MAP",
                       "gpt-4.1=openai/gpt-4.1-2025-04-14,my-judge=anthropic/claude-3.5-haiku")
    p1, p2, p3 = uniq(), uniq(), uniq()
    arun(od.run_openrouter_async("gpt-4.1", p1))
    arun(od.run_openrouter_async("my-judge", p2))
    arun(od.run_openrouter_async("gpt-4o-mini", p3))           # not in the map: automatic
    assert sent(via_openrouter, p1)["body"]["model"] == "openai/gpt-4.1-2025-04-14"
    assert sent(via_openrouter, p2)["body"]["model"] == "anthropic/claude-3.5-haiku"
    assert sent(via_openrouter, p3)["body"]["model"] == "openai/gpt-4o-mini"


def test_model_map_tolerates_spaces_and_applies_to_fallbacks(od, via_openrouter, monkeypatch):
    monkeypatch.setenv("OPENROUTER_MODEL_MAP", " judge = google/gemini-2.5-flash ,  gen=x/gen ")
    prompt = uniq()
    arun(od.run_openrouter_async("judge", prompt, fallbacks=["gen"]))
    body = sent(via_openrouter, prompt)["body"]
    assert body["model"] == "google/gemini-2.5-flash"
    assert body["models"] == ["google/gemini-2.5-flash", "x/gen"]


def test_model_map_entries_without_target_or_equals_are_ignored(od, via_openrouter, monkeypatch):
    monkeypatch.setenv("OPENROUTER_MODEL_MAP", "gpt-4.1=,broken,,=x/y")
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt))
    assert sent(via_openrouter, prompt)["body"]["model"] == "openai/gpt-4.1"


def test_one_warning_per_mapped_name(od, via_openrouter, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    a, b = fresh("gpt-4.1"), fresh("o3")
    for _ in range(3):
        arun(od.run_openrouter_async(a, uniq()))
    bounded(od.run_openrouter, a, uniq())
    arun(od.run_openrouter_async(b, uniq()))
    lines = model_warnings(caplog)
    assert len([x for x in lines if repr(a) in x]) == 1, lines
    assert len([x for x in lines if repr(b) in x]) == 1, lines
    line = next(x for x in lines if repr(a) in x)
    assert repr("openai/" + a) in line and "OPENROUTER_MODEL_MAP" in line


def test_no_warning_for_mapped_by_map_prefixed_or_other_hosts(od, via_openrouter, caplog,
                                                              monkeypatch):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    custom = fresh("gpt-4.1")
    monkeypatch.setenv("OPENROUTER_MODEL_MAP", "%s=openai/gpt-4.1" % custom)
    arun(od.run_openrouter_async(custom, uniq()))               # the map: the user chose it
    arun(od.run_openrouter_async("openai/" + fresh("gpt-4o"), uniq()))
    elsewhere = fresh("gpt-4o")
    arun(od.run_openrouter_async(elsewhere, uniq(), api_base=via_openrouter.base_url))
    assert model_warnings(caplog) == []


def test_fallback_only_names_do_not_warn(od, via_openrouter, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fb = fresh("gpt-4.1-mini")
    prompt = uniq()
    arun(od.run_openrouter_async("openai/gpt-4.1", prompt, fallbacks=[fb]))
    assert sent(via_openrouter, prompt)["body"]["models"][1] == "openai/" + fb
    assert [x for x in model_warnings(caplog) if fb in x] == []


def test_plain_http_to_openrouter_warns_about_the_key(od, server):
    """Once per process, so checked in a fresh interpreter."""
    from helpers import run_py
    code = r'''
import logging, openrouter_direct as od
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logging.getLogger("openrouter_direct").addHandler(Keep())
for p in ("w1", "w2"):
    assert od.run_openrouter("gpt-4.1", p) == "echo: " + p
    assert od.run_openrouter("gpt-4o-mini", p) == "echo: " + p
for r in records:
    print(r.levelname, r.getMessage())
'''
    proc = run_py(code, env={"OPENAI_API_BASE": "http://openrouter.ai/api/v1",
                             "http_proxy": "http://127.0.0.1:%d" % server.port,
                             "OPENAI_API_KEY": "k"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len([x for x in lines if "plain http" in x]) == 1, lines
    assert len([x for x in lines if "'gpt-4.1'" in x]) == 1, lines
    assert len([x for x in lines if "'gpt-4o-mini'" in x]) == 1, lines
    assert all(x.startswith("WARNING") for x in lines), lines


def test_strict_mode_error_names_the_model_that_was_sent(od, via_openrouter):
    via_openrouter.script(status=400, message="no such model", model="openai/gpt-4.1")
    with pytest.raises(od.APIStatusError) as info:
        arun(od.run_openrouter_async("gpt-4.1", uniq(), raise_on_error=True))
    assert info.value.status_code == 400
    assert info.value.model == "openai/gpt-4.1"
