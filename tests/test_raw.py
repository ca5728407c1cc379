"""The raw functions: the same request as the text functions, the whole reply as an object with
attribute and mapping access (as LiteLLM's ModelResponse), failures raised, never None."""

import asyncio
import json

import pytest

from helpers import FixedReplyServer, arun, bounded, uniq

# A reply with everything OpenRouter may send: reasoning, tool calls, token details, provider.
FULL_REPLY = {
    "id": "gen-123-abc", "provider": "OpenAI", "model": "openai/gpt-4.1",
    "object": "chat.completion", "created": 1767225600, "system_fingerprint": "fp_1",
    "choices": [{
        "index": 0, "finish_reason": "tool_calls", "native_finish_reason": "tool_calls",
        "logprobs": None,
        "message": {"role": "assistant", "content": "Let me look.",
                    "reasoning": "The user wants the weather.",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "weather",
                                                 "arguments": "{\"city\": \"Zürich\"}"}}]},
    }, {
        "index": 1, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "second"},
    }],
    "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40,
              "cost": 0.000125, "is_byok": False,
              "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 5, "image_tokens": 0},
              "cost_details": {"upstream_inference_cost": None}},
}


@pytest.fixture
def full_reply(monkeypatch):
    with FixedReplyServer(200, json.dumps(FULL_REPLY).encode()) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        yield srv


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_raw_reply_has_litellm_attributes(od, full_reply, sync):
    if sync:
        r = bounded(od.run_openrouter_raw, "openai/gpt-4.1", uniq())
    else:
        r = arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq()))
    assert isinstance(r, od.ChatResponse)
    assert (r.id, r.model, r.created, r.provider) == ("gen-123-abc", "openai/gpt-4.1",
                                                       1767225600, "OpenAI")
    c0 = r.choices[0]
    assert c0.finish_reason == "tool_calls" and c0.native_finish_reason == "tool_calls"
    assert c0.message.content == "Let me look."
    assert c0.message.role == "assistant"
    assert c0.message.reasoning == "The user wants the weather."
    call = c0.message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_1", "weather")
    assert json.loads(call.function.arguments) == {"city": "Zürich"}
    assert r.choices[1].message.content == "second"
    assert r.choices[1].message.tool_calls is None          # defined by LiteLLM: None when absent
    assert r.choices[1].message.reasoning is None
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (31, 9, 40)
    assert u.cost == pytest.approx(0.000125)
    assert u.prompt_tokens_details.cached_tokens == 16
    assert u.completion_tokens_details.reasoning_tokens == 5


def test_raw_reply_has_mapping_access_and_model_dump(od, full_reply):
    r = arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq()))
    assert r["choices"][0]["message"]["content"] == "Let me look."
    assert r.get("usage")["prompt_tokens"] == 31
    assert "provider" in r and "nope" not in r
    dumped = r.model_dump()
    assert dumped == FULL_REPLY
    assert type(dumped) is dict and type(dumped["choices"][0]["message"]) is dict
    dumped["id"] = "changed"                                 # a copy, not a view
    assert r.id == "gen-123-abc"
    assert json.loads(r.model_dump_json()) == FULL_REPLY
    assert json.loads(json.dumps(r)) == FULL_REPLY


def test_attribute_outside_the_reply_and_litellm_fields_raises_attribute_error(od, full_reply):
    r = arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq()))
    with pytest.raises(AttributeError):
        r.no_such_field
    assert not hasattr(r.choices[0], "nonexistent")


def test_provider_is_absent_when_the_reply_names_none(od, monkeypatch):
    body = dict(FULL_REPLY)
    del body["provider"]
    with FixedReplyServer(200, json.dumps(body).encode()) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        r = arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq()))
    assert not hasattr(r, "provider")
    assert r.usage.total_tokens == 40


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_raw_call_sends_the_text_calls_request(od, server, sync):
    """Same body as the text function, with upstream's max_completion_tokens rule."""
    p_text, p_raw = uniq(), uniq()
    kw = dict(temperature=0.3, max_completion_tokens=77, seed=7, timeout=20)
    if sync:
        bounded(od.run_openrouter, "fake/echo", p_text, **kw)
        r = bounded(od.run_openrouter_raw, "fake/echo", p_raw, **kw)
    else:
        arun(od.run_openrouter_async("fake/echo", p_text, **kw))
        r = arun(od.run_openrouter_async_raw("fake/echo", p_raw, **kw))
    assert r.choices[0].message.content == "echo: " + p_raw
    (text_req,), (raw_req,) = server.requests_for(p_text), server.requests_for(p_raw)
    text_body, raw_body = text_req["body"], raw_req["body"]
    text_body["messages"] = raw_body["messages"] = None
    assert raw_body == text_body
    assert "max_tokens" not in raw_body and raw_body["max_completion_tokens"] == 77
    assert raw_req["headers"]["x-openrouter-title"] == "DR-Tulu Training"


def test_raw_call_with_messages_as_lmjudgeverifier_calls_it(od, server):
    msgs = [{"role": "user", "content": uniq()}]
    r = arun(od.run_openrouter_async_raw(model_name="fake/echo", messages=msgs, temperature=0.0,
                                         max_completion_tokens=2048, seed=42, timeout=60))
    assert r.choices[0].message.content == "echo: " + msgs[0]["content"]
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("model,exc_name,status", [
    ("fake/status-401", "AuthenticationError", 401),
    ("fake/status-429", "RateLimitError", 429),
    ("fake/status-400", "APIStatusError", 400),
    ("fake/error200-502", "APIStatusError", 502),
    ("fake/reset", "APIConnectionError", None),
])
def test_raw_failure_raises_the_typed_exception(od, server, sync, model, exc_name, status):
    exc_type = getattr(od, exc_name)
    if status == 429:   # the governor waits a 429 out: keep that wait short here
        od.configure(rate_limit_wait=0.5)
    with pytest.raises(exc_type) as info:
        if sync:
            bounded(od.run_openrouter_raw, model, uniq(), num_retries=1)
        else:
            arun(od.run_openrouter_async_raw(model, uniq(), num_retries=1))
    assert info.value.status_code == status


def test_raw_failure_raises_without_strict_mode_and_text_call_still_returns_empty(od, server):
    with pytest.raises(od.OpenRouterError):
        arun(od.run_openrouter_async_raw("fake/status-503", uniq(), num_retries=0,
                                         raise_on_error=False))
    assert arun(od.run_openrouter_async("fake/status-503", uniq(), num_retries=0)) == ""


def test_raw_reply_that_is_not_a_completion_raises(od, monkeypatch):
    with FixedReplyServer(200, b'{"object": "chat.completion", "choices": []}') as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        with pytest.raises(od.OpenRouterError) as info:
            arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq(), num_retries=0))
    assert info.value.reason == "invalid_response"


def test_raw_call_with_no_key_raises_authentication_error(od, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(od.AuthenticationError):
        arun(od.run_openrouter_async_raw("fake/echo", uniq()))


@pytest.mark.parametrize("bad", [dict(model_name=3), dict(messages="hi"),
                                 dict(user_prompt=b"bytes")])
def test_raw_bad_input_is_a_type_error_at_the_call(od, bad):
    args = dict(model_name="fake/echo", user_prompt="x")
    args.update(bad)
    with pytest.raises(TypeError):
        od.run_openrouter_raw(**args)
    with pytest.raises(TypeError):
        arun(od.run_openrouter_async_raw(**args))


def test_cancelled_raw_call_aborts_and_frees_its_slot(od, server):
    async def go():
        task = asyncio.ensure_future(od.run_openrouter_async_raw("fake/stall", uniq()))
        await asyncio.sleep(0)
        from helpers import await_until
        assert await await_until(lambda: od.stats()["in_flight"] >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await await_until(lambda: od.stats()["in_flight"] == 0)
    arun(go())


def test_raw_aliases(od):
    assert od.call_openrouter_async_raw is od.run_openrouter_async_raw
    assert od.call_openrouter_raw is od.run_openrouter_raw


def test_many_concurrent_raw_calls_each_get_their_own_reply(od, server):
    prompts = [uniq() for _ in range(200)]

    async def go():
        return await asyncio.gather(*(od.run_openrouter_async_raw("fake/echo", p)
                                      for p in prompts))
    replies = arun(go())
    assert [r.choices[0].message.content for r in replies] == ["echo: " + p for p in prompts]


def test_raw_reply_numbers_keep_their_json_types_and_digits(od, monkeypatch):
    body = json.loads(json.dumps(FULL_REPLY))
    body["created"] = 2 ** 60 + 1
    body["usage"]["cost"] = 0.0
    with FixedReplyServer(200, json.dumps(body).encode()) as srv:
        monkeypatch.setenv("OPENAI_API_BASE", srv.base_url)
        r = arun(od.run_openrouter_async_raw("openai/gpt-4.1", uniq()))
    assert r.created == 2 ** 60 + 1 and type(r.created) is int
    assert r.usage.cost == 0.0 and type(r.usage.cost) is float
    assert type(r.usage.prompt_tokens) is int
