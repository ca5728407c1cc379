"""Judge calls from Ray actors, each awaiting them on its own long-lived asyncio loop (a dedicated
thread that also runs a busy coroutine), as rewards run in open-instruct's vLLM actors."""

import os

import pytest

from helpers import REPO, uniq

try:
    import ray
except ImportError:  # the test extra installs it; without it these tests cannot run
    ray = None

# .ci/sanitizers preloads ASan/TSan into the interpreter; Ray's own binaries (raylet, the GCS)
# inherit LD_PRELOAD and are not built for it. Those runs check our code; this one checks Ray's use.
_PRELOADED = any(s in os.environ.get("LD_PRELOAD", "") for s in ("libasan", "libtsan"))
pytestmark = [
    pytest.mark.skipif(ray is None, reason="ray is not installed (pip install ray, or the "
                                           "package's test extra)"),
    pytest.mark.skipif(_PRELOADED, reason="a sanitizer runtime is LD_PRELOADed, which Ray's "
                                          "own binaries would inherit"),
]
N_ACTORS = 3


@pytest.fixture(scope="module")
def ray_actors(server):
    tests = os.path.join(REPO, "tests")
    ray.init(num_cpus=N_ACTORS, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([REPO, tests])}})
    try:
        from ray_judge_actor import JudgeActor
        env = {"OPENAI_API_BASE": server.base_url, "OPENAI_API_KEY": "sk-or-ray-test",
               "OPENROUTER_RETRY_BASE_DELAY": "0.01", "OPENROUTER_RETRY_MAX_DELAY": "0.05",
               "no_proxy": "127.0.0.1", "OPENROUTER_MAX_CONCURRENT_CALLS": "16"}
        actors = [ray.remote(num_cpus=1)(JudgeActor).remote(env) for _ in range(N_ACTORS)]
        ray.get([a.stats.remote() for a in actors], timeout=60)
        yield actors
    finally:
        ray.shutdown()


def test_every_actor_gets_every_reply_right_while_its_loop_stays_busy(ray_actors, server):
    batches = [[uniq("ray%d" % i) for _ in range(60)] for i in range(len(ray_actors))]
    kwargs = dict(temperature=0.0, max_completion_tokens=64, seed=1, timeout=30)
    refs = [a.judge.remote(b, "fake/echo", kwargs) for a, b in zip(ray_actors, batches)]
    results = ray.get(refs, timeout=120)
    for batch, (replies, ticks, _cpu, _wall) in zip(batches, results):
        assert [r[0] for r in replies] == ["echo: " + p for p in batch]
        assert all(pt > 0 and ct > 0 for _, pt, ct in replies)
        assert ticks > 0                       # the busy coroutine kept running meanwhile
    for p in (p for b in batches for p in b):
        body = server.requests_for(p)[0]["body"]
        assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    for st in ray.get([a.stats.remote() for a in ray_actors], timeout=30):
        assert st["failed"] == 0 and st["succeeded"] >= 60


def test_actor_calls_that_fail_raise_in_the_actor_and_the_loop_goes_on(ray_actors, server):
    a = ray_actors[0]
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(a.judge.remote([uniq()], "fake/status-400", {"num_retries": 0}), timeout=60)
    assert "APIStatusError" in str(info.value)
    p = uniq()
    replies, _, _, _ = ray.get(a.judge.remote([p]), timeout=60)
    assert replies[0][0] == "echo: " + p


def test_retried_calls_from_every_actor_all_land(ray_actors, server):
    """A 503 on the first attempt of each call: the engine retries it inside each actor."""
    batches = [[uniq("retry%d" % i) for _ in range(20)] for i in range(len(ray_actors))]
    server.script(status=503, match="retry", times=sum(map(len, batches)))
    results = ray.get([a.judge.remote(b) for a, b in zip(ray_actors, batches)], timeout=120)
    for batch, (replies, _, _, _) in zip(batches, results):
        assert [r[0] for r in replies] == ["echo: " + p for p in batch]
