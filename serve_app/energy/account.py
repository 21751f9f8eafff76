"""One energy account per node: the node's counters, read once, split to process groups (step 1).

The node's energy agent runs one :class:`NodeAccount`. Every ``tick()`` it reads each node counter once
(``nodemeter.make_node_counters``: RAPL package and DRAM, NVML per GPU, or the whole-node estimate),
reads every process's CPU time (``procs.scan``) and splits each counter's interval energy:

1. **Baseline idle**, kept apart: ``idle_w`` when configured (per counter key or per domain), else the
   lowest sustained power seen so far on that counter (lowest average over a tick of at least
   ``SUSTAINED_S`` whose counter step was ``ok``: a rejected or reset step says nothing of the power;
   the first ticks have none, so the baseline only ever falls), and 0 for the
   estimate's ``cpu`` counter (it counts busy CPU time only, so it has no idle part by construction).
2. **Active CPU and DRAM** energy to every process by its CPU time in the interval (Kepler's rule; DRAM
   follows CPU time too: memory traffic follows the cores that run), summed into groups
   (``procs.group_of``: replicas, routers, proxy, Ray system, other). The denominator is the larger
   of the node's busy CPU time (``/proc/stat``) and the processes' sum: what no live process accounts
   for (processes that exited within the interval, kernel threads' rounding) goes to ``other``.
3. **GPUs** (active part) to the groups that own them (``own_gpus``); a GPU with several owners is
   split equally and flagged ``gpu_shared_equal_split``; a GPU nobody owns goes to ``other``.
4. **Serving overhead**: the proxy's share of each interval goes to the router groups on the node by
   their CPU time in that interval (the routers handled the same requests); with no router busy it
   stays with ``proxy``, a fixed cost of the node like ``ray_system``.

Hence, per counter and over any window, exactly (up to float rounding):

    metered = baseline idle + sum over groups (replicas, routers incl. proxy part, proxy rest,
              ray_system, other)

Counter steps follow ``counters.counter_step`` (resets only near zero, reorderings 0 J, steps above the
physical bound dropped and counted).

Each meter is read on its own: one that fails (a GPU lost to NVML, a RAPL file gone) stops only its own
counters. Their energy while it fails is unknown, so it is split to nobody (``failing`` names them, with
the reason; a share that draws on one says so and its replica's tags are ``unavailable``), and when the
meter is back its counters start again from the value they show then: the energy of the outage is
neither metered nor attributed (``counter_gaps`` counts such restarts, flag ``counter_gap``). Only when
every meter fails is the whole account in error. Units: J, s, W.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from serve_app.energy.base import Meter, MeterError, Reading, Source
from serve_app.energy.counters import Limits, baseline_after, counter_step, dropped_j
from serve_app.energy.nodemeter import node_busy_cpu_s
from serve_app.energy.nvml import GpuIdentity
from serve_app.energy.procs import (
    OTHER,
    PROXY,
    ROUTER_DEPLOYMENTS,
    TitleCache,
    deployment_of,
    group_of,
    kind_of,
    scan,
    uptime_s,
)

log = logging.getLogger(__name__)
SUSTAINED_S = 0.5
"""A tick at least this long counts as *sustained* for the lowest-power baseline (s)."""
RATE_DECAY = 0.5
"""How much less each older interval counts in the extrapolation rate (``rate_j_per_cpu_s``)."""


def share_source(sources: Mapping[str, str]) -> Source:
    """The source a share of the account is labelled with, from the counters its energy comes from
    (counter key -> source; ``share.py`` gives the CPU and DRAM counters and the GPUs the group owns
    or has energy on): ``estimate`` if any part is estimated (an estimate is never passed off as a
    measurement), else ``nvml`` where a GPU counter is in it, else the one source there is."""
    values = set(sources.values())
    if not values or "estimate" in values:
        return "estimate"
    return "nvml" if "nvml" in values else cast(Source, sorted(values)[0])  # sources are the account's


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


class NodeAccount:
    """The node's energy, split to baseline idle and process groups every ``tick()``. Thread-safe."""

    def __init__(
        self,
        meters: Sequence[Meter],
        node: str,
        idle_w: Mapping[str, float] | None = None,
        proc_root: str = "/proc",
        router_deployments: Iterable[str] = ROUTER_DEPLOYMENTS,
    ) -> None:
        self.meters = list(meters)
        self.node = node
        self.idle_w = dict(idle_w or {})
        self.proc_root = proc_root
        self._titles = TitleCache()
        self.routers = frozenset(router_deployments)
        infos = [m.info for m in self.meters]
        self.limits = Limits(
            slack_s=max((i.update_period_s for i in infos), default=0.0),
            slack_j=2 * max((i.resolution_j for i in infos), default=0.0),
            key_max_power_w={k: w for i in infos for k, w in i.max_power_w.items()},
        )
        self._lock = threading.Lock()
        self._claims: dict[int, int] = {}  # PID -> the PID whose group it joins
        self._named: dict[int, str] = {}  # PID -> a group named by a replica on another node
        self._gpu_owners: dict[str, set[int]] = {}  # gpu key -> PIDs whose groups own it
        self.sources: dict[str, str] = {}
        self.metered_j: dict[str, float] = {}
        self.baseline_j: dict[str, float] = {}
        self.groups_j: dict[str, dict[str, float]] = defaultdict(dict)
        self.proxy_to_j: dict[str, dict[str, float]] = defaultdict(dict)  # router group -> proxy part
        self.group_cpu_s: dict[str, float] = defaultdict(float)
        self.flags: set[str] = set()
        self.steps = {"reset": 0, "reordered": 0, "dropped": 0}
        self.dropped_j = 0.0
        self.ticks = 0
        self.cpu_cost_s = 0.0  # CPU time the ticks themselves used (s)
        self.error: str | None = None
        self.failing: dict[str, str] = {}  # counter key -> why its meter fails now
        self.counter_gaps = 0  # counters restarted after their meter failed (the outage unmetered)
        self._meter_keys: list[tuple[str, ...]] = [_keys_of(m) for m in self.meters]
        self._gap_keys: set[str] = set()  # counters of a failed meter, to restart at their next value
        self._min_w: dict[str, float] = {}
        # per counter: active J and CPU-seconds of the recent intervals, each older interval counting
        # RATE_DECAY times less (their ratio is the extrapolation rate, see `rate_j_per_cpu_s`)
        self._recent_j: dict[str, float] = {}
        self._recent_cpu_s: dict[str, float] = {}
        self._rate_prior: dict[str, float] = {}  # a counter's known J per CPU-second (the estimate's)
        # the proxy's and the routers' CPU-seconds of the recent intervals, decayed alike: a router's
        # share grows by the proxy's part too (see `rate_j_per_cpu_s`)
        self._recent_proxy_s = 0.0
        self._recent_routers_s = 0.0
        for m in self.meters:
            self._rate_prior.update(getattr(m, "rate_prior_j_per_cpu_s", {}))
        self.max_power_w = {k: w for i in infos for k, w in i.max_power_w.items()}
        """Per counter: the most its device can draw (W; ``MeterInfo.max_power_w``): no share moves faster."""
        self._group_of_pid: dict[int, str] = {}
        self._deployments: dict[str, str] = {}  # replica/router group -> its Serve deployment
        self._base: dict[str, float] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # PID -> (start time, CPU time) at the last scan
        self._busy_s = 0.0
        self.t_s = 0.0
        self.started_s = 0.0
        self._origin()

    # -- registration --------------------------------------------------------------------------------
    def claim(self, pids: Iterable[int], group_pid: int) -> None:
        """Processes outside a replica's tree that do its work (vLLM Ray workers): they join the group
        of process ``group_pid`` (the replica) from the next tick."""
        with self._lock:
            for pid in pids:
                self._claims[pid] = group_pid

    def claim_group(self, pids: Iterable[int], group: str, gpu_keys: Iterable[str] = ()) -> None:
        """Processes (and GPUs) of this node that work for a replica on another node (a pipeline
        stage, an engine rank): from the next tick they form the group ``group``
        (``replica:<pid>@<node>``), whose share that replica's meter reads (``share_of_group``), so
        their energy is in this node's account once, as that replica's."""
        with self._lock:
            pids = list(pids)
            for pid in pids:
                self._named[pid] = group
            for key in gpu_keys:
                self._gpu_owners.setdefault(key, set()).update(pids)

    def release_group(self, group: str) -> None:
        """The replica is gone: its processes fall back to their own titles' groups from the next tick
        (the energy split so far stays with ``group``)."""
        with self._lock:
            self._named = {pid: g for pid, g in self._named.items() if g != group}

    @property
    def gpus(self) -> list[GpuIdentity]:
        """The node's GPUs as its NVML counters name them (index, UUID), for ``keys.gpu_keys``."""
        return sorted(
            {
                GpuIdentity(int(key.split(":", 1)[1]), str(uuid))
                for m in self.meters
                if m.info.source in ("nvml", "nvml-power")
                for key, uuid in m.info.extra.items()
                if key.startswith("gpu:") and key.split(":", 1)[1].isdigit()
            },
            key=lambda g: g.index,
        )

    def own_gpus(self, gpu_keys: Iterable[str], group_pid: int) -> None:
        """GPUs (``gpu:<index>``) used by the group of process ``group_pid``."""
        with self._lock:
            for key in gpu_keys:
                self._gpu_owners.setdefault(key, set()).add(group_pid)

    # -- sampling ------------------------------------------------------------------------------------
    def _read(self) -> tuple[list[Reading], dict[str, str]]:
        """The readings of the meters that answer, and the counter keys of those that fail (-> why)."""
        readings: list[Reading] = []
        failing: dict[str, str] = {}
        for i, m in enumerate(self.meters):
            try:
                r = m.read()
            except MeterError as exc:
                failing.update(dict.fromkeys(self._meter_keys[i], str(exc)))
                continue
            self._meter_keys[i] = tuple(r.energy_j) or self._meter_keys[i]
            readings.append(r)
        return readings, failing

    def _origin(self) -> None:
        readings, failing = self._read()
        if not readings and failing:
            raise MeterError("; ".join(sorted(set(failing.values()))))
        self.failing = failing
        for r in readings:
            for key, value in r.energy_j.items():
                self._base[key] = value
                self.sources[key] = r.source
        self._uptime_s = uptime_s(self.proc_root)
        self._cpu = {pid: (p.start_s, p.cpu_s) for pid, p in scan(self.proc_root, self._titles).items()}
        self._busy_s = node_busy_cpu_s(self.proc_root)
        self.t_s = self.started_s = max((r.t_s for r in readings), default=time.monotonic())

    def tick(self) -> None:
        """Read every counter and every process once and split the interval since the last tick."""
        t0 = time.thread_time()
        # processes first, counters last: the scan's own CPU time falls inside the interval it closes
        up_s = uptime_s(self.proc_root)
        procs = scan(self.proc_root, self._titles)
        busy_s = node_busy_cpu_s(self.proc_root)
        readings, failing = self._read()
        if not readings:  # every meter fails: nothing to split
            with self._lock:
                self.error = "; ".join(sorted(set(failing.values()))) or "no counters"
            return
        with self._lock:
            self._gap_keys |= set(failing)
            self._split(readings, procs, busy_s, up_s)
            self.error = None
            self.failing = failing
            self.ticks += 1
            self.cpu_cost_s += time.thread_time() - t0

    def _split(self, readings: list[Reading], procs: Mapping[int, Any], busy_s: float, up_s: float) -> None:
        t_s = max(r.t_s for r in readings)
        dt_s = max(t_s - self.t_s, 0.0)
        groups = group_of(procs, None, self.routers)
        if self._claims or self._named:  # claimed processes join their claimer's group
            claims = {pid: groups[owner] for pid, owner in self._claims.items() if owner in groups}
            claims.update({pid: g for pid, g in self._named.items() if pid in procs})
            groups = group_of(procs, claims, self.routers)
        self._group_of_pid = groups
        for pid, p in procs.items():
            if groups[pid].endswith(f":{pid}"):
                self._deployments[groups[pid]] = deployment_of(p.title) or ""
        cpu_d: dict[str, float] = defaultdict(float)
        for pid, p in procs.items():
            prev_start_s, prev = self._cpu.get(pid, (None, None))
            # a PID not seen since the last scan, or another process under it (a reused PID: its start
            # time differs, whatever its CPU time): started since then, all its CPU time is in this
            # interval; else it was missed (unreadable at the last scan): its origin is now
            if prev is None or prev_start_s != p.start_s or p.cpu_s < prev:
                d = p.cpu_s if p.start_s >= self._uptime_s - 0.01 else 0.0
            else:
                d = p.cpu_s - prev
            cpu_d[groups[pid]] += d
        self._cpu = {pid: (p.start_s, p.cpu_s) for pid, p in procs.items()}
        self._uptime_s = up_s
        sum_cpu = sum(cpu_d.values())
        denom = max(sum_cpu, busy_s - self._busy_s)
        self._busy_s = busy_s
        for g, d in cpu_d.items():
            self.group_cpu_s[g] += d
        routers_cpu = {g: d for g, d in cpu_d.items() if kind_of(g) == "router" and d > 0}
        total_router = sum(routers_cpu.values())
        self._recent_proxy_s = self._recent_proxy_s * RATE_DECAY + (
            cpu_d.get(PROXY, 0.0) if total_router else 0.0
        )
        self._recent_routers_s = self._recent_routers_s * RATE_DECAY + total_router
        for r in readings:
            for key, value in r.energy_j.items():
                self.sources[key] = r.source
                before = self._base.get(key)
                if before is None or key in self._gap_keys:  # new, or its meter failed since: starts here
                    if before is not None:
                        self.counter_gaps += 1
                        self.flags.add("counter_gap")
                    self._gap_keys.discard(key)
                    self._base[key] = value
                    continue
                delta, kind = counter_step(key, before, value, dt_s, self.limits, key in r.reset_keys)
                self._base[key] = baseline_after(before, value, kind)
                if kind != "ok":
                    self.steps[kind] += 1
                    self.dropped_j += (
                        dropped_j(before, value, key in r.reset_keys) if kind == "dropped" else 0.0
                    )
                self._split_key(key, r.source, delta, dt_s, cpu_d, denom, sum_cpu, routers_cpu, kind == "ok")
        self.t_s = t_s

    def _baseline_w(self, key: str, source: str) -> float:
        domain = key.split(":", 1)[0]
        if key in self.idle_w or domain in self.idle_w:
            return self.idle_w.get(key, self.idle_w.get(domain, 0.0))
        if source == "estimate" and domain == "cpu":
            return 0.0
        return self._min_w.get(key, 0.0)

    def _split_key(
        self,
        key: str,
        source: str,
        delta: float,
        dt_s: float,
        cpu_d: Mapping[str, float],
        denom: float,
        sum_cpu: float,
        routers_cpu: Mapping[str, float],
        ok: bool = True,
    ) -> None:
        idle = min(delta, self._baseline_w(key, source) * dt_s)
        # only a step the counter really made is a power: a rejected one (0 J) or a reset (the value
        # since the restart) would set the baseline near 0 W for good
        if ok and dt_s >= SUSTAINED_S:
            self._min_w[key] = min(self._min_w.get(key, float("inf")), delta / dt_s)
        active = delta - idle
        _add(self.metered_j, key, delta)
        _add(self.baseline_j, key, idle)
        shares: dict[str, float] = {}
        if key.startswith("gpu:"):
            owners = sorted(
                {self._group_of_pid[p] for p in self._gpu_owners.get(key, ()) if p in self._group_of_pid}
            )
            if len(owners) > 1:
                self.flags.add("gpu_shared_equal_split")
            for g in owners or [OTHER]:
                shares[g] = active / max(len(owners), 1)
        else:
            self._recent_j[key] = self._recent_j.get(key, 0.0) * RATE_DECAY + active
            self._recent_cpu_s[key] = self._recent_cpu_s.get(key, 0.0) * RATE_DECAY + denom
            if denom > 0:
                for g, d in cpu_d.items():
                    if d > 0:
                        shares[g] = active * d / denom
                shares[OTHER] = shares.get(OTHER, 0.0) + active * (denom - sum_cpu) / denom
            else:  # the counter moved but no CPU time was seen (clock-tick resolution): no one to split by
                shares[OTHER] = active
        proxy = shares.pop(PROXY, 0.0)
        total_router = sum(routers_cpu.values())
        if proxy and total_router > 0:
            for g, d in routers_cpu.items():
                _add(self.proxy_to_j[g], key, proxy * d / total_router)
            proxy = 0.0
        if proxy:
            shares[PROXY] = proxy
        for g, j in shares.items():
            if j:
                _add(self.groups_j[g], key, j)

    # -- views ---------------------------------------------------------------------------------------
    def group_energy_j(self, group: str) -> dict[str, float]:
        """A group's cumulative energy per counter key; a router's includes its proxy part. Units: J."""
        out = dict(self.groups_j.get(group, {}))
        for key, j in self.proxy_to_j.get(group, {}).items():
            _add(out, key, j)
        return out

    def rate_j_per_cpu_s(self, group: str = "") -> dict[str, float]:
        """Per CPU/DRAM counter: active J per CPU-second over the recent intervals (older ones decayed
        by ``RATE_DECAY`` per tick); for a router's group, per CPU-second of the router itself, which
        brings the proxy's part with it (x (routers' + proxy's CPU) / routers' CPU over the same
        intervals: without it, a router's share trailed its exact value by the proxy's part at every
        tick). A single interval's ratio is noisy at clock-tick resolution (an
        interval can see the counter move and no CPU time, or the reverse); the ratio of the decayed
        sums is defined from the first CPU time seen and follows the load within a few ticks. It only
        extrapolates between ticks (``share.py``); every tick replaces the extrapolation with the exact
        split. Until a counter has seen CPU time (a quiet node can show none for a few ticks: /proc/stat
        counts in 10 ms ticks), a counter that knows its rate gives it (the estimate's ``cpu``: its
        W/core), so the first requests on an idle node are not 0 J until the next tick."""
        seen = {k: j / self._recent_cpu_s[k] for k, j in self._recent_j.items() if self._recent_cpu_s[k] > 0}
        rate = {**self._rate_prior, **seen}
        if kind_of(group) == "router" and self._recent_routers_s > 0:
            factor = 1.0 + self._recent_proxy_s / self._recent_routers_s
            rate = {k: v * factor for k, v in rate.items()}
        return rate

    def share_of_pid(self, pid: int) -> dict[str, Any]:
        """What a replica (or router) process's meter needs: its group's cumulative energy at the last
        tick, its group's cumulative CPU time, the tick time, each CPU/DRAM counter's last rate
        (J per CPU-second) and the group's processes at the tick, for extrapolating between ticks, and
        each counter's most power. Units: J, s, W."""
        with self._lock:
            group = self._group_of_pid.get(pid)
            if group is None and self.error is None:
                return {"error": f"process {pid} not seen on {self.node}"}
            return self._share(group or "")

    def share_of_group(self, group: str) -> dict[str, Any]:
        """The same for a group by name (a ``claim_group`` group, read by a replica on another node)."""
        with self._lock:
            return self._share(group)

    def _share(self, group: str) -> dict[str, Any]:
        if self.error is not None:
            return {"error": f"node counters failing on {self.node}: {self.error}"}
        return {
            "group": group,
            "energy_j": self.group_energy_j(group),
            "cpu_s": self.group_cpu_s.get(group, 0.0),
            "t_s": self.t_s,
            "rate_j_per_cpu_s": self.rate_j_per_cpu_s(group),
            "sources": dict(self.sources),
            "max_power_w": self.max_power_w,
            "failing": dict(self.failing),
            "ticks": self.ticks,
            "pids": sorted(pid for pid, g in self._group_of_pid.items() if g == group),
            "gpus": sorted(
                key
                for key, pids in self._gpu_owners.items()
                if any(self._group_of_pid.get(p) == group or self._named.get(p) == group for p in pids)
            ),
        }

    def snapshot(self) -> dict[str, Any]:
        """The node's account: metered, baseline idle and every group, each counter once. Units: J, s."""
        with self._lock:
            groups: dict[str, dict[str, Any]] = {}
            for g in set(self.groups_j) | set(self.proxy_to_j):
                e = self.group_energy_j(g)
                groups[g] = {
                    "kind": kind_of(g),
                    "deployment": self._deployments.get(g),
                    "j": sum(e.values()),
                    "domains_j": _by_domain(e),
                    "proxy_part_j": sum(self.proxy_to_j.get(g, {}).values()),
                    "cpu_s": self.group_cpu_s.get(g, 0.0),
                }
            by_kind: dict[str, float] = defaultdict(float)
            for v in groups.values():
                by_kind[v["kind"]] += v["j"]
            metered = sum(self.metered_j.values())
            baseline = sum(self.baseline_j.values())
            return {
                "node": self.node,
                "sources": dict(self.sources),
                "max_power_w": dict(self.max_power_w),
                "measured": all(s in ("rapl", "nvml", "nvml-power") for s in self.sources.values()),
                "metered_j": metered,
                "metered_by_counter_j": dict(self.metered_j),
                "baseline_idle_j": baseline,
                "groups": groups,
                "by_kind_j": dict(by_kind),
                "closure_error_j": metered - baseline - sum(by_kind.values()),
                "window_s": [self.started_s, self.t_s],
                "ticks": self.ticks,
                "account_cpu_s": self.cpu_cost_s,
                "steps": dict(self.steps),
                "dropped_j": self.dropped_j,
                "flags": sorted(self.flags),
                "failing": dict(self.failing),
                "counter_gaps": self.counter_gaps,
                "error": self.error,
            }

    def by_share_key(self) -> dict[tuple[str, str], float]:
        """Cumulative J per (share, counter key): ``baseline_idle`` and each group kind (for export)."""
        with self._lock:
            out: dict[tuple[str, str], float] = {("baseline_idle", k): v for k, v in self.baseline_j.items()}
            for g in set(self.groups_j) | set(self.proxy_to_j):
                for key, j in self.group_energy_j(g).items():
                    out[(kind_of(g), key)] = out.get((kind_of(g), key), 0.0) + j
            return out

    def close(self) -> None:
        for m in self.meters:
            m.close()


def _keys_of(meter: Meter) -> tuple[str, ...]:
    """A meter's counter keys as its info names them (``gpu:0=<uuid>`` -> ``gpu:0``): a meter that fails
    before its first reading is known by these."""
    return tuple(d.split("=", 1)[0] for d in meter.info.devices)


def _by_domain(energy_j: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in energy_j.items():
        _add(out, Reading.domain_of(k), v)
    return out
