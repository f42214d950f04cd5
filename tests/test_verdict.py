"""The judging rules shared by the demo and the seed table, at their edges."""
from __future__ import annotations


import pytest

from stprivacy.attack.verdict import ablation_finding, combine_attackers, demo_target, tradeoff_margin

BASELINES = ("raw", "blur")


def rows(raw_top1=0.951, ours_top1=0.951, ours_cmap=0.50, blur_top1=0.851, blur_cmap=0.60):
    return {"raw": {"top1": raw_top1, "cmap": 0.90}, "ours": {"top1": ours_top1, "cmap": ours_cmap},
            "blur": {"top1": blur_top1, "cmap": blur_cmap}}


@pytest.mark.parametrize("ours_top1,within", [
    (0.902, True),   # 4.9 points behind raw
    (0.901, True),   # exactly 5.0: "within" includes the edge
    (0.900, False),  # 5.1 points behind
    (0.990, True),   # ahead of raw
])
def test_top1_gap_edge(ours_top1, within):
    t = demo_target(rows(ours_top1=ours_top1), "ours", BASELINES)
    assert t["top1_within_5_points"] is within and t["met"] is within


@pytest.mark.parametrize("blur_top1,competitive", [
    (0.852, True),   # 9.9 points behind raw: competitive, ours must beat its cMAP
    (0.851, True),   # exactly 10.0
    (0.850, False),  # 10.1 points behind: not competitive
])
def test_competitive_baseline_edge(blur_top1, competitive):
    # ours leaks more than blur (0.7 > 0.6): the target fails exactly when blur is competitive.
    t = demo_target(rows(blur_top1=blur_top1, ours_cmap=0.70), "ours", BASELINES)
    assert ("blur" in t["competitive_baselines"]) is competitive
    assert t["cmap_below_competitive_baselines"] is (not competitive)
    # raw is always competitive with itself, and ours (0.70) is below raw's 0.90.
    assert "raw" in t["competitive_baselines"]


def test_cmap_must_be_strictly_below():
    assert not demo_target(rows(ours_cmap=0.60), "ours", BASELINES)["met"]
    assert demo_target(rows(ours_cmap=0.599), "ours", BASELINES)["met"]


def scored(result):
    """An attacker's result whose validation numbers agree with its test numbers (the case where
    the choice made on validation is also the one the test set would make; the case where they
    disagree is tests/test_validation_split.py's)."""
    return dict(result, validation={k: v for k, v in result.items() if k in ("top1", "cmap", "f1", "ap")})


@pytest.mark.parametrize("pixels,mask,privacy_from,top1_from", [
    ({"top1": 0.9, "cmap": 0.7}, {"top1": 0.95, "cmap": 0.6}, "pixels", "mask"),
    ({"top1": 0.9, "cmap": 0.6}, {"top1": 0.85, "cmap": 0.7}, "mask", "pixels"),
    ({"top1": 0.9, "cmap": 0.6}, {"top1": 0.9, "cmap": 0.6}, "pixels", "pixels"),  # ties: the first attacker
])
def test_the_stronger_attacker_is_chosen(pixels, mask, privacy_from, top1_from):
    pixels, mask = scored(dict(pixels, f1=0.1, ap=[0.1])), scored(dict(mask, f1=0.2, ap=[0.2]))
    row = combine_attackers({"pixels": pixels, "mask": mask})
    assert row["privacy_from"] == privacy_from and row["top1_from"] == top1_from
    chosen = {"pixels": pixels, "mask": mask}[privacy_from]
    assert (row["cmap"], row["f1"], row["ap"]) == (chosen["cmap"], chosen["f1"], chosen["ap"])
    assert row["top1"] == max(pixels["top1"], mask["top1"])
    assert row["attackers"]["mask"]["cmap"] == mask["cmap"]


def test_the_verdict_judges_the_stronger_attacker():
    """A method whose mask-aware attacker is weak but whose pixel attacker recovers more privacy
    is judged by the pixel one."""
    ours = combine_attackers({"pixels": scored({"top1": 0.95, "cmap": 0.65}),
                              "mask": scored({"top1": 0.95, "cmap": 0.55})})
    table = rows()
    table["ours"] = ours
    t = demo_target(table, "ours", BASELINES)
    assert not t["met"] and t["privacy_from"]["ours"] == "pixels"


def test_combine_attackers_rejects_nonsense():
    with pytest.raises(ValueError, match="at least one"):
        combine_attackers({})
    with pytest.raises(ValueError, match="unknown attackers"):
        combine_attackers({"oracle": {"top1": 1, "cmap": 0}})


def test_ablation_finding_is_judged_on_medians():
    def run(full, spars, anon):
        return {"full": {"top1": full[0], "cmap": full[1]}, "spars": {"top1": spars[0], "cmap": spars[1]},
                "anon": {"top1": anon[0], "cmap": anon[1]}}
    runs = [run((0.95, 0.55), (0.99, 0.70), (0.90, 0.60)),
            run((0.90, 0.55), (1.00, 0.45), (0.92, 0.60)),  # one seed where an ablation wins
            run((0.96, 0.52), (0.98, 0.68), (0.91, 0.62))]
    finding = ablation_finding(runs, "full", ["spars", "anon"])
    assert finding["holds"] and finding["ablation_is_worse"] == {"spars": True, "anon": True}
    assert finding["medians"]["full"]["margin_points"] == pytest.approx(40.0)  # of 40, 35, 44
    assert tradeoff_margin({"top1": 0.9, "cmap": 0.55}) == pytest.approx(35.0)
    runs.append(run((0.5, 0.9), (1.0, 0.4), (1.0, 0.4)))
    runs.append(run((0.5, 0.9), (1.0, 0.4), (1.0, 0.4)))
    assert not ablation_finding(runs, "full", ["spars", "anon"])["holds"]


