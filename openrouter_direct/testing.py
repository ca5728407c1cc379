"""A pytest plugin for code that calls openrouter_direct: a local OpenRouter for each test.

The package registers this module as a pytest plugin (``pytest11`` entry point), so once it is
installed any test can ask for ``openrouter_server`` (elsewhere: ``-p openrouter_direct.testing``
or ``pytest_plugins = ["openrouter_direct.testing"]`` in a conftest.py)::

    def test_judge_reads_the_score(openrouter_server):
        openrouter_server.script(reply={"score": 2}, match="Rubric")   # that call's reply
        openrouter_server.script(status=503)                            # the next one fails once
        assert my_judge("...") == 2
        assert openrouter_server.chat_requests()[0]["body"]["model"] == "openai/gpt-4.1"

The fixture is a running ``FakeOpenRouter`` (one per session, reset before each test: no
requests recorded, no scripted rules; see its docstring for ``script()``, the ``fake/`` fault
models, ``latency_ms``, ``fault_rate``, ``api_keys``) and, for the duration of the test, the
environment points openrouter_direct at it: ``OPENAI_API_BASE``, ``OPENAI_API_KEY`` (a test key),
retry delays of 10-50 ms, and 127.0.0.1 added to ``no_proxy``. Settings a test changes on the
server are put back after it.

Importing this module needs pytest; nothing here starts until a test asks for the fixture.
``-p no:openrouter_direct.testing`` switches the plugin off.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from ._server import FakeOpenRouter

TEST_KEY = "sk-or-test-openrouter-direct"
_SETTINGS = ("latency_ms", "latency_jitter", "fault_rate", "api_keys", "key_data")


@pytest.fixture(scope="session")
def _openrouter_direct_session_server() -> Iterator[FakeOpenRouter]:
    from ._server import FakeOpenRouter
    with FakeOpenRouter() as server:
        yield server


@pytest.fixture
def openrouter_server(_openrouter_direct_session_server: FakeOpenRouter,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenRouter]:
    """A local OpenRouter stand-in, with the environment pointing openrouter_direct at it."""
    server = _openrouter_direct_session_server
    saved = {name: getattr(server, name) for name in _SETTINGS}
    saved["key_data"] = dict(saved["key_data"])
    server.reset()
    monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENROUTER_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("OPENROUTER_RETRY_MAX_DELAY", "0.05")
    for name in ("no_proxy", "NO_PROXY"):
        current = os.environ.get(name, "")
        monkeypatch.setenv(name, ",".join(x for x in (current, "127.0.0.1", "localhost") if x))
    try:
        yield server
    finally:
        for name, value in saved.items():
            setattr(server, name, value)
        server.reset()
