"""What goes on the wire: URL, body defaults and pass-through, headers, configuration."""

import json

import pytest

from helpers import arun, bounded, uniq

DEFAULT_KEYS = {"model", "messages", "temperature", "top_p", "frequency_penalty",
                "presence_penalty", "max_tokens"}


def only_request(server, prompt):
    reqs = server.requests_for(prompt)
    assert len(reqs) == 1, reqs
    return reqs[0]


def test_async_call_sends_documented_defaults_and_nothing_else(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/echo", prompt)) == "echo: " + prompt
    req = only_request(server, prompt)
    assert req["method"] == "POST"
    assert req["path"] == "/api/v1/chat/completions"
    body = req["body"]
    assert set(body) == DEFAULT_KEYS
    assert body["model"] == "fake/echo"
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert body["temperature"] == 0
    assert body["top_p"] == 1.0
    assert body["frequency_penalty"] == 0
    assert body["presence_penalty"] == 0
    assert body["max_tokens"] == 16384


def test_sync_call_defaults_max_tokens_to_800(od, server):
    prompt = uniq()
    assert bounded(od.run_openrouter, "fake/echo", prompt) == "echo: " + prompt
    body = only_request(server, prompt)["body"]
    assert set(body) == DEFAULT_KEYS
    assert body["max_tokens"] == 800
    assert body["temperature"] == 0 and body["top_p"] == 1.0


def test_sync_call_accepts_positional_model_prompt_and_none_system(od, server):
    prompt = uniq()
    assert bounded(od.run_openrouter, "fake/echo", prompt, None) == "echo: " + prompt
    assert only_request(server, prompt)["body"]["messages"] == [
        {"role": "user", "content": prompt}]


def test_call_aliases_are_the_same_functions(od):
    assert od.call_openrouter_async is od.run_openrouter_async
    assert od.call_openrouter is od.run_openrouter


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_max_completion_tokens_replaces_the_default_max_tokens(od, server, sync):
    """open-instruct's rule: the default max_tokens only when neither cap is given."""
    prompt = uniq()
    kw = dict(max_completion_tokens=77)
    if sync:
        bounded(od.run_openrouter, "fake/echo", prompt, **kw)
    else:
        arun(od.run_openrouter_async("fake/echo", prompt, **kw))
    body = only_request(server, prompt)["body"]
    assert body["max_completion_tokens"] == 77
    assert "max_tokens" not in body
    assert set(body) == DEFAULT_KEYS - {"max_tokens"} | {"max_completion_tokens"}


def test_max_tokens_and_max_completion_tokens_both_given_are_both_sent(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt, max_tokens=5, max_completion_tokens=6))
    body = only_request(server, prompt)["body"]
    assert (body["max_tokens"], body["max_completion_tokens"]) == (5, 6)


def test_max_completion_tokens_none_still_drops_the_default(od, server):
    """Upstream tests the key, not its value; None is then left out, as every None is."""
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt, max_completion_tokens=None))
    body = only_request(server, prompt)["body"]
    assert "max_tokens" not in body and "max_completion_tokens" not in body


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_sampling_kwargs_override_defaults(od, server, sync):
    prompt = uniq()
    kw = dict(temperature=0.7, top_p=0.5, max_tokens=33, frequency_penalty=0.25,
              presence_penalty=-0.5)
    if sync:
        out = bounded(od.run_openrouter, "fake/echo", prompt, **kw)
    else:
        out = arun(od.run_openrouter_async("fake/echo", prompt, **kw))
    assert out == "echo: " + prompt
    body = only_request(server, prompt)["body"]
    for k, v in kw.items():
        assert body[k] == v, k


def test_extra_kwargs_pass_through_unchanged(od, server):
    prompt = uniq()
    extras = {
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "score", "strict": True,
            "schema": {"type": "object", "properties": {"score": {"type": "number"}}}}},
        "stop": ["\n\n", "END"],
        "seed": 1234,
        "provider": {"order": ["OpenAI", "Azure"], "allow_fallbacks": False},
        "reasoning": {"effort": "high", "exclude": True},
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": "Look up — “quoted” ünïcode",
            "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "logit_bias": {"50256": -100},
        "user": "user-42",
        "transforms": [],
        "min_p": 0.1,
        "repetition_penalty": 1.05,
        "nested": {"a": [1, 2.5, None, True, False, "x"], "b": {}},
    }
    assert arun(od.run_openrouter_async("fake/echo", prompt, **extras)) == "echo: " + prompt
    body = only_request(server, prompt)["body"]
    for k, v in extras.items():
        assert body[k] == v, k


def test_big_integers_booleans_and_tuples_pass_through_exactly(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt, seed=2**62 + 1, logprobs=True,
                                 top_logprobs=0, stop=("a", "b"),
                                 extra={"big": 2**70, "neg": -3, "f": 1e300, "pi": 0.1}))
    body = only_request(server, prompt)["body"]
    assert body["seed"] == 2**62 + 1 and body["logprobs"] is True and body["top_logprobs"] == 0
    assert body["stop"] == ["a", "b"]
    assert body["extra"] == {"big": 2**70, "neg": -3, "f": 1e300, "pi": 0.1}


def test_int_dict_keys_are_sent_as_strings_like_json_dumps(od, server):
    """OpenAI-style logit_bias is often written with int token ids as keys."""
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", prompt, logit_bias={50256: -100}))
    assert out == "echo: " + prompt
    assert only_request(server, prompt)["body"]["logit_bias"] == {"50256": -100}


def test_control_kwargs_are_never_sent_in_the_body(od, server, api_key):
    prompt = uniq()
    out = arun(od.run_openrouter_async(
        "fake/echo", prompt, num_retries=1, timeout=10, api_key=api_key,
        api_base=server.base_url, extra_headers={"X-Test": "1"}, drop_params=True,
        raise_on_error=False))
    assert out == "echo: " + prompt
    body = only_request(server, prompt)["body"]
    assert set(body) == DEFAULT_KEYS


def test_base_url_kwarg_is_not_sent_and_sets_the_endpoint(od, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/nowhere")
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", prompt, base_url=server.base_url,
                                       num_retries=0))
    assert out == "echo: " + prompt
    assert set(only_request(server, prompt)["body"]) == DEFAULT_KEYS


def test_api_base_kwarg_overrides_env(od, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/nowhere")
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", prompt, api_base=server.base_url,
                                       num_retries=0))
    assert out == "echo: " + prompt


def test_api_base_path_prefix_is_kept(od, server):
    prompt = uniq()
    base = "http://127.0.0.1:%d/custom/prefix/v9" % server.port
    assert arun(od.run_openrouter_async("fake/echo", prompt, api_base=base)) == "echo: " + prompt
    assert only_request(server, prompt)["path"] == "/custom/prefix/v9/chat/completions"


def test_fallbacks_become_models_list_after_the_model(od, server):
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", prompt,
                                       fallbacks=["openai/gpt-4.1-mini", "anthropic/claude"]))
    assert out == "echo: " + prompt
    body = only_request(server, prompt)["body"]
    assert body["models"] == ["fake/echo", "openai/gpt-4.1-mini", "anthropic/claude"]
    assert "fallbacks" not in body


def test_openrouter_prefix_is_stripped_from_model(od, server):
    prompt = uniq()
    out = arun(od.run_openrouter_async("openrouter/openai/gpt-4o-mini", prompt))
    assert out == "echo: " + prompt
    assert only_request(server, prompt)["body"]["model"] == "openai/gpt-4o-mini"


def test_openrouter_prefix_is_stripped_from_fallback_models_list_head(od, server):
    prompt = uniq()
    out = arun(od.run_openrouter_async("openrouter/fake/echo", prompt, fallbacks=["x/y"]))
    assert out == "echo: " + prompt
    assert only_request(server, prompt)["body"]["models"][0] == "fake/echo"


def test_openrouter_auto_keeps_its_prefix(od, server):
    """Only `openrouter/<provider>/<model>` is LiteLLM's spelling; `openrouter/auto` is a model."""
    prompt = uniq()
    arun(od.run_openrouter_async("openrouter/auto", prompt))
    assert only_request(server, prompt)["body"]["model"] == "openrouter/auto"


def test_model_without_prefix_is_sent_verbatim(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("gpt-4.1", prompt))
    assert only_request(server, prompt)["body"]["model"] == "gpt-4.1"


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_messages_are_sent_as_given_and_replace_prompts(od, server, sync):
    tag = uniq()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first " + tag, "name": "alice"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": [{"type": "text", "text": "look "},
                                     {"type": "text", "text": "here"}]},
    ]
    if sync:
        out = bounded(od.run_openrouter, "fake/echo", "IGNORED", "ALSO IGNORED",
                      messages=messages)
    else:
        out = arun(od.run_openrouter_async("fake/echo", user_prompt="IGNORED",
                                           system_prompt="ALSO IGNORED", messages=messages))
    assert out == "echo: look here"
    assert only_request(server, tag)["body"]["messages"] == messages


def test_messages_only_call_needs_no_prompt(od, server):
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", messages=[{"role": "user", "content": prompt}]))
    assert out == "echo: " + prompt


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_system_prompt_is_sent_before_user_prompt(od, server, sync):
    prompt = uniq()
    if sync:
        out = bounded(od.run_openrouter, "fake/echo", prompt, "you are a judge")
    else:
        out = arun(od.run_openrouter_async("fake/echo", prompt, "you are a judge"))
    assert out == "echo: " + prompt
    assert only_request(server, prompt)["body"]["messages"] == [
        {"role": "system", "content": "you are a judge"},
        {"role": "user", "content": prompt}]


def test_empty_system_prompt_is_sent_but_none_is_omitted(od, server):
    p1, p2 = uniq(), uniq()
    arun(od.run_openrouter_async("fake/echo", p1, system_prompt=""))
    arun(od.run_openrouter_async("fake/echo", p2, system_prompt=None))
    assert only_request(server, p1)["body"]["messages"][0] == {"role": "system", "content": ""}
    assert len(only_request(server, p2)["body"]["messages"]) == 1


def test_unicode_and_control_characters_round_trip(od, server):
    prompt = uniq() + ' “quotes” \\ back\\slash "dq" \n\t tab é ß 中文 😀 \u2028 \x01 end'
    out = arun(od.run_openrouter_async("fake/echo", prompt))
    assert out == "echo: " + prompt
    assert only_request(server, prompt[:30])["body"]["messages"][0]["content"] == prompt


def test_empty_user_prompt_is_sent(od, server):
    assert arun(od.run_openrouter_async("fake/echo", "")) == "echo: "
    bodies = [r["body"] for r in server.chat_requests()]
    assert bodies[-1]["messages"] == [{"role": "user", "content": ""}]


def test_large_prompt_round_trips_without_expect_continue(od, server):
    prompt = uniq() + " " + "lorem ipsum dolor " * 60000   # ~1 MB
    out = arun(od.run_openrouter_async("fake/echo", prompt))
    assert out == "echo: " + prompt
    req = only_request(server, prompt[:20])
    assert req["headers"].get("expect", "") == ""


def test_default_headers_are_sent(od, server, api_key):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt))
    h = only_request(server, prompt)["headers"]
    assert h["authorization"] == "Bearer " + api_key
    assert h["http-referer"] == "http://localhost:3000"
    assert h["x-title"] == "DR-Tulu Training"
    assert h["x-openrouter-title"] == "DR-Tulu Training"
    assert h["content-type"].split(";")[0].strip() == "application/json"
    assert int(h["content-length"]) == len(only_request(server, prompt)["raw"])


def test_user_agent_is_sent_once_and_extra_headers_replace_it(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt))
    # the server joins repeated headers with ", ": one value means one header
    assert only_request(server, prompt)["headers"]["user-agent"] == "openrouter_direct/0.1"
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt, extra_headers={"user-agent": "trainer/7"}))
    assert only_request(server, prompt)["headers"]["user-agent"] == "trainer/7"


def test_headers_seen_by_server_are_reported_by_fake_headers_mode(od, server, api_key):
    out = arun(od.run_openrouter_async("fake/headers", uniq()))
    headers = json.loads(out)
    assert headers["authorization"] == "Bearer " + api_key
    assert headers["x-title"] == "DR-Tulu Training"


def test_referer_and_title_come_from_env(od, server, monkeypatch):
    monkeypatch.setenv("OPENROUTER_REFERER", "https://example.org/app")
    monkeypatch.setenv("OPENROUTER_TITLE", "My Title (v2)")
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt))
    h = only_request(server, prompt)["headers"]
    assert h["http-referer"] == "https://example.org/app"
    assert h["x-title"] == "My Title (v2)"
    assert h["x-openrouter-title"] == "My Title (v2)"


def test_extra_headers_are_added(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt,
                                 extra_headers={"X-Custom": "abc", "X-Other-Thing": "1 2 3"}))
    h = only_request(server, prompt)["headers"]
    assert h["x-custom"] == "abc"
    assert h["x-other-thing"] == "1 2 3"
    assert h["x-title"] == "DR-Tulu Training"


def test_headers_follow_every_change_between_calls(od, server, monkeypatch, api_key):
    """Calls with the same key, referer and title share one header list; any change between
    calls (key, env, extra_headers) must still reach the wire, and calls with extra headers
    must not leak them into later calls."""
    steps = [
        ({}, {}, ("Bearer " + api_key, "DR-Tulu Training", None)),
        ({}, {"api_key": "sk-or-second"}, ("Bearer sk-or-second", "DR-Tulu Training", None)),
        ({}, {}, ("Bearer " + api_key, "DR-Tulu Training", None)),
        ({"OPENROUTER_TITLE": "T2"}, {}, ("Bearer " + api_key, "T2", None)),
        ({"OPENROUTER_TITLE": "T2"}, {"extra_headers": {"X-Once": "1"}},
         ("Bearer " + api_key, "T2", "1")),
        ({"OPENROUTER_TITLE": "T2"}, {}, ("Bearer " + api_key, "T2", None)),
        ({}, {}, ("Bearer " + api_key, "DR-Tulu Training", None)),
        ({}, {"extra_headers": {"X-Title": "from-kwarg"}}, ("Bearer " + api_key, "from-kwarg", None)),
        ({}, {}, ("Bearer " + api_key, "DR-Tulu Training", None)),
    ]
    for i, (env, kw, (auth, title, once)) in enumerate(steps):
        if "OPENROUTER_TITLE" in env:
            monkeypatch.setenv("OPENROUTER_TITLE", env["OPENROUTER_TITLE"])
        else:
            monkeypatch.delenv("OPENROUTER_TITLE", raising=False)
        prompt = uniq(f"hdr{i}-")
        # twice: the second call of a step is the one that takes the shared list
        for _ in range(2):
            assert arun(od.run_openrouter_async("fake/echo", prompt, **kw)) == "echo: " + prompt
        reqs = server.requests_for(prompt)
        assert len(reqs) == 2
        for req in reqs:
            h = req["headers"]
            assert (h["authorization"], h["x-title"], h.get("x-once")) == (auth, title, once), i


def test_api_key_kwarg_overrides_env(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt, api_key="sk-or-kwarg"))
    assert only_request(server, prompt)["headers"]["authorization"] == "Bearer sk-or-kwarg"


def test_openrouter_api_key_env_is_used_when_openai_key_is_absent(od, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-fallback")
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/echo", prompt)) == "echo: " + prompt
    assert only_request(server, prompt)["headers"]["authorization"] == "Bearer sk-or-fallback"


def test_openai_key_wins_over_openrouter_key(od, server, monkeypatch, api_key):
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-loser")
    prompt = uniq()
    arun(od.run_openrouter_async("fake/echo", prompt))
    assert only_request(server, prompt)["headers"]["authorization"] == "Bearer " + api_key


def test_env_names_match_exactly_and_empty_counts_as_unset(od, server, monkeypatch):
    """The call reads its variables in one pass over the environment: names that differ by a
    suffix or a missing letter must not be taken for them, and an empty value must fall through
    to the next source, as it did with getenv."""
    for name in ("OPENAI_API_KEYS", "OPENAI_API_KE", "OPENROUTER_API_KEY_OLD", "OPENROUTER_TITLEX",
                 "OPENROUTER_TITL", "XOPENROUTER_TITLE", "OPENAI_API_BASE_URL"):
        monkeypatch.setenv(name, "wrong")
    for i in range(200):  # a trainer's environment is large
        monkeypatch.setenv(f"OPENROUTER_FILLER_{i}", "x")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-from-second")
    monkeypatch.setenv("OPENROUTER_TITLE", "")
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/echo", prompt)) == "echo: " + prompt
    req = only_request(server, prompt)
    assert req["headers"]["authorization"] == "Bearer sk-or-from-second"
    assert req["headers"]["x-title"] == "DR-Tulu Training"
    assert req["path"] == "/api/v1/chat/completions"


def test_env_base_url_is_read_per_call(od, server, monkeypatch):
    prompt = uniq()
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:%d/other/base" % server.port)
    arun(od.run_openrouter_async("fake/echo", prompt))
    assert only_request(server, prompt)["path"] == "/other/base/chat/completions"


def _random_text(rng, n):
    """Text that exercises the escaper: every control character, quotes, backslashes, multi-byte
    characters, and runs long enough to cross the 8-byte blocks the scanner reads."""
    pool = ([chr(c) for c in range(0x20)] + ['"', "\\", "/", "é", "—", "漢", "😀", "\u2028"]
            + [" "] * 4 + list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    while len(out) < n:
        if rng.random() < 0.3:
            out.append("x" * rng.randrange(1, 40))
        else:
            out.append(rng.choice(pool))
    return "".join(out)[:n]


def _random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return _random_text(rng, rng.randrange(0, 70))
    if kind == 1:
        return rng.choice([0, -1, 2**53 + 1, -(2**70), 7])
    if kind == 2:
        return rng.choice([0.1 + 0.2, 1e300, -2.5, 1e-7, 3.0])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return _random_text(rng, rng.randrange(100, 300))
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 6:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 3)))
    return {_random_text(rng, rng.randrange(0, 12)): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def test_body_bytes_are_exactly_what_json_dumps_writes(od, server):
    """The body is written directly in C; byte for byte it must be json.dumps' compact output
    (ensure_ascii=False), for random prompts and kwargs."""
    import random
    rng = random.Random(20261127)
    for i in range(60):
        tag = uniq(f"exact{i}-")
        user = tag + _random_text(rng, rng.randrange(0, 600))
        system = _random_text(rng, rng.randrange(0, 90)) if i % 3 else None
        extra = {f"k{j}": _random_value(rng) for j in range(rng.randrange(0, 4))}
        out = bounded(od.run_openrouter, "fake/echo", user, system, **extra)
        # The reply is parsed by cJSON, whose strings end at a NUL: compare up to one.
        assert out == ("echo: " + user).split("\x00")[0]
        (req,) = server.requests_for(tag)
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": user})
        expected = {"model": "fake/echo", "messages": messages, "temperature": 0,
                    "max_tokens": 800, "top_p": 1, "frequency_penalty": 0,
                    "presence_penalty": 0}
        # A top-level kwarg set to None means "not set" (as in LiteLLM): it is left out.
        expected.update((k, v) for k, v in extra.items() if v is not None)
        want = json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
        assert req["raw"] == want, (i, req["raw"][:200], want[:200])
