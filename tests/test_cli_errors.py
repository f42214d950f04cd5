"""Every command answers bad input the same way: one line ``stprivacy <command>: error: ...`` naming
the input and the problem, exit status 2, no traceback, and nothing written. Each case runs the
real command line in a subprocess; a bug (any other exception) keeps its traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stprivacy.cli import main as cli_main
from stprivacy.data.video import VideoDecodeError
from stprivacy.model import STPrivacy, STPrivacyConfig
from train_fixtures import cli_env, write_config
from video_factory import truncate, write_test_video

CFG = STPrivacyConfig.small()


class _Payload:
    """Unpickling this would run a shell command (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The inputs of every case: a good checkpoint and video, and the bad ones."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    good = root / "good.pt"
    torch.save({"phase": "adversarial", "epoch": 1, "model": STPrivacy(CFG).state_dict(),
                "config": {"model": CFG.to_dict(), "train": {}}}, good)
    evil = root / "evil.pt"
    torch.save({"phase": "adversarial", "epoch": 1, "model": {}, "config": _Payload(root / "pwned")}, evil)
    torn = root / "torn.pt"
    torn.write_bytes(good.read_bytes()[:1000])
    video = write_test_video(root / "clip.mp4", num_frames=16)
    truncated = truncate(write_test_video(root / "truncated.mp4", num_frames=48, height=48, width=64))
    folder = root / "folder"
    write_test_video(folder / "a.avi", num_frames=9)
    truncate(write_test_video(folder / "b.mp4", num_frames=48, height=48, width=64))
    bad_json = root / "bad.json"
    bad_json.write_text("{model: ")
    bad_value = write_config(root / "bad_value.json", batch_size=0)
    no_filter = write_config(root / "no_filter.json", lambda_filter=0.1)  # the tiny model has no pab_filter
    return {"root": root, "good": good, "evil": evil, "torn": torn, "video": video, "truncated": truncated,
            "folder": folder, "bad_json": bad_json, "bad_value": bad_value, "no_filter": no_filter}


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stprivacy", *argv], capture_output=True, text=True,
                          env=cli_env(), timeout=300)


# (argv with {names} of the fixture's files and {out}, the words the error line must contain)
CASES = {
    "truncated video": (["anonymize", "{truncated}", "-o", "{out}/anon.mp4", "--checkpoint", "{good}"],
                        ["truncated.mp4", "cannot open video"]),
    "folder with a truncated video": (["anonymize", "{folder}", "-o", "{out}/anon", "--checkpoint", "{good}"],
                                      ["b.mp4", "cannot open video"]),
    "pickle payload": (["anonymize", "{video}", "-o", "{out}/anon.mp4", "--checkpoint", "{evil}"],
                       ["evil.pt", "refusing to load", "could run code"]),
    "torn checkpoint": (["evaluate", "--checkpoint", "{torn}", "--out", "{out}/eval"], ["torn.pt", "truncated or corrupt"]),
    "missing transformed root": (["evaluate", "--transformed-root", "{root}/no_such_method", "--out", "{out}/eval"],
                                 ["--transformed-root", "no_such_method", "is not a directory"]),
    "missing input": (["anonymize", "{root}/nothing.mp4", "-o", "{out}/anon.mp4", "--checkpoint", "{good}"],
                      ["nothing.mp4", "does not exist"]),
    "missing checkpoint": (["anonymize", "{video}", "-o", "{out}/anon.mp4", "--checkpoint", "{root}/gone.pt"],
                           ["gone.pt", "checkpoint not found"]),
    "wrong suffix": (["anonymize", "{video}", "-o", "{out}/anon.avi", "--checkpoint", "{good}"],
                     ["anon.avi", "must end in .mp4"]),
    "bad JSON config": (["train", "--config", "{bad_json}", "--out", "{out}/run"], ["bad.json", "not valid JSON"]),
    "bad config value": (["train", "--config", "{bad_value}", "--out", "{out}/run"],
                         ["bad_value.json", "batch_size must be a positive int"]),
    "filter prior without a filter": (["train", "--config", "{no_filter}", "--out", "{out}/run"],
                                      ["lambda_filter=0.1", "pab_filter=True"]),
    "filter prior without a filter (demo)": (["demo", "--tiny", "--set", "model.pab_filter=false", "--out",
                                              "{out}/demo"], ["lambda_filter", "pab_filter=True", "--set"]),
    "bad option": (["anonymize", "{video}", "-o", "{out}/anon.mp4", "--checkpoint", "{good}", "--keep-ratio", "1.5"],
                   ["--keep-ratio", "(0, 1]"]),
    "bad option value (argparse)": (["demo", "--seed", "abc", "--out", "{out}/demo"], ["--seed", "invalid int value"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_leaves_nothing_behind(case, files, tmp_path):
    argv, words = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    result = _run(*(arg.format(out=out, **files) for arg in argv))
    command = argv[0]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"stprivacy {command}: error: "), result.stderr
    # argparse prints its usage above its error line; our own errors are the only line
    assert len(lines) == 1 or lines[0].startswith("usage:"), result.stderr
    for word in words:
        assert word in lines[-1], result.stderr
    assert list(out.iterdir()) == [], f"left behind: {list(out.rglob('*'))}"
    assert not (files["root"] / "pwned").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A plain ValueError from inside a command is not a user error: it propagates."""
    from stprivacy.commands import train

    def broken(path):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(train, "load_run_config", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        cli_main(["train", "--config", str(tmp_path / "run.json")])


def test_a_video_that_fails_while_decoding_leaves_no_partial_output(files, tmp_path, monkeypatch):
    """Truncated past its header: decoding fails midway. The half-written file is removed and an
    output folder the command created is removed again."""
    from stprivacy import anonymize

    real_frames = anonymize.iter_frames

    def failing_frames(path):
        for i, frame in enumerate(real_frames(path)):
            if i == 10:
                raise VideoDecodeError(f"decoding {path} failed: (simulated)")
            yield frame

    monkeypatch.setattr(anonymize, "iter_frames", failing_frames)
    out = tmp_path / "new" / "folder" / "anon.mp4"
    code = cli_main(["anonymize", str(files["video"]), "-o", str(out), "--checkpoint", str(files["good"]),
                     "--no-progress"])
    assert code == 2
    assert list(tmp_path.iterdir()) == []
