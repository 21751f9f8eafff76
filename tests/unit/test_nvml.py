"""NVML meter without a GPU: the availability probe, the GPU id mapping (a pure function), and the
meter against a scripted stand-in for the vendor library (``pynvml``'s interface, nothing else).
Units: the fake reports mJ and mW like NVML; the meter reports J."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from serve_app.energy.base import MeterError
from serve_app.energy.nvml import (
    GpuIdentity,
    NvmlMeter,
    nvml_available,
    parse_visible_devices,
    resolve_gpus,
)

pytestmark = pytest.mark.unit

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbb3333-0000"]
PHYSICAL = [GpuIdentity(i, u) for i, u in enumerate(UUIDS)]


# -- the vendor boundary -----------------------------------------------------------------------
class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    uuid: str
    energy_mj: int | None = 0  # None: counter NotSupported
    power_mw: int | None = 100_000  # None: power NotSupported
    lost: bool = False
    max_limit_mw: int | None = 700_000  # the highest settable power limit; None: NotSupported


@dataclass
class FakeNvml:
    """Implements the slice of pynvml the meter calls, with scripted device values."""

    gpus: list[FakeGpu]
    init_error: bool = False
    inits: int = 0
    shutdowns: int = 0
    calls: list[str] = field(default_factory=list)
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:
        self.calls.append("by_uuid")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        return next(g for g in self.gpus if g.uuid == text)

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> bytes:
        return handle.uuid.encode()  # older pynvml returns bytes

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        if handle.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        if handle.energy_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        return handle.energy_mj

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeGpu) -> list[int]:
        if handle.max_limit_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return [100_000, handle.max_limit_mw]

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        if handle.lost:
            raise NVMLError_GpuIsLost("GPU is lost")
        if handle.power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return handle.power_mw


class Clock:
    def __init__(self, t_s: float = 100.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    nvml_available.cache_clear()
    yield
    nvml_available.cache_clear()


# -- availability ------------------------------------------------------------------------------
def test_available_is_a_clean_bool() -> None:
    assert isinstance(nvml_available(), bool)  # False on this GPU-less host, True on a GPU host


def test_available_false_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert nvml_available() is False
    with pytest.raises(MeterError, match="nvidia-ml-py"):
        NvmlMeter([0])


def test_available_false_when_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([FakeGpu(UUIDS[0])], init_error=True)
    module = types.SimpleNamespace(
        **{n: getattr(fake, n) for n in dir(fake) if n.startswith(("nvml", "NVML"))}
    )
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert nvml_available() is False
    fake.init_error = False
    assert nvml_available() is False  # cached
    nvml_available.cache_clear()
    assert nvml_available() is True
    assert fake.shutdowns == 1
    fake.gpus.clear()
    nvml_available.cache_clear()
    assert nvml_available() is False  # no GPU


# -- id mapping (pure) -------------------------------------------------------------------------
def test_parse_visible_devices() -> None:
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices(" 1, GPU-aaaa ,") == ["1", "GPU-aaaa"]


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "expected"),
    [
        ([0], None, [0]),
        (["2", "0"], None, [0, 2]),  # Ray returns a set: sorted by NVML index
        ([2, "2", UUIDS[2]], None, [2]),  # duplicates by index and UUID
        ([UUIDS[1]], None, [1]),
        (["GPU-aaaa"], None, [0]),  # unique prefix, as CUDA accepts
        (None, ["GPU-bbbb3333-0000", "0"], [0, 2]),  # CUDA_VISIBLE_DEVICES with UUIDs and indices
        (None, None, [0, 1, 2]),  # nothing set: every GPU
        (None, [], []),
        ([], ["1"], []),  # Ray's answer wins over the environment
    ],
)
def test_resolve_gpus(
    gpu_ids: list[str | int] | None, visible: list[str] | None, expected: list[int]
) -> None:
    got = resolve_gpus(gpu_ids, PHYSICAL, visible)
    assert [g.index for g in got] == expected
    assert [g.uuid for g in got] == [UUIDS[i] for i in expected]


@pytest.mark.parametrize(
    ("gpu_ids", "message"),
    [
        ([3], "index 3 not found"),
        (["GPU-cccc"], "matches no GPU"),
        (["GPU-bbbb"], "ambiguous"),
        (["MIG-1234"], "MIG"),
        (["cuda:0"], "neither an index"),
    ],
)
def test_resolve_gpus_rejects(gpu_ids: list[str | int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_gpus(gpu_ids, PHYSICAL)


# -- the meter on the fake vendor library ------------------------------------------------------
def test_counter_mode_keys_and_units() -> None:
    fake = FakeNvml([FakeGpu(u, energy_mj=1_000 * (i + 1)) for i, u in enumerate(UUIDS)])
    meter = NvmlMeter([UUIDS[2], "0"], nvml=fake)
    r0 = meter.read()
    assert r0.source == "nvml" and meter.info.source == "nvml"
    assert r0.energy_j == {"gpu:0": 1.0, "gpu:2": 3.0}
    assert meter.info.devices == (f"gpu:0={UUIDS[0]}", f"gpu:2={UUIDS[2]}")
    assert meter.info.extra["gpu:2"] == UUIDS[2]
    assert meter.info.resolution_j == pytest.approx(1e-3)
    assert meter.info.update_period_s == pytest.approx(0.1)
    assert meter.info.max_power_w == {"gpu:0": 700.0, "gpu:2": 700.0}  # the board's highest limit
    fake.gpus[2].energy_mj = 3_250
    assert meter.read().energy_j["gpu:2"] - r0.energy_j["gpu:2"] == pytest.approx(0.25)
    assert "by_uuid" in fake.calls
    meter.close()
    meter.close()
    assert fake.shutdowns == 1
    with pytest.raises(MeterError, match="closed"):
        meter.read()


def test_a_board_that_does_not_say_its_limits_has_no_max_power() -> None:
    fake = FakeNvml([FakeGpu(UUIDS[0], max_limit_mw=None), FakeGpu(UUIDS[1], max_limit_mw=450_000)])
    assert NvmlMeter(["0", "1"], nvml=fake).info.max_power_w == {"gpu:1": 450.0}


def test_env_used_when_no_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUIDS[1])
    meter = NvmlMeter(None, nvml=FakeNvml([FakeGpu(u) for u in UUIDS]))
    assert list(meter.read().energy_j) == ["gpu:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(MeterError, match="no GPU to meter"):
        NvmlMeter(None, nvml=FakeNvml([FakeGpu(u) for u in UUIDS]))


def test_power_fallback_integrates_trapezoid() -> None:
    gpu = FakeGpu(UUIDS[0], energy_mj=None, power_mw=100_000)
    clock = Clock(10.0)
    meter = NvmlMeter([0], nvml=FakeNvml([gpu]), clock=clock)
    assert meter.info.source == "nvml-power" and meter.info.extra["mode:gpu:0"] == "power"
    clock.t_s = 12.0
    gpu.power_mw = 300_000
    r1 = meter.read()
    assert r1.source == "nvml-power"
    assert r1.energy_j["gpu:0"] == pytest.approx(0.5 * (100 + 300) * 2.0)  # 400 J
    clock.t_s = 12.5
    r2 = meter.read()
    assert r2.energy_j["gpu:0"] - r1.energy_j["gpu:0"] == pytest.approx(300 * 0.5)
    assert r2.t_s == 12.5


def test_mixed_gpus_label_the_reading_as_power() -> None:
    fake = FakeNvml([FakeGpu(UUIDS[0], energy_mj=5_000), FakeGpu(UUIDS[1], energy_mj=None)])
    meter = NvmlMeter([0, 1], nvml=fake, clock=Clock())
    r = meter.read()
    assert r.source == "nvml-power"
    assert r.energy_j["gpu:0"] == 5.0 and r.energy_j["gpu:1"] == 0.0
    assert meter.info.extra["mode:gpu:0"] == "counter"


def test_force_power_skips_the_counter() -> None:
    meter = NvmlMeter([0], force_power=True, nvml=FakeNvml([FakeGpu(UUIDS[0], energy_mj=7)]), clock=Clock())
    assert meter.info.source == "nvml-power"


def test_no_counter_and_no_fallback_raises() -> None:
    fake = FakeNvml([FakeGpu(UUIDS[0], energy_mj=None)])
    with pytest.raises(MeterError, match="power_fallback is off"):
        NvmlMeter([0], power_fallback=False, nvml=fake)
    assert fake.shutdowns == fake.inits == 1  # released on failure


def test_gpu_with_neither_raises() -> None:
    fake = FakeNvml([FakeGpu(UUIDS[0], energy_mj=None, power_mw=None)])
    with pytest.raises(MeterError, match="neither"):
        NvmlMeter([0], nvml=fake)


def test_lost_gpu_raises_and_keeps_state() -> None:
    good = FakeGpu(UUIDS[0], energy_mj=None, power_mw=200_000)
    bad = FakeGpu(UUIDS[1], energy_mj=1_000)
    clock = Clock(0.0)
    meter = NvmlMeter([0, 1], nvml=FakeNvml([good, bad]), clock=clock)
    clock.t_s = 1.0
    bad.lost = True
    with pytest.raises(MeterError, match="gpu:1.*GPU is lost"):
        meter.read()
    bad.lost = False
    clock.t_s = 2.0
    # the failed read committed nothing: one trapezoid over [0, 2] s at 200 W
    assert meter.read().energy_j["gpu:0"] == pytest.approx(400.0)


def test_unknown_id_raises_meter_error() -> None:
    with pytest.raises(MeterError, match="cannot map GPU ids"):
        NvmlMeter(["GPU-zzzz"], nvml=FakeNvml([FakeGpu(UUIDS[0])]))
