#!/usr/bin/env bash
# Installs what the benchmark needs: nginx-light and wrk (apt), a venv in bench/.venv with the
# peers (aiohttp httpx openai curl_cffi pycurl litellm), matplotlib, uvloop (for the scale test's
# server only; plain asyncio without it), and openrouter_direct.
# A peer that fails to install is skipped (the report says "not installed"); the others go on.
# pycurl is built from source against the system libcurl, the one openrouter_direct uses.
# openrouter_direct: when its extension is already built in place (the repository's own
# .ci/setup does that), the venv gets a .pth file pointing at the checkout, so nothing is
# rebuilt; otherwise it is installed editable from the checkout.
set -uo pipefail
cd "$(dirname "$0")"
ROOT="$(cd .. && pwd)"
PEERS="aiohttp httpx openai curl_cffi litellm uvloop"

need_apt=""
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt="$need_apt nginx-light"
command -v wrk >/dev/null || need_apt="$need_apt wrk"
command -v openssl >/dev/null || need_apt="$need_apt openssl"
command -v curl >/dev/null || need_apt="$need_apt curl"
if ! pkg-config --exists libcurl 2>/dev/null || ! command -v curl-config >/dev/null; then
    need_apt="$need_apt libcurl4-openssl-dev libssl-dev pkg-config"
fi
if [ -n "$need_apt" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "[setup] apt-get install$need_apt"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need_apt >/dev/null || {
        echo "[setup] apt-get install failed"; exit 1; }
fi
# Installing nginx may start the distribution's own server; the bench never uses it.

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv || { echo "[setup] venv failed"; exit 1; }
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" matplotlib || { echo "[setup] matplotlib failed to install"; exit 1; }
failed=""
for p in $PEERS; do
    .venv/bin/python -c "import importlib.metadata as m; m.version('$p')" 2>/dev/null && continue
    "${pip[@]}" "$p" >/dev/null 2>&1 || failed="$failed $p"
done
if ! .venv/bin/python -c "import pycurl" 2>/dev/null; then
    PYCURL_SSL_LIBRARY=openssl "${pip[@]}" --no-binary pycurl pycurl >/dev/null 2>&1 \
        || failed="$failed pycurl"
fi
[ -z "$failed" ] || echo "[setup] failed to install, skipped in the report:$failed"

if ! .venv/bin/python -c "import openrouter_direct" 2>/dev/null; then
    site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if (cd /tmp && "$PY" -c "import sys; sys.path.insert(0, '$ROOT'); import openrouter_direct") 2>/dev/null
    then
        echo "$ROOT" > "$site/openrouter_direct_checkout.pth"
    else
        "${pip[@]}" -e "$ROOT" || { echo "[setup] openrouter_direct failed to install"; exit 1; }
    fi
fi
.venv/bin/python -c "import openrouter_direct" || exit 1
echo "[setup] ready"
