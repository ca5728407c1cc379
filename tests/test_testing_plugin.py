"""``openrouter_direct.testing``, the pytest plugin for users' own tests: run in a separate pytest
process on test files written here, loaded each way a user may load it (the ``pytest11`` entry
point declared in pyproject.toml, ``-p``, ``pytest_plugins`` in a conftest.py)."""

import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the same parser, as a package (test extra)
    import tomli as tomllib

import pytest

from helpers import REPO

USER_TESTS = '''
import asyncio, os
import openrouter_direct as od

def test_environment_points_at_the_server(openrouter_server):
    assert os.environ["OPENAI_API_BASE"] == openrouter_server.base_url
    assert os.environ["OPENAI_API_KEY"]
    assert "127.0.0.1" in os.environ["no_proxy"]
    assert od.run_openrouter("openai/gpt-4.1", "hello") == "echo: hello"
    req = openrouter_server.chat_requests()[0]
    assert req["body"]["model"] == "openai/gpt-4.1"
    assert req["headers"]["authorization"] == "Bearer " + os.environ["OPENAI_API_KEY"]

def test_scripted_replies_statuses_and_faults(openrouter_server):
    openrouter_server.script(reply={"score": 2}, match="Rubric: 7")
    rule = openrouter_server.script(status=503, match="flaky")
    openrouter_server.script(status=401, match="denied", times=None)
    openrouter_server.script(fault="truncated", match="cut", times=None)
    async def calls():
        return await asyncio.gather(
            od.run_openrouter_async("j/m", "Rubric: 7 applies"),
            od.run_openrouter_async("j/m", "Rubric: 8 applies"),
            od.run_openrouter_async("j/m", "flaky call"),
            od.run_openrouter_async("j/m", "denied call"),
            od.run_openrouter_async("j/m", "cut call", num_retries=1))
    assert asyncio.run(calls()) == ['{"score": 2}', "echo: Rubric: 8 applies",
                                    "echo: flaky call", "", ""]
    assert rule.hits == 1 and openrouter_server.attempts_for("flaky call") == 2
    assert openrouter_server.attempts_for("cut call") == 2

def test_each_test_starts_with_a_reset_server(openrouter_server):
    assert openrouter_server.requests == []
    assert od.run_openrouter("j/m", "Rubric: 7 again") == "echo: Rubric: 7 again"
    openrouter_server.latency_ms = 300
    openrouter_server.api_keys = {"nobody"}

def test_server_settings_are_put_back(openrouter_server):
    assert openrouter_server.latency_ms == 0 and openrouter_server.api_keys is None
    assert od.run_openrouter("j/m", "fast") == "echo: fast"

def test_environment_is_restored_after(monkeypatch):
    assert os.environ["OPENAI_API_BASE"] == "http://127.0.0.1:9/api/v1"
    assert os.environ["OPENAI_API_KEY"] == "outer-key"
'''


def entry_point_site(tmp_path):
    """A dist-info declaring the pytest11 entry points of pyproject.toml, as pip would install."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"]["pytest11"]
    dist = tmp_path / "site" / "openrouter_direct_plugin_test-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openrouter-direct-plugin-test\n"
                                   "Version: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join("%s = %s\n" % kv for kv in eps.items()))
    return str(tmp_path / "site")


def run_pytest(tmp_path, *args, site=None, conftest=None, source=USER_TESTS):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "test_user.py").write_text(source)
    if conftest is not None:
        (proj / "conftest.py").write_text(conftest)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, REPO) if p)
    env["OPENAI_API_BASE"] = "http://127.0.0.1:9/api/v1"    # the plugin must override these
    env["OPENAI_API_KEY"] = "outer-key"
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args, "test_user.py"], capture_output=True, text=True, timeout=120,
                          cwd=str(proj), env=env)


def test_pyproject_registers_the_plugin():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"]["pytest11"]
    assert eps == {"openrouter_direct.testing": "openrouter_direct.testing"}


def test_loaded_from_the_entry_point(tmp_path):
    proc = run_pytest(tmp_path, site=entry_point_site(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


@pytest.mark.parametrize("how", ["-p", "conftest"])
def test_loaded_by_hand_alongside_the_entry_point(tmp_path, how):
    """Both ways work whether or not the package's entry point already loaded the plugin."""
    args = ("-p", "openrouter_direct.testing") if how == "-p" else ()
    conftest = 'pytest_plugins = ["openrouter_direct.testing"]\n' if how == "conftest" else None
    proc = run_pytest(tmp_path, *args, site=entry_point_site(tmp_path), conftest=conftest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


def test_fixture_is_listed_with_its_docstring(tmp_path):
    proc = run_pytest(tmp_path, "--fixtures", site=entry_point_site(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "openrouter_server" in proc.stdout and "local OpenRouter stand-in" in proc.stdout


def test_our_own_suite_runs_with_the_plugin_loaded():
    """No fixture of tests/conftest.py clashes with the plugin's."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "openrouter_direct.testing", "tests/test_response.py",
                           "tests/test_fake_server_script.py", "-k", "not jitter and not rate"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "error" not in proc.stdout.lower()
