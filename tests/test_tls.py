"""TLS: verification on by default, CA bundle from SSL_CERT_FILE / CURL_CA_BUNDLE."""

import http.client
import logging

import pytest

from helpers import arun, bounded, run_py, uniq
from openrouter_direct._server import FakeOpenRouter

LOGGER = "openrouter_direct"

trustme = pytest.importorskip("trustme", reason="trustme is not installed: TLS tests need it")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    import ssl
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    d = tmp_path_factory.mktemp("tls")
    ca_file = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other = trustme.CA()
    other_file = d / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    with FakeOpenRouter(ssl_context=ctx) as srv:
        yield {"server": srv, "ca": str(ca_file), "other_ca": str(other_file)}


def test_fake_server_speaks_tls(tls):
    import ssl
    ctx = ssl.create_default_context(cafile=tls["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", tls["server"].port, context=ctx, timeout=5)
    conn.request("GET", "/api/v1/key", headers={"Authorization": "Bearer x"})
    assert conn.getresponse().status == 200


def test_untrusted_certificate_fails_with_tls_reason(od, tls, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    base = tls["server"].base_url
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/echo", uniq(), api_base=base, num_retries=0,
                                     raise_on_error=True))
    assert info.value.reason == "tls"
    assert isinstance(info.value, od.APIConnectionError)
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=base, num_retries=0)) == ""
    msgs = [r.getMessage().lower() for r in caplog.records if r.levelno >= logging.WARNING]
    assert msgs and any("certificate" in m or "ssl" in m for m in msgs), msgs


def test_untrusted_certificate_is_not_retried(od, tls):
    p = uniq()
    arun(od.run_openrouter_async("fake/echo", p, api_base=tls["server"].base_url,
                                 num_retries=3))
    assert tls["server"].attempts_for(p) == 0  # the handshake never got to a request


@pytest.mark.parametrize("var", ["SSL_CERT_FILE", "CURL_CA_BUNDLE"])
def test_ca_bundle_env_makes_tls_succeed(od, tls, monkeypatch, var):
    monkeypatch.setenv(var, tls["ca"])
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, api_base=tls["server"].base_url,
                                        num_retries=0)) == "echo: " + p
    assert tls["server"].attempts_for(p) == 1


def test_wrong_ca_bundle_still_fails(od, tls, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", tls["other_ca"])
    assert arun(od.run_openrouter_async("fake/echo", uniq(), api_base=tls["server"].base_url,
                                        num_retries=0)) == ""


@pytest.mark.parametrize("var", ["SSL_CERT_FILE", "CURL_CA_BUNDLE"])
def test_ca_bundle_env_set_before_import(tls, var):
    code = r'''
import openrouter_direct as od
print(od.run_openrouter("fake/echo", "tls-fresh", num_retries=0))
'''
    proc = run_py(code, timeout=30, env={var: tls["ca"],
                                         "OPENAI_API_BASE": tls["server"].base_url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "echo: tls-fresh"


def test_tls_concurrent_calls_share_connections(od, tls, monkeypatch, concurrency_cap):
    import asyncio
    concurrency_cap(8)
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca"])
    srv = tls["server"]
    srv.reset()
    prompts = [uniq() for _ in range(80)]

    async def main():
        return await asyncio.gather(*(od.run_openrouter_async(
            "fake/echo", p, api_base=srv.base_url) for p in prompts))

    assert arun(main(), 30) == ["echo: " + p for p in prompts]
    assert srv.connections_opened <= 16  # connections (and TLS sessions) are reused


def test_sync_call_over_tls(od, tls, monkeypatch):
    monkeypatch.setenv("CURL_CA_BUNDLE", tls["ca"])
    p = uniq()
    assert bounded(od.run_openrouter, "fake/echo", p, api_base=tls["server"].base_url,
                   num_retries=0) == "echo: " + p


def test_https_proxy_env_tunnels_tls_through_connect(od, tls, monkeypatch):
    from helpers import ForwardProxy
    monkeypatch.setenv("SSL_CERT_FILE", tls["ca"])
    p = uniq()
    with ForwardProxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        out = arun(od.run_openrouter_async("fake/echo", p, api_base=tls["server"].base_url,
                                           num_retries=0))
    assert out == "echo: " + p
    assert proxy.seen == [("CONNECT", "127.0.0.1:%d" % tls["server"].port)]
    assert proxy.agents == [["openrouter_direct/0.1"]]  # the CONNECT says who is asking too
    assert tls["server"].attempts_for(p) == 1
