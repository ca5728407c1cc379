"""The actor of the Ray tests (imported by Ray's worker processes, so a module of its own).

Shaped like open-instruct's vLLM actor: a long-lived asyncio loop on a dedicated thread, which
also runs a busy coroutine (standing in for generation), and rewards awaited on that loop with
LMJudgeVerifier's raw call. Ray calls the actor's plain methods on its own thread; they hand the
work to the loop with run_coroutine_threadsafe.
"""

import asyncio
import os
import threading
import time


class JudgeActor:
    def __init__(self, env, spin_us=200):
        os.environ.update(env)
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                     "all_proxy"):
            os.environ.pop(name, None)
        self.spin_s = spin_us / 1e6
        self.ticks = 0
        self.busy_cpu = 0.0          # loop-thread CPU spent inside the busy coroutine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="actor-loop",
                                       daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._busy(), self.loop)

    async def _busy(self):
        while True:
            t0 = time.thread_time()
            end = time.perf_counter() + self.spin_s
            while time.perf_counter() < end:
                pass
            self.busy_cpu += time.thread_time() - t0
            self.ticks += 1
            await asyncio.sleep(0)

    async def _judge(self, prompts, model, kwargs, text=False):
        import openrouter_direct as od
        loop_thread = threading.get_ident()

        async def one_text(p):   # the text call, for comparison (usage not returned)
            return (await od.run_openrouter_async(model, p, **kwargs), 0, 0)

        async def one(p):
            r = await od.run_openrouter_async_raw(
                model_name=model, messages=[{"role": "user", "content": p}], **kwargs)
            assert threading.get_ident() == loop_thread
            return (r.choices[0].message.content, r.usage.prompt_tokens,
                    r.usage.completion_tokens)
        return await asyncio.gather(*((one_text if text else one)(p) for p in prompts))

    async def _snapshot(self):
        """Read on the loop thread, between two steps of the busy coroutine: consistent."""
        return time.thread_time(), self.busy_cpu, self.ticks, time.perf_counter()

    def judge(self, prompts, model="fake/echo", kwargs=None, timeout=120, text=False):
        """Judge ``prompts`` on the actor's loop; returns (replies, ticks meanwhile, loop-thread
        CPU meanwhile outside the busy coroutine, wall seconds)."""
        run = asyncio.run_coroutine_threadsafe
        cpu0, busy0, ticks0, t0 = run(self._snapshot(), self.loop).result(timeout)
        replies = run(self._judge(prompts, model, kwargs or {}, text), self.loop).result(timeout)
        cpu1, busy1, ticks1, t1 = run(self._snapshot(), self.loop).result(timeout)
        return replies, ticks1 - ticks0, (cpu1 - cpu0) - (busy1 - busy0), t1 - t0

    def idle(self, seconds):
        """The same figures over ``seconds`` with no judge call: the loop's own overhead."""
        run = asyncio.run_coroutine_threadsafe
        cpu0, busy0, ticks0, t0 = run(self._snapshot(), self.loop).result(10)
        time.sleep(seconds)
        cpu1, busy1, ticks1, t1 = run(self._snapshot(), self.loop).result(10)
        return (ticks1 - ticks0) / (t1 - t0), (cpu1 - cpu0) - (busy1 - busy0)

    def stats(self):
        import openrouter_direct as od
        return od.stats()
