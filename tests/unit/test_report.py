import numpy as np
import pandas as pd
import pytest

from serve_app.report.cli import build_report
from serve_app.report.regression import fit_energy_duration, pareto_front
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit


def test_regression_recovers_interaction_exactly():
    d = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    g = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], float)
    e = 0.5 + 2.0 * d + 0.1 * g + 3.0 * d * g
    fit = fit_energy_duration(e, d, g)
    assert fit.terms == ("intercept", "duration_s", "devices", "duration_s:devices")
    np.testing.assert_allclose(fit.coefficients, [0.5, 2.0, 0.1, 3.0], atol=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict(d, g), e)


def test_regression_drops_constant_device_column():
    d = np.array([1.0, 2.0, 4.0])
    fit = fit_energy_duration(2.0 * d + 1.0 + np.array([0.1, -0.1, 0.0]), d, np.zeros(3))
    assert fit.terms == ("intercept", "duration_s") and fit.r2 is not None and fit.r2 > 0.99
    assert "duration_s" in fit.formula()


def test_pareto_front():
    energy = np.array([1.0, 2.0, 3.0, 0.5, 2.0])
    acc = np.array([0.7, 0.8, 0.75, 0.6, 0.7])
    # (3.0, .75) is dominated by (2.0, .8); (2.0, .7) by (1.0, .7)
    assert pareto_front(energy, acc).tolist() == [True, True, False, True, False]


def _write_run(root, model, acc_hits, joules, gpus=0):
    write_run(root, model, acc_hits, joules, gpus=gpus)


def test_report_end_to_end(tmp_path):
    _write_run(tmp_path / "res", "cheap", [1, 1, 0, 1], 1.0)
    _write_run(tmp_path / "res", "dear", [1, 1, 1, 1], 100.0)
    _write_run(tmp_path / "res", "bad", [0, 1, 0, 0], 50.0)
    out = build_report([tmp_path / "res"], tmp_path / "rep")
    text = out.read_text()
    assert "| cheap |" in text and "rapl" in text and "Pareto" in text and "R² =" in text
    assert "Grid intensity used: country not recorded 400 gCO2e/kWh (source not recorded)." in text
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet")
    row = df.set_index("model").loc["dear"]
    assert row["accuracy"] == 1.0 and row["energy_wh"] == pytest.approx(400 / 3600)
    assert row["duration_s"] == pytest.approx(4.0) and row["avg_power_w"] == pytest.approx(100.0)
    assert row["accuracy_per_wh"] == pytest.approx(9.0)
    # CEGI by hand: gold B A B A, training majority A -> 50 %; accuracy 1 -> gain 50 pp;
    # 400 J = 1/9 Wh -> 400/9000 g at 400 g/kWh; over 1,000 trainable (paper) or 1 M parameters (variant)
    assert row["gain_pp"] == pytest.approx(50.0)
    assert row["cegi"] == pytest.approx((400 / 9000) / (50 * 1000 / 1e6))
    assert row["cegi_all_parameters"] == pytest.approx((400 / 9000) / (50 * 1.0))
    assert "CEGI (paper)" in text and "CEGI over all parameters (accuwatt variant)" in text
    # the comparable-units table: 100 J per request, 1/9 Wh over 4 texts -> 27.8 Wh per 1k queries; the
    # steady window (10 %..90 % of 10..14 s) holds 2 requests, too few for a steady figure
    assert "### Comparable units" in text
    assert "| dear | 100 | n/a | n/a | n/a | n/a | 2 | 27.8 | CPU, model | rapl |" in text
    assert (tmp_path / "rep" / "splits.csv").exists()
    for name in ("ds_accuracy_energy.png", "ds_energy_components.png", "ds_energy_duration.png"):
        assert (tmp_path / "rep" / "figures" / name).stat().st_size > 5000


def test_a_partial_measurement_is_drawn_partial_never_as_an_estimate():
    from serve_app.report.figures import ENERGY_KINDS, energy_kinds

    df = pd.DataFrame(
        {"measured": [True, True, False, False], "energy_missing": [0, 1, 0, 2]}, index=[3, 5, 7, 9]
    )
    kinds = energy_kinds(df)
    assert kinds == [(True, False), (True, True), (False, False), (False, True)]
    labels = [ENERGY_KINDS[k][0] for k in kinds]
    assert labels[0] == "measured"
    assert "estimate" not in labels[1] and "partial" in labels[1] and "measured" in labels[1]
    assert labels[2] == "estimate (not measured)"
    assert "estimate" in labels[3] and "partial" in labels[3]
    assert len({ENERGY_KINDS[k][1] for k in kinds}) == 4  # each drawn with its own marker


def test_the_report_names_each_grid_intensitys_country_and_source():
    from serve_app.report.markdown import grid_intensities

    df = pd.DataFrame(
        {
            "carbon_g_per_kwh": [380.95, 380.95, 475.0, None],
            "carbon_country": ["DEU", "DEU", "GER", None],
            "carbon_source": ["codecarbon:2023", "codecarbon:2023", "world-average", None],
        }
    )
    assert grid_intensities(df) == [
        "DEU 380.95 gCO2e/kWh (codecarbon:2023)",
        "GER 475 gCO2e/kWh (world-average)",
    ]
    old = pd.DataFrame({"carbon_g_per_kwh": [400.0], "carbon_country": [None], "carbon_source": [None]})
    assert grid_intensities(old) == ["country not recorded 400 gCO2e/kWh (source not recorded)"]
