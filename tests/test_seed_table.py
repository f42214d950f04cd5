"""The seed table: every row on every seed, the spread, both STPrivacy rows' verdicts, the paper's
finding as a check, the learned rows against the controls, and resuming by settings."""
import json

import pytest

from stprivacy.attack import seed_table

PAPER, RECIPE = "STPrivacy (paper)", "STPrivacy + stpriv recipe"
CONTROLS = ["grey", "grey_blur", "oracle_grey_blur", "oracle"]


def _row(top1, cmap, ap=0.7):
    return {"top1": top1, "cmap": cmap, "ap": [ap] * 5, "kept": 1.0, "privacy_from": "pixels", "top1_from": "pixels"}


def _report(seed, *, paper_met=True, recipe_met=False, learned=(), ablations=(), paper=(0.95, 0.55), threads=2,
            table1=False):
    rows = {"raw": _row(0.99, 0.95), "blur_weak": _row(0.97, 0.85),
            "grey": _row(0.98, 0.70), "grey_blur": _row(0.95, 0.62), "oracle_grey_blur": _row(0.97, 0.60),
            "oracle": _row(0.98, 0.65),
            PAPER: _row(*paper), RECIPE: _row(0.96, 0.58)}
    for name, (top1, cmap) in learned:
        rows[name] = _row(top1, cmap)
    for name in ablations:
        rows[name] = _row(0.97, 0.66)
    target = {"met": False, "top1_gap_to_raw_points": 2.0, "competitive_baselines": ["raw", "blur_weak"]}
    return {"results": rows, "stprivacy_rows": [PAPER, RECIPE], "main": RECIPE, "controls": CONTROLS,
            "learned": [n for n, _ in learned], "ablations": list(ablations), "oracle": "oracle",
            "attributes": ["a", "b", "c", "d", "e"],
            "targets": {PAPER: {**target, "met": paper_met}, RECIPE: {**target, "met": recipe_met}},
            "settings": {"seed": seed, "tiny": False, "overrides": [], "table1": table1, "ablations": bool(ablations)},
            "machine": {"cpu": "test cpu", "cpu_count": 2, "torch_threads": threads, "torch": "x"},
            "commit": "abc1234", "seconds": 300.0 + seed}


def _write(tmp_path, reports):
    paths = []
    for report in reports:
        path = tmp_path / f"seed_{report['settings']['seed']}" / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(report))
        paths.append(path)
    return paths


@pytest.mark.parametrize("met_count,holds", [(9, True), (8, False)])
def test_each_stprivacy_row_needs_the_target_on_nine_in_ten(tmp_path, met_count, holds):
    reports = [_report(s, paper_met=s < met_count, recipe_met=True, paper=(0.90 + 0.01 * s, 0.55)) for s in range(10)]
    table = seed_table.build(_write(tmp_path, reports))
    assert table["verdicts"][PAPER] == {"met": met_count, "seeds": 10, "required": 9, "holds": holds}
    assert table["verdicts"][RECIPE]["holds"]
    paper = table["medians"][PAPER]
    assert paper["top1"]["min"] == pytest.approx(0.90) and paper["top1"]["max"] == pytest.approx(0.99)
    assert paper["runs"] == 10 and len(paper["ap"]) == 5
    assert table["seconds"] == {"min": 300.0, "median": 304.5, "max": 309.0}
    assert table["commits"] == ["abc1234"] and table["threads"] == [2]
    markdown = seed_table.write(table, tmp_path)[1].read_text()
    line = next(x for x in markdown.splitlines() if x.startswith(f"**{PAPER}: the target"))
    assert ("does not hold" in line) is (not holds) and f"met on {met_count} of 10" in line
    # Every method on every seed, with its per-attribute AP.
    for name in reports[0]["results"]:
        assert markdown.count(f"| {name} | ") == 1 + 1 + 10  # medians, top-1 / cMAP per seed, one AP row per seed


def test_the_papers_finding_is_checked_only_with_the_learned_methods(tmp_path):
    table = seed_table.build(_write(tmp_path, [_report(s) for s in range(3)]))
    assert not table["paper_finding"]["checked"]
    assert "--table1" in seed_table.to_markdown(table)


@pytest.mark.parametrize("vita,holds", [((0.90, 0.60), True), ((0.99, 0.50), False)])
def test_the_papers_finding_holds_only_if_stprivacy_paper_has_the_best_margin(tmp_path, vita, holds):
    learned = (("VITA", vita), ("SPAct", (0.93, 0.62)), ("Collective", (0.60, 0.55)))
    reports = [_report(s, learned=learned, table1=True) for s in range(3)]
    table = seed_table.build(_write(tmp_path, reports))
    finding = table["paper_finding"]
    assert finding["checked"] and finding["holds"] is holds
    assert finding["beaten_by"] == ([] if holds else ["VITA"])
    assert finding["margins"][PAPER] == pytest.approx(40.0)
    assert table["command"].endswith("--threads 2 --table1")
    markdown = seed_table.to_markdown(table)
    assert ("does not hold: beaten by VITA" in markdown) is (not holds)


def test_learned_rows_are_judged_against_every_control(tmp_path):
    # The paper row (margin 40) beats grey (28), grey_blur (33) and the oracle (33) but not the
    # oracle followed by grey + blur (37 < 40: beaten) -- make it lose to that one.
    reports = [_report(s, paper=(0.95, 0.59)) for s in range(3)]  # margin 36 < oracle_grey_blur's 37
    table = seed_table.build(_write(tmp_path, reports))
    beats = table["controls_check"]["beats"][PAPER]
    assert beats == {"grey": True, "grey_blur": True, "oracle_grey_blur": False, "oracle": True}
    assert table["controls_check"]["not_beaten"][PAPER] == ["oracle_grey_blur"]
    assert f"- {PAPER}: **does not beat oracle_grey_blur**" in seed_table.to_markdown(table)


def test_the_ablation_finding_appears_only_where_the_ablations_ran(tmp_path):
    without = seed_table.build(_write(tmp_path / "a", [_report(s) for s in range(2)]))
    assert without["ablation"] is None and "Ablation" not in seed_table.to_markdown(without)
    names = ("recipe: sparsification only (no PAB)", "recipe: anonymization only (alpha=1)")
    table = seed_table.build(_write(tmp_path / "b", [_report(s, ablations=names) for s in range(2)]))
    assert set(table["ablation"]["medians"]) == {RECIPE, *names}
    assert table["command"].endswith("--ablations")


def test_finished_reports_are_recognized_by_their_settings(tmp_path):
    path = tmp_path / "report.json"
    assert not seed_table.finished(path, tiny=False, threads=2)
    path.write_text(json.dumps(_report(0)))
    assert seed_table.finished(path, tiny=False, threads=2)
    assert not seed_table.finished(path, tiny=False, threads=1)
    assert not seed_table.finished(path, tiny=True, threads=2)
    assert not seed_table.finished(path, tiny=False, threads=2, table1=True)
    assert not seed_table.finished(path, tiny=False, threads=2, ablations=True)
    assert not seed_table.finished(path, tiny=False, threads=2, overrides=["demo.eval_epochs=1"])
    path.write_text("{")  # cut off while writing
    assert not seed_table.finished(path, tiny=False, threads=2)
