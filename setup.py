"""Build of openrouter_direct's C extension.

libcurl and cJSON are found through pkg-config. OPENROUTER_DIRECT_SANITIZE=address|undefined|thread
(comma-separated) builds with those sanitizers; OPENROUTER_DIRECT_DEBUG=1 builds -O0 -g;
OPENROUTER_DIRECT_TEST_HOOKS=1 compiles in the pauses some tests use to widen a race window.
"""
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup

SYSTEM_PACKAGES = "libcurl4-openssl-dev libcjson-dev pkg-config"
SOURCES = ["module.c", "request.c", "engine.c", "policy.c", "response.c", "deliver.c",
           "metrics.c"]


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


def extension():
    libs = ("libcurl", "libcjson")
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
        depends=[os.path.join("csrc", "ord.h")],
        extra_compile_args=cflags + compile_args,
        extra_link_args=ldflags + link_args + ["-lm", "-lpthread"],
    )


setup(ext_modules=[extension()])
