"""NvmlMeter on a real NVIDIA GPU around a torch matmul loop. Skipped unless NVML sees a GPU and torch
has CUDA. Units: J, s, W.

Checks: the energy counter rises under load (and more than at idle), it agrees with NVML power
integrated over the same window (the ``nvml-power`` path, read every 20 ms), and its refresh period
is printed (``NVML_UPDATE_PERIOD_S`` is a nominal 0.1 s until measured: run with ``-s`` to see it).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from serve_app.energy.base import MeterError
from serve_app.energy.nvml import NvmlMeter, nvml_available

pytestmark = pytest.mark.gpu

if not nvml_available():
    pytest.skip("NVML sees no GPU", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA device", allow_module_level=True)


def _torch_gpu_ids() -> list[str]:
    """The GPU behind torch's ``cuda:0`` as a vLLM worker reports it (``llm_workers``): the meter then
    watches the GPU we load, as the replica's meter watches its workers' GPUs."""
    from serve_app.classifiers.llm_workers import describe_worker

    return [describe_worker(torch.device("cuda:0"), 0)["gpu"]]


def test_worker_gpu_id_resolves_to_one_nvml_device() -> None:
    """What a vLLM worker reports for its device names exactly one physical GPU for NVML."""
    (gpu,) = _torch_gpu_ids()
    meter = NvmlMeter([gpu], power_fallback=True)
    try:
        assert len(meter.info.devices) == 1
        assert meter.info.devices[0].endswith("=" + gpu) or gpu.isdigit(), (gpu, meter.info.devices)
    finally:
        meter.close()


def _matmul_for(seconds: float) -> int:
    """Run 8192^2 matmuls on cuda:0 for about ``seconds``; returns the number of products."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10):
            a @ b  # noqa: B018 (the work is the point)
        torch.cuda.synchronize()
        n += 10
    return n


@pytest.fixture()
def counter_meter() -> Iterator[NvmlMeter]:
    try:
        meter = NvmlMeter(_torch_gpu_ids(), power_fallback=True)
    except MeterError as e:
        pytest.fail(f"NVML sees a GPU but the meter cannot open it: {e}")
    yield meter
    meter.close()


def test_energy_positive_and_consistent_with_power(counter_meter: NvmlMeter) -> None:
    power_meter = NvmlMeter(_torch_gpu_ids(), force_power=True)
    stop = threading.Event()

    def integrate() -> None:  # power integration needs frequent reads
        while not stop.wait(0.02):
            power_meter.read()

    _matmul_for(1.0)  # warm up kernels and clocks
    sampler = threading.Thread(target=integrate, daemon=True)
    c0, p0 = counter_meter.read(), power_meter.read()
    sampler.start()
    time.sleep(1.5)  # idle margins keep the ~1 s averaged power inside the window
    idle_c = counter_meter.read()
    _matmul_for(6.0)
    busy_c = counter_meter.read()
    time.sleep(2.0)
    c1, p1 = counter_meter.read(), power_meter.read()
    stop.set()
    sampler.join()
    power_meter.close()

    counter_j = sum(c1.energy_j.values()) - sum(c0.energy_j.values())
    power_j = sum(p1.energy_j.values()) - sum(p0.energy_j.values())
    idle_w = (sum(idle_c.energy_j.values()) - sum(c0.energy_j.values())) / (idle_c.t_s - c0.t_s)
    busy_w = (sum(busy_c.energy_j.values()) - sum(idle_c.energy_j.values())) / (busy_c.t_s - idle_c.t_s)
    print(
        f"\nsource={counter_meter.info.source} window={c1.t_s - c0.t_s:.2f}s counter={counter_j:.1f}J "
        f"power-integrated={power_j:.1f}J idle={idle_w:.0f}W busy={busy_w:.0f}W"
    )
    assert counter_j > 0 and power_j > 0
    assert busy_w > idle_w, "the matmul loop should draw more than idle"
    assert 10.0 < busy_w < 2000.0
    if counter_meter.info.source == "nvml":
        assert 0.8 < power_j / counter_j < 1.25, (power_j, counter_j)


def test_counter_update_period(counter_meter: NvmlMeter) -> None:
    """Poll every 1 ms under load; the median gap between changes is the counter's refresh period."""
    if counter_meter.info.source != "nvml":
        pytest.skip("no energy counter on this GPU (power fallback)")
    changes_s: list[float] = []
    done = threading.Event()

    def poll() -> None:
        last = counter_meter.read()
        last_change_s = last.t_s
        while not done.is_set():
            r = counter_meter.read()
            if r.energy_j != last.energy_j:
                changes_s.append(r.t_s - last_change_s)
                last_change_s = r.t_s
            last = r
            time.sleep(0.001)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _matmul_for(3.0)
    done.set()
    poller.join()
    assert len(changes_s) > 5
    period_s = statistics.median(changes_s[1:])
    print(f"\nNVML energy counter: {len(changes_s)} changes, median refresh period {period_s * 1000:.1f} ms")
    assert period_s < 1.0
