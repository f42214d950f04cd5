"""``stprivacy sweep``: one train + evaluate per value (and seed), the raw reference, the table and
the plot; finished points are not rerun; bad ``--set`` values are one line and write nothing."""
from __future__ import annotations

import json

import pytest

from stprivacy.cli import main
from stprivacy.commands.sweep import parse_parameter
from stprivacy.errors import UsageError
from train_fixtures import TINY_MODEL, TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _config(path, **train):
    path.write_text(json.dumps({"model": TINY_MODEL, "train": {**TINY_TRAIN, "log": "none", **train}}))
    return path


def test_sweep_runs_every_point_writes_table_plot_and_skips_finished_points(tmp_path, capsys):
    config = _config(tmp_path / "run.json")
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", str(config), "--set", "train.lambda_privacy=0.25,1", "--seeds", "0", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["parameter"] == "train.lambda_privacy" and sweep["labels"] == ["0.25", "1"]
    assert sorted((p["value"], p["seed"]) for p in sweep["points"]) == [("0.25", 0), ("0.25", 1), ("1", 0), ("1", 1)]
    for p in sweep["points"]:
        assert 0 <= p["top1"] <= 1 and 0 <= p["cmap"] <= 1 and p["margin"] == pytest.approx(p["top1"] - p["cmap"])
        run = json.loads((out / f"lambda_privacy={p['value']}" / f"seed_{p['seed']}" / "report.json").read_text())
        assert run["config"]["train"]["lambda_privacy"] == float(p["value"])
        assert run["config"]["train"]["seed"] == p["seed"]
    for label, s in sweep["summary"].items():
        values = [p["top1"] for p in sweep["points"] if p["value"] == label]
        assert s["top1"]["min"] == min(values) and s["top1"]["max"] == max(values)
    assert [p["seed"] for p in sweep["raw_points"]] == [0, 1]
    assert {p["commit"] for p in sweep["points"] + sweep["raw_points"]} == {sweep["commit"]}  # each point says its code
    markdown = (out / "sweep.md").read_text()
    assert "| raw video |" in markdown and "| 0.25 |" in markdown and sweep["commit"] in markdown
    # The per-attribute table: one AP column per attribute of the dataset, each cell the median over seeds.
    attributes = sweep["attributes"]
    assert attributes and all(len(p["ap"]) == len(attributes) for p in sweep["points"] + sweep["raw_points"])
    assert "| train.lambda_privacy | " + " | ".join(f"AP {a}" for a in attributes) + " | kept |" in markdown
    row = next(line for line in markdown.splitlines()[::-1] if line.startswith("| 0.25 |")).split(" | ")
    first = sorted(p["ap"][0] for p in sweep["points"] if p["value"] == "0.25")
    assert float(row[1]) == pytest.approx(100 * (first[0] + first[1]) / 2, abs=0.051)  # the median of two seeds
    assert (out / "sweep.png").stat().st_size > 10_000

    # A point whose report was lost is run again (its checkpoints resume), the others are not.
    (out / "lambda_privacy=1" / "seed_1" / "report.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, not rerun") == 3 + 2  # three points, two raw references
    again = json.loads((out / "sweep.json").read_text())
    assert again["points"] == sweep["points"] and again["raw_points"] == sweep["raw_points"]

    # The same --out for another base config is refused before anything runs.
    _config(config, base_lr=0.002)
    assert main(argv) == 2
    assert "holds a run of another config" in capsys.readouterr().err


def test_values_are_json_and_commas_inside_brackets_stay():
    assert parse_parameter("model.tubelet=[1,16,16],[2, 16, 16]") == ("model", "tubelet", [[1, 16, 16], [2, 16, 16]])
    assert parse_parameter("train.privacy_adversary=entropy,negative_bce") == \
        ("train", "privacy_adversary", ["entropy", "negative_bce"])
    assert parse_parameter("model.alpha=0.5,0.7,0.9")[2] == [0.5, 0.7, 0.9]


@pytest.mark.parametrize("parameter, message", [
    ("train.lambda_privacyy=0.5,1", "'lambda_privacyy' is not a TrainConfig field"),
    ("optimizer.lr=1,2", "the section must be one of model, train"),
    ("train.lambda_privacy=", "no values given"),
    ("train.lambda_privacy=0.5,,1", "an empty value"),
    ("model.tubelet=[1,16,16", "unclosed bracket"),
    ("lambda_privacy=0.5", "must be SECTION.KEY=V1,V2"),
    ("train.lambda_privacy=0.5,0.5", "a value is repeated"),
])
def test_bad_parameters_name_the_problem(parameter, message):
    with pytest.raises(UsageError, match=message):
        parse_parameter(parameter)


@pytest.mark.parametrize("parameter, message", [
    ("train.batch_size=8,abc", "train.batch_size=\"abc\" is not valid: .*batch_size must be a positive int"),
    ("train.lambda_privacy=0.5,-1", "train.lambda_privacy=-1 is not valid: .*lambda_privacy must be"),
    ("model.tubelet=[2,16,16],[3,16,16]", "model.tubelet=\\[3, 16, 16\\] is not valid"),
    ("train.nope=1", "'nope' is not a TrainConfig field"),
])
def test_a_bad_value_is_one_line_and_nothing_is_written(tmp_path, capsys, parameter, message):
    import re

    config = _config(tmp_path / "run.json")
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(config), "--set", parameter, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("stprivacy sweep: error:"), err
    assert re.search(message, err), err
    assert not out.exists()
