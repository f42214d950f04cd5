"""The example run configs in configs/ parse into valid model and train configs."""
from pathlib import Path

import pytest

from stprivacy.commands.train import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_parses(path):
    model, train = load_run_config(path)
    assert model.frames % model.tubelet[0] == 0
    assert train.dataset in ("synthetic", "hmdb51", "ucf101")


def test_configs_exist():
    assert len(CONFIGS) >= 3
