import pytest

from serve_app.carbon import DEFAULT_G_PER_KWH, carbon_intensity, known_countries
from serve_app.cli import main
from serve_app.errors import UsageError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("use_codecarbon", [True, False])
def test_the_default_country_and_table_codes_have_a_figure(use_codecarbon):
    deu = carbon_intensity(use_codecarbon=use_codecarbon)
    assert deu.country == "DEU" and deu.g_per_kwh > 0
    assert carbon_intensity(" fra ", use_codecarbon).country == "FRA"
    assert set(DEFAULT_G_PER_KWH) <= set(known_countries(use_codecarbon))


@pytest.mark.parametrize("code", ["DE", "GER", "XYZ"])
def test_an_unknown_country_is_refused_not_taken_as_the_world_average(code):
    """A code with no figure (a two-letter code, a guess) would put every CO2e and CEGI off silently."""
    for use_codecarbon in (True, False):
        with pytest.raises(UsageError, match=f"'{code}'.*DEU"):
            carbon_intensity(code, use_codecarbon)


def test_replay_refuses_an_unknown_country_before_any_request(capsys, tmp_path):
    """Refused before the dataset is read (a missing one here) or the service is asked anything."""
    missing = str(tmp_path / "missing.csv")
    args = ["replay", "--url", "http://127.0.0.1:9", "--test-file", missing, "--country", "GER"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--country 'GER'" in err and "DEU" in err


def test_a_country_codecarbon_lists_without_a_figure_is_refused_saying_so():
    """CodeCarbon lists CAF with carbon_intensity 0.0: a real code, no figure; the message says that
    rather than asking for an ISO code."""
    from serve_app.carbon import _codecarbon_mix

    mix = _codecarbon_mix() or {}
    if "CAF" not in mix or mix["CAF"].get("carbon_intensity") != 0.0:
        pytest.skip("CodeCarbon's data has no CAF entry without a figure")
    with pytest.raises(UsageError, match=r"--country 'CAF': CodeCarbon has no grid carbon intensity.*0\.0"):
        carbon_intensity("CAF")
    assert "CAF" not in known_countries()
    with pytest.raises(UsageError, match="give an ISO 3166-1 alpha-3 code"):  # the table alone: unknown
        carbon_intensity("CAF", use_codecarbon=False)
