"""Sweep files (``cluster/topologies/*.yaml``): the settings a topology sweep deploys in turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from serve_app.argtypes import installed
from serve_app.classifiers import embedding
from serve_app.classifiers.embedding import PACKAGED
from serve_app.classifiers.traditional import MODEL_IDS
from serve_app.config import AppConfig
from serve_app.config_common import Strict
from serve_app.errors import UsageError
from serve_app.model_ids import check_ids

Strategy = Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]


class Topology(Strict):
    """One setting: where and how every model of the sweep is served."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    nodes: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0)
    """GPUs per replica (LLMs: tensor x pipeline ranks, one GPU each)."""
    tensor_parallel: int = Field(1, ge=1)
    pipeline_parallel: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1)
    placement_strategy: Strategy | None = None
    split_stages: bool = False
    """Traditional models: serve them as two-stage pipelines (feature stage and head in one placement
    group; ``STRICT_SPREAD`` puts the stages on two nodes). Needs the ``pipeline`` classifier kind."""
    cpus_per_node: int = Field(4, ge=1)
    """Local clusters: logical CPUs per node, a whole number (a raylet refuses fractions)."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """A folder of the run tree (``runs/<dataset>/<topology>/...``): ``.`` and ``..`` are not."""
        if name in (".", ".."):
            raise ValueError(f"topology name must be a plain folder name, not {name!r}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        if self.gpus and self.gpus != self.tensor_parallel * self.pipeline_parallel:
            raise ValueError(
                f"{self.name}: gpus ({self.gpus}) must equal tensor_parallel x pipeline_parallel"
            )
        if self.placement_strategy == "STRICT_SPREAD" and self.nodes < 2:
            raise ValueError(f"{self.name}: STRICT_SPREAD needs at least two nodes")
        return self


class SweepFile(Strict):
    """Models x topologies, replayed on the same dataset and splits."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    """A plain folder name: the default output is ``results/sweeps/<name>``."""
    dataset: str = "demo"
    n_train: int = Field(200, ge=2)
    n_test: int = Field(200, ge=1)
    splits: int = Field(10, ge=1)
    seed: int = Field(20250101, ge=0)
    concurrency: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    embedding_model: str = "packaged:all-MiniLM-L6-v2"
    models: list[str | dict[str, Any]] = Field(min_length=1)
    """Traditional model ids (trained per split), or classifier spec templates (e.g. an LLM spec)."""
    topologies: list[Topology] = Field(min_length=1)

    @field_validator("embedding_model")
    @classmethod
    def _encoder_exists(cls, name: str) -> str:
        """A packaged name accuwatt ships, an existing local path (relative to the working folder, as
        ``accuwatt train`` reads it) or a hub id, checked when the encoder loads
        (`embedding.canonical_name`)."""
        try:
            embedding.canonical_name(name)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("--embedding-model").lstrip(": ")) from None
        return name

    @model_validator(mode="after")
    def _encoder_installed(self) -> SweepFile:
        """The packaged encoder of an ``embedding-*`` model is installed (the ``embeddings`` extra)."""
        if self.embedding_model in PACKAGED and any(
            m.startswith("embedding-") for m in self.traditional_models()
        ):
            for module in (PACKAGED[self.embedding_model], "sentence_transformers"):
                if not installed(module):
                    raise ValueError(
                        f"embedding_model {self.embedding_model} needs the Python package {module}: "
                        "pip install 'accuwatt[embeddings]'"
                    )
        return self

    @model_validator(mode="after")
    def _unique(self) -> SweepFile:
        names = [t.name for t in self.topologies]
        if len(set(names)) != len(names):
            raise ValueError(f"topology names must be unique: {names}")
        if self.name in (".", ".."):
            raise ValueError(f"name must be a plain folder name, not {self.name!r}")
        check_ids(self.traditional_models(), MODEL_IDS, "the traditional models are")
        return self

    @model_validator(mode="after")
    def _specs_deploy(self) -> SweepFile:
        """Every topology's classifiers make a valid ``AppConfig`` (a spec's typo or missing ``id`` is
        refused here, not after training and a cluster start)."""
        for topo in self.topologies:
            specs = classifier_specs(self, topo)
            try:
                cfg = AppConfig.model_validate({"classifiers": specs})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = list(err["loc"])
                where = ""
                if len(loc) >= 2 and loc[0] == "classifiers" and isinstance(loc[1], int):
                    # one spec per entry of ``models``, in order; pydantic names the kind's tag
                    kind = str(specs[loc[1]].get("kind"))
                    where = f"models[{loc[1]}]" + "".join(f".{x}" for x in loc[2:] if str(x) != kind)
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise ValueError(f"topology {topo.name}: {where + ': ' if where else ''}{msg}") from None
            check_spread(topo, cfg.classifiers)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepFile:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))

    def traditional_models(self) -> list[str]:
        """The trained models the sweep deploys, each once: plain ids, and the artifacts of
        ``traditional`` (``id``) and ``pipeline`` (``model``) specs given as mappings."""
        out: list[str] = []
        for m in self.models:
            key = (
                None
                if isinstance(m, str)
                else {"traditional": "id", "pipeline": "model"}.get(str(m.get("kind")))
            )
            artifact = m if isinstance(m, str) else m.get(key) if key else None
            if isinstance(artifact, str) and artifact not in out:
                out.append(artifact)
        return out

    def model_ids(self) -> list[str]:
        return [m if isinstance(m, str) else str(m.get("id")) for m in self.models]


def check_spread(topo: Topology, classifiers: list[Any]) -> None:
    """``STRICT_SPREAD`` puts every bundle of a replica's placement group on a different node: a spec
    with more bundles than the topology has nodes would never be scheduled (refused here)."""
    for c in classifiers:
        placement = getattr(c, "placement", None)
        pg = placement() if placement is not None else None
        if pg is not None and pg[1] == "STRICT_SPREAD" and len(pg[0]) > topo.nodes:
            raise ValueError(
                f"topology {topo.name}: model {c.id}: STRICT_SPREAD needs a node for each of its "
                f"{len(pg[0])} placement-group bundles, the topology has {topo.nodes}; use SPREAD "
                "(best effort) or PACK, or more nodes"
            )


def classifier_specs(sweep: SweepFile, topo: Topology) -> list[dict[str, Any]]:
    """The ``AppConfig.classifiers`` entries of one topology."""
    out: list[dict[str, Any]] = []
    for m in sweep.models:
        if isinstance(m, str):
            dep: dict[str, Any] = {"num_replicas": topo.replicas}
            if topo.split_stages:
                out.append(
                    {
                        "kind": "pipeline",
                        "id": m,
                        "model": m,
                        "deployment": dep,
                        "placement_strategy": topo.placement_strategy or "STRICT_SPREAD",
                    }
                )
            else:
                out.append({"kind": "traditional", "id": m, "deployment": dep})
            continue
        spec = dict(m)
        spec.setdefault("deployment", {})["num_replicas"] = topo.replicas
        if spec.get("kind") == "llm":
            spec.update(
                tensor_parallel_size=topo.tensor_parallel,
                pipeline_parallel_size=topo.pipeline_parallel,
                gpus_per_worker=1.0 if topo.gpus else 0.0,
            )
            if topo.placement_strategy:
                spec["placement_strategy"] = topo.placement_strategy
            if topo.nodes > 1 and topo.pipeline_parallel > 1:
                spec["pipeline_spans_nodes"] = True
        out.append(spec)
    return out
