"""Environment variables accuwatt sets, in one place, and a scoped way to set them.

``WORKER_ENV``: what every classifier replica and worker process gets (models load from local paths
or the cache; tokenizers do not start thread pools in forked workers). A deployment's ``env_vars``
win over these. An LLM replica's ``HF_HUB_OFFLINE`` comes from its spec's ``hf_hub_offline`` ("1" or
"0") instead, and its environment is layered by ``LLMSpec.engine_env``: these and the engine's
defaults, then the deployment's ``env_vars``, then the spec's own ``env_vars`` (each winning over the
ones before).

``RAY_NODE_ENV``: what the Ray nodes accuwatt starts get (``accuwatt demo``, ``replay --local``,
``accuwatt cluster up``, the tests and benchmarks; ``cluster/`` files set the same for ``ray start``).
Their raylets pass it to Serve's controller, proxies and replicas. Serve's controller loop runs every
0.1 s and its handles export metrics every 0.1 s by default: idle, that took 4.5 % of one core in the
controller and 2.4 % in the GCS here (``benchmarks/bench_idle_cpu.py``), energy the service burns
and, on a small machine, CPU taken from the model. At 0.5 s and 1 s the controller took 2.1 %, the GCS
1.4 %, an app's deploy-to-ready time moved from 7.6-8.7 s to 7.9-9.0 s, and Serve's metrics still
reach Prometheus well within its 15 s scrape. Values the user set win.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

WORKER_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SERVE_REPLICA_ENV: dict[str, str] = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""What the router's replicas (``app.py``) and the traditional classifiers' replicas
(``TraditionalSpec.serve_options``) get: Serve runs their request code on the replica's own event loop,
and the router's handle to the classifiers on that loop too, instead of a loop in a thread of its own
each (Serve's defaults, which guard against user code that blocks its loop). accuwatt's request code
never blocks the loop (a model call goes to a worker thread, views that read files or call Ray go to
threads or are awaited), so each request crosses two thread hand-offs fewer in each hop. LLM and
pipeline replicas keep Serve's defaults: their constructors block while an engine or stage actors start
(a minute or more for an LLM), which on the replica's own loop would stall Serve's calls to it. A
deployment's ``env_vars`` win over these."""
NO_GPU_ENV: dict[str, str] = {"CUDA_VISIBLE_DEVICES": ""}
"""What a process that reserves no GPU gets (a traditional replica with ``num_gpus: 0``, a pipeline's
feature stage): no GPU in view. Ray (2.60) leaves an actor that asks for none every GPU of its node
visible: an encoder took one (``cuda`` when visible), unreserved, contending with the replica that owns
it, its energy counted in that replica's share while ``devices`` said ``cpu``."""
RAY_NODE_ENV: dict[str, str] = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}

DRIVER_ENV: dict[str, str] = {"RAY_enable_output_error_log_if_still_retry": "0"}
"""What accuwatt's own Ray drivers set before they start or join Ray (``accuwatt demo``, ``replay
--local``, ``sweep``; nodes they start inherit it). ``serve.shutdown()`` ends with Serve's controller
killing itself while the driver's ``graceful_shutdown`` call to it is open, and Ray printed ``Task
ServeController.graceful_shutdown failed. There are infinite retries remaining, so the task will be
retried`` after every run, between the replay and its report. This hides Ray's notice of a task that
failed and will be retried; a task that fails for good still raises. Values the user set win."""


def set_worker_defaults() -> None:
    """Set `WORKER_ENV` in this process where the user has not set the variable."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def set_ray_node_defaults() -> None:
    """Set `RAY_NODE_ENV` in this process where the user has not set the variable: Ray nodes started
    from this process afterwards (``ray.init`` of a local instance, ``LocalCluster``) inherit it."""
    for key, value in RAY_NODE_ENV.items():
        os.environ.setdefault(key, value)


def set_driver_defaults() -> None:
    """Set `RAY_NODE_ENV` and `DRIVER_ENV` in this process where the user has not set the variable,
    before it starts or joins Ray."""
    set_ray_node_defaults()
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def scoped_env(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` for the duration of the block; the previous values come back after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
