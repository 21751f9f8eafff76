"""The locked dependency sets (requirements/*.txt, scripts/lock.sh): the profiles agree on what they share,
and the venv the tests run in holds exactly the lock of the profile it was installed with."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
SHARED = ("fastapi", "starlette", "pydantic", "pydantic-core", "numpy", "ray")
"""What the router and Ray run on in every profile (scripts/lock.sh constrains the GPU lock to these)."""
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(profile: str) -> dict[str, str]:
    """``{normalized name: version}``; every line is a comment or an exact pin."""
    pins: dict[str, str] = {}
    for line in (LOCKS / f"{profile}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{profile}.txt: not an exact pin: {line!r}"
        pins[norm(m.group(1))] = m.group(2)
    return pins


def test_demo_lock_is_the_test_lock_restricted() -> None:
    """The demo runs what the tests run: every package of the demo lock is in the test lock at the same
    version (the demo lock is compiled with the test lock as constraints)."""
    demo, test = read_lock("demo"), read_lock("test")
    assert set(SHARED) | {"torch"} <= set(demo)
    differ = {n: (v, test.get(n)) for n, v in demo.items() if test.get(n) != v}
    assert differ == {}, f"demo vs test lock: {differ}"


def test_gpu_lock_shares_the_router_stack() -> None:
    gpu, test = read_lock("gpu"), read_lock("test")
    assert {n: gpu[n] for n in SHARED} == {n: test[n] for n in SHARED}


@pytest.mark.parametrize("profile", ["demo", "test"])
def test_cpu_locks_hold_no_cuda_packages(profile: str) -> None:
    cuda = sorted(n for n in read_lock(profile) if n.startswith("nvidia-") and n != "nvidia-ml-py")
    assert cuda == []
    assert "+" not in read_lock(profile)["torch"]  # torch==X: the CPU build X+cpu and the default one match


def test_installed_packages_match_the_lock_of_the_venvs_profile() -> None:
    """scripts/setup.sh records the profile in <venv>/accuwatt-profile; every locked package must be
    installed at the locked version (torch's +cpu label aside)."""
    stamp = Path(sys.prefix) / "accuwatt-profile"
    if not stamp.exists():
        pytest.skip(f"{sys.prefix} was not made by scripts/setup.sh (no accuwatt-profile)")
    profile = stamp.read_text().split()[0]
    wrong: dict[str, tuple[str, str | None]] = {}
    for name, version in read_lock(profile).items():
        try:
            installed: str | None = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}, f"{sys.prefix} vs requirements/{profile}.txt (locked, installed): {wrong}"
