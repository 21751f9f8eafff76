#!/usr/bin/env bash
# Set up (the test profile's lock in .venv, or in $ACCUWATT_VENV; Prometheus binaries in .cache/bin; the
# SmolLM2 model) and run the whole test suite.
# Usage: scripts/test.sh [pytest args...]    e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
venv="${ACCUWATT_VENV:-.venv}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export ACCUWATT_CACHE="${ACCUWATT_CACHE:-$PWD/.cache}"
# The LLM tests need SmolLM2 converted once (cached under .cache/, not committed).
"$venv/bin/accuwatt" models prepare smollm2 >/dev/null
set +e
"$venv/bin/python" -m pytest -ra --durations=40 "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $rc
