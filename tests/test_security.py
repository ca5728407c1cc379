"""Security properties not pinned elsewhere: the plain-http warning, the response size cap
(with memory staying bounded, default 64 MiB), JSON nesting limits both ways, CR/LF in the
base URL, the key redacted even when a server echoes it, https_proxy spelled in capitals,
and TLS hostname verification.

(TLS verification with a throw-away CA, CR/LF in headers, the key in logs and exceptions,
and CONNECT through https_proxy are in test_tls.py, test_errors.py and test_transport.py.)
"""

import json
import logging
import os
import socket
import socketserver
import subprocess
import sys
import time

import pytest

from helpers import REPO, ForwardProxy, ThreadedServer, arun, bound, run_py, uniq, wait_until
from openrouter_direct._server import FakeOpenRouter

LOGGER = "openrouter_direct"


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def non_loopback_address():
    """An address of this machine that is not loopback, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # UDP: only picks the route, sends nothing
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


# --------------------------------------------------------------------- plain http
def test_plain_http_to_a_host_that_is_not_loopback_warns_once_per_url(od, caplog, api_key):
    caplog.set_level(logging.INFO, logger=LOGGER)
    host = "or-%s.invalid" % uniq("h")  # never resolves: the warning comes before the wire
    url_a, url_b = "http://%s/api/v1" % host, "http://%s:8080/v1" % host
    for _ in range(3):
        assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=url_a,
                                            num_retries=0, timeout=5)) == ""
    warned = [w for w in warnings_of(caplog) if host in w]
    assert len(warned) == 1, warned
    assert url_a in warned[0] and "http://" in warned[0]
    assert "unencrypted" in warned[0] and "key" in warned[0]
    assert api_key not in warned[0]
    arun(od.run_openrouter_async("fake/echo", uniq(), api_base=url_b, num_retries=0, timeout=5))
    assert len([w for w in warnings_of(caplog) if host in w]) == 2


@pytest.mark.parametrize("label", ["127.%s.example", "127.0.0.1.%s.example", "localhost.%s.example"])
def test_a_name_that_only_starts_like_loopback_warns(od, caplog, label):
    # Before: any host starting "127." counted as loopback, so http://127.evil.example/ sent the
    # key in clear without a word.
    caplog.set_level(logging.INFO, logger=LOGGER)
    host = label % uniq("h")
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base="http://%s/api/v1" % host,
                                        num_retries=0, timeout=5)) == ""
    assert len([w for w in warnings_of(caplog) if host in w and "unencrypted" in w]) == 1


@pytest.mark.parametrize("base", ["http://127.0.0.1:{port}/api/v1",
                                  "http://localhost:{port}/api/v1",
                                  "http://127.0.0.1:{port}/api/v1/",
                                  "http://127.0.0.2:{port}/api/v1",
                                  "http://user:pw@127.0.0.1:{port}/api/v1",
                                  "https://or-quiet.invalid/api/v1"],
                         ids=["ipv4_loopback", "localhost", "trailing_slash", "loopback_net",
                              "userinfo", "https"])
def test_loopback_or_https_does_not_warn(od, server, caplog, base):
    caplog.set_level(logging.INFO, logger=LOGGER)
    arun(od.run_openrouter_async("fake/echo", uniq(), api_base=base.format(port=server.port),
                                 num_retries=0, timeout=5))
    assert [w for w in warnings_of(caplog) if "plain http" in w] == []


def test_plain_http_to_a_real_non_loopback_interface_works_and_warns_once(od, caplog):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    caplog.set_level(logging.INFO, logger=LOGGER)
    with FakeOpenRouter(host=addr) as srv:
        p1, p2 = uniq(), uniq()
        assert arun(od.run_openrouter_async("fake/echo", p1, api_base=srv.base_url,
                                            num_retries=0)) == "echo: " + p1
        assert arun(od.run_openrouter_async("fake/echo", p2, api_base=srv.base_url,
                                            num_retries=0)) == "echo: " + p2
    warned = [w for w in warnings_of(caplog) if addr in w]
    assert len(warned) == 1 and "plain http" in warned[0], warned


def test_plain_http_warning_once_per_process_from_env(server):
    code = r'''
import logging, openrouter_direct as od
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
logging.getLogger("openrouter_direct").addHandler(Keep())
for i in range(5):
    od.run_openrouter("fake/echo", "pw-%d" % i, num_retries=0, timeout=3)
print(sum("plain http" in m for m in seen))
'''
    proc = run_py(code, timeout=60, env={"OPENAI_API_BASE": "http://or-env.invalid/api/v1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


# ------------------------------------------------------------------ a canned server
class _CannedHandler(socketserver.BaseRequestHandler):
    """Reads one HTTP request; the first path segment picks the answer."""

    def handle(self):
        sock = self.request
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        need = int(headers.get("content-length", "0")) - len(rest)
        while need > 0:
            chunk = sock.recv(65536)
            if not chunk:
                return
            need -= len(chunk)
        kind = lines[0].split(" ")[1].strip("/").split("/")[0]
        sent = getattr(self, "do_" + kind.split("-")[0])(sock, kind, headers)
        self.server.sent[kind] = self.server.sent.get(kind, 0) + sent

    @staticmethod
    def _reply(sock, status, body, extra=""):
        sock.sendall(("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d"
                      "\r\nConnection: close\r\n%s\r\n" % (status, len(body), extra)).encode()
                     + body)
        return len(body)

    def do_nested(self, sock, kind, headers):
        depth = int(kind.split("-")[1])
        body = ('{"choices":[{"message":{"role":"assistant","content":"deep"}}],"extra":'
                + "[" * depth + "]" * depth + "}").encode()
        return self._reply(sock, 200, body)

    def do_endless(self, sock, kind, headers):
        """A chunked 200 that never ends: only the client's cap stops it."""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
        sent = 0
        try:
            while sent < (1 << 31):
                sock.sendall(piece)
                sent += 65536
        except OSError:
            pass
        return sent

    def do_declared(self, sock, kind, headers):
        """Announces a huge Content-Length, sends 1 MiB, then waits for the client to go."""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000000\r\n\r\n")
        sent = 0
        try:
            for _ in range(16):
                sock.sendall(b" " * 65536)
                sent += 65536
            sock.recv(1)
        except OSError:
            pass
        return sent

    def do_hostile(self, sock, kind, headers):
        """Numbers no real server sends: far beyond what a C long or int64 holds. (The cost
        stays 0: stats() is process-wide, and other tests compare its cost before and after.)"""
        variant = kind.split("-", 1)[1]
        if variant == "usage":
            body = ('{"choices":[{"message":{"content":"big usage"}}],"usage":{"prompt_tokens":'
                    '1e300,"completion_tokens":-1e300,"cost":0}}').encode()
            return self._reply(sock, 200, body)
        if variant == "code":
            return self._reply(sock, 200, b'{"error":{"code":1e300,"message":"huge code"}}')
        header = {"retryafter": "Retry-After: 1e300\r\n", "retryafterinf": "Retry-After: inf\r\n",
                  "retryafterms": "retry-after-ms: 1e300\r\n"}[variant]
        return self._reply(sock, 429, b'{"error":{"code":429,"message":"slow down"}}', header)

    def do_echolong(self, sock, kind, headers):
        """A 401 whose long message ends with the Authorization header (cut at 1 KB)."""
        body = json.dumps({"error": {"code": 401, "message": "x" * 975 + " bad credentials: %s"
                                     % headers.get("authorization", "")}}).encode()
        return self._reply(sock, 401, body)

    def do_echotwice(self, sock, kind, headers):
        """A 502 whose plain-text body is the key, 89 bytes, and the key again: redacting the
        first copy pulls the head of the second into the logged excerpt."""
        key = headers.get("authorization", "")[len("Bearer "):]
        return self._reply(sock, 502, (key + "x" * 89 + key).encode())

    def do_echoauth(self, sock, kind, headers):
        """A 401 whose message repeats the Authorization header, as some proxies do."""
        body = json.dumps({"error": {"code": 401, "message": "bad credentials: %s"
                                     % headers.get("authorization", "")}}).encode()
        return self._reply(sock, 401, body)


class CannedServer(ThreadedServer):
    def __init__(self):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _CannedHandler)
        self._srv.daemon_threads = True
        self._srv.sent = {}
        super().__init__()

    @property
    def sent(self):
        return self._srv.sent

    def base(self, kind):
        return "http://127.0.0.1:%d/%s" % (self.port, kind)


@pytest.fixture(scope="module")
def canned():
    with CannedServer() as srv:
        yield srv


# ---------------------------------------------------------------- response size cap
SIZE_CAP_CODE = r'''
import os, sys, time, openrouter_direct as od
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
assert od.run_openrouter("fake/echo", "warm", api_base=sys.argv[2], num_retries=0) == "echo: warm"
before = hwm_kb()
t0 = time.monotonic()
try:
    od.run_openrouter("fake/echo", "x", api_base=sys.argv[1], num_retries=3, timeout=60,
                      raise_on_error=True)
    print("no error")
except od.OpenRouterError as exc:
    print(exc.reason, exc.attempts, round(time.monotonic() - t0, 2),
          (hwm_kb() - before) // 1024, "|", exc)
'''


def run_size_cap(canned, server, kind, cap):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("OPENROUTER_MAX_RESPONSE_BYTES", None)
    if cap is not None:
        env["OPENROUTER_MAX_RESPONSE_BYTES"] = str(cap)
    proc = subprocess.run([sys.executable, "-c", SIZE_CAP_CODE, canned.base(kind),
                           server.base_url], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    head, _, message = proc.stdout.partition("|")
    reason, attempts, seconds, grew_mb = head.split()
    return reason, int(attempts), float(seconds), int(grew_mb), message.strip()


def test_endless_reply_stops_at_the_cap_with_memory_bounded(canned, server):
    canned.sent.clear()
    reason, attempts, seconds, grew_mb, message = run_size_cap(canned, server, "endless-a",
                                                               2_000_000)
    assert reason == "too_large" and attempts == 1  # not retried
    assert "2000000" in message and "OPENROUTER_MAX_RESPONSE_BYTES" in message
    assert grew_mb < 20 or under_sanitizer(), grew_mb
    assert seconds < bound(5)
    assert wait_until(lambda: "endless-a" in canned.sent)  # the handler saw the hang-up
    # the client hung up soon after the cap (socket buffers hold a few MB more)
    assert canned.sent["endless-a"] < 2_000_000 + 32 * 1024 * 1024


def under_sanitizer():
    """ASan's quarantine keeps every freed buffer for a while: RSS bounds mean nothing there."""
    return "san" in os.environ.get("LD_PRELOAD", "")


def test_default_cap_is_64_mib_and_memory_stays_near_it(canned, server):
    canned.sent.clear()
    reason, attempts, seconds, grew_mb, message = run_size_cap(canned, server, "endless-b",
                                                               None)
    assert reason == "too_large" and attempts == 1
    assert str(64 * 1024 * 1024) in message
    if not under_sanitizer():
        assert grew_mb < 64 + 48, grew_mb  # the one buffer, not a copy per chunk
    assert wait_until(lambda: "endless-b" in canned.sent)  # the handler saw the hang-up
    assert 64 * 1024 * 1024 <= canned.sent["endless-b"] < 64 * 1024 * 1024 + 32 * 1024 * 1024


def test_announced_content_length_over_the_cap_fails_before_the_body(canned, server):
    canned.sent.clear()
    reason, attempts, seconds, grew_mb, message = run_size_cap(canned, server, "declared-a",
                                                               1_000_000)
    assert reason == "too_large" and attempts == 1
    assert seconds < bound(2) and (grew_mb < 10 or under_sanitizer())


# ------------------------------------------------------------------- nesting limits
@pytest.mark.parametrize("depth", [65, 1000, 200_000])
def test_request_nested_too_deep_is_a_type_error_not_a_crash(od, server, depth):
    deep = "leaf"
    for _ in range(depth):
        deep = [deep]
    p = uniq()
    with pytest.raises(TypeError, match="nested more than 64 levels"):
        arun(od.run_openrouter_async("fake/echo", p, metadata=deep))
    with pytest.raises(TypeError, match="nested more than 64 levels"):
        od.run_openrouter("fake/echo", p, messages=[{"role": "user", "content": deep}])
    assert server.attempts_for(p) == 0


def test_request_nested_to_the_limit_is_sent(od, server):
    deep = "leaf"
    for _ in range(60):
        deep = {"k": deep}
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, metadata=deep)) == "echo: " + p
    sent = server.requests_for(p)[0]["body"]["metadata"]
    assert sent == deep


def test_reply_nested_beyond_the_parser_limit_fails_cleanly(od, canned, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/echo", uniq(), api_base=canned.base("nested-100000"),
                                     num_retries=0, raise_on_error=True))
    assert info.value.reason == "invalid_response"
    assert "not valid JSON" in str(info.value)


def test_reply_nested_within_the_parser_limit_is_read(od, canned):
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=canned.base("nested-900"),
                                        num_retries=0)) == "deep"


# ------------------------------------------------------------------------ CR/LF, key
@pytest.mark.parametrize("suffix", ["\r\nX-Injected: yes", "\n/x", " x"],
                         ids=["crlf", "lf", "space"])
def test_base_url_with_control_characters_is_refused_and_nothing_is_sent(od, server, suffix):
    p = uniq()
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/echo", p, api_base=server.base_url + suffix,
                                     num_retries=3, raise_on_error=True))
    assert info.value.reason == "bad_url" and info.value.attempts == 1
    assert server.attempts_for(p) == 0


def test_model_name_with_crlf_stays_inside_the_json_body(od, server):
    p = uniq()
    model = "fake/echo\r\nX-Injected: yes"
    arun(od.run_openrouter_async(model, p, num_retries=0))
    req = server.requests_for(p)[0]
    assert "x-injected" not in req["headers"]
    assert req["body"]["model"] == model


def test_key_echoed_back_by_a_server_is_redacted_everywhere(od, canned, api_key, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    base = canned.base("echoauth")
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=base)) == ""
    assert od.run_openrouter("fake/echo", uniq(), api_base=base) == ""
    with pytest.raises(od.AuthenticationError) as info:
        arun(od.run_openrouter_async("fake/echo", uniq(), api_base=base, raise_on_error=True))
    texts = [r.getMessage() for r in caplog.records] + [str(info.value), repr(info.value),
                                                        info.value.message]
    assert any("bad credentials: Bearer ***" in t for t in texts), texts
    assert all(api_key not in t for t in texts)


def test_key_echoed_at_the_end_of_a_long_message_is_not_leaked_in_part(od, canned, api_key,
                                                                     caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=canned.base("echolong"),
                                        num_retries=0)) == ""
    secret = api_key[len("test-key-"):]
    texts = [r.getMessage() for r in caplog.records]
    assert texts and all(secret[:12] not in t for t in texts), texts


def test_key_twice_in_a_plain_body_leaves_no_piece_in_the_excerpt(od, canned, api_key, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=canned.base("echotwice"),
                                        num_retries=0)) == ""
    texts = [r.getMessage() for r in caplog.records]
    assert texts and all(api_key[:4] + api_key[-4:] not in t and api_key[:8] not in t
                         for t in texts), texts


@pytest.mark.parametrize("variant", ["usage", "code", "retryafter", "retryafterinf",
                                     "retryafterms"])
def test_numbers_beyond_c_integers_in_a_reply_are_survived(od, canned, variant):
    """A reply with 1e300 tokens, a 1e300 error code or Retry-After: 1e300 / inf: the call
    ends normally. (Converting such a double to long or int64_t is undefined behaviour in C;
    the sanitizer build, with float-cast-overflow, reports it if the engine does.)"""
    if variant.startswith("retryafter"):
        # The governor waits out a 429 up to OPENROUTER_RATE_LIMIT_WAIT: a wait of the capped
        # 60 s is past this budget, so the call ends at once (reason rate_limited).
        od.configure(rate_limit_wait=5)
    t0 = time.monotonic()
    out = arun(od.run_openrouter_async("fake/echo", uniq(), api_base=canned.base(
        "hostile-" + variant), num_retries=0))
    assert out == ("big usage" if variant == "usage" else "")
    assert time.monotonic() - t0 < bound(5)
    s = od.stats()
    assert s["prompt_tokens"] >= 0 and s["completion_tokens"] >= 0


# --------------------------------------------------------------------- JSON fidelity
@pytest.mark.parametrize("value", [2 ** 53, 0.1 + 0.2, 1.0000000000000002, 0, -7, 2 ** 63 - 1,
                                   -2 ** 63, 2 ** 64, -2 ** 64],
                         ids=["int_2_pow_53", "float_0_30000000000000004", "float_next_after_1",
                              "zero", "negative", "int64_max", "int64_min", "beyond_int64",
                              "below_int64"])
def test_numbers_are_sent_exactly(od, server, value):
    p = uniq()
    arun(od.run_openrouter_async("fake/echo", p, seed=value))
    sent = server.requests_for(p)[0]["body"]["seed"]
    assert sent == value and type(sent) is type(value)


def test_huge_timeout_is_accepted_and_the_call_completes(od, server):
    """timeout=1e40 (found by the request fuzzer): converting it to milliseconds as a C long
    was undefined behaviour; it is clamped to a year."""
    p = uniq()
    assert od.run_openrouter("fake/echo", p, timeout=1e40) == "echo: " + p


def test_object_keys_with_nul_are_refused_with_a_type_error(od, server):
    """cJSON keeps object keys as C strings, so a key with a NUL cannot be sent exactly:
    the call refuses it at once rather than send a different key."""
    p = uniq()
    with pytest.raises(TypeError, match="NUL"):
        od.run_openrouter("fake/echo", p, metadata={"a\0b": 1, "a\0c": 2})
    assert server.attempts_for(p) == 0


def test_kwarg_names_with_nul_are_refused_with_a_type_error(od, server):
    p = uniq()
    with pytest.raises(TypeError):
        od.run_openrouter("fake/echo", p, **{"\0tries": 1})
    assert server.attempts_for(p) == 0


def test_header_name_that_is_not_unicode_is_a_type_error(od, server):
    p = uniq()
    with pytest.raises(TypeError):
        od.run_openrouter("fake/echo", p, extra_headers={"X-\ud800": "1"})
    assert server.attempts_for(p) == 0


# ------------------------------------------------------------------------ proxies
@pytest.mark.parametrize("var", ["HTTPS_PROXY", "https_proxy"])
def test_https_proxy_is_used_for_https_and_no_proxy_bypasses_it(od, monkeypatch, var):
    # nothing listens behind the proxy's CONNECT target: what matters is that the proxy
    # was asked, and that no_proxy keeps a host away from it
    with ForwardProxy() as proxy:
        monkeypatch.setenv(var, proxy.url)
        arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0, timeout=5,
                                     api_base="https://or-proxied.invalid:443/api/v1"))
        assert proxy.seen == [("CONNECT", "or-proxied.invalid:443")]
        monkeypatch.setenv("no_proxy", "or-direct.invalid")
        arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0, timeout=5,
                                     api_base="https://or-direct.invalid/api/v1"))
        assert len(proxy.seen) == 1


# ---------------------------------------------------------------------------- TLS
def test_tls_certificate_for_another_host_fails_even_from_a_trusted_ca(od, monkeypatch,
                                                                       tmp_path):
    trustme = pytest.importorskip("trustme")
    import ssl
    ca = trustme.CA()
    cert = ca.issue_cert("openrouter.example")  # not 127.0.0.1
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with FakeOpenRouter(ssl_context=ctx) as srv:
        p = uniq()
        with pytest.raises(od.APIConnectionError) as info:
            arun(od.run_openrouter_async("fake/echo", p, api_base=srv.base_url, num_retries=2,
                                         raise_on_error=True))
        assert info.value.reason == "tls" and info.value.attempts == 1
        assert "127.0.0.1" in str(info.value) or "certificate" in str(info.value).lower()
        assert srv.attempts_for(p) == 0
