"""Exact resumption: a run killed with SIGKILL mid-epoch and resumed with --resume ends with the
same weights, losses and metrics, bit for bit, as a run that was never interrupted."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from stprivacy.cli import main as cli_main
from stprivacy.model import STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset, load_checkpoint, train_anonymizer
from stprivacy.train.checkpoint import load_latest
from stprivacy.train.run_log import read_csv
from train_fixtures import ROOT, TINY_MODEL, TINY_TRAIN, cli_env, one_thread, write_config

_one_thread = pytest.fixture(autouse=True)(one_thread)

# 30 videos, 24 once the validation split (20%) is left out: / batch 8 = 3 steps per epoch; a
# checkpoint after every step.
RUN = dict(dataset_kwargs={"train_videos": 30, "test_videos": 8}, init_epochs=1, adv_epochs=1, eval_epochs=1,
           checkpoint_every=1)


def _train_cmd(config, out, *extra):
    return [sys.executable, "-m", "stprivacy.cli", "train", "--config", str(config), "--out", str(out), *extra]


def _assert_same_weights(a, b):
    for section in ("model",):
        assert a[section].keys() == b[section].keys()
        for name in a[section]:
            assert torch.equal(a[section][name], b[section][name]), name
    for rec in ("action", "privacy"):
        for name, t in a["recognizers"][rec].items():
            assert torch.equal(t, b["recognizers"][rec][name]), (rec, name)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, capsys):
    # The victim runs in its own process (so it can be SIGKILLed); the resumption and the
    # uninterrupted reference run here, on one thread like the victim (already-warm imports).
    config = write_config(tmp_path / "run.json", **RUN)
    victim = subprocess.Popen(_train_cmd(config, tmp_path / "victim"), cwd=ROOT, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Kill as soon as the second checkpoint exists (after step 2 of the 3 in epoch 1).
    deadline = time.monotonic() + 200
    while not (tmp_path / "victim" / "last.prev.pt").exists():
        assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "victim" / "report.json").exists()

    left = load_latest(tmp_path / "victim")
    # step 1 when the kill landed between moving last.pt aside and writing the new one
    assert left["phase"] == "initialization" and 1 <= left["step"] < 3, left["progress"]
    assert cli_main(_train_cmd(config, tmp_path / "victim", "--resume")[3:]) == 0
    assert "resuming" in capsys.readouterr().out
    assert cli_main(_train_cmd(config, tmp_path / "reference")[3:]) == 0

    for phase in ("initialization", "adversarial"):
        _assert_same_weights(load_checkpoint(tmp_path / "victim" / f"{phase}.pt"),
                             load_checkpoint(tmp_path / "reference" / f"{phase}.pt"))
    report_v = json.loads((tmp_path / "victim" / "report.json").read_text())
    report_r = json.loads((tmp_path / "reference" / "report.json").read_text())
    for key in ("top1", "f1", "cmap", "kept"):
        assert report_v["evaluation"]["0.7"][key] == report_r["evaluation"]["0.7"][key], key
    for phase, hist in report_r["history"].items():
        for key, values in hist.items():
            if key != "seconds":
                assert report_v["history"][phase][key] == values, (phase, key)
    # the log reads as if never interrupted: rows after the checkpoint were dropped, then rewritten
    assert read_csv(tmp_path / "victim" / "metrics.csv") == read_csv(tmp_path / "reference" / "metrics.csv")


def test_resume_in_process_from_every_mid_epoch_checkpoint(tmp_path):
    """Cheaper and finer than the SIGKILL test: resume from a mid-phase-2 checkpoint."""
    model_cfg = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    cfg = TrainConfig.from_dict({**TINY_TRAIN, **RUN, "init_epochs": 0, "log": "none"})
    data = build_dataset("synthetic", "train", {"frames": model_cfg.frames, "image_size": model_cfg.image_size,
                                                 "tubelet": model_cfg.tubelet}, **cfg.dataset_kwargs)
    sizes = {"num_classes": data.num_classes, "num_attributes": data.num_attributes}
    full, history = train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / "full", **sizes)
    # last.prev.pt of the finished run is step 2 of 3 of the adversarial phase: resume from it alone
    (tmp_path / "cut").mkdir()
    (tmp_path / "full" / "last.prev.pt").rename(tmp_path / "cut" / "last.pt")
    assert load_latest(tmp_path / "cut")["progress"]["batch"] == 2
    resumed, history_resumed = train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / "cut", resume=True, **sizes)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert history_resumed["adversarial"]["loss_privacy"] == history["adversarial"]["loss_privacy"]


def test_resume_inside_the_evaluation_phase(tmp_path, capsys):
    """Phase 3 trains fresh recognizers for eval_epochs (80 in the paper): a kill there resumes
    too, from the recognizers' own checkpoint, and a finished keep ratio is not redone."""
    config = write_config(tmp_path / "run.json", **{**RUN, "eval_epochs": 2, "eval_keep_ratios": [0.5, 0.7]})
    out = tmp_path / "run"
    assert cli_main(_train_cmd(config, out)[3:]) == 0
    report = json.loads((out / "report.json").read_text())
    log = read_csv(out / "metrics.csv")
    # Pretend the run died in the alpha=0.7 fit of the mask-aware attacker (the second one), one
    # step before its end: its newest checkpoint is last.prev.pt, the result was never written,
    # neither was the report.
    fit = out / "evaluation" / "stprivacy_alpha_0.7"
    (fit / "mask" / "last.pt").unlink()
    (fit / "result.json").unlink()
    (out / "report.json").unlink()
    done = out / "evaluation" / "stprivacy_alpha_0.5" / "result.json"
    done.write_text(done.read_text().replace('"seconds"', '"seconds_marker"'))  # must be reused as is
    capsys.readouterr()
    assert cli_main(_train_cmd(config, out, "--resume")[3:]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert "seconds_marker" in resumed["evaluation"]["0.5"]
    for key in ("top1", "f1", "cmap", "kept"):
        assert resumed["evaluation"]["0.7"][key] == report["evaluation"]["0.7"][key], key
    assert read_csv(out / "metrics.csv") == log


def test_a_checkpoint_of_an_earlier_version_is_checked_in_todays_fields():
    """A checkpoint written before ``detach_blackening`` became ``blackening_gradient`` (the
    opposite) and the probes' options were removed resumes when it means the same run, and is
    refused, naming the field, when its blackening differs."""
    from stprivacy.train.protocol import _check_resumable

    model_cfg = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    cfg = TrainConfig.from_dict({**TINY_TRAIN, **RUN})
    old_model = {k: v for k, v in model_cfg.to_dict().items() if k != "blackening_gradient"}
    old_model.update(pab_color_skip=False, detach_blackening=not model_cfg.blackening_gradient)
    old_train = {**cfg.to_dict(), "adversarial_lr_scale": 1.0, "privacy_restart_epochs": 0}
    _check_resumable({"config": {"model": old_model, "train": old_train}}, model_cfg, cfg)
    old_model["detach_blackening"] = model_cfg.blackening_gradient
    with pytest.raises(ValueError, match="differs from the checkpoint's in \\['blackening_gradient'\\]"):
        _check_resumable({"config": {"model": old_model, "train": old_train}}, model_cfg, cfg)
