"""A FakeOpenRouter that plays a script of faults per call, for the fault matrix.

``fake/script-<tag>-<f1>.<f2>...`` answers the first attempt of call <tag> with fault f1,
the second with f2, and so on; once the script is used up the call gets the usual echo
reply.  A fault is one of

    503 502             that HTTP status with an error object
    429                 429 with ``Retry-After: 1`` (seconds)
    reset               the connection is reset (RST) before any byte of the response
    midbody             a 200 with half of its body, then a reset
    error200            HTTP 200 whose body is an error object with code 502
    truncated           a complete 200 whose JSON body is cut in half
    stall               nothing is sent until the client gives up (its timeout)
    400 401 402 403     a permanent failure: never followed by anything

Every request of a script call is recorded in ``script_log[tag]`` as a dict (fault served,
time, whether the request was the first on its connection, whether it was libcurl's own
resend).

libcurl's resend.  When a *reused* keep-alive connection dies before any byte of the
response, libcurl itself sends the request again, without telling the engine
(lib/transfer.c, Curl_retry_request); the engine still sees one attempt.  The resend may
land on another idle pooled connection, and if that one dies the same way libcurl resends
again, up to 5 times per transfer (CONN_MAX_RETRIES; the count starts from 0 at every
attempt, since the engine resets each handle with curl_easy_reset), after which it gives up
with "Connection died, tried 5 times".  So a ``reset`` served on a connection that had
carried an earlier request marks the call: its next request is that resend.  The resend is
reset as well, without moving the script on, and it is followed by another resend under the
same rule.  The engine's attempt then ends as one connection failure, and the server's
record says which requests were resends, so tests can count both sides exactly.

All of this state lives on the server's loop thread, except ``script_log`` and the
counters, which change under ``self._lock`` like the base class's.
"""

from __future__ import annotations

import asyncio
import time

from openrouter_direct._server import FakeOpenRouter, _error_body

TRANSIENT = ("503", "502", "429", "reset", "midbody", "error200", "truncated", "stall")
PERMANENT = ("400", "401", "402", "403")
RETRY_AFTER_S = 1
LIBCURL_MAX_RESENDS = 5   # CONN_MAX_RETRIES in libcurl's lib/transfer.c


def script_model(tag, faults):
    """The model name that makes call ``tag`` (no "-" in it) meet ``faults`` in order."""
    if "-" in tag:
        raise ValueError(tag)
    for f in faults:
        if f not in TRANSIENT and f not in PERMANENT:
            raise ValueError(f)
    return "fake/script-%s-%s" % (tag, ".".join(faults) or "none")


class FaultScriptServer(FakeOpenRouter):
    """FakeOpenRouter plus the ``fake/script-...`` models (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.script_log = {}
        self._next_fault = {}      # tag -> index into its script (loop thread)
        self._resend_chain = {}    # tag -> resends so far, while libcurl will resend again
        self._conn_requests = {}   # connection serial -> chat requests seen on it (kept
                                   # across reset(): libcurl keeps its connections too)

    def reset(self):
        super().reset()
        loop = self._loop
        if loop is None:
            return
        done = asyncio.run_coroutine_threadsafe(self._reset_loop_state(), loop)
        done.result(timeout=10)

    async def _reset_loop_state(self):
        self._next_fault.clear()
        self._resend_chain.clear()
        with self._lock:
            self.script_log = {}

    async def _chat(self, req, reader, writer):
        seen = self._conn_requests.get(req.conn, 0) + 1
        self._conn_requests[req.conn] = seen
        first_on_conn = seen == 1
        body = req.body
        model = body.get("model") if isinstance(body, dict) else None
        if not (isinstance(model, str) and model.startswith("fake/script-")):
            return await super()._chat(req, reader, writer)
        tag, _, spec = model[len("fake/script-"):].partition("-")
        script = [] if spec == "none" else spec.split(".")

        chain = self._resend_chain.pop(tag, None)
        resend = chain is not None
        if resend:
            chain += 1
            fault = "reset"
        else:
            chain = 0
            i = self._next_fault.get(tag, 0)
            self._next_fault[tag] = i + 1
            fault = script[i] if i < len(script) else "ok"
        if fault == "reset" and not first_on_conn and chain < LIBCURL_MAX_RESENDS:
            self._resend_chain[tag] = chain
        with self._lock:
            self.script_log.setdefault(tag, []).append({
                "fault": fault, "t": time.monotonic(), "first_on_conn": first_on_conn,
                "resend": resend})
        return await self._serve_fault(req, reader, writer, fault)

    async def _serve_fault(self, req, reader, writer, fault):
        if fault == "ok":
            return await self._m_echo(req, reader, writer, "")
        if fault in ("503", "502"):
            code = int(fault)
            return await self._send(req, writer, code,
                                    _error_body(code, "fake transient %d" % code))
        if fault == "429":
            return await self._send(req, writer, 429, _error_body(429, "fake rate limit"),
                                    (("Retry-After", str(RETRY_AFTER_S)),))
        if fault in PERMANENT:
            code = int(fault)
            return await self._send(req, writer, code,
                                    _error_body(code, "fake permanent %d" % code))
        if fault == "reset":
            return await self._m_reset(req, reader, writer, "")
        if fault == "midbody":
            return await self._m_reset_midbody(req, reader, writer, "")
        if fault == "error200":
            return await self._m_error200(req, reader, writer, "502")
        if fault == "truncated":
            return await self._m_truncated(req, reader, writer, "")
        if fault == "stall":
            return await self._m_stall(req, reader, writer, "")
        raise ValueError(fault)
