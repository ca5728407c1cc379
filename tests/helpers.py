"""Small helpers shared by the test modules (no fixtures here)."""

import asyncio
import http.client
import http.server
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Under ASan or TSan (.ci/sanitizers preloads their runtimes) everything runs several times
# slower: wall-clock upper bounds that are the behaviour under test are multiplied by this.
# ORD_TEST_TIME_SCALE overrides it (a loaded machine, valgrind).
SANITIZED = any(s in os.environ.get("LD_PRELOAD", "") for s in ("libasan", "libtsan", "libubsan"))
TIME_SCALE = float(os.environ.get("ORD_TEST_TIME_SCALE") or (4.0 if SANITIZED else 1.0))


def bound(seconds):
    """An upper bound on wall time that is part of the behaviour, scaled for slow builds."""
    return seconds * TIME_SCALE


def uniq(tag="p"):
    """A prompt no other call in the session uses (the fake server keys calls by body)."""
    return "%s-%s" % (tag, uuid.uuid4().hex)


def arun(coro, timeout=30.0):
    """asyncio.run with a hard bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def bounded(fn, *args, bound=30.0, **kwargs):
    """Run a blocking call in a daemon thread; fail the test instead of hanging."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(bound)
    if t.is_alive():
        raise AssertionError("call did not return within %.1f s" % bound)
    if "error" in box:
        raise box["error"]
    return box["value"]


# How long to wait for something that must happen: generous, since passing costs only the wait
# itself, and a loaded machine (or a sanitizer) must never turn a slow event into a failure.
WAIT = 20.0


def wait_until(predicate, timeout=WAIT, interval=0.005):
    """Poll until predicate() holds; returns its last value. timeout is a safety net, never the
    behaviour under test: it is at least WAIT, scaled like bound()."""
    deadline = time.monotonic() + max(timeout, WAIT) * TIME_SCALE
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def await_until(predicate, timeout=WAIT, interval=0.005):
    """wait_until inside a running loop."""
    deadline = time.monotonic() + max(timeout, WAIT) * TIME_SCALE
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


# For a child that is sent Ctrl-C: Python keeps SIGINT ignored when it starts with it ignored,
# as every process started by a background job of a non-interactive shell does (nohup, CI
# runners); there KeyboardInterrupt never comes. The child installs Python's own handler, as
# an interactive start has it.
SIGINT_AS_INTERACTIVE = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def run_py(code, timeout=60.0, env=None, cwd=None):
    """Run ``code`` in a fresh interpreter with the repo importable; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        for k, v in env.items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)


def first_call_error(var, value):
    """What the first call of a fresh interpreter says with ``var=value`` in its environment:
    settings are checked there, so a bad one must be a ValueError naming the variable."""
    code = ("import openrouter_direct as od\n"
            "try:\n"
            "    od.run_openrouter('m/x', 'p')\n"
            "except ValueError as e:\n"
            "    print('ValueError:', e)\n")
    done = run_py(code, env={var: value})
    return done.stdout + done.stderr if not done.stdout.startswith("ValueError:") else done.stdout


def chat_bodies(server, substring):
    return [r["body"] for r in server.requests_for(substring)]


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """What an HTTP proxy does: absolute-URI requests are forwarded, CONNECT is tunnelled."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        self.server.seen.append(("POST", self.path))
        self.server.agents.append(self.headers.get_all("User-Agent"))
        url = urllib.parse.urlsplit(self.path)
        if not url.scheme:
            self.send_error(400, "expected an absolute URI")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "host")}
        upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            upstream.request("POST", url.path, body, headers)
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_CONNECT(self):
        self.server.seen.append(("CONNECT", self.path))
        self.server.agents.append(self.headers.get_all("User-Agent"))
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        a, b = self.connection, upstream
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 10)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()


class ThreadedServer:
    """A socketserver on 127.0.0.1 run by a daemon thread inside ``with``; subclasses make
    ``self._srv`` (its daemon_threads set) and then call this __init__."""

    def __init__(self):
        self.port = self._srv.server_address[1]

    def __enter__(self):
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._srv.shutdown()
        self._srv.server_close()


class ForwardProxy(ThreadedServer):
    """A tiny HTTP proxy on 127.0.0.1 that records what it forwarded in ``seen``."""

    def __init__(self):
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._srv.daemon_threads = True
        self._srv.seen = []
        self._srv.agents = []  # the User-Agent headers of each request, in order
        super().__init__()
        self.url = "http://127.0.0.1:%d" % self.port

    @property
    def seen(self):
        return self._srv.seen

    @property
    def agents(self):
        return self._srv.agents


class _FixedReplyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FixedReplyServer(ThreadedServer):
    """Answers every POST with ``reply`` = (status, body bytes); ``base_url`` ends in /api/v1."""

    def __init__(self, status=200, body=b"{}"):
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedReplyHandler)
        self._srv.daemon_threads = True
        self._srv.reply = (status, body)
        super().__init__()
        self.base_url = "http://127.0.0.1:%d/api/v1" % self.port
