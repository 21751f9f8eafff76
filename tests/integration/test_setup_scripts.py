"""scripts/setup.sh touches nothing outside the checkout (issue 13): no system services, no killing by name,
and its Prometheus step leaves a Prometheus that is already running alone."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.ports import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]
FORBIDDEN = re.compile(
    r"\b(systemctl|service|pkill|killall|sudo|apt-get\s+(-\S+\s+)*install|apt\s+install)\b"
)


def code_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_start_stop_or_install_nothing_system_wide(script: Path) -> None:
    bad = [ln for ln in code_lines(script) if FORBIDDEN.search(ln)]
    assert bad == []


def test_the_check_sees_what_the_old_setup_did() -> None:
    old = 'sudo systemctl disable --now "$svc" || $sudo_ pkill -x "$svc"\napt-get install -y -qq prometheus'
    assert all(FORBIDDEN.search(ln) for ln in old.splitlines())


def fetch_binaries(home: Path) -> Path:
    """Run the setup's Prometheus step (scripts/prometheus-binaries.sh) into ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "ACCUWATT_PROMETHEUS_DIR"}
    env["ACCUWATT_PROMETHEUS_HOME"] = str(home)
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # a Prometheus on PATH would make the step skip
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prometheus-binaries.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home / "bin"


def start_time_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: the process's start time (a restarted process has another)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


@pytest.fixture
def running_prometheus(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A Prometheus of the test's own, from a first run of the step, on a free loopback port."""
    bin_dir = fetch_binaries(tmp_path / "first")
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(bin_dir / "prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/-/ready", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "prometheus did not start"
        time.sleep(0.2)
    try:
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(30)


def test_prometheus_step_leaves_a_running_prometheus_alone(
    running_prometheus: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    proc, url = running_prometheus
    started = start_time_ticks(proc.pid)
    bin_dir = fetch_binaries(tmp_path / "second")  # the whole step again: download, unpack, link
    assert sorted(p.name for p in bin_dir.iterdir()) == ["prometheus", "prometheus-pushgateway", "promtool"]
    assert (bin_dir / "prometheus").resolve().is_relative_to(tmp_path / "second")
    assert proc.poll() is None, "the running Prometheus was stopped"
    assert start_time_ticks(proc.pid) == started
    assert httpx.get(url + "/-/ready", timeout=5, trust_env=False).status_code == 200
