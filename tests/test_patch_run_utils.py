"""``python -m openrouter_direct patch-run-utils``: the switch in DR-Tulu's run_utils.py.

The run_utils-shaped files in tests/samples/ are copied into a fresh package per test, patched,
and imported as a module with a stub ``litellm`` in sys.modules: with USE_OPENROUTER_DIRECT=true
the functions must really call the fake server; otherwise they must call the stub.
"""

import asyncio
import importlib
import inspect
import logging
import os
import shutil
import sys
import types
import uuid

import pytest

from helpers import REPO, arun, run_py, uniq
from openrouter_direct import patch_run_utils as pru

SAMPLES = os.path.join(REPO, "tests", "samples")
INFO = "Using direct OpenRouter API calls instead of litellm"
MODEL = "openai/gpt-4o-mini"


def sample(name):
    with open(os.path.join(SAMPLES, name + ".py"), "rb") as f:
        return f.read()


class StubLiteLLM(types.ModuleType):
    """What the LiteLLM path calls: records the call, answers "litellm: <last content>"."""

    def __init__(self):
        super().__init__("litellm")
        self.calls = []

    def _reply(self, kwargs):
        self.calls.append(kwargs)
        text = "litellm: " + kwargs["messages"][-1]["content"]
        return types.SimpleNamespace(choices=[types.SimpleNamespace(
            message=types.SimpleNamespace(content=text))])

    def completion(self, **kwargs):
        return self._reply(kwargs)

    async def acompletion(self, **kwargs):
        await asyncio.sleep(0)
        return self._reply(kwargs)


@pytest.fixture
def litellm(monkeypatch):
    stub = StubLiteLLM()
    monkeypatch.setitem(sys.modules, "litellm", stub)
    return stub


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """A fresh importable package; ``pkg.write(data)`` puts run_utils.py in it."""
    name = "dr_tulu_%s" % uuid.uuid4().hex[:12]
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Pkg:
        path = str(root / "run_utils.py")
        module_name = name + ".run_utils"

        def write(self, data):
            with open(self.path, "wb") as f:
                f.write(data)
            return self.path

        def read(self):
            with open(self.path, "rb") as f:
                return f.read()

        def load(self):
            sys.modules.pop(self.module_name, None)
            importlib.invalidate_caches()
            return importlib.import_module(self.module_name)

    yield Pkg()
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def run(*args):
    return pru.main(list(args))


def info_lines(caplog, logger):
    return [r.getMessage() for r in caplog.records
            if r.name == logger and r.levelno == logging.INFO and r.getMessage() == INFO]


# ----------------------------------------------------------------- DR-Tulu (no OpenRouter branch)

@pytest.mark.parametrize("flag", ["true", "TRUE", "True"])
def test_plain_shape_delegates_to_openrouter_direct_when_flag_is_true(
        pkg, litellm, server, monkeypatch, caplog, flag, od):
    pkg.write(sample("run_utils_dr_tulu"))
    assert run(pkg.path) == 0
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", flag)
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    assert info_lines(caplog, pkg.module_name) == [INFO]
    # DR-Tulu's call shapes: positional (grader_model, grader_prompt, None), keywords, messages
    p1, p2, p3, p4 = uniq(), uniq(), uniq(), uniq()
    assert mod.run_litellm(MODEL, p1, None) == "echo: " + p1
    assert mod.run_litellm(MODEL, user_prompt=p2, system_prompt="be fair") == "echo: " + p2
    assert arun(mod.run_litellm_async(MODEL, p3, "judge")) == "echo: " + p3
    msgs = [{"role": "user", "content": p4}]
    assert arun(mod.run_litellm_async(MODEL, messages=msgs, max_tokens=8192,
                                      temperature=1)) == "echo: " + p4
    assert litellm.calls == []
    body = server.requests_for(p2)[0]["body"]
    assert body["messages"] == [{"role": "system", "content": "be fair"},
                                {"role": "user", "content": p2}]
    assert body["max_tokens"] == 800                         # run_litellm's default
    assert server.requests_for(p3)[0]["body"]["max_tokens"] == 16384
    assert server.requests_for(p4)[0]["body"]["max_tokens"] == 8192
    # same order as openrouter_direct's: the functions themselves, no wrapper per call
    assert mod.run_litellm is od.run_openrouter
    assert mod.run_litellm_async is od.run_openrouter_async


@pytest.mark.parametrize("flag", [None, "false", "1", "yes", ""])
def test_plain_shape_keeps_litellm_unless_flag_is_true(pkg, litellm, server, monkeypatch, caplog,
                                                       flag):
    pkg.write(sample("run_utils_dr_tulu"))
    assert run(pkg.path) == 0
    if flag is None:
        monkeypatch.delenv("USE_OPENROUTER_DIRECT", raising=False)
    else:
        monkeypatch.setenv("USE_OPENROUTER_DIRECT", flag)
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    p1, p2 = uniq(), uniq()
    assert mod.run_litellm(MODEL, p1) == "litellm: " + p1
    assert arun(mod.run_litellm_async(MODEL, p2, "sys")) == "litellm: " + p2
    assert [c["messages"][-1]["content"] for c in litellm.calls] == [p1, p2]
    assert litellm.calls[0]["fallbacks"] == ["gpt-4.1-mini"]   # the original function ran
    assert server.chat_requests() == []
    assert info_lines(caplog, pkg.module_name) == []


def test_flag_is_read_at_import(pkg, litellm, server, monkeypatch):
    pkg.write(sample("run_utils_dr_tulu"))
    run(pkg.path)
    monkeypatch.delenv("USE_OPENROUTER_DIRECT", raising=False)
    mod = pkg.load()
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")     # too late for this import
    prompt = uniq()
    assert mod.run_litellm(MODEL, prompt) == "litellm: " + prompt


def test_plain_shape_block_sits_after_the_functions_and_before_main(pkg):
    pkg.write(sample("run_utils_dr_tulu"))
    run(pkg.path)
    text = pkg.read().decode()
    start, end = text.index(pru.START), text.index(pru.END)
    assert text.index("async def run_litellm_async") < start < end < text.index(
        'if __name__ == "__main__":')
    assert "\n\n\n" + pru.START in text and pru.END + "\n\n\nif __name__" in text
    assert "LOGGER.info(" in text[start:end]                 # run_utils' own logger


def test_failed_call_through_the_patch_returns_empty_string(pkg, litellm, server, monkeypatch):
    pkg.write(sample("run_utils_dr_tulu"))
    run(pkg.path)
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    mod = pkg.load()
    assert arun(mod.run_litellm_async("fake/status-400", uniq())) == ""
    assert mod.run_litellm("fake/status-401", uniq()) == ""


# ---------------------------------------------------------------------------- the fork's shape

def test_fork_shape_unpatched_falls_back_to_litellm(pkg, litellm, server, monkeypatch, caplog):
    """The baseline: without .openrouter_replacement the fork warns and uses LiteLLM."""
    pkg.write(sample("run_utils_fork"))
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    assert mod.USE_OPENROUTER_DIRECT is False
    prompt = uniq()
    assert mod.run_litellm(MODEL, prompt) == "litellm: " + prompt


def test_fork_shape_import_resolves_to_openrouter_direct(pkg, litellm, server, monkeypatch,
                                                         caplog, od):
    pkg.write(sample("run_utils_fork"))
    assert run(pkg.path) == 0
    text = pkg.read().decode()
    assert "from openrouter_direct import call_openrouter_async, call_openrouter" in text
    assert "# | from .openrouter_replacement import" in text
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    assert mod.USE_OPENROUTER_DIRECT is True
    assert mod.call_openrouter is od.call_openrouter
    assert info_lines(caplog, pkg.module_name) == [INFO]
    p1, p2, p3 = uniq(), uniq(), uniq()
    assert mod.run_litellm(MODEL, p1) == "echo: " + p1
    assert arun(mod.run_litellm_async(MODEL, p2, "sys")) == "echo: " + p2
    assert arun(mod.run_litellm_async(MODEL, messages=[{"role": "user", "content": p3}])) \
        == "echo: " + p3
    assert litellm.calls == []


def test_fork_shape_keeps_litellm_when_flag_unset(pkg, litellm, server, monkeypatch):
    pkg.write(sample("run_utils_fork"))
    run(pkg.path)
    monkeypatch.delenv("USE_OPENROUTER_DIRECT", raising=False)
    mod = pkg.load()
    prompt = uniq()
    assert mod.run_litellm(MODEL, prompt) == "litellm: " + prompt
    assert server.chat_requests() == []


@pytest.mark.parametrize("before, after", [
    ("from .openrouter_replacement import call_openrouter_async, call_openrouter",
     "from openrouter_direct import call_openrouter_async, call_openrouter"),
    ("from .openrouter_replacement import (\n            call_openrouter_async as coa,\n"
     "            call_openrouter,\n        )",
     "from openrouter_direct import call_openrouter_async as coa, call_openrouter"),
    ("from open_instruct.search_rewards.utils.openrouter_replacement import call_openrouter, "
     "call_openrouter_async  # direct",
     "from openrouter_direct import call_openrouter, call_openrouter_async"),
])
def test_fork_import_variants_are_swapped_and_revert_exactly(before, after):
    text = sample("run_utils_fork").decode().replace(
        "from .openrouter_replacement import call_openrouter_async, call_openrouter", before)
    if "as coa" in before:
        text = text.replace("return await call_openrouter_async(", "return await coa(")
    new, shape = pru.patch_text(text)
    assert shape == "fork" and "        " + after + "\n" in new
    assert pru.revert_text(new) == text
    compile(new, "run_utils.py", "exec")


def test_fork_import_of_other_names_is_refused():
    text = sample("run_utils_fork").decode().replace(
        "import call_openrouter_async, call_openrouter", "import call_openrouter, helper")
    with pytest.raises(pru.Refused, match="helper"):
        pru.patch_text(text)


# ------------------------------------------------------ open-instruct's order, no module logger

def test_other_argument_order_is_mapped_by_name(pkg, litellm, server, monkeypatch, caplog):
    pkg.write(sample("run_utils_open_instruct"))
    assert run(pkg.path) == 0
    assert "_openrouter_direct_logging.getLogger(__name__).info(" in pkg.read().decode()
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    assert info_lines(caplog, pkg.module_name) == [INFO]
    p1, p2 = uniq(), uniq()
    assert mod.run_litellm(MODEL, "the system", p1) == "echo: " + p1
    assert arun(mod.run_litellm_async(MODEL, None, p2, max_tokens=5)) == "echo: " + p2
    assert server.requests_for(p1)[0]["body"]["messages"] == [
        {"role": "system", "content": "the system"}, {"role": "user", "content": p1}]
    assert server.requests_for(p2)[0]["body"]["messages"] == [{"role": "user", "content": p2}]
    assert list(inspect.signature(mod.run_litellm).parameters)[:3] == [
        "model_name", "system_prompt", "user_prompt"]
    assert inspect.iscoroutinefunction(mod.run_litellm_async)
    with pytest.raises(TypeError, match="multiple values"):
        mod.run_litellm(MODEL, "s", "u", user_prompt="again")
    with pytest.raises(TypeError, match="positional"):
        mod.run_litellm(MODEL, "s", "u", "extra")
    assert litellm.calls == []


def test_crlf_file_without_final_newline_keeps_its_form(pkg, litellm, server, monkeypatch):
    original = sample("run_utils_open_instruct").rstrip(b"\n").replace(b"\n", b"\r\n")
    pkg.write(original)
    assert run(pkg.path) == 0
    patched = pkg.read()
    assert b"\n" not in patched.replace(b"\r\n", b"") and not patched.endswith(b"\n")
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    prompt = uniq()
    assert pkg.load().run_litellm(MODEL, None, prompt) == "echo: " + prompt
    assert run("--revert", pkg.path) == 0
    assert pkg.read() == original


# ------------------------------------------------------- idempotence, backup, --check, --revert

@pytest.mark.parametrize("name", ["run_utils_dr_tulu", "run_utils_fork",
                                  "run_utils_open_instruct"])
def test_patch_is_idempotent_keeps_a_backup_and_reverts_exactly(pkg, name, capsys):
    original = sample(name)
    pkg.write(original)
    assert run("--check", pkg.path) == 1
    assert "not patched" in capsys.readouterr().out
    assert run(pkg.path) == 0
    assert "patched" in capsys.readouterr().out
    once = pkg.read()
    assert once != original
    with open(pkg.path + ".orig", "rb") as f:
        assert f.read() == original
    assert run(pkg.path) == 0
    assert "already patched; nothing changed" in capsys.readouterr().out
    assert pkg.read() == once
    with open(pkg.path + ".orig", "rb") as f:
        assert f.read() == original
    assert run("--check", pkg.path) == 0
    assert ": patched" in capsys.readouterr().out
    assert run("--revert", pkg.path) == 0
    assert "reverted" in capsys.readouterr().out
    assert pkg.read() == original
    assert not os.path.exists(pkg.path + ".orig")
    assert run("--check", pkg.path) == 1
    assert run("--revert", pkg.path) == 0
    assert "not patched; nothing to revert" in capsys.readouterr().out
    assert pkg.read() == original


def test_check_names_the_fork_shape(pkg, capsys):
    pkg.write(sample("run_utils_fork"))
    assert run("--check", pkg.path) == 1
    assert "openrouter_replacement" in capsys.readouterr().out


def test_revert_keeps_edits_made_after_the_patch(pkg, capsys):
    original = sample("run_utils_dr_tulu")
    pkg.write(original)
    run(pkg.path)
    pkg.write(pkg.read() + b"# a later edit\n")
    assert run("--revert", pkg.path) == 0
    assert pkg.read() == original + b"# a later edit\n"
    assert "kept" in capsys.readouterr().out
    with open(pkg.path + ".orig", "rb") as f:
        assert f.read() == original


def test_revert_with_a_broken_block_restores_the_backup(pkg, capsys):
    original = sample("run_utils_dr_tulu")
    pkg.write(original)
    run(pkg.path)
    pkg.write(pkg.read().replace(pru.END.encode(), b"# (deleted by hand)"))
    assert run("--revert", pkg.path) == 0
    assert pkg.read() == original
    assert "restored" in capsys.readouterr().out


def test_broken_block_without_backup_is_refused(pkg, capsys):
    pkg.write(sample("run_utils_dr_tulu"))
    run(pkg.path)
    os.remove(pkg.path + ".orig")
    broken = pkg.read().replace(pru.END.encode(), b"")
    pkg.write(broken)
    assert run("--revert", pkg.path) == 2
    assert "never closes" in capsys.readouterr().err
    assert pkg.read() == broken


def test_backup_and_file_mode_survive(pkg):
    pkg.write(sample("run_utils_dr_tulu"))
    os.chmod(pkg.path, 0o640)
    run(pkg.path)
    assert os.stat(pkg.path).st_mode & 0o777 == 0o640
    assert not [n for n in os.listdir(os.path.dirname(pkg.path)) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("text, reason", [
    (None, "run_litellm_async"),                                    # tests/samples/not_run_utils
    (b"def run_litellm(:\n", "does not parse"),
    (b"import litellm\n", "run_litellm and run_litellm_async"),
    (b"class X:\n    def run_litellm(self): pass\n    async def run_litellm_async(self): pass\n",
     "at module level"),
])
def test_files_without_both_functions_are_refused_unchanged(pkg, capsys, text, reason):
    data = sample("not_run_utils") if text is None else text
    pkg.write(data)
    assert run(pkg.path) == 2
    err = capsys.readouterr().err
    assert reason in err and "nothing changed" in err
    assert pkg.read() == data
    assert not os.path.exists(pkg.path + ".orig")
    assert run("--check", pkg.path) == 2


def test_missing_path_is_refused(tmp_path, capsys):
    assert run(str(tmp_path / "nope.py")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_checkout_directory_finds_run_utils(tmp_path, capsys):
    target = tmp_path / "rl" / "open-instruct" / "open_instruct" / "search_rewards" / "utils"
    target.mkdir(parents=True)
    (target / "run_utils.py").write_bytes(sample("run_utils_dr_tulu"))
    assert run(str(tmp_path)) == 0
    assert pru.START in (target / "run_utils.py").read_text()
    assert run(str(tmp_path / "rl")) == 0                       # also one level down
    assert "already patched" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(str(empty)) == 2


# -------------------------------------------------------------------------------- drop_in

def test_drop_in_returns_the_function_itself_for_our_order(od):
    def run_litellm(model_name, user_prompt, system_prompt=None, **kw): ...

    async def run_litellm_async(model_name, user_prompt=None, system_prompt=None,
                                messages=None, **kw): ...
    assert pru.drop_in(run_litellm) is od.run_openrouter
    assert pru.drop_in(run_litellm_async) is od.run_openrouter_async


def test_drop_in_wraps_another_order(od, server):
    def run_litellm(model_name, system_prompt, user_prompt, **kw):
        """original doc"""
    wrapped = pru.drop_in(run_litellm)
    assert wrapped is not od.run_openrouter and wrapped.__doc__ == "original doc"
    prompt = uniq()
    assert wrapped("fake/echo", "sys", prompt) == "echo: " + prompt
    assert server.requests_for(prompt)[0]["body"]["messages"][0] == {"role": "system",
                                                                   "content": "sys"}


# ----------------------------------------------------------------------------- the command

def test_command_line_end_to_end(tmp_path, server):
    """Through ``python -m openrouter_direct``, then the patched file in a fresh interpreter."""
    pkgdir = tmp_path / "dr_tulu_cli"
    pkgdir.mkdir()
    (pkgdir / "__init__.py").write_text("")
    (pkgdir / "run_utils.py").write_bytes(sample("run_utils_dr_tulu"))
    path = str(pkgdir / "run_utils.py")
    proc = run_py("import sys; from openrouter_direct.__main__ import main; "
                  "sys.exit(main(['patch-run-utils', %r]))" % path)
    assert proc.returncode == 0, proc.stderr
    assert "patched" in proc.stdout
    code = r'''
import logging, sys, types
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
sys.modules["litellm"] = types.ModuleType("litellm")
sys.path.insert(0, sys.argv[1])
from dr_tulu_cli import run_utils
print(run_utils.run_litellm("openai/gpt-4o-mini", "cli-e2e"))
'''
    proc = run_py(code.replace("sys.argv[1]", repr(str(tmp_path))),
                  env={"USE_OPENROUTER_DIRECT": "TRUE"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "echo: cli-e2e"
    assert "dr_tulu_cli.run_utils INFO " + INFO in proc.stderr
    proc = run_py("import sys; from openrouter_direct.__main__ import main; "
                  "sys.exit(main(['patch-run-utils', '--check', %r]))" % path)
    assert proc.returncode == 0 and "patched" in proc.stdout


def test_cli_module_runs(tmp_path):
    shutil.copy(os.path.join(SAMPLES, "run_utils_dr_tulu.py"), tmp_path / "run_utils.py")
    import subprocess
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "openrouter_direct", "patch-run-utils",
                           str(tmp_path / "run_utils.py")], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "run_utils.py.orig")


# ------------------------------------------------- today's open-instruct: rubrics/run_utils.py

HELPERS3 = "run_litellm, run_litellm_async and run_litellm_async_raw"


@pytest.fixture
def open_instruct_pkg(monkeypatch):
    """A stand-in for the ``open_instruct`` package the upstream file imports its logger from."""
    top = types.ModuleType("open_instruct")
    top.__path__ = []
    lu = types.ModuleType("open_instruct.logger_utils")
    lu.setup_logger = logging.getLogger
    top.logger_utils = lu
    monkeypatch.setitem(sys.modules, "open_instruct", top)
    monkeypatch.setitem(sys.modules, "open_instruct.logger_utils", lu)


def test_upstream_shape_routes_all_three_helpers_and_never_imports_litellm(
        pkg, server, monkeypatch, caplog, open_instruct_pkg, od):
    pkg.write(sample("run_utils_upstream"))
    assert run(pkg.path) == 0
    text = pkg.read().decode()
    assert "run_litellm_async_raw = _openrouter_direct_drop_in(run_litellm_async_raw, raw=True)" \
        in text
    assert "    logger.info(" in text                        # upstream's own module logger
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    monkeypatch.delitem(sys.modules, "litellm", raising=False)
    monkeypatch.setitem(sys.modules, "litellm", None)        # any import of it would now fail
    caplog.set_level(logging.INFO)
    mod = pkg.load()
    assert info_lines(caplog, pkg.module_name) == [INFO]
    assert mod.run_litellm is od.run_openrouter
    assert mod.run_litellm_async is od.run_openrouter_async
    assert mod.run_litellm_async_raw is od.run_openrouter_async_raw

    # LMJudgeVerifier's call, then the rubric scorer's, then a positional sync call
    p1, p2, p3 = uniq(), uniq(), uniq()
    resp = arun(mod.run_litellm_async_raw(
        model_name=MODEL, messages=[{"role": "user", "content": p1}], temperature=0.0,
        max_completion_tokens=77, seed=1, timeout=60))
    assert resp.choices[0].message.content == "echo: " + p1
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert arun(mod.run_litellm_async(model_name=MODEL, system_prompt="score it", user_prompt=p2,
                                      temperature=0.0, max_tokens=2048, timeout=60)) \
        == "echo: " + p2
    assert mod.run_litellm(MODEL, p3, None) == "echo: " + p3
    raw_body = server.requests_for(p1)[0]["body"]
    assert raw_body["max_completion_tokens"] == 77 and "max_tokens" not in raw_body
    assert raw_body["seed"] == 1
    assert server.requests_for(p2)[0]["body"]["max_tokens"] == 2048
    assert server.requests_for(p3)[0]["body"]["max_tokens"] == 800
    assert sys.modules["litellm"] is None                    # nobody tried to import it


def test_upstream_raw_helper_raises_typed_errors_when_routed(pkg, server, monkeypatch,
                                                            open_instruct_pkg, od):
    """LMJudgeVerifier retries on exceptions: the routed raw helper must raise, not return ""."""
    pkg.write(sample("run_utils_upstream"))
    assert run(pkg.path) == 0
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    mod = pkg.load()
    od.configure(rate_limit_wait=0.5)   # the governor waits a 429 out: keep that wait short
    with pytest.raises(od.RateLimitError):
        arun(mod.run_litellm_async_raw("fake/status-429",
                                       messages=[{"role": "user", "content": uniq()}],
                                       num_retries=0))
    assert arun(mod.run_litellm_async("fake/status-429", uniq(), num_retries=0)) == ""


def test_upstream_shape_keeps_litellm_without_the_flag(pkg, litellm, server, monkeypatch,
                                                       open_instruct_pkg):
    pkg.write(sample("run_utils_upstream"))
    assert run(pkg.path) == 0
    monkeypatch.delenv("USE_OPENROUTER_DIRECT", raising=False)
    mod = pkg.load()
    p1, p2 = uniq(), uniq()
    resp = arun(mod.run_litellm_async_raw(MODEL, messages=[{"role": "user", "content": p1}]))
    assert resp.choices[0].message.content == "litellm: " + p1
    assert arun(mod.run_litellm_async(MODEL, p2)) == "litellm: " + p2
    assert [c["messages"][-1]["content"] for c in litellm.calls] == [p1, p2]
    assert server.requests_for(p1) == []


def test_check_lists_the_routed_helpers(pkg, capsys, open_instruct_pkg):
    pkg.write(sample("run_utils_upstream"))
    assert run("--check", pkg.path) == 1
    out = capsys.readouterr().out
    assert "not patched" in out and "LiteLLM serves " + HELPERS3 in out
    assert run(pkg.path) == 0
    assert HELPERS3 + " delegate to openrouter_direct" in capsys.readouterr().out
    assert run("--check", pkg.path) == 0
    assert "openrouter_direct serves " + HELPERS3 in capsys.readouterr().out
    pkg.write(sample("run_utils_dr_tulu"))
    assert run(pkg.path) == 0
    capsys.readouterr()
    assert run("--check", pkg.path) == 0
    assert "serves run_litellm and run_litellm_async\n" in capsys.readouterr().out


def test_a_patch_by_an_older_version_is_reported_and_redone(pkg, capsys, open_instruct_pkg):
    """An older patch-run-utils rebound only two helpers: --check says the raw one is not routed,
    and patching again adds it; --revert still gives back the original."""
    original = sample("run_utils_upstream")
    pkg.write(original)
    assert run(pkg.path) == 0
    old = pkg.read().replace(
        b"    run_litellm_async_raw = _openrouter_direct_drop_in(run_litellm_async_raw, "
        b"raw=True)\n", b"")
    pkg.write(old)
    capsys.readouterr()
    assert run("--check", pkg.path) == 1
    assert "NOT routed: run_litellm_async_raw" in capsys.readouterr().out
    assert run(pkg.path) == 0
    assert "re-patched" in capsys.readouterr().out
    assert run("--check", pkg.path) == 0
    assert run("--revert", pkg.path) == 0
    assert pkg.read() == original


def test_an_open_instruct_checkout_finds_rubrics_run_utils(tmp_path, capsys):
    target = tmp_path / "open_instruct" / "rubrics"
    target.mkdir(parents=True)
    (target / "run_utils.py").write_bytes(sample("run_utils_upstream"))
    assert run(str(tmp_path)) == 0
    assert "run_litellm_async_raw" in capsys.readouterr().out
    assert pru.START in (target / "run_utils.py").read_text()


def test_drop_in_raw_returns_the_raw_functions(od):
    async def run_litellm_async_raw(model_name, user_prompt=None, system_prompt=None,
                                    messages=None, **kw): ...

    def sync_raw(model_name, user_prompt=None, system_prompt=None, **kw): ...
    assert pru.drop_in(run_litellm_async_raw, raw=True) is od.run_openrouter_async_raw
    assert pru.drop_in(sync_raw, raw=True) is od.run_openrouter_raw


def test_a_fork_with_a_raw_helper_gets_it_routed_too(pkg, litellm, server, monkeypatch, od):
    """The fork's own branch covers the two text helpers; a raw one gets a block of its own."""
    original = sample("run_utils_fork") + (
        b"\n\nasync def run_litellm_async_raw(model_name, user_prompt=None, system_prompt=None,\n"
        b"                                messages=None, **chat_kwargs):\n"
        b"    return await litellm.acompletion(model=model_name, messages=messages, **chat_kwargs)\n")
    pkg.write(original)
    assert run(pkg.path) == 0
    assert run("--check", pkg.path) == 0
    monkeypatch.setenv("USE_OPENROUTER_DIRECT", "true")
    mod = pkg.load()
    assert mod.run_litellm_async_raw is od.run_openrouter_async_raw
    p = uniq()
    assert arun(mod.run_litellm_async(MODEL, p)) == "echo: " + p
    assert litellm.calls == []
    assert run("--revert", pkg.path) == 0
    assert pkg.read() == original
