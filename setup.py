"""Build of openrouter_direct's C extension.

libcurl and cJSON are found through pkg-config. OPENROUTER_DIRECT_SANITIZE=address|undefined|thread
(comma-separated) builds with those sanitizers; OPENROUTER_DIRECT_DEBUG=1 builds -O0 -g;
OPENROUTER_DIRECT_TEST_HOOKS=1 compiles in the pauses some tests use to widen a race window.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup

SYSTEM_PACKAGES = "libcurl4-openssl-dev libcjson-dev pkg-config"
SOURCES = ["module.c", "request.c", "env.c", "endpoint.c", "jsonw.c", "headers.c", "reqlife.c",
           "engine.c", "call.c", "hedge_run.c", "queue.c", "handles.c", "sockets.c", "stats.c",
           "policy.c", "hedge.c", "response.c", "reader.c", "deliver.c", "channel.c", "metrics.c"]


def pkg_config(*args):
    exe = shutil.which("pkg-config")
    if exe is None:
        sys.exit(
            "openrouter_direct: pkg-config was not found. On Debian/Ubuntu run:\n"
            f"    apt-get install -y {SYSTEM_PACKAGES}"
        )
    try:
        out = subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
        sys.exit(
            "openrouter_direct: libcurl and cJSON development files were not found by pkg-config "
            f"({' '.join(args[1:])}). On Debian/Ubuntu run:\n"
            f"    apt-get install -y {SYSTEM_PACKAGES}"
        )
    return shlex.split(out)


def version():
    """openrouter_direct.__version__, the one place the version is written (pyproject.toml reads
    it too): read as text, since the package cannot be imported before its extension is built."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openrouter_direct", "__init__.py")
    with open(path, encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if not match:
        sys.exit(f"openrouter_direct: no __version__ line in {path}")
    return match.group(1)


def extension():
    libs = ("libcurl", "libcjson")
    # The User-Agent names the release series (major.minor), as it always has.
    series = ".".join(version().split(".")[:2])
    cflags = pkg_config("--cflags", *libs)
    ldflags = pkg_config("--libs", *libs)
    compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                    "-fvisibility=hidden"]
    link_args = []
    sanitize = os.environ.get("OPENROUTER_DIRECT_SANITIZE", "").strip()
    if sanitize:
        flags = [f"-fsanitize={s.strip()}" for s in sanitize.split(",") if s.strip()]
        compile_args += flags + ["-fno-omit-frame-pointer", "-g", "-O1"]
        link_args += flags
    elif os.environ.get("OPENROUTER_DIRECT_DEBUG") == "1":
        compile_args += ["-O0", "-g"]
    else:
        compile_args += ["-O2"]
    if os.environ.get("OPENROUTER_DIRECT_TEST_HOOKS") == "1":
        compile_args += ["-DORD_TEST_HOOKS"]  # race-window pauses for tests (csrc/engine.c)
    return Extension(
        "openrouter_direct._native",
        sources=[os.path.join("csrc", s) for s in SOURCES],
        depends=[os.path.join("csrc", h) for h in ("ord.h", "engine_int.h")],
        define_macros=[("ORD_USER_AGENT", f'"openrouter_direct/{series}"')],
        extra_compile_args=cflags + compile_args,
        extra_link_args=ldflags + link_args + ["-lm", "-lpthread"],
    )


setup(ext_modules=[extension()])
