"""Every command takes --no-progress: no bar on a terminal, and no progress lines in a log."""
import json

import pytest

from stprivacy.cli import COMMANDS, build_parser, main

# The arguments each command needs besides --no-progress.
REQUIRED = {"demo": [], "train": ["--config", "run.json"], "evaluate": ["--checkpoint", "x.pt"],
            "anonymize": ["in.mp4", "-o", "out.mp4", "--checkpoint", "x.pt"],
            "export": ["--checkpoint", "x.pt", "-o", "a.onnx"],
            "sweep": ["--config", "run.json", "--set", "train.lambda_privacy=0.5,1"]}


@pytest.mark.parametrize("command", [module.__name__.rsplit(".", 1)[1] for module in COMMANDS])
def test_every_command_parses_no_progress(command):
    assert command in REQUIRED, f"new command {command!r}: add its required arguments to this test"
    args = build_parser().parse_args([command, *REQUIRED[command], "--no-progress"])
    assert args.no_progress is True
    assert build_parser().parse_args([command, *REQUIRED[command]]).no_progress is False


def _config(path):
    # progress on in the file: --no-progress must switch it off.
    train = {"batch_size": 8, "base_lr": 0.5, "init_epochs": 1, "adv_epochs": 1, "eval_epochs": 1, "progress": True,
             "recognizer": {"embed_dim": 24, "num_heads": 2, "depth": 1},
             "dataset_kwargs": {"train_videos": 8, "test_videos": 8}, "eval_keep_ratios": [0.7]}
    path.write_text(json.dumps({"model": {"preset": "small", "embed_dim": 24, "num_heads": 2, "pab_depth": 1},
                                "train": train}))
    return path


def test_train_and_evaluate_print_no_progress_lines(tmp_path, capsys):
    config = _config(tmp_path / "run.json")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--skip-evaluation"]) == 0
    assert "init 1/1:" in capsys.readouterr().err  # stderr is no terminal here: one line per phase
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "quiet"), "--skip-evaluation",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "init 1/1:" not in err and "adversarial 1/1:" not in err
    checkpoint = str(tmp_path / "quiet" / "adversarial.pt")
    assert main(["evaluate", "--checkpoint", checkpoint, "--config", str(config), "--baselines", "raw"]) == 0
    assert "fresh recognizers" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", checkpoint, "--config", str(config), "--baselines", "raw",
                 "--no-progress"]) == 0
    assert "fresh recognizers" not in capsys.readouterr().err
