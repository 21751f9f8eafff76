#!/usr/bin/env bash
# Debian's Prometheus, Pushgateway and promtool for the test profile, unpacked inside the checkout: the
# packages are downloaded (`apt-get download`, apt's lists and caches under .cache/apt, no root) and
# extracted with `dpkg-deb -x` into .cache/prometheus; .cache/bin links the binaries, where
# serve_app.monitoring.stack looks for them. Nothing is installed, started, stopped or disabled on the
# system. Skipped when ACCUWATT_PROMETHEUS_DIR names binaries of your own, when they are on PATH, or
# when they are already there.
#   ACCUWATT_PROMETHEUS_HOME   where to put them (default .cache in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
home="$(mkdir -p "${ACCUWATT_PROMETHEUS_HOME:-.cache}" && cd "${ACCUWATT_PROMETHEUS_HOME:-.cache}" && pwd)"
names=(prometheus prometheus-pushgateway promtool)
have() { for n in "${names[@]}"; do [ -x "$1/$n" ] || return 1; done; }
if [ -n "${ACCUWATT_PROMETHEUS_DIR:-}" ]; then
  have "$ACCUWATT_PROMETHEUS_DIR" || { echo "ACCUWATT_PROMETHEUS_DIR=$ACCUWATT_PROMETHEUS_DIR lacks one of ${names[*]}" >&2; exit 1; }
  exit 0
fi
have "$home/bin" && exit 0
# Already on PATH (a system install of yours): stack.py finds them there; nothing to fetch.
command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && command -v promtool >/dev/null && exit 0
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "no apt-get here: put ${names[*]} in $home/bin or name their folder in ACCUWATT_PROMETHEUS_DIR" >&2
  exit 1
}
apt="$home/apt"
mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs" "$home/prometheus" "$home/bin"
opts=(-q -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o Debug::NoLocking=1
  -o "APT::Sandbox::User=$(id -un)")
apt-get "${opts[@]}" update >/dev/null
(cd "$apt/debs" && apt-get "${opts[@]}" download prometheus prometheus-pushgateway >/dev/null)
for deb in "$apt/debs"/prometheus*.deb; do dpkg-deb -x "$deb" "$home/prometheus"; done
for n in "${names[@]}"; do ln -sfn "../prometheus/usr/bin/$n" "$home/bin/$n"; done
echo "prometheus binaries in $home/bin: $("$home/bin/prometheus" --version 2>&1 | head -1)"
