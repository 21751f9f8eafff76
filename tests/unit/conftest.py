"""Fixtures of the unit tests that several files use."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from serve_app.energy.nvml import nvml_available
from serve_app.energy.rapl import rapl_available
from tests.unit.test_nvml import UUIDS, FakeGpu, FakeNvml


@pytest.fixture()
def gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """Two GPUs behind the ``pynvml`` module (the vendor library's interface, scripted as in
    ``test_nvml.py``), as the node's agent imports it."""
    fake = FakeNvml([FakeGpu(UUIDS[0], energy_mj=1_000_000), FakeGpu(UUIDS[1], energy_mj=2_000_000)])
    module = types.SimpleNamespace(
        **{n: getattr(fake, n) for n in dir(fake) if n.startswith(("nvml", "NVML"))}
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)
    nvml_available.cache_clear()
    rapl_available.cache_clear()
    yield fake
    nvml_available.cache_clear()
    rapl_available.cache_clear()
