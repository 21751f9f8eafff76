"""What a replay is given, in three parts: the data (which texts, by which protocol), the load (how
they are offered) and the output (where and how results are kept). The CLI builds one from its
arguments; ``run.json`` echoes it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.replay.driver import LoadShape

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ReplayData(BaseModel):
    """The study protocol (``splits`` splits of ``n_train`` / ``n_test`` texts of ``dataset``), or one
    file replayed as it is (``test_file``: no splits, no training)."""

    model_config = _FROZEN
    dataset: str = "demo"
    text_col: str = "text"
    label_col: str = "label"
    n_train: int = Field(200, ge=1)
    n_test: int = Field(200, ge=1)
    splits: int = Field(10, ge=1)
    seed: int = 20250101
    test_file: str | None = None


class ReplayLoad(BaseModel):
    """Closed loop (``concurrency`` workers) or open loop (``rate_rps`` arrivals, at most
    ``concurrency`` in flight); ``batch_size`` texts per request; retries and timeouts per request."""

    model_config = _FROZEN
    concurrency: int | None = Field(None, ge=1)
    rate_rps: float | None = Field(None, gt=0)
    arrivals: Literal["poisson", "gamma"] = "poisson"
    burstiness: float = Field(1.0, gt=0)
    batch_size: int = Field(1, ge=1)
    max_attempts: int = Field(6, ge=1)
    timeout_s: float = Field(300.0, gt=0)


class ReplayOutput(BaseModel):
    """Results go to ``<out>/<dataset>/<topology>/<model>/<run_name>/``; CO2e with ``country``'s grid.
    ``retry_failed``: a resumed run folder's failed records are moved aside and their requests sent
    again (`records.move_failed_aside`); it is no part of the run name or the request plan."""

    model_config = _FROZEN
    out: str = "results"
    run_name: str | None = None
    topology: str | None = None
    country: str = "DEU"
    codecarbon: bool = False
    progress: bool = True
    retry_failed: bool = False

    @field_validator("run_name", "topology")
    @classmethod
    def _own_folder(cls, name: str | None) -> str | None:
        """A name whose folder (`results.safe_name`) is ``.`` or ``..`` would file the run in the folder
        itself or the one above (``--run-name ..``: the model's folder's parent, where every model's run
        folder lives), not in a folder of its own."""
        from serve_app.replay.results import safe_name

        if name and safe_name(name) in (".", ".."):
            raise ValueError(
                f"{name!r} names no folder of its own (it is {safe_name(name)!r}); choose a name"
            )
        return name


class ReplayConfig(BaseModel):
    """A replay: ``models`` (default: every model the service lists) over ``data`` under ``load``."""

    model_config = _FROZEN
    models: list[str] = Field(default_factory=list)
    data: ReplayData = ReplayData()
    load: ReplayLoad = ReplayLoad()
    output: ReplayOutput = ReplayOutput()

    def load_shape(self) -> LoadShape:
        load = self.load
        return LoadShape(load.concurrency, load.rate_rps, load.arrivals, load.burstiness, self.data.seed)

    def request_plan(self) -> str:
        """How a split's texts become requests and how they are offered: the load shape and the batch
        size (``closed-c1-b1``). Records are keyed by request index, so a run folder's records must all
        come from one plan."""
        return f"{self.load_shape().describe()}-b{self.load.batch_size}"

    def resolved_run_name(self, fingerprint: str) -> str:
        """Same requests and load shape -> same name (so a rerun resumes the run folder)."""
        if self.output.run_name:
            return self.output.run_name
        d = self.data
        proto = (
            f"file-{fingerprint[:8]}"
            if d.test_file
            else f"s{d.seed}-{d.splits}x{d.n_train}-{d.n_test}-{fingerprint[:8]}"
        )
        return f"{proto}-{self.request_plan()}"
