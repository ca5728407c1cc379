"""A local stand-in for OpenRouter's chat-completions API, for tests and demos.

FakeOpenRouter is an HTTP/1.1 server on asyncio streams.  It runs its own event
loop in one daemon thread, so a single thread holds thousands of keep-alive
connections.  Standard library only.

What a request gets is chosen by the ``model`` field of its JSON body: a model
that does not start with ``fake/`` (or ``fake/echo``) gets a realistic success
reply whose content is ``"echo: " + <last message's content>``; the ``fake/...``
models named in ``_EXACT`` and ``_PREFIXED`` (at the end of this file) each make
one kind of fault (a status code, a reset, a truncated body, a stall, ...).
``fake/flaky-<n>-<mode>`` fails the first <n> attempts of a call with <mode> and
then succeeds; a call is known by the SHA-1 of its raw body, since a retry
resends the identical body.
``fake/json`` (and any other model when the request asks for
``response_format={"type": "json_object"}``) replies with a judge-style JSON
object, ``{"score": <0, 1 or 2, from the prompt>, "echo": <last message>}``.

Scripted replies, for a test that needs one call to go a given way::

    server.script(reply={"score": 2}, match="rubric 7")  # next call whose prompt has it
    server.script(status=402, times=None)                 # every call from now on
    server.script(fault="reset")                          # the next call, any prompt
    rule = server.script(reply="late", delay_ms=300, model="openai/gpt-4.1")
    rule.hits, rule.remaining                             # how it has been used

A rule answers the chat requests it matches (``match``: a substring of the
prompt text, i.e. of every message's text, or a callable taking the request
body; ``model``: the exact model name received) ``times`` times (default 1;
``None``: until ``clear_script()`` or ``reset()``), ahead of the model modes.
Rules are tried in the order they were added; a used-up rule is skipped.  It
answers with ``reply`` (a str, or a dict/list sent as its JSON text), or
``status`` (an OpenRouter error object with ``message``), or ``fault`` (the
name of any ``fake/`` mode without the prefix: ``"reset"``, ``"truncated"``,
``"stall"``, ``"error200-502"``, ``"slow-300"``, ...), after ``delay_ms``, with
any extra response ``headers``.  Each attempt is a request: ``status=503``
with ``times=1`` is a call that fails once and succeeds on its retry.

A rate limit shared by every client of the server, as OpenRouter or a provider applies one::

    server.rate_limit(rate=100, burst=25, retry_after=1.0)  # token bucket: 100/s, burst 25
    server.rate_limit(rate=100, shape="402")   # 402 in-flight-budget error, with Retry-After
    server.rate_limit(rate=50, shape="429-bare", max_in_flight=8)
    server.rate_limit(None)                    # off (so is reset())
    server.rate_log                            # [(monotonic t, status)] per chat attempt

Beyond the bucket (or beyond ``max_in_flight`` chat requests being answered) a chat request
is turned away at once: ``shape`` ``"429"`` (the default) with ``Retry-After: <retry_after>``,
``"429-bare"`` without it, ``"503"`` with it, or ``"402"``, OpenRouter's in-flight budget
(``error.metadata.limit_source = "openrouter_in_flight_budget"``) with it. Admitted requests go
on to the rules and modes below.

Knobs for demos and realism, all settable on a running server: ``latency_ms``
(added to every success; with ``latency_jitter`` > 0 it is the median of a
log-normal spread of that sigma), ``stall_rate`` and ``stall_s`` (that share of
successes, drawn per attempt, first waits ``stall_s`` seconds: a provider that
stalls now and then; ``stalls`` counts them), ``fault_rate`` (that share of the requests
for models outside ``fake/`` fail at random with 503, 502, 429 or a 200 whose
body is a 502 error object), ``api_keys`` (a set: only those keys pass,
others get 401 as OpenRouter answers them; ``None``, the default, accepts any
key) and ``key_data`` (what ``GET /key`` describes).

``abandoned`` counts the chat requests whose client closed the connection while
the server was still holding the answer back (a stall, ``fault="stall"``, or a
scripted ``delay_ms``): what a client that aborts a transfer looks like from here.

The one rule that keeps it correct: everything that touches a socket runs on the
server's loop thread; state that test threads read or reset (``requests``,
counters, attempt counts) changes only under ``self._lock``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import itertools
import json
import logging
import random
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, Union

if TYPE_CHECKING:
    import ssl

__all__ = ["FakeOpenRouter", "ScriptRule"]

_log = logging.getLogger("fake_openrouter")  # outside the package's logger tree

_MAX_HEAD = 1 << 20          # request line + headers
_MAX_BODY = 64 << 20         # request body
_BIG_PATTERN = "0123456789abcdefghijklmnopqrstuvwxyz\n"

# flaky-<n>-<mode>: the failure used for the first <n> attempts of a call.
_FLAKY_FAILURES = ("503", "502", "500", "429", "408", "reset", "reset-midbody",
                   "truncated", "error200", "stall")
# What fault_rate draws from: the retryable failures OpenRouter really sends.
_RANDOM_FAULTS = ("503", "502", "429", "error200")
_DEFAULT_KEY_DATA = {"label": "test", "limit": None, "usage": 0}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Request:
    __slots__ = ("method", "path", "version", "headers", "raw", "body", "conn",
                 "t", "keep_alive")

    def __init__(self, method: str, path: str, version: str, headers: Dict[str, str], raw: bytes,
                 conn: int):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers
        self.raw = raw
        self.conn = conn
        self.t = time.monotonic()
        self.body: Any
        try:
            self.body = json.loads(raw) if raw else None
        except ValueError:
            self.body = None
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in conn_hdr
        else:
            self.keep_alive = "close" not in conn_hdr

    def record(self) -> Dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers,
                "body": self.body, "raw": self.raw, "conn": self.conn, "t": self.t}


def _error_body(code: int, message: str, metadata: Optional[Dict[str, Any]] = None) -> bytes:
    err: Dict[str, Any] = {"code": code, "message": message}
    if metadata is not None:
        err["metadata"] = metadata
    return json.dumps({"error": err}).encode()


def _reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, length: Optional[int], keep_alive: bool,
          extra: Tuple[Tuple[str, str], ...] = ()) -> bytes:
    lines = ["HTTP/1.1 %d %s" % (status, _reason_phrase(status)),
             "Content-Type: application/json"]
    if length is not None:
        lines.append("Content-Length: %d" % length)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    for name, value in extra:
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_message_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ""
    last = messages[-1]
    return _text_of(last.get("content")) if isinstance(last, dict) else ""


def _prompt_text(body: Any) -> str:
    """Every message's text, one per line: what a script rule's ``match`` looks in."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    return "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))


def _wants_json(body: Any) -> bool:
    fmt = body.get("response_format") if isinstance(body, dict) else None
    return isinstance(fmt, dict) and fmt.get("type") == "json_object"


def judge_json(text: str) -> str:
    """The content ``fake/json`` replies with for a last message ``text``."""
    score = int(hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:8], 16) % 3
    return json.dumps({"score": score, "echo": text})


class ScriptRule:
    """One scripted answer, made by ``FakeOpenRouter.script``; see the module docstring.

    ``hits`` counts the requests it answered; ``remaining`` is how many more it will
    answer (``None``: no limit)."""

    def __init__(self, match: Union[str, Callable[[Dict[str, Any]], bool], None],
                 model: Optional[str], times: Optional[int], reply: Optional[str],
                 status: Optional[int], message: Optional[str], fault: Optional[str],
                 delay_ms: float, headers: Optional[Dict[str, str]]) -> None:
        self.match = match
        self.model = model
        self.times = times
        self.reply = reply
        self.status = status
        self.message = message
        self.fault = fault
        self.delay_ms = float(delay_ms)
        self.headers = tuple((str(k), str(v)) for k, v in dict(headers or {}).items())
        self.hits = 0

    @property
    def remaining(self) -> Optional[int]:
        return None if self.times is None else max(0, self.times - self.hits)

    def _matches(self, req: "_Request", text: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.model is not None and req.body.get("model") != self.model:
            return False
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(req.body))
        return self.match in text

    def __repr__(self) -> str:
        what = ("reply" if self.reply is not None else
                "status=%s" % self.status if self.status is not None else
                "fault=%r" % self.fault)
        return "<ScriptRule %s match=%r model=%r hits=%d remaining=%s>" % (
            what, self.match, self.model, self.hits, self.remaining)


def _prompt_tokens(body: Any) -> int:
    """A deterministic token count: words plus 3 per message."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return 0
    n = 0
    for m in messages:
        if isinstance(m, dict):
            n += 3 + len(_text_of(m.get("content")).split())
    return n


class FakeOpenRouter:
    """An OpenRouter-compatible HTTP server on a background event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 latency_ms: float = 0.0, ssl_context: Optional[ssl.SSLContext] = None, *,
                 latency_jitter: float = 0.0, fault_rate: float = 0.0,
                 seed: Optional[int] = None) -> None:
        self.host = host
        self.port = port
        self.latency_ms = float(latency_ms)
        self.latency_jitter = float(latency_jitter)
        self.fault_rate = float(fault_rate)
        self.stall_rate = 0.0
        self.stall_s = 0.0
        self.stalls = 0
        self.abandoned = 0
        self.ssl_context = ssl_context
        self.api_keys: Optional[Set[str]] = None
        self.key_data: Dict[str, Any] = dict(_DEFAULT_KEY_DATA)
        self.faults_injected = 0
        self._rules: List[ScriptRule] = []
        self._rng = random.Random(seed)  # used on the loop thread only
        self.requests: List[Dict[str, Any]] = []
        self.connections_opened = 0
        self.max_concurrent = 0
        self.usage_sent = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0,
                           "replies": 0}
        self._lock = threading.RLock()  # re-entrant: a match callable may read state
        self._active = 0          # chat requests in progress, this generation
        self._generation = 0      # bumped by reset(); older requests stop counting
        self._attempts: Dict[str, int] = {}
        self._conn_serial = itertools.count(1)
        self._gen_serial = itertools.count(1)
        self._conns: Dict[int, Tuple[asyncio.StreamWriter, asyncio.Task[Any]]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._stopping = False
        self._rl: Optional[Dict[str, Any]] = None   # rate_limit() settings and bucket
        self.rate_log: List[Tuple[float, int]] = []

    # ------------------------------------------------------------------ API
    def rate_limit(self, rate: Optional[float] = 100.0, *, burst: float = 25.0,
                   retry_after: Optional[float] = 1.0, shape: str = "429",
                   max_in_flight: Optional[int] = None) -> None:
        """Turn a shared rate limit on (or change it, keeping the bucket's level), or off with
        ``rate=None``. See the module docstring."""
        if shape not in ("429", "429-bare", "503", "402"):
            raise ValueError("shape must be 429, 429-bare, 503 or 402, not %r" % (shape,))
        with self._lock:
            if rate is None:
                self._rl = None
                return
            old = self._rl
            now = time.monotonic()
            tokens = float(burst) if old is None else min(float(burst), self._refill(old, now))
            self._rl = {"rate": float(rate), "burst": float(burst), "retry_after": retry_after,
                        "shape": shape, "max_in_flight": max_in_flight, "tokens": tokens,
                        "t": now, "admitted": 0 if old is None else old["admitted"]}

    @staticmethod
    def _refill(rl: Dict[str, Any], now: float) -> float:
        level: float = min(rl["burst"], rl["tokens"] + (now - rl["t"]) * rl["rate"])
        return level

    def _rate_limited(self) -> Optional[Tuple[int, bytes, Tuple[Tuple[str, str], ...]]]:
        """Under the lock: take a token for one chat request, or the answer that turns it away."""
        rl = self._rl
        if rl is None:
            return None
        now = time.monotonic()
        rl["tokens"] = self._refill(rl, now)
        rl["t"] = now
        full = rl["max_in_flight"] is not None and rl["admitted"] >= rl["max_in_flight"]
        if rl["tokens"] >= 1.0 and not full:
            rl["tokens"] -= 1.0
            rl["admitted"] += 1
            self.rate_log.append((now, 200))
            return None
        shape = rl["shape"]
        code = int(shape[:3])
        self.rate_log.append((now, code))
        extra: Tuple[Tuple[str, str], ...] = ()
        if shape != "429-bare" and rl["retry_after"] is not None:
            extra = (("Retry-After", "%g" % rl["retry_after"]),)
        if code == 402:
            body = _error_body(402, "Too many requests in flight for this key's budget",
                               {"limit_source": "openrouter_in_flight_budget"})
        else:
            body = _error_body(code, "Rate limit exceeded: %g requests/s (fake)" % rl["rate"])
        return code, body, extra
    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = self.host if ":" not in self.host else "[%s]" % self.host
        return "%s://%s:%d/api/v1" % (scheme, host, self.port)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def in_progress(self) -> int:
        """Chat requests read but not yet answered (since the last reset)."""
        return self._active

    def start(self) -> "FakeOpenRouter":
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._thread_main,
                                        name="FakeOpenRouter", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)
            self._thread = None
            self._loop = None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections_opened = 0
            self.max_concurrent = 0
            self._active = 0
            self._generation += 1
            self._attempts.clear()
            self._rules.clear()
            self.faults_injected = 0
            self.stalls = 0
            self.abandoned = 0
            self.usage_sent = {"prompt_tokens": 0, "completion_tokens": 0,
                               "cost": 0.0, "replies": 0}
            self._rl = None
            self.rate_log = []

    def script(self, reply: Union[str, Dict[str, Any], List[Any], None] = None, *,
               match: Union[str, Callable[[Dict[str, Any]], bool], None] = None,
               model: Optional[str] = None, times: Optional[int] = 1,
               status: Optional[int] = None, message: Optional[str] = None,
               fault: Optional[str] = None, delay_ms: float = 0.0,
               headers: Optional[Dict[str, str]] = None) -> ScriptRule:
        """Script how matching chat requests are answered; see the module docstring."""
        given = [x is not None for x in (reply, status, fault)]
        if sum(given) != 1:
            raise ValueError("script() takes exactly one of reply=, status= or fault=")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive int or None")
        if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError("status must be an HTTP error status (400-599); for a 200 "
                             "with an error object use fault='error200-<code>'")
        if fault is not None and _mode_handler(fault)[0] is None:
            raise ValueError("unknown fault %r: use a fake/ mode name without the prefix"
                             % (fault,))
        if reply is not None and not isinstance(reply, str):
            reply = json.dumps(reply)
        rule = ScriptRule(match, model, times, reply, status, message, fault, delay_ms,
                          headers)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_script(self) -> None:
        """Forget every scripted rule."""
        with self._lock:
            self._rules.clear()

    def _take_rule(self, req: "_Request") -> Optional[ScriptRule]:
        with self._lock:
            if not self._rules:
                return None
            text = _prompt_text(req.body)
            for rule in self._rules:
                if rule._matches(req, text):
                    rule.hits += 1
                    return rule
        return None

    def close_connections(self) -> None:
        """Close every open client connection (as a server closing idle ones)."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def _close_all() -> None:
            for writer, _task in list(self._conns.values()):
                writer.transport.abort()
            done.set()
        loop.call_soon_threadsafe(_close_all)
        done.wait(5)

    def chat_requests(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def attempts_for(self, substring: str) -> int:
        """How many chat requests had a raw body containing ``substring``."""
        needle = substring.encode()
        return sum(1 for r in self.chat_requests() if needle in r["raw"])

    def requests_for(self, substring: str) -> List[Dict[str, Any]]:
        needle = substring.encode()
        return [r for r in self.chat_requests() if needle in r["raw"]]

    def __enter__(self) -> "FakeOpenRouter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------- loop thread
    def _thread_main(self) -> None:
        loop = self._loop
        assert loop is not None  # start() made it
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._quiet_exception_handler)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    @staticmethod
    def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        _log.debug("fake server loop: %s", context.get("message"),
                   exc_info=context.get("exception"))

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, ssl=self.ssl_context,
            backlog=4096, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = []
        for writer, task in list(self._conns.values()):
            writer.transport.abort()
            task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except (asyncio.TimeoutError, OSError):
                pass

    # ------------------------------------------------------ connections
    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        serial = next(self._conn_serial)
        with self._lock:
            self.connections_opened += 1
        task = asyncio.current_task()
        assert task is not None  # a connection is served by its own task
        self._conns[serial] = (writer, task)
        sock = writer.get_extra_info("socket")
        if sock is not None and self.ssl_context is None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            while not self._stopping:
                try:
                    req = await self._read_request(reader, writer, serial)
                except _BadRequest as bad:
                    body = _error_body(bad.status, bad.message)
                    writer.write(_head(bad.status, len(body), False) + body)
                    await writer.drain()
                    break
                if req is None:
                    break
                if not await self._dispatch(req, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - never let one client kill the server
            _log.debug("fake server: error on connection %d", serial, exc_info=True)
        finally:
            self._conns.pop(serial, None)
            writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, serial: int) -> Optional[_Request]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # clean EOF between requests (or a partial head)
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        lines = head[:-4].lstrip(b"\r\n").split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0]:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name.strip() != name:
                raise _BadRequest(400, "malformed header line")
            key = name.decode("latin-1").lower()
            val = value.strip().decode("latin-1")
            headers[key] = headers[key] + ", " + val if key in headers else val
        if target.startswith(("http://", "https://")):   # absolute form
            slash = target.find("/", target.find("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        path = target.split("?", 1)[0]

        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            raw = await self._read_chunked(reader)
        elif "content-length" in headers:
            cl = headers["content-length"]
            if not cl.isdigit():
                raise _BadRequest(400, "bad Content-Length")
            n = int(cl)
            if n > _MAX_BODY:
                raise _BadRequest(413, "request body too large")
            raw = await reader.readexactly(n) if n else b""
        else:
            raw = b""
        return _Request(method, path, version, headers, raw, serial)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        chunks: List[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size_txt = line.split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise _BadRequest(413, "request body too large")
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequest(400, "bad chunk terminator")

    # ---------------------------------------------------------- routing
    async def _dispatch(self, req: _Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False means close the connection."""
        with self._lock:
            self.requests.append(req.record())
        if req.path.endswith(("/chat/completions", "/key")) and self.api_keys is not None:
            auth = req.headers.get("authorization", "")
            key = auth[7:].strip() if auth.startswith("Bearer ") else ""
            if key not in self.api_keys:
                return await self._send(req, writer, 401, _error_body(
                    401, "User not found." if key else "No auth credentials found"))
        if req.path.endswith("/chat/completions") and req.method == "POST":
            with self._lock:
                gen = self._generation
                self._active += 1
                if self._active > self.max_concurrent:
                    self.max_concurrent = self._active
            try:
                keep = await self._chat(req, reader, writer)
            finally:
                with self._lock:
                    if gen == self._generation:
                        self._active -= 1
            return keep and req.keep_alive
        if req.path.endswith("/key") and req.method == "GET":
            auth = req.headers.get("authorization", "")
            if auth.startswith("Bearer ") and auth[7:].strip():
                body = json.dumps({"data": self.key_data}).encode()
                return await self._send(req, writer, 200, body)
            return await self._send(req, writer, 401,
                                    _error_body(401, "No auth credentials found"))
        return await self._send(req, writer, 404, _error_body(
            404, "Not Found: %s %s" % (req.method, req.path)))

    async def _send(self, req: _Request, writer: asyncio.StreamWriter, status: int, body: bytes,
                    extra: Tuple[Tuple[str, str], ...] = ()) -> bool:
        keep = req.keep_alive and not self._stopping
        writer.write(_head(status, len(body), keep, extra) + body)
        await writer.drain()
        return keep

    async def _chat(self, req: _Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        body = req.body
        if not isinstance(body, dict):
            return await self._send(req, writer, 400,
                                    _error_body(400, "request body is not a JSON object"))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return await self._send(req, writer, 400,
                                    _error_body(400, "model is required"))
        with self._lock:
            limited = self._rate_limited()
            rl = self._rl if limited is None else None
        if limited is not None:
            return await self._send(req, writer, limited[0], limited[1], limited[2])
        try:
            return await self._chat_admitted(req, reader, writer, body, model)
        finally:
            if rl is not None:
                with self._lock:
                    rl["admitted"] -= 1

    async def _chat_admitted(self, req: _Request, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, body: Dict[str, Any],
                             model: str) -> bool:
        rule = self._take_rule(req)
        if rule is not None:
            return await self._scripted(rule, req, reader, writer)
        if not model.startswith("fake/"):
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                with self._lock:
                    self.faults_injected += 1
                failure = self._rng.choice(_RANDOM_FAULTS)
                return await self._fail(req, writer, failure, "fake random fault")
            if _wants_json(body):
                return await self._m_json(req, reader, writer, "")
            return await self._m_echo(req, reader, writer, "")
        handler, arg = _mode_handler(model[5:])
        if handler is None:
            return await self._send(req, writer, 400, _error_body(
                400, "%s is not a valid model ID (unknown fake model)" % model))
        try:
            return await handler(self, req, reader, writer, arg)
        except ValueError:
            return await self._send(req, writer, 400, _error_body(
                400, "bad argument in fake model %r" % model))

    async def _held(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait before answering; False (and counted in ``abandoned``) when the client closed
        the connection meanwhile. A client sends nothing while it waits for an answer, so any
        read that returns is its end of the connection."""
        try:
            data = await asyncio.wait_for(reader.read(1), seconds)
        except asyncio.TimeoutError:
            return True
        except (ConnectionError, OSError):
            data = b""
        if data:
            return True
        with self._lock:
            self.abandoned += 1
        return False

    async def _scripted(self, rule: ScriptRule, req: _Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        if rule.delay_ms > 0 and not await self._held(reader, rule.delay_ms / 1000.0):
            return False
        if rule.reply is not None:
            if self.latency_ms > 0:
                await asyncio.sleep(self._latency_s())
            return await self._send(req, writer, 200, self._completion(req, rule.reply),
                                    rule.headers)
        if rule.status is not None:
            text = rule.message or "scripted status %d" % rule.status
            return await self._send(req, writer, rule.status,
                                    _error_body(rule.status, text), rule.headers)
        handler, arg = _mode_handler(rule.fault or "")
        assert handler is not None  # script() refused an unknown fault
        return await handler(self, req, reader, writer, arg)

    async def _fail(self, req: _Request, writer: asyncio.StreamWriter, failure: str,
                    text: str) -> bool:
        """Answer with one of the _RANDOM_FAULTS / numeric flaky failures."""
        if failure == "error200":
            return await self._send(req, writer, 200, _error_body(
                502, "provider failed", {"provider_name": "FakeProvider"}))
        code = int(failure)
        extra = (("Retry-After", "0"),) if code == 429 else ()
        return await self._send(req, writer, code, _error_body(code, "%s %d" % (text, code)),
                                extra)

    # ------------------------------------------------------------ modes
    def _completion(self, req: _Request, content: Any) -> bytes:
        pt = _prompt_tokens(req.body)
        ct = len(content.split()) if isinstance(content, str) else (
            4 if content is not None else 0)
        cost = round((pt * 1.5 + ct * 6.0) * 1e-6 + 1e-6, 9)
        with self._lock:
            self.usage_sent["prompt_tokens"] += pt
            self.usage_sent["completion_tokens"] += ct
            self.usage_sent["cost"] += cost
            self.usage_sent["replies"] += 1
        reply = {
            "id": "gen-%d-%d" % (int(time.time()), next(self._gen_serial)),
            "provider": "FakeProvider",
            "model": req.body.get("model"),
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [{
                "logprobs": None,
                "finish_reason": "stop",
                "native_finish_reason": "stop",
                "index": 0,
                "message": {"role": "assistant", "content": content,
                            "refusal": None, "reasoning": None},
            }],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                      "total_tokens": pt + ct, "cost": cost,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}},
        }
        return json.dumps(reply).encode()

    def _latency_s(self) -> float:
        if self.latency_jitter > 0:
            return self.latency_ms * self._rng.lognormvariate(0.0, self.latency_jitter) / 1000.0
        return self.latency_ms / 1000.0

    async def _success(self, req: _Request, writer: asyncio.StreamWriter, content: Any,
                       prefix: bytes = b"", reader: Optional[asyncio.StreamReader] = None) -> bool:
        if self.stall_rate > 0 and self._rng.random() < self.stall_rate:
            with self._lock:
                self.stalls += 1
            if reader is not None and not await self._held(reader, self.stall_s):
                return False
        if self.latency_ms > 0:
            await asyncio.sleep(self._latency_s())
        return await self._send(req, writer, 200, prefix + self._completion(req, content))

    async def _m_echo(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, "echo: " + _last_message_text(req.body),
                                   reader=reader)

    async def _m_json(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, judge_json(_last_message_text(req.body)),
                                   reader=reader)

    async def _m_slow(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        await asyncio.sleep(float(arg) / 1000.0)
        return await self._m_echo(req, reader, writer, "")

    async def _m_status(self, req: _Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, arg: str) -> bool:
        code = int(arg)
        if not 200 <= code <= 599:
            raise ValueError(arg)
        return await self._send(req, writer, code,
                                _error_body(code, "fake status %d" % code))

    async def _m_retry_after(self, req: _Request, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, arg: str) -> bool:
        if not arg or "\r" in arg or "\n" in arg:  # seconds or an HTTP date
            raise ValueError(arg)
        return await self._send(req, writer, 429,
                                _error_body(429, "Rate limit exceeded (fake)"),
                                (("Retry-After", arg),))

    async def _m_retry_after_ms(self, req: _Request, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, arg: str) -> bool:
        float(arg)
        return await self._send(req, writer, 429,
                                _error_body(429, "Rate limit exceeded (fake)"),
                                (("retry-after-ms", arg),))

    async def _m_reset(self, req: _Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, arg: str) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:  # linger 0: close() sends RST, a real "connection reset"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
            except OSError:
                pass
        writer.transport.abort()
        return False

    async def _m_reset_midbody(self, req: _Request, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter, arg: str) -> bool:
        body = self._completion(req, "echo: " + _last_message_text(req.body))
        writer.write(_head(200, len(body), True) + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.transport.abort()
        return False

    async def _m_truncated(self, req: _Request, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, arg: str) -> bool:
        body = self._completion(req, "echo: " + _last_message_text(req.body))
        return await self._send(req, writer, 200, body[: len(body) // 2])

    async def _m_garbage(self, req: _Request, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._send(req, writer, 200, b"not json at all")

    async def _m_error200(self, req: _Request, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, arg: str) -> bool:
        code = int(arg)
        return await self._send(req, writer, 200, _error_body(
            code, "provider failed", {"provider_name": "FakeProvider"}))

    async def _m_null(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, None)

    async def _m_list(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, [
            {"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}])

    async def _m_big(self, req: _Request, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, arg: str) -> bool:
        n = int(arg)
        if n < 0:
            raise ValueError(arg)
        return await self._success(req, writer, big_content(n))

    async def _m_whitespace(self, req: _Request, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, "echo: " + _last_message_text(req.body),
                                   prefix=b"\n\n   \n")

    async def _m_stall(self, req: _Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, arg: str) -> bool:
        while True:  # until the client closes or the server stops
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                if not self._stopping:
                    with self._lock:
                        self.abandoned += 1
                return False

    async def _m_headers(self, req: _Request, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, json.dumps(req.headers))

    async def _m_body(self, req: _Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, arg: str) -> bool:
        return await self._success(req, writer, req.raw.decode("utf-8", "replace"))

    async def _m_flaky(self, req: _Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, arg: str) -> bool:
        count_txt, _, failure = arg.partition("-")
        n = int(count_txt)
        if failure not in _FLAKY_FAILURES:
            raise ValueError(arg)
        key = hashlib.sha1(req.raw).hexdigest()
        with self._lock:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
        if attempt > n:
            return await self._m_echo(req, reader, writer, "")
        if failure.isdigit():
            return await self._fail(req, writer, failure, "fake flaky")
        if failure == "error200":
            return await self._m_error200(req, reader, writer, "502")
        return await _EXACT[failure](self, req, reader, writer, "")


def big_content(n: int) -> str:
    """The content ``fake/big-<n>`` replies with: n ASCII bytes."""
    reps = n // len(_BIG_PATTERN) + 1
    return (_BIG_PATTERN * reps)[:n]


_Handler = Callable[..., Awaitable[bool]]
_EXACT: Dict[str, _Handler] = {
    "echo": FakeOpenRouter._m_echo,
    "reset": FakeOpenRouter._m_reset,
    "reset-midbody": FakeOpenRouter._m_reset_midbody,
    "truncated": FakeOpenRouter._m_truncated,
    "garbage": FakeOpenRouter._m_garbage,
    "null": FakeOpenRouter._m_null,
    "list": FakeOpenRouter._m_list,
    "whitespace": FakeOpenRouter._m_whitespace,
    "stall": FakeOpenRouter._m_stall,
    "headers": FakeOpenRouter._m_headers,
    "body": FakeOpenRouter._m_body,
    "json": FakeOpenRouter._m_json,
}
# Longest prefixes first: "retry-after-ms-" must win over "retry-after-".
_PREFIXED: Tuple[Tuple[str, _Handler], ...] = (
    ("retry-after-ms-", FakeOpenRouter._m_retry_after_ms),
    ("retry-after-", FakeOpenRouter._m_retry_after),
    ("error200-", FakeOpenRouter._m_error200),
    ("status-", FakeOpenRouter._m_status),
    ("flaky-", FakeOpenRouter._m_flaky),
    ("slow-", FakeOpenRouter._m_slow),
    ("big-", FakeOpenRouter._m_big),
)


def _mode_handler(name: str) -> Tuple[Optional[_Handler], str]:
    """The handler of ``fake/<name>`` and its argument, or (None, "")."""
    handler = _EXACT.get(name)
    if handler is not None:
        return handler, ""
    for prefix, fn in _PREFIXED:
        if name.startswith(prefix):
            return fn, name[len(prefix):]
    return None, ""


def main(argv: Optional[List[str]] = None) -> None:
    """Run the fake server in the foreground: python -m openrouter_direct._server"""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="added to each success (the median when --latency-jitter > 0)")
    parser.add_argument("--latency-jitter", type=float, default=0.0,
                        help="sigma of a log-normal spread around --latency-ms (0: fixed)")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of requests that fail at random with 503/502/429")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    with FakeOpenRouter(args.host, args.port, args.latency_ms,
                        latency_jitter=args.latency_jitter, fault_rate=args.fault_rate,
                        seed=args.seed) as server:
        print("FakeOpenRouter listening on", server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
