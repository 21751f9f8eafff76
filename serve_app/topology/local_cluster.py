"""A multi-node Ray cluster on one machine: a head and N worker raylets, loopback only.

Each node is a real raylet with its own object store, ports and metrics port, a label
``accuwatt-node=<name>`` and a custom resource ``node:<name>`` (1 unit) so that deployments can be
pinned to it (``deployment.resources: {"node:worker-1": 0.01}``) and energy agents can name it.
All sockets bind 127.0.0.1. Session files live under a short ``/tmp/awc-*`` folder (Unix socket
paths have a 107-byte limit, so deep pytest temp folders are avoided).

Authentication (``RAY_AUTH_MODE``), decided deliberately:

- ``auth="disabled"`` (default): the cluster listens on loopback only and is private to this
  machine's user; tests and demos start without a token file. The processes get
  ``RAY_AUTH_MODE=disabled`` explicitly, so a token in ``~/.ray/auth_token`` does not switch it on.
- ``auth="token"``: Ray token authentication. The token comes from ``RAY_AUTH_TOKEN`` /
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (generated on first start); every client (``ray.init``,
  ``serve``) must run with ``RAY_AUTH_MODE=token`` and the same token. Use it whenever the ports are
  reachable by anyone else (any real multi-host cluster: see ``cluster/README.md``).

Loopback: every node binds 127.0.0.1. Ray resolves a ``127.0.0.1`` address to the machine's outward IP
unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (despite its name, the switch that makes Ray use the
loopback address for "this node"); :func:`use_loopback` sets it for this process and its children, and a
separate driver process must export it before ``import ray``.

The launcher never writes Ray's machine-wide "current cluster" file (``/tmp/ray/ray_current_cluster``):
``RAY_TMPDIR`` points into the cluster's own folder while nodes start, so a plain ``ray.init()``
elsewhere on the machine never joins this cluster by accident. Connect with the address it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from serve_app.env import scoped_env, set_ray_node_defaults
from serve_app.ports import free_port
from serve_app.topology.nodes import NODE_LABEL, NODE_RESOURCE_PREFIX

AuthMode = Literal["disabled", "token"]
STATE_FILE = "cluster.json"
OBJECT_STORE_BYTES = 150 * 1024 * 1024


@dataclass(frozen=True)
class NodeSpec:
    """One raylet: its accuwatt name, logical CPUs / GPUs, extra custom resources and labels."""

    name: str
    num_cpus: float = 4
    num_gpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A raylet refuses fractional node resources with a traceback once the cluster starts ("Resource
        quantities must all be whole numbers"): refused here, before anything starts."""
        wrong = {
            k: v
            for k, v in {"CPUs": self.num_cpus, "GPUs": self.num_gpus, **self.resources}.items()
            if v != int(v)
        }
        if wrong:
            raise ValueError(
                f"node {self.name}: a Ray node has whole CPUs and GPUs and resources, got {wrong}"
            )


@dataclass(frozen=True)
class ClusterInfo:
    """What ``accuwatt cluster up`` prints and writes to ``<temp_dir>/cluster.json``."""

    address: str
    temp_dir: str
    auth: AuthMode
    nodes: list[dict[str, Any]]
    launcher_pid: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback() -> None:
    """Make this process (and its children) resolve "this node" to 127.0.0.1 (see the module doc)."""
    os.environ[LOOPBACK_ENV] = "0"
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False  # read once at import; the env var covers child processes


def connect(address: str, **init_kwargs: Any) -> Any:
    """``ray.init`` a driver into a cluster this module started (loopback only). Any other cluster
    (``ray up``, KubeRay) is joined with a plain ``ray.init(address=...)``: its nodes are not on
    127.0.0.1, and a driver pinned there finds no node to attach to."""
    import ray

    use_loopback()
    return ray.init(address=address, _node_ip_address="127.0.0.1", **init_kwargs)


def start_serve() -> str:
    """Start Serve on the connected local cluster: its HTTP proxy on the head only (every node shares
    the machine's ports), on a free loopback port; returns the proxy's base URL."""
    from ray import serve

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def default_nodes(workers: int, cpus_per_node: float = 4, gpus_per_node: float = 0) -> list[NodeSpec]:
    """A head and ``workers`` worker nodes named ``head``, ``worker-1``, ... On a 2-core machine the
    logical CPUs are deliberately more than the cores: replicas ask for fractions and mostly wait."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not cpus_per_node > 0 or not gpus_per_node >= 0:
        raise ValueError(
            f"need cpus_per_node > 0 and gpus_per_node >= 0, got {cpus_per_node}, {gpus_per_node}"
        )
    names = ["head"] + [f"worker-{i}" for i in range(1, workers + 1)]
    return [NodeSpec(n, cpus_per_node, gpus_per_node) for n in names]


def gpu_devices(nodes: list[NodeSpec], visible: str | None) -> dict[str, str]:
    """Each GPU node's ``CUDA_VISIBLE_DEVICES``: its own GPUs of this machine, in node order (the first
    ``num_gpus`` of ``visible``, the launcher's ``CUDA_VISIBLE_DEVICES``, to the head, the next to
    ``worker-1``, ...; all GPUs by index when it is unset). Every raylet numbers its GPUs from 0 and its
    workers map those numbers through the ``CUDA_VISIBLE_DEVICES`` they inherit: without a share of its
    own, every node's GPU 0 is the machine's GPU 0, so two nodes' replicas run on, and meter, one GPU."""
    total = sum(int(n.num_gpus) for n in nodes)
    ids = [p.strip() for p in visible.split(",") if p.strip()] if visible is not None else None
    if ids is None:
        ids = [str(i) for i in range(total)]
    if total > len(ids):
        raise ValueError(
            f"the nodes have {total} GPUs in all, CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)}: "
            "a GPU would be two nodes' at once"
        )
    out: dict[str, str] = {}
    start = 0
    for n in nodes:
        if n.num_gpus:
            out[n.name] = ",".join(ids[start : start + int(n.num_gpus)])
            start += int(n.num_gpus)
    return out


class LocalCluster:
    """Start with :meth:`start`, connect drivers with ``ray.init(address=cluster.address)``, stop with
    :meth:`shutdown` (also a context manager). Node processes are children of this process."""

    def __init__(self, nodes: list[NodeSpec], auth: AuthMode = "disabled", temp_root: str = "/tmp") -> None:
        if not nodes:
            raise ValueError("a cluster needs at least a head node")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        self.nodes = nodes
        self.gpu_devices = gpu_devices(nodes, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.auth: AuthMode = auth
        self.temp_dir = tempfile.mkdtemp(prefix="awc-", dir=temp_root)
        self.metrics_ports: dict[str, int] = {}
        self._cluster: Any = None

    # -- lifecycle ----------------------------------------------------------------------------
    def _node_args(self, spec: NodeSpec, head: bool) -> dict[str, Any]:
        port = free_port()
        self.metrics_ports[spec.name] = port
        args: dict[str, Any] = {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "resources": {f"{NODE_RESOURCE_PREFIX}{spec.name}": 1.0, **spec.resources},
            "labels": {NODE_LABEL: spec.name, **spec.labels},
            "object_store_memory": OBJECT_STORE_BYTES,
            "node_ip_address": "127.0.0.1",
            "metrics_export_port": port,
            "include_dashboard": False,
        }
        if spec.name in self.gpu_devices:  # the raylet and its workers: this node's GPUs only
            args["env_vars"] = {"CUDA_VISIBLE_DEVICES": self.gpu_devices[spec.name]}
        if head:
            args.update(temp_dir=self.temp_dir, gcs_server_port=free_port(), dashboard_port=free_port())
        return args

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        """Start the head and the workers and wait for them. If anything fails or is interrupted on
        the way (a node that does not come up, Ctrl-C), the nodes started so far are shut down and
        the session folder removed before the exception goes on."""
        from ray.cluster_utils import Cluster

        mode = "token" if self.auth == "token" else "disabled"
        os.environ["RAY_AUTH_MODE"] = mode  # this process (the driver) must match the cluster
        use_loopback()
        try:
            Path(self.temp_dir, "ray").mkdir(exist_ok=True)  # where Ray writes its address file here
            set_ray_node_defaults()
            with scoped_env({"RAY_TMPDIR": self.temp_dir, "RAY_USAGE_STATS_ENABLED": "0"}):
                head, *workers = self.nodes
                # Kept before the head starts, so that a failure from here on shuts down what started.
                self._cluster = Cluster(initialize_head=False)
                self._cluster.add_node(**self._node_args(head, True))
                for w in workers:
                    self._cluster.add_node(**self._node_args(w, False))
                self._cluster.wait_for_nodes(timeout=timeout_s)
            self._write_state()
        except BaseException:
            self.shutdown()
            raise
        return self

    @property
    def address(self) -> str:
        if self._cluster is None:
            raise RuntimeError("cluster not started")
        return str(self._cluster.address)

    def info(self) -> ClusterInfo:
        nodes = [{**asdict(n), "metrics_port": self.metrics_ports.get(n.name)} for n in self.nodes]
        return ClusterInfo(self.address, self.temp_dir, self.auth, nodes, os.getpid())

    def _write_state(self) -> None:
        (Path(self.temp_dir) / STATE_FILE).write_text(self.info().to_json())

    def shutdown(self, remove_temp_dir: bool = True) -> None:
        if self._cluster is not None:
            import ray

            if ray.is_initialized():  # a driver in this process would block removing the head
                ray.shutdown()
            try:
                self._cluster.shutdown()
            finally:
                self._cluster = None
        if remove_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start() if self._cluster is None else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def prometheus_targets(info: ClusterInfo) -> list[str]:
    """``host:port`` of every node's metrics agent (for a Prometheus static config)."""
    return [f"127.0.0.1:{n['metrics_port']}" for n in info.nodes if n.get("metrics_port")]
