"""The stprivacy CLI: the tiny demo writes its report and pictures; train/evaluate on a config."""
import json

import matplotlib.image
import pytest

from stprivacy.cli import COMMANDS, build_parser, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png_with_content(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_every_command_is_registered():
    names = {module.__name__.rsplit(".", 1)[1] for module in COMMANDS}
    assert {"demo", "train", "evaluate"} <= names
    parser = build_parser()
    for name in ("demo", "train", "evaluate"):
        assert parser.parse_args([name] + (["--config", "x.json"] if name == "train" else [])
                                 + (["--checkpoint", "x.pt"] if name == "evaluate" else [])).command == name


def test_tiny_demo_writes_report_and_pictures(tmp_path, capsys):
    assert main(["demo", "--tiny", "--out", str(tmp_path), "--no-progress", "--seed", "1"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    paper, recipe = "STPrivacy (paper)", "STPrivacy + stpriv recipe"
    expected_rows = {"raw", "downsample_2x", "downsample_4x", "blur_weak", "blur_strong", "person_blacken",
                     "person_blur_strong", "person_blur_weak", "grey", "grey_blur", "oracle_grey_blur",
                     "oracle: actor tubelets only", paper, recipe}
    assert set(report["results"]) == expected_rows
    for row in report["results"].values():
        assert {"top1", "f1", "cmap", "kept", "ap", "privacy_from", "top1_from", "validation"} <= set(row)
        assert 0 <= row["top1"] <= 1 and 0 <= row["cmap"] <= 1 and len(row["ap"]) == 5
    # Baselines face the pixel-only attacker; the methods that drop tubelets the mask-aware one too.
    assert set(report["results"]["raw"]["attackers"]) == {"pixels"}
    for name in (paper, recipe, "oracle: actor tubelets only"):
        assert set(report["results"][name]["attackers"]) == {"pixels", "mask"}
        assert report["results"][name]["kept"] < 1.0
    # Each row names its options: the paper row none of ours, the recipe row each of them.
    assert "pab_filter" in report["results"][recipe]["note"] and "pab_filter" not in report["results"][paper]["note"]
    paper_cfg, recipe_cfg = report["config"][paper], report["config"][recipe]
    assert paper_cfg["model"]["keep_gradient"] == "straight_through" and paper_cfg["model"]["train_sampler"] == "gumbel"
    assert not paper_cfg["model"]["pab_filter"] and paper_cfg["train"]["privacy_adversary"] == "negative_bce"
    assert recipe_cfg["model"]["pab_filter"] and recipe_cfg["train"]["privacy_steps"] == 4
    assert set(report["tradeoff"]) == {"0.5", "0.7"}
    assert set(report["targets"]) == {paper, recipe}
    assert report["learned"] == [] and report["ablations"] == []
    assert report["commit"] and report["machine"]["torch_threads"] >= 1
    assert report["settings"]["tiny"] and report["settings"]["seed"] == 1
    _assert_png_with_content(tmp_path / "examples.png")
    _assert_png_with_content(tmp_path / "tradeoff.png")
    out = capsys.readouterr().out
    assert "Top-1" in out and "cMAP" in out and paper in out and recipe in out
    assert "stprivacy demo --table1" in out  # where the learned competitors are


def test_demo_over_seeds_writes_the_seed_table_and_resumes(tmp_path, capsys):
    args = ["demo", "--tiny", "--no-progress", "--threads", "1", "--seeds", "0", "1", "--out", str(tmp_path),
            "--set", "demo.eval_epochs=1", "--set", "train.adversarial_trains=all"]
    assert main(args) == 0
    table = json.loads((tmp_path / "seed_table.json").read_text())
    assert [r["seed"] for r in table["runs"]] == [0, 1] and table["threads"] == [1]
    assert table["command"].endswith("--set demo.eval_epochs=1 --set train.adversarial_trains=all")
    markdown = (tmp_path / "seed_table.md").read_text()
    assert "STPrivacy (paper): the target" in markdown and "STPrivacy + stpriv recipe: the target" in markdown
    assert "not checked" in markdown  # the paper's finding needs --table1
    report = json.loads((tmp_path / "seed_1" / "report.json").read_text())
    assert report["config"]["STPrivacy + stpriv recipe"]["train"]["adversarial_trains"] == "all"
    assert report["config"]["STPrivacy (paper)"]["train"]["adversarial_trains"] == "pab"  # --set train: the recipe's
    capsys.readouterr()
    assert main(args) == 0  # both seeds finished: only the table is rebuilt
    assert capsys.readouterr().out.count("is already there, not rerun") == 2
    assert main(args + ["--ablations"]) == 0  # other rows asked for: the seeds run again
    assert "is already there" not in capsys.readouterr().out


def test_demo_table1_trains_and_attacks_the_learned_methods(tmp_path, capsys):
    assert main(["demo", "--tiny", "--table1", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["learned"] == ["VITA", "SPAct", "Collective"]
    for name in report["learned"]:
        row = report["results"][name]
        assert row["kept"] == 1.0 and set(row["attackers"]) == {"pixels"} and row["note"]
    assert "stprivacy demo --table1" not in capsys.readouterr().out


def _write_config(path, **train):
    base = {"batch_size": 8, "base_lr": 0.5, "init_epochs": 1, "adv_epochs": 1, "eval_epochs": 1, "progress": False,
            "recognizer": {"embed_dim": 24, "num_heads": 2, "depth": 1},
            "dataset_kwargs": {"train_videos": 8, "test_videos": 8}, "eval_keep_ratios": [0.7]}
    config = {"model": {"preset": "small", "embed_dim": 24, "num_heads": 2, "pab_depth": 1}, "train": {**base, **train}}
    path.write_text(json.dumps(config))
    return path


def test_train_then_evaluate(tmp_path, capsys):
    config = _write_config(tmp_path / "run.json")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    for name in ("initialization.pt", "adversarial.pt", "report.json"):
        assert (tmp_path / "run" / name).is_file()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["evaluation"]) == {"0.7"}
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "adversarial.pt"), "--keep-ratios", "0.5",
                 "--baselines", "raw", "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(evaluation["rows"]) == ["raw", "STPrivacy (alpha=0.5)"]
    assert evaluation["rows"]["STPrivacy (alpha=0.5)"]["kind"] == "stprivacy"
    assert set(evaluation["rows"]["STPrivacy (alpha=0.5)"]["attackers"]["video"]["attackers"]) == {"pixels", "mask"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "/nonexistent/run.json"], "config file not found"),
        (["evaluate", "--checkpoint", "/nonexistent/ckpt.pt"], "checkpoint not found"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_contents(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"preset": "huge"}}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown model preset 'huge'" in capsys.readouterr().err
    bad.write_text(json.dumps({"train": {"epochs": 3}}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown TrainConfig keys" in capsys.readouterr().err
    bad.write_text(json.dumps({"optimizer": {}}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown sections" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_unknown_command_and_bad_values_exit_by_argparse():
    with pytest.raises(SystemExit):
        main(["anonymise"])
    with pytest.raises(SystemExit):
        main(["demo", "--seed", "abc"])
