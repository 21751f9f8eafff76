#!/usr/bin/env bash
# Set up (the test profile's lock in .venv, or in $ACCUWATT_VENV; Prometheus binaries in .cache/bin; the
# SmolLM2 model) and run the whole test suite.
# Usage: scripts/test.sh [pytest args...]    e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
venv="${ACCUWATT_VENV:-.venv}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
# The prepared models live where `accuwatt models prepare` keeps them by default in a checkout
# (.cache/models, serve_app/models_prepare.py: default_cache_dir), so `accuwatt serve
# deployments/llm-cpu.yaml` after the tests finds the SmolLM2 they prepared; ACCUWATT_CACHE wins.
export ACCUWATT_CACHE="${ACCUWATT_CACHE:-$PWD/.cache/models}"
# The LLM tests need SmolLM2 converted once (into $ACCUWATT_CACHE, not committed).
"$venv/bin/accuwatt" models prepare smollm2 >/dev/null
set +e
"$venv/bin/python" -m pytest -ra --durations=40 "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $rc
