"""One client under test, one measurement, in its own process; prints one JSON line.

    python client.py CLIENT throughput URL_BASE [--secs S] [--rounds R] [--warmup-secs S] [--n N]
    python client.py CLIENT trainer URL_BASE [--alone-secs S] [--window-secs S] [--rate R]
    python client.py CLIENT scale URL_BASE --n N --concurrency C

Each measurement runs in a fresh process started by suite.py, so the process time, the peak RSS
and the thread count belong to this client alone. Every reply's content is compared with the
canned content: a wrong answer is counted, never silently accepted.

Drivers, the same for every asyncio client: a fixed set of worker tasks, each awaiting one call
after another, keeps exactly C calls in flight. ``od-gather`` is openrouter_direct driven the way
DR-Tulu drives it instead: everything submitted at once with asyncio.gather, the process-wide
native cap keeping C on the wire. pycurl runs a CurlMulti loop in plain Python, no asyncio.
"""

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import (API_KEY, CALL_KWARGS, CANNED_CONTENT, CONCURRENCY, MESSAGES,  # noqa: E402
                      MODEL, SYSTEM_PROMPT, USER_PROMPT, payload)

HEADERS = {"Authorization": f"Bearer {API_KEY}", "HTTP-Referer": "http://localhost:3000",
           "X-Title": "DR-Tulu Training"}

# What each client's import costs, timed by suite.py in fresh interpreters.
IMPORTS = {
    "openrouter_direct": "import openrouter_direct",
    "aiohttp": "import aiohttp",
    "httpx": "import httpx",
    "openai": "from openai import AsyncOpenAI",
    "curl_cffi": "from curl_cffi.requests import AsyncSession",
    "litellm": "import litellm",
    "pycurl": "import pycurl",
}


# Work a library defers from its import to its first use, timed together with the import.
FIRST_USE = {
    "openrouter_direct": "openrouter_direct.configure()",   # loads the extension and libcurl
}


def cafile():
    return os.environ.get("SSL_CERT_FILE")


# ---- the clients: open() inside the running loop, call() -> content, close() ----

class OpenRouterDirect:
    library = "openrouter_direct"

    async def open(self, base, concurrency):
        import openrouter_direct
        self.od = openrouter_direct
        os.environ["OPENAI_API_BASE"] = base
        openrouter_direct.configure(max_concurrent_calls=concurrency)

    async def call(self):
        return await self.od.run_openrouter_async(MODEL, USER_PROMPT, SYSTEM_PROMPT)

    async def close(self):
        pass

    def extra(self):
        s = self.od.stats()
        return {k: s.get(k) for k in ("calls", "succeeded", "failed", "failed_by_reason",
                                      "retries", "http_status")}


class OpenRouterDirectRaw(OpenRouterDirect):
    """The raw call as LMJudgeVerifier reads it: the response object, then its content."""

    async def call(self):
        r = await self.od.run_openrouter_async_raw(MODEL, USER_PROMPT, SYSTEM_PROMPT)
        return r.choices[0].message.content


class AioHTTP:
    library = "aiohttp"

    async def open(self, base, concurrency):
        import aiohttp
        self.url = base + "/chat/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=600))

    async def call(self):
        async with self.session.post(self.url, json=payload(), headers=HEADERS) as r:
            r.raise_for_status()
            data = await r.json()
        return data["choices"][0]["message"]["content"]

    async def close(self):
        await self.session.close()


def _httpx_client(concurrency):
    import httpx
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=600)


class HTTPX:
    library = "httpx"

    async def open(self, base, concurrency):
        self.url = base + "/chat/completions"
        self.client = _httpx_client(concurrency)

    async def call(self):
        r = await self.client.post(self.url, json=payload(), headers=HEADERS)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    async def close(self):
        await self.client.aclose()


class HTTPXPerCall:
    """A new AsyncClient for every call: the first OpenRouter replacement's approach."""
    library = "httpx"

    async def open(self, base, concurrency):
        import httpx
        self.httpx = httpx
        self.url = base + "/chat/completions"

    async def call(self):
        async with self.httpx.AsyncClient(timeout=600) as client:
            r = await client.post(self.url, json=payload(), headers=HEADERS)
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

    async def close(self):
        pass


class OpenAI:
    library = "openai"

    async def open(self, base, concurrency):
        from openai import AsyncOpenAI
        self.client = AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=600,
                                  default_headers={k: v for k, v in HEADERS.items()
                                                   if k != "Authorization"})

    async def call(self):
        r = await self.client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                      **CALL_KWARGS)
        return r.choices[0].message.content

    async def close(self):
        await self.client.close()


class CurlCffi:
    library = "curl_cffi"

    async def open(self, base, concurrency):
        from curl_cffi.requests import AsyncSession
        self.url = base + "/chat/completions"
        verify = cafile() if base.startswith("https") else True
        self.session = AsyncSession(max_clients=concurrency, verify=verify, timeout=600)

    async def call(self):
        r = await self.session.post(self.url, json=payload(), headers=HEADERS)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    async def close(self):
        await self.session.close()


class LiteLLM:
    library = "litellm"

    async def open(self, base, concurrency):
        import litellm
        self.litellm = litellm
        self.base = base
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        if base.startswith("https"):
            litellm.ssl_verify = cafile()

    async def call(self):
        r = await self.litellm.acompletion(model="openrouter/" + MODEL, messages=MESSAGES,
                                           api_base=self.base, api_key=API_KEY, num_retries=0,
                                           **CALL_KWARGS)
        return r.choices[0].message.content

    async def close(self):
        pass


class NoClient:
    """No HTTP at all: each call returns the canned content at once. The busy trainer's floor:
    what offering 1,000 tasks/s from a second thread costs the trainer by itself."""
    library = None

    async def open(self, base, concurrency):
        pass

    async def call(self):
        return CANNED_CONTENT

    async def close(self):
        pass


ASYNC_CLIENTS = {
    "no-client": NoClient,
    "openrouter_direct": OpenRouterDirect,
    "od-gather": OpenRouterDirect,
    "od-raw": OpenRouterDirectRaw,
    "aiohttp": AioHTTP,
    "httpx": HTTPX,
    "httpx-per-call": HTTPXPerCall,
    "openai": OpenAI,
    "curl_cffi": CurlCffi,
    "litellm": LiteLLM,
}


class Tally:
    def __init__(self):
        self.errors = 0
        self.wrong = 0
        self.first_error = None
        self.first_wrong = None

    def check(self, content):
        if content != CANNED_CONTENT:
            self.wrong += 1
            if self.first_wrong is None:
                self.first_wrong = repr(content)[:200]

    def error(self, exc):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:300]

    def as_dict(self):
        return {"errors": self.errors, "wrong": self.wrong, "first_error": self.first_error,
                "first_wrong": self.first_wrong}


async def drive_workers(client, n, concurrency, tally):
    """n calls, `concurrency` worker tasks each awaiting one call after another."""
    todo = iter(range(n))

    async def worker():
        for _ in todo:
            try:
                content = await client.call()
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                tally.error(exc)
            else:
                tally.check(content)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


async def drive_gather(client, n, concurrency, tally):
    """n calls submitted at once; the native cap keeps `concurrency` on the wire."""
    for r in await asyncio.gather(*(client.call() for _ in range(n)), return_exceptions=True):
        if isinstance(r, BaseException):
            tally.error(r)
        else:
            tally.check(r)


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def measure_rounds(run, n_warm, warm_secs, secs, rounds, n_fixed, n_max):
    """Warm up (at least n_warm calls and warm_secs), size each round to last `secs`, run
    `rounds` rounds; `run(n)` makes n calls. Returns the per-round figures."""
    t0 = time.perf_counter()
    done = 0
    while True:
        run(n_warm)
        done += n_warm
        if time.perf_counter() - t0 >= warm_secs:
            break
    rate = done / (time.perf_counter() - t0)
    n = n_fixed or max(200, min(int(rate * secs), n_max))
    out = []
    for _ in range(rounds):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        run(n)
        w1, c1 = time.perf_counter(), time.process_time()
        out.append({"n": n, "wall_s": w1 - w0, "cpu_s": c1 - c0, "calls_per_s": n / (w1 - w0),
                    "cpu_us_per_call": (c1 - c0) / n * 1e6})
    return out


def summarize(rounds):
    """The most calls/s and the least CPU per call of any round: on a shared machine other work
    only ever slows a round down (and costs it CPU through cache and core sharing)."""
    best = max(rounds, key=lambda r: r["calls_per_s"])
    return {"calls_per_s": best["calls_per_s"],
            "cpu_us_per_call": min(r["cpu_us_per_call"] for r in rounds),
            "n": best["n"], "rounds": rounds,
            "calls_per_s_spread": [min(r["calls_per_s"] for r in rounds),
                                   max(r["calls_per_s"] for r in rounds)]}


# ---- throughput ----

def throughput_async(name, base, a):
    client = ASYNC_CLIENTS[name]()
    tally = Tally()
    drive = drive_gather if name == "od-gather" else drive_workers
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(client.open(base, CONCURRENCY))
    rounds = measure_rounds(
        lambda n: loop.run_until_complete(drive(client, n, CONCURRENCY, tally)),
        a.warmup_n, a.warmup_secs, a.secs, a.rounds, a.n, a.max_n)
    loop.run_until_complete(client.close())
    res = summarize(rounds)
    res.update(tally.as_dict())
    if hasattr(client, "extra"):
        res["extra"] = client.extra()
    return res


def throughput_pycurl(name, base, a):
    import pycurl
    tally = Tally()
    url = (base + "/chat/completions").encode()
    headers = [f"{k}: {v}" for k, v in HEADERS.items()] + ["Content-Type: application/json",
                                                           "Expect:"]
    multi = pycurl.CurlMulti()
    handles = []
    for _ in range(CONCURRENCY):
        c = pycurl.Curl()
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.HTTPHEADER, headers)
        if name == "pycurl-h1":
            c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        else:   # what openrouter_direct asks for: h2 over TLS, wait to multiplex
            c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
            c.setopt(pycurl.PIPEWAIT, 1)
        if cafile():
            c.setopt(pycurl.CAINFO, cafile())
        c.chunks = []
        c.setopt(pycurl.WRITEFUNCTION, c.chunks.append)
        handles.append(c)

    def run(n):
        started = done = 0
        idle = []

        def start(c):
            nonlocal started
            c.chunks.clear()
            c.setopt(pycurl.POSTFIELDS, json.dumps(payload()))
            multi.add_handle(c)
            started += 1

        for c in handles[:min(n, CONCURRENCY)]:
            start(c)
        while done < n:
            while True:
                ret, _ = multi.perform()
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
            added = False
            while True:
                queued, ok, failed = multi.info_read()
                for c in ok:
                    multi.remove_handle(c)
                    done += 1
                    try:
                        status = c.getinfo(pycurl.RESPONSE_CODE)
                        if status != 200:
                            raise RuntimeError(f"HTTP {status}")
                        data = json.loads(b"".join(c.chunks))
                        tally.check(data["choices"][0]["message"]["content"])
                    except Exception as exc:  # noqa: BLE001
                        tally.error(exc)
                    if started < n:
                        start(c)
                        added = True
                    else:
                        idle.append(c)
                for c, _errno, msg in failed:
                    multi.remove_handle(c)
                    done += 1
                    tally.error(RuntimeError(msg))
                    if started < n:
                        start(c)
                        added = True
                if not queued:
                    break
            if not added and done < n:
                multi.select(1.0)

    rounds = measure_rounds(run, a.warmup_n, a.warmup_secs, a.secs, a.rounds, a.n, a.max_n)
    res = summarize(rounds)
    res.update(tally.as_dict())
    versions = {2: "1.0", 3: "1.1", 4: "2", 5: "3"}
    res["extra"] = {"http_version": versions.get(
        handles[0].getinfo(pycurl.INFO_HTTP_VERSION), "?"), "libcurl": pycurl.version}
    return res


# ---- busy trainer ----

def spin(seconds):
    """The trainer: pure-Python work; returns iterations per second."""
    n = 0
    x = 0
    t0 = time.perf_counter()
    t_end = t0 + seconds
    while True:
        for i in range(1000):
            x = (x * 31 + i) % 1000003
        n += 1000
        now = time.perf_counter()
        if now >= t_end:
            return n / (now - t0)


def trainer(name, base, a):
    client = ASYNC_CLIENTS[name]()
    tally = Tally()
    ready, go = threading.Event(), threading.Event()
    box = {}

    async def offer():
        await client.open(base, CONCURRENCY)
        await drive_workers(client, a.warmup_n, CONCURRENCY, tally)   # connections open
        loop = asyncio.get_running_loop()
        native_cap = name in ("openrouter_direct", "od-gather")
        sem = None if native_cap else asyncio.Semaphore(CONCURRENCY)
        counts = {"offered": 0, "in_window": 0, "done": 0}
        ready.set()
        go.wait()                       # the loop parks here while the trainer runs alone
        t0 = box["t0"]
        t_end = t0 + a.window_secs
        period = 1.0 / a.rate

        async def one():
            try:
                if sem is None:
                    content = await client.call()
                else:
                    async with sem:
                        content = await client.call()
            except Exception as exc:  # noqa: BLE001
                tally.error(exc)
            else:
                tally.check(content)
            counts["done"] += 1
            if time.perf_counter() <= t_end:
                counts["in_window"] += 1

        tasks = []
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            due = int((now - t0) / period) + 1     # the schedule is kept even when we wake late
            while counts["offered"] < due:
                tasks.append(loop.create_task(one()))
                counts["offered"] += 1
            await asyncio.sleep(max(0.0, t0 + counts["offered"] * period - time.perf_counter()))
        box["offered"] = counts["offered"]
        box["in_window"] = counts["in_window"]
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        box["done_total"] = counts["done"]
        box["drain_s"] = time.perf_counter() - t_end
        await client.close()

    th = threading.Thread(target=lambda: asyncio.run(offer()), name="reward-loop")
    th.start()
    if not ready.wait(300):
        raise RuntimeError("warm-up did not finish")
    alone_before = spin(a.alone_secs)
    box["t0"] = time.perf_counter()
    go.set()
    loaded = spin(a.window_secs)
    th.join(300)
    alone_after = spin(a.alone_secs)      # alone again: the mean of both is the reference
    alone = (alone_before + alone_after) / 2
    res = {"trainer_alone_it_s": alone, "trainer_loaded_it_s": loaded,
           "trainer_alone_before_after": [alone_before, alone_after],
           "trainer_ratio": loaded / alone,
           "completed_per_s": box["in_window"] / a.window_secs,
           "offered_per_s": box["offered"] / a.window_secs,
           "completed_in_window": box["in_window"], "offered": box["offered"],
           "done_total": box.get("done_total"), "drain_s": box.get("drain_s"),
           "window_s": a.window_secs, "rate": a.rate}
    res.update(tally.as_dict())
    return res


# ---- scale ----

def scale(name, base, a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    client = ASYNC_CLIENTS[name]()
    tally = Tally()
    drive = drive_gather if name == "od-gather" else drive_workers

    async def main():
        await client.open(base, a.concurrency)
        w0 = time.perf_counter()
        await drive(client, a.n, a.concurrency, tally)
        wall = time.perf_counter() - w0
        threads = proc_status("Threads")
        await client.close()
        return wall, threads

    c0 = time.process_time()
    wall, threads = asyncio.run(main())
    res = {"wall_s": wall, "cpu_s": time.process_time() - c0, "n": a.n,
           "concurrency": a.concurrency, "threads_at_end": threads}
    res.update(tally.as_dict())
    if hasattr(client, "extra"):
        res["extra"] = client.extra()
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("client")
    p.add_argument("mode", choices=("throughput", "trainer", "scale"))
    p.add_argument("base")
    p.add_argument("--secs", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-secs", type=float, default=1.0)
    p.add_argument("--warmup-n", type=int, default=256)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--max-n", type=int, default=400_000)
    p.add_argument("--alone-secs", type=float, default=3.0)
    p.add_argument("--window-secs", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--concurrency", type=int, default=2048)
    a = p.parse_args()

    if a.mode == "throughput":
        if a.client.startswith("pycurl"):
            res = throughput_pycurl(a.client, a.base, a)
        else:
            res = throughput_async(a.client, a.base, a)
    elif a.mode == "trainer":
        res = trainer(a.client, a.base, a)
    else:
        res = scale(a.client, a.base, a)
    res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["threads_at_exit"] = proc_status("Threads")
    res["client"], res["mode"] = a.client, a.mode
    print(json.dumps(res), flush=True)
    sys.stdout.flush()
    # Skip interpreter teardown: some clients' atexit hooks are slow and none matter here.
    os._exit(0)


if __name__ == "__main__":
    main()
