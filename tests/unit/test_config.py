"""Configs are strict and every committed Serve config file validates."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.router import is_loopback
from tests.conftest import REPO

DEPLOYMENT_FILES = sorted((REPO / "deployments").glob("*.yaml"))


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_every_deployment_file_validates(path) -> None:
    cfg = AppConfig.from_yaml(path)
    assert cfg.classifiers


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_every_deployment_file_starts_without_a_key_only_on_loopback(path) -> None:
    """`serve run deployments/<name>.yaml` with no key set: the host comes from Ray's own schema (a file
    without ``http_options`` binds 0.0.0.0), and off loopback the router refuses to start without a key,
    so such a file must name one (``router.api_key_file``)."""
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    if is_loopback(serve_cfg.http_options.host):
        return
    for app in serve_cfg.applications:
        assert AppConfig.model_validate(app.args).router.api_key_file, (
            f"{path.name} binds {serve_cfg.http_options.host} and names no router.api_key_file"
        )


def test_local_yaml_is_the_six_traditional_models() -> None:
    cfg = AppConfig.from_yaml(REPO / "deployments" / "local.yaml")
    assert sorted(c.id for c in cfg.classifiers) == sorted(
        f"{f}-{e}" for f in ("bow", "tfidf", "embedding") for e in ("logreg", "xgboost")
    )
    assert cfg.train_if_missing is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg", "typo": 1}]},
        {"classifiers": [{"kind": "traditional", "id": "svm-logreg"}]},
        {
            "classifiers": [
                {"kind": "traditional", "id": "tfidf-logreg"},
                {"kind": "traditional", "id": "tfidf-logreg"},
            ]
        },
        {"classifiers": []},
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg", "energy": {"meter": "magic"}}]},
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg", "energy": {"sample_period_s": 0}}]},
        # a negative or NaN idle power would hand processes more energy than was metered, or none
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg", "energy": {"idle_w": {"cpu": -12}}}]},
        {
            "classifiers": [
                {"kind": "traditional", "id": "tfidf-logreg", "energy": {"idle_w": {"cpu": "nan"}}}
            ]
        },
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg", "energy": {"cpu_tdp_w": "inf"}}]},
        {
            "classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}],
            "router": {"request_timeout_s": "inf"},
        },
        {
            "classifiers": [
                {"kind": "traditional", "id": "tfidf-logreg", "deployment": {"max_queued_requests": 0}}
            ]
        },
        {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}], "router": {"api_key_file": " "}},
    ],
)
def test_bad_configs_are_rejected(bad) -> None:
    with pytest.raises(ValidationError):
        AppConfig.model_validate(bad)


@pytest.mark.parametrize(
    "classifiers",
    [
        [{"kind": "traditional", "id": "tfidf-logreg"}, {"kind": "traditional", "id": "bow-logreg"}],
        [{"kind": "llm", "id": "tiny", "model": "/nonexistent/model", "labels": ["A", "B"]}],
    ],
    ids=["two models", "an LLM"],
)
def test_single_hop_takes_one_traditional_classifier(classifiers) -> None:
    with pytest.raises(ValidationError, match="single_hop serves exactly one traditional classifier"):
        AppConfig.model_validate({"classifiers": classifiers, "router": {"layout": "single_hop"}})
    one = {"classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}], "router": {"layout": "single_hop"}}
    assert AppConfig.model_validate(one).router.layout == "single_hop"


@pytest.mark.parametrize(
    "router",
    [
        {"num_cpus": 2.0},
        {"max_ongoing_requests": 1000},
        {"resources": {"node:head": 0.01}},
        {"env_vars": {"MY_VAR": "1"}},
    ],
    ids=lambda r: next(iter(r)),
)
def test_single_hop_refuses_router_settings_it_would_ignore(router) -> None:
    """The single-hop router's replicas take classifiers[0].deployment; the router's own replica
    settings were silently dropped (build_app never reads them in that layout)."""
    cfg = {
        "classifiers": [{"kind": "traditional", "id": "tfidf-logreg"}],
        "router": {"layout": "single_hop", **router},
    }
    with pytest.raises(ValidationError, match=rf"router\.{next(iter(router))} would be ignored") as err:
        AppConfig.model_validate(cfg)
    assert "classifiers[0].deployment" in str(err.value)
    assert AppConfig.model_validate({**cfg, "router": router}).router.layout == "two_hop"  # fine there


def test_a_dumped_single_hop_config_validates_again() -> None:
    """Settings at their defaults are not refused: a config dumped whole (demo, run.json) reloads."""
    cfg = AppConfig.from_yaml(REPO / "deployments" / "single-hop.yaml")
    assert AppConfig.model_validate(cfg.model_dump(mode="json")) == cfg
