"""The learned comparison methods through the command line: ``stprivacy train --method NAME``
writes NAME.pt and attacks it; ``stprivacy evaluate --checkpoint`` puts it in a table."""
import json

import pytest
import torch

from stprivacy.cli import main
from stprivacy.methods.learned import load_method_checkpoint, method_names

# The quickest settings of each method: enough to run every phase once on 8 videos.
TINY = {"vita": {"identity_epochs": 1, "target_epochs": 1, "budget_epochs": 1, "adv_epochs": 1, "num_budget": 2},
        "spact": {"init_epochs": 1, "privacy_epochs": 1, "target_epochs": 1, "epochs": 1},
        "collective": {"epochs": 1, "lossnet_epochs": 1}}


def _config(path, image_size=32, **sections):
    train = {"batch_size": 4, "eval_epochs": 1, "progress": False,
             "recognizer": {"embed_dim": 24, "num_heads": 2, "depth": 1},
             "dataset_kwargs": {"train_videos": 8, "test_videos": 8}}
    model = {"preset": "small", "embed_dim": 24, "num_heads": 2, "pab_depth": 1, "image_size": image_size}
    path.write_text(json.dumps({"model": model, "train": train, **sections}))
    return path


def test_every_learned_method_is_registered():
    assert method_names() == ("vita", "spact", "collective")
    assert set(TINY) == set(method_names())


@pytest.mark.parametrize("name", ["collective", "vita", "spact"])
def test_train_method_then_evaluate_it(tmp_path, capsys, name):
    config = _config(tmp_path / "run.json", **{name: TINY[name]})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--method", name, "--out", str(out)]) == 0
    method, anonymizer = load_method_checkpoint(out / f"{name}.pt")
    assert method.name == name
    video = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert anonymizer(video).shape == video.shape
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == name and report["config"][name]
    assert list(report["evaluation"]["rows"]) == [method.title]
    assert report["evaluation"]["rows"][method.title]["kind"] == "learned"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / f"{name}.pt"), "--baselines", "raw",
                 "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(evaluation["rows"]) == ["raw", method.title]
    assert method.title in capsys.readouterr().out


def test_bad_method_arguments_give_one_line(tmp_path, capsys):
    config = _config(tmp_path / "run.json", vita={"gamma": -1})
    assert main(["train", "--config", str(config), "--method", "nope"]) == 2
    assert "unknown learned method 'nope'" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--method", "vita"]) == 2
    assert "section 'vita'" in capsys.readouterr().err
    config = _config(tmp_path / "run2.json", collective={"epoch": 1})
    assert main(["train", "--config", str(config), "--method", "collective"]) == 2
    assert "unknown CollectiveConfig keys: ['epoch']" in capsys.readouterr().err
    config = _config(tmp_path / "run3.json")
    assert main(["train", "--config", str(config), "--method", "collective", "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    config.write_text(json.dumps({"model": {"preset": "small"}, "mystery": {}}))
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown sections" in capsys.readouterr().err


def test_evaluate_refuses_a_method_of_another_geometry(tmp_path, capsys):
    small = _config(tmp_path / "small.json", collective=TINY["collective"])
    assert main(["train", "--config", str(small), "--method", "collective", "--out", str(tmp_path / "a"),
                 "--skip-evaluation"]) == 0
    other = _config(tmp_path / "other.json", image_size=48, collective=TINY["collective"])
    assert main(["train", "--config", str(other), "--method", "collective", "--out", str(tmp_path / "b"),
                 "--skip-evaluation"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "a" / "collective.pt"),
                 str(tmp_path / "b" / "collective.pt")]) == 2
    assert "collective.pt was trained on clips of 8 frames of 48x48, but this evaluation's are 8 frames of 32x32" \
        in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "a" / "collective.pt"),
                 str(tmp_path / "a" / "collective.pt")]) == 2
    assert "one checkpoint per learned method" in capsys.readouterr().err
