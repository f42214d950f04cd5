"""The example run configs in configs/ parse into valid model and train configs."""
from pathlib import Path

import pytest

from stprivacy.commands.train import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_parses(path):
    model, train = load_run_config(path)
    assert model.frames % model.tubelet[0] == 0
    assert train.dataset in ("synthetic", "hmdb51", "ucf101", "folder_csv")


def test_configs_exist():
    assert len(CONFIGS) >= 3


def test_synthetic_config_is_the_demo_recipe():
    """`stprivacy train --config configs/synthetic_small.json` trains what `stprivacy demo` does."""
    from stprivacy.commands.demo import FULL
    from stprivacy.model import STPrivacyConfig

    model, train = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic_small.json")
    assert model == STPrivacyConfig.small(alpha=FULL.alpha, **FULL.model)
    assert train.dataset_kwargs == {"train_videos": FULL.train_videos, "test_videos": FULL.test_videos,
                                    "num_classes": FULL.num_classes}
    for name in ("batch_size", "base_lr", "warmup_epochs", "init_epochs", "adv_epochs", "eval_epochs"):
        assert getattr(train, name) == getattr(FULL, name), name
    for name, value in FULL.train.items():
        assert getattr(train, name) == value, name
    assert train.recognizer == FULL.recognizer


def test_synthetic_paper_config_is_the_demo_paper_row():
    """`stprivacy train --config configs/synthetic_paper.json` trains the demo's "STPrivacy (paper)" row."""
    from stprivacy.commands.demo import FULL, PAPER, _configs
    from stprivacy.train import TrainConfig

    model, train = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic_paper.json")
    demo_model, demo_train = _configs(FULL, 0, True)[PAPER]
    assert model == demo_model
    skip = {"seed", "log", "dataset_kwargs"}  # the file's run logs to csv; the demo's seed is each run's
    assert {k: v for k, v in train.to_dict().items() if k not in skip} == \
        {k: v for k, v in demo_train.to_dict().items() if k not in skip}
    assert train.dataset_kwargs == {k: v for k, v in demo_train.dataset_kwargs.items() if k != "seed"}
    # Nothing of the recipe: every training field but the scale's is the paper's default.
    assert set(FULL.paper_train) == {"reconstruction_epochs", "base_lr"}
    defaults = TrainConfig()
    for name in ("initialization_trains", "adversarial_trains", "privacy_adversary", "privacy_steps", "lambda_filter",
                 "lambda_action", "lambda_privacy", "sparsity_hold_epochs", "sparsity_ramp_epochs"):
        assert getattr(train, name) == getattr(defaults, name), name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_learned_method_sections_parse(path):
    """A config's section for a learned method (``stprivacy train --method NAME``) is that method's config."""
    from stprivacy.commands.train import load_method_config
    from stprivacy.methods.learned import method_names

    for name in method_names():
        assert load_method_config(path, name).to_dict()
