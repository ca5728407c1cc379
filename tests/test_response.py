"""How replies become the returned string."""

import pytest

from helpers import arun, bounded, uniq
from openrouter_direct._server import big_content


def test_success_returns_message_content(od):
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/echo", prompt))
    assert type(out) is str and out == "echo: " + prompt


def test_null_content_returns_empty_string_not_none(od, server):
    out = arun(od.run_openrouter_async("fake/null", uniq()))
    assert out == "" and type(out) is str
    assert len(server.chat_requests()) == 1  # a null content is a success, not retried


def test_null_content_sync_returns_empty_string(od):
    out = bounded(od.run_openrouter, "fake/null", uniq())
    assert out == "" and type(out) is str


def test_list_of_text_parts_is_joined(od):
    assert arun(od.run_openrouter_async("fake/list", uniq())) == "part one part two"


def test_leading_whitespace_before_json_is_accepted(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/whitespace", prompt)) == "echo: " + prompt
    assert server.attempts_for(prompt) == 1


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_three_megabyte_reply_is_returned_whole(od, sync):
    n = 3_000_000
    if sync:
        out = bounded(od.run_openrouter, "fake/big-%d" % n, uniq())
    else:
        out = arun(od.run_openrouter_async("fake/big-%d" % n, uniq()))
    assert len(out) == n
    assert out == big_content(n)


def test_replies_of_every_size_in_turn_come_back_exact(od):
    """The engine keeps response buffers for later calls (up to 64 KB each): a short reply after
    a long one, and replies larger than a kept buffer, must still come back byte for byte."""
    import asyncio

    sizes = [0, 60_000, 10, 200_000, 1, 4_000, 70_000, 0, 3, 65_536, 17]

    async def rounds():
        for _ in range(3):
            outs = []
            for n in sizes:  # one after another: each call may take the buffer the last one left
                outs.append(await od.run_openrouter_async("fake/big-%d" % n, uniq()))
            outs += await asyncio.gather(*(od.run_openrouter_async("fake/big-%d" % n, uniq())
                                           for n in sizes))
            assert outs == [big_content(n) for n in sizes + sizes]

    arun(rounds())


def test_empty_big_reply_is_empty_string(od):
    assert arun(od.run_openrouter_async("fake/big-0", uniq())) == ""


def test_request_body_echo_is_the_sent_json(od, server):
    import json
    prompt = uniq()
    out = arun(od.run_openrouter_async("fake/body", prompt, seed=7))
    sent = json.loads(out)
    assert sent["seed"] == 7 and sent["messages"][0]["content"] == prompt
    assert out.encode() == server.requests_for(prompt)[0]["raw"]


def test_error_object_in_http_200_is_a_failure_and_retried(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/error200-502", prompt, num_retries=1)) == ""
    assert server.attempts_for(prompt) == 2


def test_error_object_in_http_200_with_client_error_code_is_not_retried(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/error200-400", prompt, num_retries=3)) == ""
    assert server.attempts_for(prompt) == 1


@pytest.mark.parametrize("model", ["fake/garbage", "fake/truncated"])
def test_unparsable_body_is_a_failure_and_retried(od, server, model):
    prompt = uniq()
    assert arun(od.run_openrouter_async(model, prompt, num_retries=1)) == ""
    assert server.attempts_for(prompt) == 2


def test_content_with_json_escapes_is_decoded(od):
    prompt = uniq() + ' {"score": 0.75}\n"x"\\y'
    assert arun(od.run_openrouter_async("fake/echo", prompt)) == "echo: " + prompt


def test_reply_over_the_size_cap_fails_as_too_large_and_is_not_retried(od, server,
                                                                       monkeypatch):
    # cap from OPENROUTER_MAX_RESPONSE_BYTES (csrc/request.c; default 64 MiB, ord.h)
    monkeypatch.setenv("OPENROUTER_MAX_RESPONSE_BYTES", "100000")
    prompt = uniq()
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/big-200000", prompt, num_retries=3,
                                     raise_on_error=True))
    assert info.value.reason == "too_large"
    assert server.attempts_for(prompt) == 1
    p2 = uniq()
    assert arun(od.run_openrouter_async("fake/big-50000", p2)) == big_content(50000)
