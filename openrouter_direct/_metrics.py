"""``od.metrics(prefix=...)``: what changed since the last read, as one flat dict for wandb.log.

``stats()`` is cumulative since the process started; a trainer logs per step. ``metrics()`` keeps
the previous snapshot (counters and the engine's latency histogram, both read from C) and returns
the differences, with p50/p95 latency computed over the calls that finished in the interval.
One reader per process is the intended use: every read starts the next interval. After fork, the
child's first read counts from its own start (the engine's counters restart there).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

_lock = threading.Lock()
_prev: dict[str, Any] = {}   # pid, t, stats, hist
_buckets: tuple[float, ...] = ()

_COUNTERS = ("calls", "succeeded", "failed", "cancelled", "retries", "prompt_tokens",
             "completion_tokens")


def _quantile(delta: list[int], total: int, q: float) -> float:
    want = max(1, math.ceil(q * total))
    seen = 0
    for b, n in enumerate(delta):
        seen += n
        if seen >= want:
            return _buckets[b]
    return _buckets[-1]


def metrics(native: Any, prefix: str = "openrouter/") -> dict[str, float]:
    global _buckets
    if not isinstance(prefix, str):
        raise TypeError("prefix must be a str")
    with _lock:
        if not _buckets:
            _buckets = native.latency_buckets()
        now = time.monotonic()
        st = native.stats()
        hist = native.latency_histogram()
        pid = os.getpid()
        prev = _prev if _prev.get("pid") == pid else {}
        pst = prev.get("stats") or {}
        phist = prev.get("hist") or (0,) * len(hist)
        _prev.update(pid=pid, t=now, stats=st, hist=hist)
        t0 = prev.get("t")

    out: dict[str, float] = {}
    for name in _COUNTERS:
        out[name] = st[name] - pst.get(name, 0)
    out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost"] = st["cost"] - pst.get("cost", 0.0)
    by, pby = st["failed_by_reason"], pst.get("failed_by_reason", {})
    for reason in sorted(set(by) | set(pby)):
        out["failed/" + reason] = by.get(reason, 0) - pby.get(reason, 0)
    status, pstatus = st["http_status"], pst.get("http_status", {})
    # Rate-limit answers: the governor counts every shape (429, 503 with Retry-After, the
    # in-flight-budget 402); with it off (OPENROUTER_ADAPTIVE=0), the 429s are what there is.
    out["rate_limited"] = max(st.get("rate_limited", 0) - pst.get("rate_limited", 0),
                              status.get(429, 0) - pstatus.get(429, 0))
    hedge, phedge = st["hedge"], pst.get("hedge", {})
    out["hedges"] = hedge["sent"] - phedge.get("sent", 0)
    out["hedges_won"] = hedge["won"] - phedge.get("won", 0)
    out["in_flight"] = st["in_flight"]
    out["queued"] = st["queued"]
    if t0 is not None:
        out["interval_s"] = now - t0
    delta = [c - p for c, p in zip(hist, phist, strict=False)]
    total = sum(delta)
    if total > 0:
        out["latency_p50_ms"] = _quantile(delta, total, 0.50)
        out["latency_p95_ms"] = _quantile(delta, total, 0.95)
    return {prefix + k: v for k, v in out.items()}
