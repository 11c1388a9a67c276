#!/usr/bin/env bash
# Set up a development environment on a fresh Debian machine with Python 3.11:
# redis-server from Debian packages when missing, a virtualenv in .venv, and
# inferis installed (editable) with the extras named in INFERIS_EXTRAS.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${INFERIS_EXTRAS:-test}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server from Debian packages"
  sudo_cmd=""
  if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server redis-tools >/dev/null
fi
# Debian starts a system redis on 6379 after install; inferis never needs it.
redis-server --version

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "setup: done (extras: ${extras})"
