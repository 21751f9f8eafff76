"""``accuwatt report --out`` reused: the folder ends up with this report's figures only."""

import pytest

from serve_app.report.cli import build_report
from tests.unit.runs import write_run

pytestmark = pytest.mark.unit


def _pngs(rep):
    return sorted(p.name for p in (rep / "figures").glob("*.png"))


def test_a_reused_out_folder_loses_the_figures_of_the_earlier_report_and_keeps_other_files(tmp_path):
    first, second, rep = tmp_path / "first", tmp_path / "second", tmp_path / "rep"
    for res, dataset in ((first, "old"), (first, "kept"), (second, "kept")):
        write_run(res, "bow-logreg", [1, 1, 0, 1], 1.0, dataset=dataset)
        if res is first:  # two runs give the first report a regression figure
            write_run(res, "tfidf-logreg", [1] * 8, 2.0, dataset=dataset)
    build_report([first], rep)
    assert _pngs(rep) == [
        f"{d}_{f}.png"
        for d in ("kept", "old")
        for f in ("accuracy_energy", "energy_components", "energy_duration")
    ]
    (rep / "figures" / "notes.txt").write_text("mine")

    text = build_report([second], rep).read_text()
    # one run of one dataset: no regression to draw, and "old" is not in these results
    assert _pngs(rep) == ["kept_accuracy_energy.png", "kept_energy_components.png"]
    assert (rep / "figures" / "notes.txt").read_text() == "mine"
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert sorted(links) == ["figures/kept_accuracy_energy.png", "figures/kept_energy_components.png"]
