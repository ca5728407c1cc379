"""``python -m openrouter_direct patch-run-utils PATH``: switch DR-Tulu's LiteLLM calls over.

DR-Tulu's ``open_instruct/search_rewards/utils/run_utils.py`` defines ``run_litellm`` (sync) and
``run_litellm_async``. This rewrites that file so that when ``USE_OPENROUTER_DIRECT`` is ``true``
(any case, read at import, as run_utils reads it) both delegate to openrouter_direct, and logs
"Using direct OpenRouter API calls instead of litellm" at INFO on run_utils' own logger; with any
other value the LiteLLM functions stay exactly as written. Two shapes are handled:

* no OpenRouter branch (DR-Tulu as published): a block goes in after the later of the two
  functions; it rebinds both names through ``drop_in`` (below) and logs the line;
* a fork that already imports ``call_openrouter_async, call_openrouter`` from
  ``.openrouter_replacement`` (and has its own branch and log line): that import is swapped for
  the same names from ``openrouter_direct``.

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
from typing import Any, Callable

START = "# >>> openrouter_direct patch-run-utils >>>"
END = "# <<< openrouter_direct patch-run-utils <<<"
WAS = "# | "
FUNCTIONS = ("run_litellm", "run_litellm_async")
FORK_MODULE = "openrouter_replacement"
FORK_NAMES = {"call_openrouter", "call_openrouter_async", "run_openrouter",
              "run_openrouter_async"}
INFO_LINE = "Using direct OpenRouter API calls instead of litellm"
# Where run_utils.py sits when PATH is a checkout rather than the file.
RELATIVE_CANDIDATES = (
    "open_instruct/search_rewards/utils/run_utils.py",
    "open-instruct/open_instruct/search_rewards/utils/run_utils.py",
    "rl/open-instruct/open_instruct/search_rewards/utils/run_utils.py",
)

_OURS = ("model_name", "user_prompt", "system_prompt", "messages")


# ------------------------------------------------------------------------- at run time

def drop_in(original: Callable[..., Any]) -> Callable[..., Any]:
    """The openrouter_direct function to call in place of ``original``.

    ``run_openrouter_async`` for a coroutine function, else ``run_openrouter``. When
    ``original``'s positional parameters are ours, in our order (DR-Tulu's ``model_name,
    user_prompt, system_prompt[, messages]``), that function itself is returned: no extra call
    per call. Another order (open-instruct's older ``model_name, system_prompt, user_prompt``)
    gets a thin wrapper that passes positional arguments on by ``original``'s names."""
    from . import _api

    is_async = inspect.iscoroutinefunction(original)
    target = _api.run_openrouter_async if is_async else _api.run_openrouter
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

    def by_name(args: tuple, kwargs: dict) -> dict:
        if len(args) > len(names):
            raise TypeError(f"{label}() takes {len(names)} positional arguments but "
                            f"{len(args)} were given")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{label}() got multiple values for argument {name!r}")
            kwargs[name] = value
        return kwargs

    if is_async:
        async def delegate(*args: Any, **kwargs: Any) -> str:
            return await target(**by_name(args, kwargs))
    else:
        def delegate(*args: Any, **kwargs: Any) -> str:  # type: ignore[misc]
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


def _parse(text: str, name: str):
    import ast
    try:
        return ast.parse(text, filename=name)
    except (SyntaxError, ValueError) as exc:
        raise Refused(f"it does not parse as Python ({exc})") from None


def _shape(tree) -> tuple[str, list]:
    """('fork', [ImportFrom nodes]) or ('plain', [])."""
    import ast
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").split(".")[-1] == FORK_MODULE]
    return ("fork", imports) if imports else ("plain", [])


def _functions(tree, name: str) -> dict:
    import ast
    found = {n.name: n for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in FUNCTIONS}
    missing = [f for f in FUNCTIONS if f not in found]
    if missing:
        raise Refused(f"it does not define {' and '.join(missing)} at module level, so it is not "
                      "DR-Tulu's run_utils.py")
    return found


def _logger_name(tree, before_line: int) -> str | None:
    """The module-level ``X = logging.getLogger(...)`` defined above ``before_line``."""
    import ast
    for node in tree.body:
        if node.lineno >= before_line:
            break
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            func = node.value.func
            if ((isinstance(func, ast.Attribute) and func.attr == "getLogger")
                    or (isinstance(func, ast.Name) and func.id == "getLogger")):
                return node.targets[0].id
    return None


def _block(logger: str | None, nl: str) -> list[str]:
    body = [
        START,
        "# Written by `python -m openrouter_direct patch-run-utils`; `--revert` takes it out.",
        "# USE_OPENROUTER_DIRECT=true (any case, read at import) sends run_litellm and",
        "# run_litellm_async through openrouter_direct; otherwise LiteLLM serves them as above.",
        "import os as _openrouter_direct_os",
    ]
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
        "    run_litellm = _openrouter_direct_drop_in(run_litellm)",
        "    run_litellm_async = _openrouter_direct_drop_in(run_litellm_async)",
        f'    {log_call}("{INFO_LINE}")',
        END,
    ]
    return [nl, nl] + [line + nl for line in body]


def _swap_import(lines: list[str], node, nl: str) -> list[str]:
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
    if shape == "fork":
        for node in sorted(imports, key=lambda n: n.lineno, reverse=True):
            lines[node.lineno - 1: node.end_lineno] = _swap_import(lines, node, nl)
    else:
        after = max(f.end_lineno for f in funcs.values())
        lines[after:after] = _block(_logger_name(tree, after + 1), nl)
    new = "".join(lines)
    if not text.endswith(("\n", "\r")):   # a file without a final newline stays so
        new = new[: -len(nl)]
    _parse(new, name)
    if revert_text(new) != text:
        raise Refused("the rewrite would not revert cleanly (please report this)")
    return new, shape


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
        raise Refused(f"{path} is a directory without {RELATIVE_CANDIDATES[0]}: give the path "
                      "of run_utils.py")
    if not os.path.isfile(path):
        raise Refused(f"{path} does not exist")
    return path


def patch_file(path: str) -> str:
    raw, text, encoding = _read(path)
    if is_patched(text):
        return f"{path} is already patched; nothing changed"
    new, shape = patch_text(text, path)
    with open(path + ".orig", "wb") as f:
        f.write(raw)
    _write(path, _encode(new, encoding))
    if shape == "fork":
        what = "its .openrouter_replacement import now resolves to openrouter_direct"
    else:
        what = "run_litellm and run_litellm_async delegate to openrouter_direct"
    return (f"patched {path}: {what} when USE_OPENROUTER_DIRECT=true "
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
    _raw, text, _enc = _read(path)
    if is_patched(text):
        return True, f"{path}: patched (USE_OPENROUTER_DIRECT=true selects openrouter_direct)"
    tree = _parse(text, path)
    _functions(tree, path)
    shape, _ = _shape(tree)
    extra = " (a fork's, importing .openrouter_replacement)" if shape == "fork" else ""
    return False, f"{path}: not patched{extra}"


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m openrouter_direct patch-run-utils",
        description="Rewrite DR-Tulu's open_instruct/search_rewards/utils/run_utils.py so that "
                    "run_litellm and run_litellm_async delegate to openrouter_direct when "
                    "USE_OPENROUTER_DIRECT=true. Idempotent; keeps PATH.orig.")
    parser.add_argument("path", metavar="PATH",
                        help="run_utils.py, or a DR-Tulu / open-instruct checkout")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="report whether PATH is patched (exit 0: patched, 1: not)")
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
