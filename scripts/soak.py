"""Soak: a million calls against a local server, watching memory, descriptors and the counters.

    python scripts/soak.py [--calls 1000000] [--batch 1000] [--samples 50] [--out build/soak]

The server is a private nginx (started here on 127.0.0.1 with a generated config; nginx-light
is enough) whose chat-completions route returns a canned completion and whose /err/ route
returns 503 with an error object; --server fake uses the package's FakeOpenRouter instead
(slower, no nginx needed). Calls go out as DR-Tulu's reward step makes them: one
``asyncio.run(gather(...))`` of --batch calls after another, each loop short-lived, with one
call in 100 sent to /err/ (num_retries=0, so it fails: the failure path is soaked too) and one
in 500 cancelled while queued or on the wire.

Every calls/--samples calls it records elapsed time, RSS, open descriptors, native threads and
stats() into a CSV; at the end it writes a markdown summary and checks, after the first 10%
(warm-up: connection pool, caches, the allocator's arenas):

  * RSS grows by at most --max-rss-growth-mb (default 5) over the rest of the run;
  * open descriptors and native threads stay flat (max - min <= 2 descriptors, threads equal);
  * stats() balances: calls == succeeded + failed + cancelled == the calls made here, and
    agrees with what the callers saw (a task cancelled after its reply arrived counts as
    succeeded or failed there); nothing in flight or queued at the end.

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

COMPLETION = {
    "id": "gen-soak", "provider": "Soak", "model": "openai/gpt-4.1", "object": "chat.completion",
    "created": 1732736400,
    "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "stop",
                 "message": {"role": "assistant", "content": '{"score": 2}', "refusal": None}}],
    "usage": {"prompt_tokens": 850, "completion_tokens": 6, "total_tokens": 856, "cost": 0.0017},
}
ERROR = {"error": {"code": 503, "message": "soak: no provider available"}}

NGINX_CONF = """
worker_processes 2;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /api/v1/chat/completions {{ return 200 '{ok}'; }}
        location = /err/api/v1/chat/completions {{ return 503 '{err}'; }}
    }}
}}
"""


def nginx_quote(text):
    """For a single-quoted nginx string, where backslash escapes are processed."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nginx:
    def __init__(self, exe):
        self.exe = exe
        self.tmp = tempfile.mkdtemp(prefix="soak-nginx-")
        self.port = free_port()
        self.proc = None

    def __enter__(self):
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=self.tmp, port=self.port,
                                      ok=nginx_quote(json.dumps(COMPLETION)),
                                      err=nginx_quote(json.dumps(ERROR))))
        self.proc = subprocess.Popen([self.exe, "-p", self.tmp, "-c", conf, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("nginx did not start: " + self.proc.stderr.read().decode())
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen on port %d" % self.port)

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/api/v1" % self.port

    @property
    def err_url(self):
        return "http://127.0.0.1:%d/err/api/v1" % self.port

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Fake:
    """FakeOpenRouter in this process: /err/ is not a route there, fake/status-503 is."""

    def __init__(self):
        from openrouter_direct._server import FakeOpenRouter
        self.srv = FakeOpenRouter()

    def __enter__(self):
        self.srv.start()
        return self

    @property
    def base_url(self):
        return self.srv.base_url

    err_url = base_url

    def __exit__(self, *exc):
        self.srv.stop()


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def thread_count():
    return len(os.listdir("/proc/self/task"))


async def batch(od, server, start, n, fake):
    ok_model = "openai/gpt-4.1" if not fake else "fake/echo"
    err_model = "openai/gpt-4.1" if not fake else "fake/status-503"
    calls, cancel_at = [], []
    for i in range(start, start + n):
        if i % 100 == 99:
            calls.append(od.run_openrouter_async(err_model, "soak %d" % i, api_base=server.err_url,
                                                 num_retries=0))
        else:
            calls.append(od.run_openrouter_async(ok_model, "soak %d" % i,
                                                 api_base=server.base_url))
        if i % 500 == 250:
            cancel_at.append(len(calls) - 1)
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0)
    for k in cancel_at:
        tasks[k].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for r in results if isinstance(r, str) and r)
    failed = sum(1 for r in results if r == "")
    cancelled = sum(1 for r in results if isinstance(r, asyncio.CancelledError))
    return ok, failed, cancelled


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=50, help="rows in the CSV")
    ap.add_argument("--cap", type=int, default=64, help="max_concurrent_calls")
    ap.add_argument("--server", choices=("nginx", "fake"), default="nginx")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "soak"))
    ap.add_argument("--max-rss-growth-mb", type=float, default=5.0)
    args = ap.parse_args(argv)

    os.environ.setdefault("OPENAI_API_KEY", "sk-or-soak")
    import logging
    logging.getLogger("openrouter_direct").setLevel(logging.CRITICAL)  # 1% fail on purpose
    import openrouter_direct as od
    od.configure(max_concurrent_calls=args.cap)
    os.makedirs(args.out, exist_ok=True)

    server = Nginx(args.nginx) if args.server == "nginx" else Fake()
    every = max(args.batch, args.calls // max(args.samples, 1) // args.batch * args.batch)
    rows = []
    done = ok = failed = cancelled = 0
    with server:
        t0 = time.monotonic()
        cpu0 = time.process_time()

        def sample():
            s = od.stats()
            rows.append({
                "calls": done, "seconds": round(time.monotonic() - t0, 2),
                "rss_mb": round(rss_mb(), 2), "fds": fd_count(), "threads": thread_count(),
                "stats_calls": s["calls"], "succeeded": s["succeeded"], "failed": s["failed"],
                "cancelled": s["cancelled"], "in_flight": s["in_flight"], "queued": s["queued"],
            })

        sample()
        while done < args.calls:
            n = min(args.batch, args.calls - done)
            o, f, c = asyncio.run(batch(od, server, done, n, args.server == "fake"))
            ok, failed, cancelled = ok + o, failed + f, cancelled + c
            done += n
            if done % every == 0 or done == args.calls:
                sample()
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        deadline = time.monotonic() + 5
        while (od.stats()["in_flight"] or od.stats()["queued"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        final = od.stats()

    csv_path = os.path.join(args.out, "soak.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    warm = [r for r in rows if r["calls"] >= args.calls // 10]
    base = warm[0]
    checks = []
    growth = max(r["rss_mb"] for r in warm) - base["rss_mb"]
    checks.append(("RSS growth after warm-up %.2f MB <= %.1f MB" % (growth, args.max_rss_growth_mb),
                   growth <= args.max_rss_growth_mb))
    fds = [r["fds"] for r in warm]
    checks.append(("descriptors after warm-up %d..%d (flat: spread <= 2)" % (min(fds), max(fds)),
                   max(fds) - min(fds) <= 2))
    threads = {r["threads"] for r in warm}
    checks.append(("native threads after warm-up %s (constant)" % sorted(threads),
                   len(threads) == 1))
    balance = final["succeeded"] + final["failed"] + final["cancelled"]
    checks.append(("stats: calls %d = succeeded %d + failed %d + cancelled %d"
                   % (final["calls"], final["succeeded"], final["failed"], final["cancelled"]),
                   final["calls"] == balance == args.calls))
    # A task cancelled after its reply had arrived raises CancelledError in the caller but
    # counts as succeeded (or failed) in stats(): the engine had finished it.
    late = cancelled - final["cancelled"]
    checks.append(("stats agree with the callers: %d ok, %d failed, %d cancelled (%d of them "
                   "after the reply)" % (ok, failed, cancelled, late),
                   late >= 0 and final["succeeded"] >= ok and final["failed"] >= failed and
                   final["succeeded"] - ok + final["failed"] - failed == late))
    checks.append(("nothing in flight or queued at the end (%d, %d)"
                   % (final["in_flight"], final["queued"]),
                   final["in_flight"] == 0 and final["queued"] == 0))

    lines = ["# Soak run", "",
             "`python scripts/soak.py --calls %d --batch %d --cap %d --server %s`"
             % (args.calls, args.batch, args.cap, args.server), "",
             "%d calls in %.1f s (%.0f calls/s, %.1f us CPU per call in this process); "
             "%s, Python %s." % (args.calls, wall, args.calls / wall, cpu / args.calls * 1e6,
                                 time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                 sys.version.split()[0]), "",
             "| check | result |", "|---|---|"]
    lines += ["| %s | %s |" % (text, "ok" if good else "**FAILED**") for text, good in checks]
    lines += ["", "| calls | s | RSS MB | fds | threads | succeeded | failed | cancelled |",
              "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    lines += ["| {calls:,} | {seconds} | {rss_mb} | {fds} | {threads} | {succeeded:,} | {failed:,} "
              "| {cancelled:,} |".format(**r) for r in rows]
    md_path = os.path.join(args.out, "soak.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:len(checks) + 7]))
    print("samples: %s, summary: %s" % (csv_path, md_path))
    return 0 if all(good for _, good in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
