"""Environment variables accuwatt sets, in one place, and a scoped way to set them.

``WORKER_ENV``: what every classifier replica and worker process gets (models load from local paths
or the cache; tokenizers do not start thread pools in forked workers). A deployment's ``env_vars``
win over these.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

WORKER_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_worker_defaults() -> None:
    """Set `WORKER_ENV` in this process where the user has not set the variable."""
    for key, value in WORKER_ENV.items():
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
