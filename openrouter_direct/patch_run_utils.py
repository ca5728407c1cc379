"""``python -m openrouter_direct patch-run-utils PATH``: switch the LiteLLM judge helpers over.

Two layouts define them: DR-Tulu's ``open_instruct/search_rewards/utils/run_utils.py``
(``run_litellm`` and ``run_litellm_async``) and today's open-instruct
``open_instruct/rubrics/run_utils.py`` (those two and ``run_litellm_async_raw``, which returns
LiteLLM's response object). This rewrites the file so that when ``USE_OPENROUTER_DIRECT`` is
``true`` (any case, read at import, as run_utils reads it) every helper it defines delegates to
openrouter_direct, and logs "Using direct OpenRouter API calls instead of litellm" at INFO on
run_utils' own logger; with any other value the LiteLLM functions stay exactly as written.
Upstream imports LiteLLM lazily, inside the helpers, so a patched file run with the flag never
imports it. Two shapes are handled:

* no OpenRouter branch (DR-Tulu as published, open-instruct): a block goes in after the last
  helper; it rebinds each helper's name through ``drop_in`` (below) and logs the line;
* a fork that already imports ``call_openrouter_async, call_openrouter`` from
  ``.openrouter_replacement`` (and has its own branch and log line): that import is swapped for
  the same names from ``openrouter_direct`` (and a ``run_litellm_async_raw``, which the fork's
  branch does not cover, gets a block of its own).

Every change sits between two marker lines, with any line it replaced kept there as a ``# | ``
comment, so a second run sees the markers and changes nothing, ``--check`` reports them and
``--revert`` undoes exactly them (keeping later edits elsewhere in the file); ``PATH.orig`` keeps
the file as it was. The rule that keeps it safe: nothing is written unless the new text parses
and reverting it gives back the original byte for byte.

``drop_in`` is imported by the patched file at run time; the rest only by the command.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import ast

START = "# >>> openrouter_direct patch-run-utils >>>"
END = "# <<< openrouter_direct patch-run-utils <<<"
WAS = "# | "
FUNCTIONS = ("run_litellm", "run_litellm_async")          # both layouts define these
OPTIONAL = ("run_litellm_async_raw",)                     # open-instruct's rubrics/run_utils.py
HELPERS = FUNCTIONS + OPTIONAL
FORK_MODULE = "openrouter_replacement"
FORK_NAMES = {"call_openrouter", "call_openrouter_async", "run_openrouter",
              "run_openrouter_async"}
INFO_LINE = "Using direct OpenRouter API calls instead of litellm"
# Where run_utils.py sits when PATH is a checkout rather than the file.
RELATIVE_CANDIDATES = (
    "open_instruct/search_rewards/utils/run_utils.py",
    "open-instruct/open_instruct/search_rewards/utils/run_utils.py",
    "rl/open-instruct/open_instruct/search_rewards/utils/run_utils.py",
    "open_instruct/rubrics/run_utils.py",
    "open-instruct/open_instruct/rubrics/run_utils.py",
)
_REBIND = re.compile(r"^\s*(\w+) = _openrouter_direct_drop_in\(")

_OURS = ("model_name", "user_prompt", "system_prompt", "messages")


# ------------------------------------------------------------------------- at run time

def _target(raw: bool, is_async: bool) -> Callable[..., Any]:
    from . import _api

    if raw:
        return _api.run_openrouter_async_raw if is_async else _api.run_openrouter_raw
    return _api.run_openrouter_async if is_async else _api.run_openrouter


def drop_in(original: Callable[..., Any], raw: bool = False) -> Callable[..., Any]:
    """The openrouter_direct function to call in place of ``original``.

    ``run_openrouter_async`` for a coroutine function, else ``run_openrouter``; with ``raw``,
    ``run_openrouter_async_raw`` / ``run_openrouter_raw`` (the response object). When
    ``original``'s positional parameters are ours, in our order (DR-Tulu's ``model_name,
    user_prompt, system_prompt[, messages]``), that function itself is returned: no extra call
    per call. Another order (open-instruct's older ``model_name, system_prompt, user_prompt``)
    gets a thin wrapper that passes positional arguments on by ``original``'s names."""
    is_async = inspect.iscoroutinefunction(original)
    target = _target(raw, is_async)
    try:
        params = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        return target
    names = [p.name for p in params
             if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                           inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if names and names == list(_OURS[: len(names)]):
        return target
    label = getattr(original, "__name__", "function")

    def by_name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(names):
            raise TypeError(f"{label}() takes {len(names)} positional arguments but "
                            f"{len(args)} were given")
        for name, value in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{label}() got multiple values for argument {name!r}")
            kwargs[name] = value
        return kwargs

    if is_async:
        async def delegate(*args: Any, **kwargs: Any) -> Any:
            return await target(**by_name(args, kwargs))
    else:
        def delegate(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return target(**by_name(args, kwargs))
    return functools.update_wrapper(delegate, original)


# ----------------------------------------------------------------------------- the rewrite

class Refused(Exception):
    """The file cannot be patched (or reverted) safely; the message says why."""


def _lines(text: str) -> list[str]:
    """Lines with their endings, split where Python's tokenizer splits (not str.splitlines)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\n|\r)|[^\r\n]+$", text)


def _newline(text: str) -> str:
    m = re.search(r"\r\n|\n|\r", text)
    return m.group(0) if m else "\n"


def is_patched(text: str) -> bool:
    return any(line.strip() == START for line in _lines(text))


def _parse(text: str, name: str) -> ast.Module:
    import ast
    try:
        return ast.parse(text, filename=name)
    except (SyntaxError, ValueError) as exc:
        raise Refused(f"it does not parse as Python ({exc})") from None


def _shape(tree: ast.Module) -> tuple[str, list[ast.ImportFrom]]:
    """('fork', [ImportFrom nodes]) or ('plain', [])."""
    import ast
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").split(".")[-1] == FORK_MODULE]
    return ("fork", imports) if imports else ("plain", [])


def _functions(tree: ast.Module, name: str) -> dict[str, Any]:
    import ast
    found = {n.name: n for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in HELPERS}
    missing = [f for f in FUNCTIONS if f not in found]
    if missing:
        raise Refused(f"it does not define {' and '.join(missing)} at module level, so it is not "
                      "DR-Tulu's run_utils.py")
    return found


def _logger_name(tree: ast.Module, before_line: int) -> str | None:
    """The module-level ``X = logging.getLogger(...)`` defined above ``before_line``."""
    import ast
    for node in tree.body:
        if node.lineno >= before_line:
            break
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            func = node.value.func
            # logging.getLogger(...), or open-instruct's logger_utils.setup_logger(__name__)
            names = ("getLogger", "setup_logger")
            if ((isinstance(func, ast.Attribute) and func.attr in names)
                    or (isinstance(func, ast.Name) and func.id in names)):
                return node.targets[0].id
    return None


def _block(logger: str | None, nl: str, names: list[str], log: bool = True) -> list[str]:
    """The inserted block: rebinds each of ``names`` (helpers in HELPERS order) when the flag is
    set; ``log``: also log INFO_LINE (not when the fork's own branch logs it)."""
    body = [
        START,
        "# Written by `python -m openrouter_direct patch-run-utils`; `--revert` takes it out.",
        "# USE_OPENROUTER_DIRECT=true (any case, read at import) sends the helpers named below",
        "# through openrouter_direct; otherwise LiteLLM serves them as defined above.",
        "import os as _openrouter_direct_os",
    ]
    if not log:
        logger = ""
    if logger is None:   # no module logger: log on one named after the module, as it would be
        body.append("import logging as _openrouter_direct_logging")
        log_call = "_openrouter_direct_logging.getLogger(__name__).info"
    else:
        log_call = f"{logger}.info"
    body += [
        "",
        'if _openrouter_direct_os.environ.get("USE_OPENROUTER_DIRECT", "false").lower() == "true":',
        "    from openrouter_direct.patch_run_utils import drop_in as _openrouter_direct_drop_in",
        "",
    ]
    for name in names:
        raw = ", raw=True" if name in OPTIONAL else ""
        body.append(f"    {name} = _openrouter_direct_drop_in({name}{raw})")
    if logger != "":
        body.append(f'    {log_call}("{INFO_LINE}")')
    body.append(END)
    return [nl, nl] + [line + nl for line in body]


def _swap_import(lines: list[str], node: Any, nl: str) -> list[str]:
    """The marked lines that replace one ``from .openrouter_replacement import ...``."""
    first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
    indent = first[: node.col_offset]
    if indent.strip():
        raise Refused(f"line {node.lineno}: the openrouter_replacement import shares its line "
                      "with other code")
    rest = last[node.end_col_offset:].strip()
    if rest and not rest.startswith("#"):
        raise Refused(f"line {node.end_lineno}: code follows the openrouter_replacement import")
    names = [a.name for a in node.names]
    unknown = [n for n in names if n not in FORK_NAMES]
    if unknown:
        raise Refused(f"line {node.lineno}: openrouter_direct has no {', '.join(unknown)}")
    old = lines[node.lineno - 1: node.end_lineno]
    if any(not line.startswith(indent) for line in old):
        raise Refused(f"line {node.lineno}: the import's lines are indented less than its first")
    imported = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
    out = [indent + START + nl]
    out += [indent + WAS + line[len(indent):].rstrip("\r\n") + nl for line in old]
    out += [f"{indent}from openrouter_direct import {imported}{nl}", indent + END + nl]
    return out


def patch_text(text: str, name: str = "run_utils.py") -> tuple[str, str]:
    """(the patched text, which shape it was); raises Refused. Text already patched comes back
    unchanged."""
    if is_patched(text):
        return text, "patched"
    tree = _parse(text, name)
    funcs = _functions(tree, name)
    nl = _newline(text)
    lines = _lines(text)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += nl
    shape, imports = _shape(tree)
    after = max(f.end_lineno for f in funcs.values())
    names = [f for f in HELPERS if f in funcs]
    if shape == "fork":
        # The fork's own branch covers run_litellm and run_litellm_async; a raw helper, if the
        # fork has one, is rebound by a block (inserted first: it lies below every import).
        extra = [f for f in names if f in OPTIONAL]
        if extra:
            lines[after:after] = _block(None, nl, extra, log=False)
        for node in sorted(imports, key=lambda n: n.lineno, reverse=True):
            lines[node.lineno - 1: node.end_lineno] = _swap_import(lines, node, nl)
    else:
        lines[after:after] = _block(_logger_name(tree, after + 1), nl, names)
    new = "".join(lines)
    if not text.endswith(("\n", "\r")):   # a file without a final newline stays so
        new = new[: -len(nl)]
    _parse(new, name)
    if revert_text(new) != text:
        raise Refused("the rewrite would not revert cleanly (please report this)")
    return new, shape


def routed(text: str) -> list[str]:
    """The helpers the marked changes route to openrouter_direct, in HELPERS order: those a block
    rebinds, and run_litellm / run_litellm_async when a fork's import was swapped."""
    names: set[str] = set()
    inside = swapped = False
    for line in _lines(text):
        if line.strip() == START:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside:
            m = _REBIND.match(line)
            if m:
                names.add(m.group(1))
            elif line.strip().startswith(WAS.strip()):
                swapped = True
    if swapped:
        names.update(FUNCTIONS)
    return [f for f in HELPERS if f in names]


def defined(text: str, name: str = "run_utils.py") -> list[str]:
    """The helpers the file defines at module level, in HELPERS order (Refused: not a run_utils)."""
    return [f for f in HELPERS if f in _functions(_parse(text, name), name)]


def revert_text(text: str) -> str:
    """The text without the marked changes; raises Refused when the markers are broken."""
    lines = _lines(text)
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != START:
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        j = i + 1
        while j < len(lines) and lines[j].strip() != END:
            j += 1
        if j == len(lines):
            raise Refused(f"line {i + 1} opens a patch block that never closes")
        nl = _newline(lines[i])
        was = [ln for ln in lines[i + 1: j] if ln.startswith(indent + WAS)]
        if was:
            out += [indent + ln[len(indent) + len(WAS):].rstrip("\r\n") + nl for ln in was]
        else:   # an inserted block: also take out the two blank lines put before it
            for _ in range(2):
                if out and not out[-1].strip():
                    out.pop()
        i = j + 1
    result = "".join(out)
    if text and not text.endswith(("\n", "\r")) and result.endswith(("\n", "\r")):
        result = result[: -len(_newline(result[-2:]))]
    return result


# ------------------------------------------------------------------------------ the command

def _read(path: str) -> tuple[bytes, str, str]:
    import tokenize
    with open(path, "rb") as f:
        raw = f.read()
    import io
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        text = raw.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        raise Refused(f"it cannot be read as Python source ({exc})") from None
    if encoding == "utf-8-sig":
        text = text.lstrip("\ufeff")
    return raw, text, encoding


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.openrouter_direct.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        import shutil
        shutil.copymode(path, tmp)
    except OSError:
        pass
    os.replace(tmp, path)


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding)


def resolve(path: str) -> str:
    if os.path.isdir(path):
        for rel in RELATIVE_CANDIDATES:
            candidate = os.path.join(path, rel)
            if os.path.isfile(candidate):
                return candidate
        raise Refused(f"{path} is a directory without {RELATIVE_CANDIDATES[0]} or "
                      f"{RELATIVE_CANDIDATES[3]}: give the path "
                      "of run_utils.py")
    if not os.path.isfile(path):
        raise Refused(f"{path} does not exist")
    return path


def _listed(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def patch_file(path: str) -> str:
    raw, text, encoding = _read(path)
    upgrade = False
    if is_patched(text):
        missing = [f for f in defined(text, path) if f not in routed(text)]
        if not missing:
            return f"{path} is already patched; nothing changed"
        # Patched by an older openrouter_direct that knew fewer helpers: redo the patch.
        text = revert_text(text)
        upgrade = True
    new, shape = patch_text(text, path)
    if not upgrade or not os.path.isfile(path + ".orig"):
        with open(path + ".orig", "wb") as f:
            f.write(raw)
    _write(path, _encode(new, encoding))
    names = routed(new)
    if shape == "fork":
        what = (f"its .openrouter_replacement import now resolves to openrouter_direct "
                f"({_listed(names)} routed)")
    else:
        what = f"{_listed(names)} delegate to openrouter_direct"
    again = " (re-patched: an older patch left some helpers on LiteLLM)" if upgrade else ""
    return (f"patched {path}{again}: {what} when USE_OPENROUTER_DIRECT=true "
            f"(backup: {path}.orig; undo: --revert)")


def revert_file(path: str) -> str:
    raw, text, encoding = _read(path)
    if not is_patched(text):
        return f"{path} is not patched; nothing to revert"
    orig = path + ".orig"
    try:
        old = _encode(revert_text(text), encoding)
    except Refused as exc:
        if not os.path.isfile(orig):
            raise
        with open(orig, "rb") as f:
            old = f.read()
        _write(path, old)
        os.remove(orig)
        return f"{exc}: restored {path} from {orig}"
    _write(path, old)
    if os.path.isfile(orig):
        with open(orig, "rb") as f:
            same = f.read() == old
        if same:
            os.remove(orig)
            return f"reverted {path} (it matches {orig} again, so the backup is gone)"
        return f"reverted {path}; {orig} differs (edits made since the patch were kept), kept it"
    return f"reverted {path}"


def check_file(path: str) -> tuple[bool, str]:
    """(every helper the file defines is routed, the report). The report names the helpers
    routed to openrouter_direct with USE_OPENROUTER_DIRECT=true and those left on LiteLLM."""
    _raw, text, _enc = _read(path)
    helpers = defined(text, path)
    if is_patched(text):
        names = routed(text)
        left = [f for f in helpers if f not in names]
        msg = (f"{path}: patched; with USE_OPENROUTER_DIRECT=true openrouter_direct serves "
               f"{_listed(names) or 'nothing'}")
        if left:
            return False, (msg + f"; NOT routed: {_listed(left)} (patched by an older "
                           "openrouter_direct: run patch-run-utils again)")
        return True, msg
    shape, _ = _shape(_parse(text, path))
    extra = " (a fork's, importing .openrouter_replacement)" if shape == "fork" else ""
    return False, f"{path}: not patched{extra}; LiteLLM serves {_listed(helpers)}"


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m openrouter_direct patch-run-utils",
        description="Rewrite DR-Tulu's open_instruct/search_rewards/utils/run_utils.py or "
                    "open-instruct's open_instruct/rubrics/run_utils.py so that every LiteLLM "
                    "helper it defines (run_litellm, run_litellm_async, run_litellm_async_raw) "
                    "delegates to openrouter_direct when USE_OPENROUTER_DIRECT=true. "
                    "Idempotent; keeps PATH.orig.")
    parser.add_argument("path", metavar="PATH",
                        help="run_utils.py, or a DR-Tulu / open-instruct checkout")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="report whether PATH is patched and which helpers are routed "
                           "(exit 0: every helper routed, 1: not)")
    mode.add_argument("--revert", action="store_true", help="undo the patch")
    args = parser.parse_args(argv)
    try:
        path = resolve(args.path)
        if args.check:
            patched, message = check_file(path)
            print(message)
            return 0 if patched else 1
        print(revert_file(path) if args.revert else patch_file(path))
        return 0
    except Refused as exc:
        verb = "revert" if args.revert else "check" if args.check else "patch"
        print(f"patch-run-utils: will not {verb} {args.path}: {exc}; nothing changed",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"patch-run-utils: {exc}; nothing changed", file=sys.stderr)
        return 2
