"""The five checks of DR-Tulu's own check script, as tests: a basic call, a rubric-style prompt
whose reply parses as JSON, 5 concurrent calls, a sync call, and an invalid model with
``num_retries=2`` returning "" without raising.

Each runs against the local fake server (``[local]``) and again against OpenRouter itself
(``[live]``) when ``OPENROUTER_LIVE=1`` and a key (``OPENAI_API_KEY`` or ``OPENROUTER_API_KEY``)
are set; otherwise the live runs are skipped with that reason. Live settings:
``OPENROUTER_LIVE_BASE`` (default https://openrouter.ai/api/v1) and ``OPENROUTER_LIVE_MODEL``
(default openai/gpt-4o-mini); the live calls cost a fraction of a cent. The key and proxy
variables are read when this file is collected, before conftest's clean per-test environment
replaces them.
"""

import asyncio
import json
import os
import time
from dataclasses import dataclass

import pytest

from helpers import arun, bound, bounded, uniq
from openrouter_direct._check import INVALID_MODEL

LIVE_KEY = os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENROUTER_API_KEY")
LIVE = os.environ.get("OPENROUTER_LIVE") == "1" and bool(LIVE_KEY)
LIVE_BASE = os.environ.get("OPENROUTER_LIVE_BASE", "https://openrouter.ai/api/v1")
LIVE_MODEL = os.environ.get("OPENROUTER_LIVE_MODEL", "openai/gpt-4o-mini")
LIVE_SKIP = ("live OpenRouter tests run only with OPENROUTER_LIVE=1 and a key in OPENAI_API_KEY "
             "(or OPENROUTER_API_KEY)")
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
               "NO_PROXY", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
LIVE_ENV = {n: os.environ[n] for n in _PROXY_VARS if os.environ.get(n)}

JUDGE_SYSTEM = ("You are a grader. Judge the response against the rubric and reply with a JSON "
                'object only: {"score": S}, where S is 0, 1 or 2.')


@dataclass
class Target:
    name: str
    model: str
    server: object       # the fake server, or None live
    bound: float         # seconds a call may take here

    @property
    def local(self):
        return self.server is not None


@pytest.fixture(params=["local", "live"])
def target(request, server, monkeypatch):
    if request.param == "local":
        return Target("local", "openai/gpt-4o-mini", server, 30.0)
    if not LIVE:
        pytest.skip(LIVE_SKIP)
    monkeypatch.setenv("OPENAI_API_BASE", LIVE_BASE)
    monkeypatch.setenv("OPENAI_API_KEY", LIVE_KEY)
    monkeypatch.setenv("OPENROUTER_RETRY_BASE_DELAY", "0.5")
    monkeypatch.setenv("OPENROUTER_RETRY_MAX_DELAY", "8")
    monkeypatch.setenv("LITELLM_DEFAULT_TIMEOUT", "120")
    for name, value in LIVE_ENV.items():
        monkeypatch.setenv(name, value)
    return Target("live", LIVE_MODEL, None, 300.0)


def parse_json(text):
    start, end = text.find("{"), text.rfind("}")
    return json.loads(text[start:end + 1]) if 0 <= start < end else None


def test_basic_call(od, target):
    prompt = "What is 2 + 2? Answer with just the number."
    reply = arun(od.run_openrouter_async(target.model, prompt, max_tokens=50), target.bound)
    assert isinstance(reply, str) and reply.strip()
    if target.local:
        assert reply == "echo: " + prompt
    else:
        assert "4" in reply


def test_rubric_prompt_reply_parses_as_json(od, target):
    user = ("Question: What is the capital of France?\nResponse: Paris is the capital of France."
            "\nRubric: the response names Paris as the capital.")
    reply = arun(od.run_openrouter_async(target.model, user, JUDGE_SYSTEM, max_tokens=100,
                                         response_format={"type": "json_object"}), target.bound)
    obj = parse_json(reply)
    assert isinstance(obj, dict) and "score" in obj, reply
    assert obj["score"] in (0, 1, 2)


def test_five_concurrent_calls(od, target):
    tag = uniq("c")
    prompts = ["Reply with the number %d and nothing else. (%s)" % (i, tag) for i in range(5)]

    async def five():
        return await asyncio.gather(*(od.run_openrouter_async(target.model, p, max_tokens=20)
                                      for p in prompts))
    if target.local:
        target.server.latency_ms = 200          # long enough to see the five overlap
    try:
        t0 = time.monotonic()
        replies = arun(five(), target.bound)
        wall = time.monotonic() - t0
    finally:
        if target.local:
            target.server.latency_ms = 0.0
    assert len(replies) == 5 and all(r.strip() for r in replies), replies
    if target.local:
        assert replies == ["echo: " + p for p in prompts]
        # overlapped: five 200 ms replies in well under 5 x 200 ms
        assert target.server.max_concurrent == 5 and wall < bound(0.8)
    else:
        assert all(str(i) in r for i, r in enumerate(replies)), replies


def test_sync_call(od, target):
    reply = bounded(od.run_openrouter, target.model, "Say hello in one word.", max_tokens=20,
                    bound=target.bound)
    assert isinstance(reply, str) and reply.strip()


def test_invalid_model_returns_empty_string_without_raising(od, target):
    prompt = uniq("invalid")
    reply = arun(od.run_openrouter_async(INVALID_MODEL, prompt, num_retries=2), target.bound)
    assert reply == ""
    if target.local:
        assert target.server.attempts_for(prompt) == 1      # a 400 is not retried
