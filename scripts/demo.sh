#!/usr/bin/env bash
# Set up (the demo profile's lock in .venv, or in $ACCUWATT_VENV) and run the main job: start Ray and the six
# traditional classifiers on Ray Serve, replay the bundled demo test set over HTTP, print the report, shut down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
# In a log (CI, tee) libraries' progress bars (model loading) are carriage-return noise; accuwatt itself
# prints summary lines there.
[ -t 2 ] || export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
exec "${ACCUWATT_VENV:-.venv}/bin/accuwatt" demo "$@"
