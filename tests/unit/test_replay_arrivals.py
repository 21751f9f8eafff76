import numpy as np
import pytest

from serve_app.replay.arrivals import arrival_times_s, gaps_s

pytestmark = pytest.mark.unit


def test_poisson_gaps_have_mean_one_over_rate_and_cv_one():
    g = gaps_s(20_000, rate_rps=50.0, kind="poisson", seed=1)
    assert g.mean() == pytest.approx(1 / 50, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 4.0])
def test_gamma_gaps_cv_is_one_over_sqrt_burstiness(burstiness):
    g = gaps_s(40_000, rate_rps=10.0, kind="gamma", burstiness=burstiness, seed=7)
    assert g.mean() == pytest.approx(0.1, rel=0.04)
    assert g.std() / g.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)


def test_poisson_ignores_burstiness_and_gamma_one_is_poisson():
    a = gaps_s(100, 5.0, "poisson", burstiness=0.1, seed=3)
    b = gaps_s(100, 5.0, "gamma", burstiness=1.0, seed=3)
    np.testing.assert_allclose(a, b)


def test_seeded_and_reproducible():
    a = arrival_times_s(50, 20.0, "gamma", 0.5, seed=11)
    b = arrival_times_s(50, 20.0, "gamma", 0.5, seed=11)
    c = arrival_times_s(50, 20.0, "gamma", 0.5, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_arrival_times_start_at_zero_and_increase():
    t = arrival_times_s(100, 10.0, seed=0)
    assert t[0] == 0.0 and len(t) == 100
    assert np.all(np.diff(t) >= 0)


def test_closed_loop_and_edge_cases():
    np.testing.assert_array_equal(arrival_times_s(3, None), np.zeros(3))
    assert arrival_times_s(0, 5.0).shape == (0,)
    with pytest.raises(ValueError):
        gaps_s(3, 0.0)
    with pytest.raises(ValueError):
        gaps_s(3, 1.0, "gamma", burstiness=0.0)
