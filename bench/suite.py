"""The benchmark suite: servers up, every client measured in its own process, report written.

    python suite.py [--smoke] [--out DIR] [--only CLIENT,...]

Run through `bash bench/run`, which sets up bench/.venv first. Steps:
  1. a throw-away CA and server certificate (openssl CLI); nginx rendered from nginx.conf.in into
     a temporary directory and started on two free ports: plain HTTP/1.1 and TLS + HTTP/2;
     a check that both answer the canned completion and read the whole 4.2 KB body;
  2. wrk on both (the ceiling: C, no Python, HTTP/1.1);
  3. import time of each client library, in fresh interpreters;
  4. throughput (calls/s, CPU µs per call, peak RSS) of each client, plain and TLS;
  5. the busy trainer (1,000 calls/s offered while the main thread runs Python);
  6. the scale test against slow_server.py (N calls that each take D s, C in flight);
  7. results JSON, docs/BENCHMARKS.md, docs/bench.png, and the README's benchmark section.
With --smoke every step runs with tiny counts, the report goes to bench/out/smoke/, and the exit
status is non-zero when any client failed, crashed or returned a wrong answer.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from workload import API_KEY, CANNED_CONTENT, CONCURRENCY, body_bytes, canned_reply  # noqa: E402
from client import FIRST_USE, IMPORTS  # noqa: E402
import report  # noqa: E402

PY = sys.executable
OUT = os.path.join(HERE, "out")

# (row name, library it needs, label in the report)
THROUGHPUT = [
    ("openrouter_direct", "openrouter_direct"),
    ("od-gather", "openrouter_direct"),
    ("od-raw", "openrouter_direct"),
    ("pycurl", "pycurl"),
    ("pycurl-h1", "pycurl"),
    ("aiohttp", "aiohttp"),
    ("httpx", "httpx"),
    ("httpx-per-call", "httpx"),
    ("openai", "openai"),
    ("curl_cffi", "curl_cffi"),
    ("litellm", "litellm"),
]
TRAINER = ["no-client", "openrouter_direct", "aiohttp", "httpx", "httpx-per-call", "openai", "curl_cffi",
           "litellm"]
SCALE = ["openrouter_direct", "od-gather", "aiohttp"]


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# ---- servers ----

def make_certs(d):
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it."""
    ca_key, ca, key, csr, crt = (os.path.join(d, n) for n in
                                 ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = os.path.join(d, "server.ext")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench throw-away CA",
       "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
       "-out", crt, "-days", "2", "-extfile", ext)
    return ca, crt, key


def nginx_quote(text):
    """Text for a single-quoted nginx string: backslashes and quotes escaped, no variables."""
    if "$" in text:
        raise ValueError("nginx would expand $ in the canned reply")
    return text.replace("\\", "\\\\").replace("'", "\\'")


class Nginx:
    def __init__(self, d, cert, key):
        self.dir = d
        self.plain_port, self.tls_port = free_port(), free_port()
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read()
        for name, value in (("DIR", d), ("PLAIN_PORT", str(self.plain_port)),
                            ("TLS_PORT", str(self.tls_port)), ("CERT", cert), ("KEY", key),
                            ("BODY", nginx_quote(canned_reply()))):
            conf = conf.replace(f"@{name}@", value)
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", self.conf, "-p", d, "-e",
                                      os.path.join(d, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.plain_port)
            wait_port(self.tls_port)
        except RuntimeError:
            self.stop()
            raise RuntimeError("nginx did not start: " + self.errors())
        self.plain = f"http://127.0.0.1:{self.plain_port}/api/v1"
        self.tls = f"https://127.0.0.1:{self.tls_port}/api/v1"

    def conn_log_size(self):
        try:
            return os.path.getsize(os.path.join(self.dir, "conn.log"))
        except OSError:
            return 0

    def connections_since(self, offset):
        """(new offset, connections opened since offset, their protocols with counts)."""
        path = os.path.join(self.dir, "conn.log")
        try:
            with open(path) as f:
                f.seek(offset)
                text = f.read()
                end = f.tell()
        except OSError:
            return offset, 0, {}
        protocols = {}
        lines = text.splitlines()
        for line in lines:
            proto = line.split()[1]
            protocols[proto] = protocols.get(proto, 0) + 1
        return end, len(lines), protocols

    def errors(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)     # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def verify_nginx(ng, ca, tmp):
    """Both servers answer the canned completion and consume the whole body: two requests with
    the 4.2 KB body on one connection are both answered. TLS speaks h2."""
    body = os.path.join(tmp, "body.json")
    size = len(body_bytes())
    with open(body, "wb") as f:
        f.write(body_bytes())
    for base, extra in ((ng.plain, ["--http1.1"]), (ng.tls, ["--http2", "--cacert", ca])):
        url = base.replace("/api/v1", "/verify/api/v1") + "/chat/completions"
        out = sh("curl", "-sS", "--noproxy", "*", *extra, "-H", "Content-Type: application/json",
                 "-H", "Expect:", "--data-binary", "@" + body, "-w", "\\n", url, url)
        for reply in out.split("\n")[:2]:
            content = json.loads(reply)["choices"][0]["message"]["content"]
            if content != CANNED_CONTENT:
                raise RuntimeError(f"nginx answered {content!r} on {url}")
    time.sleep(0.2)
    with open(os.path.join(ng.dir, "verify.log")) as f:
        rows = [line.split() for line in f.read().splitlines() if line]
    want = [("1", "HTTP/1.1"), ("2", "HTTP/1.1"), ("1", "HTTP/2.0"), ("2", "HTTP/2.0")]
    got = [(r[1], r[2]) for r in rows]
    if (got != want or any(r[3] != "200" or r[4] != str(size) for r in rows)
            or rows[0][0] != rows[1][0] or rows[2][0] != rows[3][0]):
        raise RuntimeError(f"nginx did not answer two {size} B requests per connection: {rows}")
    log(f"nginx ok: plain :{ng.plain_port}, TLS+h2 :{ng.tls_port}; a {size} B body is consumed "
        f"and the connection reused")


class SlowServer:
    def __init__(self, delay, env):
        self.proc = subprocess.Popen([PY, os.path.join(HERE, "slow_server.py"), str(delay)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError("slow server did not start: " + self.proc.stderr.read())
        self.port = int(line.split()[1])
        self.loop = line.split()[2]
        self.base = f"http://127.0.0.1:{self.port}/api/v1"

    def counters(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"}"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
            log("slow server:", err.strip())
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


# ---- measurements ----

@contextlib.contextmanager
def one_client_nginx(prefix):
    """For the tools that study one client (profile.py, instructions.py): a throw-away CA and the
    bench nginx. Yields (env for the client's process, the Nginx); stops it and removes its files
    on exit."""
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix)
    ng = None
    try:
        ca, cert, key = make_certs(tmp)
        env = child_env(ca)
        ng = Nginx(tmp, cert, key)
        yield env, ng
    finally:
        if ng:
            ng.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def child_env(ca):
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and k not in ("PYTHONDONTWRITEBYTECODE", "LOGLEVEL", "OPENROUTER_MAX_CONCURRENT_CALLS",
                         "OPENROUTER_RAISE_ON_ERROR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
                         "PYTHONPATH")}
    env.update({
        "SSL_CERT_FILE": ca,
        "OPENAI_API_KEY": API_KEY,
        # Byte-code caches go here, not beside the sources (the package's tree stays untouched).
        "PYTHONPYCACHEPREFIX": os.path.join(OUT, "pycache"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # no fetch from the network at import
        "LITELLM_LOG": "ERROR",
    })
    return env


class Sampler(threading.Thread):
    """Polls a child's /proc status: the most threads and the largest RSS seen."""

    def __init__(self, pid, every=0.005):
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.max_threads = 0
        self.max_rss_kb = 0
        self.stop = threading.Event()

    def run(self):
        path = f"/proc/{self.pid}/status"
        while not self.stop.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("Threads:"):
                            self.max_threads = max(self.max_threads, int(line.split()[1]))
                        elif line.startswith("VmRSS:"):
                            self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            self.stop.wait(self.every)


def median_trainer_run(runs):
    """The run with the median trainer ratio, carrying every run's ratio and completed/s; a
    crash in any run is reported as the result (a client must not crash in any pass)."""
    crashed = [r for r in runs if "crashed" in r]
    if crashed:
        return crashed[0]
    ordered = sorted(runs, key=lambda r: r["trainer_ratio"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["passes"] = [{"trainer_ratio": r["trainer_ratio"], "completed_per_s": r["completed_per_s"]}
                      for r in runs]
    best["errors"] = sum(r["errors"] for r in runs)
    best["wrong"] = sum(r["wrong"] for r in runs)
    return best


def run_client(args, env, timeout, logname, sample_every=0.005):
    """One client process; returns its JSON result (with sampled threads) or an error dict.
    The sampler polls the child's /proc status every `sample_every` s; the trainer test samples
    rarely, since the sampler itself is a process waking on this 2-core machine."""
    cmd = [PY, os.path.join(HERE, "client.py"), *map(str, args)]
    build = extension_stamp(env) if args[0] in ("openrouter_direct", "od-gather") else None
    errpath = os.path.join(OUT, "logs", logname + ".stderr")
    with open(errpath, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        sampler = Sampler(proc.pid, sample_every)
        sampler.start()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            sampler.stop.set()
            return {"crashed": f"timed out after {timeout} s", "stderr": errpath}
        finally:
            sampler.stop.set()
            sampler.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        with open(errpath) as f:
            tail = f.read()[-1500:]
        return {"crashed": f"exit {proc.returncode}: {tail}", "stderr": errpath}
    res = json.loads(lines[-1])
    if build:
        res["extension_build"] = build
        BUILDS.add(build)
    res["max_threads"] = sampler.max_threads
    res["sampled_max_rss_kb"] = sampler.max_rss_kb
    return res


def installed(env):
    """Which client libraries import in the bench venv, and their versions."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError:\n"
            "        out[name] = None\n"
            "print(json.dumps(out))\n")
    names = sorted(IMPORTS)
    versions = json.loads(sh(PY, "-c", code, *names, env=env))
    if versions.get("openrouter_direct") is None:   # on sys.path through a .pth, not installed
        try:
            sh(PY, "-c", "import openrouter_direct", env=env)
            versions["openrouter_direct"] = sh(
                PY, "-c", "import openrouter_direct as o; print(o.__version__)", env=env).strip()
        except subprocess.CalledProcessError:
            pass
    return versions


def import_time(lib, env, runs):
    """Median over fresh interpreters of perf_counter around the import, in ms; and the same
    with asyncio, logging, ssl and json already imported (a trainer process has them)."""
    stmt = IMPORTS[lib]
    fresh = ("import time; t = time.perf_counter(); " + stmt +
             "; print((time.perf_counter() - t) * 1e3)")
    preloaded = ("import asyncio, logging, ssl, json, concurrent.futures, time; "
                 "t = time.perf_counter(); " + stmt + "; print((time.perf_counter() - t) * 1e3)")
    sh(PY, "-c", stmt, env=env)      # fills the byte-code cache
    a = [float(sh(PY, "-c", fresh, env=env).split()[-1]) for _ in range(runs)]
    b = [float(sh(PY, "-c", preloaded, env=env).split()[-1]) for _ in range(runs)]
    res = {"fresh_ms": statistics.median(a), "preloaded_ms": statistics.median(b),
           "fresh_all_ms": a}
    if lib in FIRST_USE:
        first = ("import time; t = time.perf_counter(); " + stmt + "; " + FIRST_USE[lib] +
                 "; print((time.perf_counter() - t) * 1e3)")
        sh(PY, "-c", stmt + "; " + FIRST_USE[lib], env=env)
        c = [float(sh(PY, "-c", first, env=env).split()[-1]) for _ in range(runs)]
        res["with_first_use_ms"] = statistics.median(c)
        res["first_use"] = FIRST_USE[lib]
    return res


def run_wrk(url, secs):
    lua = os.path.join(OUT, "wrk_post.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\n'
                f'wrk.body = {json.dumps(body_bytes().decode())}\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n')
    out = sh("wrk", "-t1", f"-c{CONCURRENCY}", f"-d{secs}s", "-s", lua, url + "/chat/completions")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return {"calls_per_s": float(m.group(1)), "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errs.group(0) if errs else None}


def build_libcurl_floor(d):
    """bench/libcurl_floor.c built with gcc against the system libcurl; None if that fails."""
    exe = os.path.join(d, "libcurl_floor")
    try:
        flags = sh("pkg-config", "--cflags", "--libs", "libcurl").split()
        sh("gcc", "-O2", "-Wall", "-Wextra", "-o", exe, os.path.join(HERE, "libcurl_floor.c"), *flags)
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"libcurl from C: not built ({e})")
        return None
    return exe


def run_libcurl_floor(exe, base, body, ca, n):
    try:
        return json.loads(sh(exe, base + "/chat/completions", str(n), body,
                             ca if base.startswith("https") else "-"))
    except (subprocess.CalledProcessError, ValueError) as e:
        return {"crashed": str(e)[:300]}


_EXTENSION = []
BUILDS = set()      # extension builds the openrouter_direct measurements ran on


def extension_stamp(env):
    """mtime of the extension the clients load, to tell which build each measurement used (other
    work may rebuild it in place during a run)."""
    try:
        if not _EXTENSION:
            _EXTENSION.append(sh(PY, "-c", "import importlib.util as u; print(u.find_spec("
                                 "'openrouter_direct._native').origin)", env=env).strip())
        return time.strftime("%H:%M:%S", time.localtime(os.path.getmtime(_EXTENSION[0])))
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_info(env):
    def first(cmd):
        try:
            return sh(*cmd).strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    libcurl = sh(PY, "-c", "import openrouter_direct._native as n; print(n.curl_version)",
                 env=env).strip()
    try:
        commit = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").strip()
        if sh("git", "-C", ROOT, "status", "--porcelain", "--", "csrc", "openrouter_direct",
              "setup.py").strip():
            commit += " + uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "libcurl": libcurl, "nginx": nginx_v.replace("nginx version: nginx/", ""),
        "wrk": first(["sh", "-c", "wrk --version 2>&1 || true"]).split(" [")[0],
        "openssl": " ".join(first(["openssl", "version"]).split()[:2]),
        "load_before": os.getloadavg(),
    }


INTERFERENCE = """
import os, subprocess, sys, time
from client import spin
secs = float(sys.argv[1])
a = spin(secs)
p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
time.sleep(0.2)
b = spin(secs)
p.kill()
p.wait()
c = spin(secs)
print(b / ((a + c) / 2))
"""


def cpu_interference(env, secs):
    """The trainer loop's speed while another process spins (the OS spreads the two over the
    cores): 100% on cores that do not slow each other; less on SMT siblings or a busy host."""
    out = sh(PY, "-c", INTERFERENCE, str(secs), env=dict(env, PYTHONPATH=HERE))
    return float(out.split()[-1])


def throughput_run(ng, env, name, base, tp, proto):
    offset = ng.conn_log_size()
    # gather-all holds every call of a round at once: rounds of a training step's size
    cap = ["--max-n", "20000"] if name == "od-gather" else []
    res = run_client([name, "throughput", base, *tp, *cap], env, 600,
                     f"throughput-{name}-{proto}")
    time.sleep(0.05)
    _, res["connections"], res["protocols"] = ng.connections_since(offset)
    if "crashed" in res:
        log(f"{name} {proto}: CRASHED {res['crashed'][:300]}")
    else:
        log(f"{name} {proto}: {res['calls_per_s']:,.0f} calls/s, "
            f"{res['cpu_us_per_call']:.0f} µs CPU/call, RSS {res['maxrss_kb'] / 1024:.0f} MB, "
            f"errors {res['errors']}, wrong {res['wrong']}, {res['connections']} connections "
            f"{res['protocols']}")
    return res


def best_pass(old, new):
    """The pass with more calls/s, with the least CPU per call of any pass; a crash or a wrong
    answer in any pass sticks."""
    if old is None:
        new["passes"] = [_pass_summary(new)]
        return new
    passes = old["passes"] + [_pass_summary(new)]
    if failed(new):
        keep = new
    elif failed(old) or old["calls_per_s"] >= new["calls_per_s"]:
        keep = old
    else:
        keep = new
    keep["passes"] = passes
    if not failed(keep):
        keep["cpu_us_per_call"] = min(p["cpu_us_per_call"] for p in passes if "crashed" not in p)
    return keep


def _pass_summary(res):
    if "crashed" in res:
        return {"crashed": res["crashed"][:200]}
    # libcurl_floor.c reports no RSS, answers or connections: what a result has is kept
    return {k: res[k] for k in ("calls_per_s", "cpu_us_per_call", "maxrss_kb", "errors",
                                "wrong", "connections") if k in res}


def failed(res):
    return (res is None or "crashed" in res or res.get("errors", 0) > 0
            or res.get("wrong", 0) > 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="tiny counts; exit non-zero on failure")
    p.add_argument("--out", help="where the report goes (default docs/, bench/out/smoke/ "
                                 "with --smoke)")
    p.add_argument("--only", help="comma-separated clients to run (others are skipped)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: "
                   "wrk,import,throughput,trainer,scale")
    a = p.parse_args()
    smoke = a.smoke
    out_dir = a.out or (os.path.join(OUT, "smoke") if smoke else os.path.join(ROOT, "docs"))
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    skip = set(filter(None, a.skip.split(",")))

    if smoke:
        tp = ["--secs", "0", "--rounds", "1", "--warmup-secs", "0", "--warmup-n", "20",
              "--n", "200"]
        tr = ["--alone-secs", "0.5", "--window-secs", "1", "--warmup-n", "20"]
        sc = {"n": 200, "delay": 0.2, "concurrency": 2048}
        wrk_secs, import_runs, passes, trainer_passes = 1, 1, 1, 1
        floor_n, floor_runs = 500, 1
    else:
        tp = ["--secs", "3", "--rounds", "3", "--warmup-secs", "1"]
        tr = ["--alone-secs", "3", "--window-secs", "5"]
        sc = {"n": 10_000, "delay": 1.0, "concurrency": 2048}
        wrk_secs, import_runs, passes, trainer_passes = 5, 7, 2, 3
        floor_n, floor_runs = 100_000, 3

    tmp = tempfile.mkdtemp(prefix="od-bench-")
    results = {"smoke": smoke, "scale_params": sc, "concurrency": CONCURRENCY,
               "body_bytes": len(body_bytes()), "throughput": {}, "trainer": {}, "scale": {},
               "imports": {}, "wrk": {}, "libcurl_c": {}, "skipped": {}}
    ng = slow = None
    try:
        ca, cert, key = make_certs(tmp)
        env = child_env(ca)
        results["machine"] = machine_info(env)
        results["machine"]["interference"] = cpu_interference(env, 0.5 if smoke else 3)
        log(f"a busy process on the other core leaves the trainer loop "
            f"{results['machine']['interference']:.0%} of its speed")
        versions = installed(env)
        results["versions"] = versions
        for lib, v in versions.items():
            if v is None:
                results["skipped"][lib] = "not installed in bench/.venv"
                log(f"{lib}: not installed, skipped")

        def wanted(name, lib):
            return versions.get(lib) is not None and (only is None or name in only
                                                      or lib in only)

        ng = Nginx(tmp, cert, key)
        verify_nginx(ng, ca, tmp)
        bases = {"plain": ng.plain, "tls": ng.tls}

        if "wrk" not in skip and shutil.which("wrk"):
            for proto, base in bases.items():
                results["wrk"][proto] = run_wrk(base, wrk_secs)
                log(f"wrk {proto}: {results['wrk'][proto]['calls_per_s']:,.0f} calls/s")

        if "wrk" not in skip:
            floor = build_libcurl_floor(tmp)
            if floor:
                body = os.path.join(tmp, "body.json")
                with open(body, "wb") as f:
                    f.write(body_bytes())
                for proto, base in bases.items():
                    res = None
                    for _ in range(floor_runs):
                        res = best_pass(res, run_libcurl_floor(floor, base, body, ca, floor_n))
                    results["libcurl_c"][proto] = res
                    log(f"libcurl from C {proto}: {res.get('calls_per_s', 0):,.0f} calls/s, "
                        f"{res.get('cpu_us_per_call', 0):.1f} µs CPU/call, errors "
                        f"{res.get('errors')}")

        if "import" not in skip:
            for lib in IMPORTS:
                if wanted(lib, lib):
                    results["imports"][lib] = import_time(lib, env, import_runs)
                    imp = results["imports"][lib]
                    log(f"import {lib}: {imp['fresh_ms']:.1f} ms (with asyncio etc. loaded: "
                        f"{imp['preloaded_ms']:.1f}" + (f"; with {imp['first_use']}: "
                                                       f"{imp['with_first_use_ms']:.1f}"
                                                       if "first_use" in imp else "") + ")")

        if "throughput" not in skip:
            # Every client `passes` times, the passes one after the other, the best pass kept:
            # a burst of other work on the machine then rarely spoils both passes of one client.
            for pass_no in range(passes):
                for name, lib in THROUGHPUT:
                    if not wanted(name, lib):
                        continue
                    for proto, base in bases.items():
                        if name == "pycurl-h1" and proto == "plain":
                            continue     # plain HTTP is HTTP/1.1 for every client anyway
                        res = throughput_run(ng, env, name, base, tp, proto)
                        slot = results["throughput"].setdefault(name, {})
                        slot[proto] = best_pass(slot.get(proto), res)

        if "trainer" not in skip:
            # A trainer figure is a ratio of two short timings of one thread, and a neighbour on
            # the host moves either by ±5%: every client runs `trainer_passes` times, the passes
            # interleaved across clients, and the run with the median ratio is the one reported.
            names = []
            for name in TRAINER:
                lib = dict(THROUGHPUT).get(name)
                if lib is not None and not wanted(name, lib):
                    continue
                if lib is None and only is not None and name not in only:
                    continue
                names.append(name)
            runs = {name: [] for name in names}
            for pass_no in range(trainer_passes):
                for name in names:
                    res = run_client([name, "trainer", ng.plain, *tr], env, 600,
                                     f"trainer-{name}", sample_every=0.05)
                    runs[name].append(res)
                    if "crashed" in res:
                        log(f"trainer {name}: CRASHED {res['crashed'][:300]}")
                    else:
                        log(f"trainer {name} (pass {pass_no + 1}/{trainer_passes}): "
                            f"{res['completed_per_s']:,.0f} calls/s completed of "
                            f"{res['offered_per_s']:,.0f} offered, trainer at "
                            f"{res['trainer_ratio']:.0%}, errors {res['errors']}")
            for name in names:
                results["trainer"][name] = median_trainer_run(runs[name])

        if "scale" not in skip:
            slow = SlowServer(sc["delay"], env)
            results["scale_server_loop"] = slow.loop
            for name in SCALE:
                lib = dict(THROUGHPUT)[name]
                if not wanted(name, lib):
                    continue
                before = slow.counters()
                res = run_client([name, "scale", slow.base, "--n", sc["n"], "--concurrency",
                                  sc["concurrency"]], env, 600, f"scale-{name}")
                after = slow.counters()
                # the stats request itself is one connection
                res["connections"] = after["connections"] - before["connections"] - 1
                results["scale"][name] = res
                if "crashed" in res:
                    log(f"scale {name}: CRASHED {res['crashed'][:300]}")
                else:
                    log(f"scale {name}: {res['wall_s']:.2f} s wall, {res['max_threads']} threads, "
                        f"RSS {res['maxrss_kb'] / 1024:.0f} MB, errors {res['errors']}, "
                        f"{res['connections']} connections")
    finally:
        if slow:
            slow.stop()
        if ng:
            ng.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results["machine"]["load_after"] = os.getloadavg()
    results["machine"]["extension_builds"] = sorted(BUILDS)
    if len(BUILDS) > 1:
        results["machine"]["rebuilt_during_run"] = True
        log("WARNING: openrouter_direct's extension was rebuilt during the run; its figures "
            "mix builds " + ", ".join(sorted(BUILDS)))
    partial = a.out is not None or only is not None or bool(skip)
    raw = os.path.join(OUT, "smoke-results.json" if smoke else
                       "results-partial.json" if partial else "results.json")
    with open(raw, "w") as f:
        json.dump(results, f, indent=1)
    report.write(results, out_dir, not smoke and not partial)
    log(f"report: {out_dir}/BENCHMARKS.md, {out_dir}/bench.png; raw results: {raw}")

    bad = [f"throughput {n} {p}" for n, d in results["throughput"].items()
           for p, r in d.items() if failed(r)]
    bad += [f"trainer {n}" for n, r in results["trainer"].items() if failed(r)]
    bad += [f"scale {n}" for n, r in results["scale"].items() if failed(r)]
    if bad:
        log("FAILED: " + ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
