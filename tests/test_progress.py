"""Progress output: a live bar only on a terminal; in a log file one plain line per epoch or phase."""
from __future__ import annotations

import io
import re
import subprocess
import sys

from stprivacy.progress import LineProgress, progress_bar
from train_fixtures import cli_env, write_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_anything_else_one_line():
    assert not isinstance(progress_bar(range(3), stream=_Terminal()), LineProgress)
    log = io.StringIO()
    bar = progress_bar(range(3), desc="init 1/2", unit="batch", stream=log)
    assert isinstance(bar, LineProgress)
    for _ in bar:
        bar.set_postfix(action="0.412")
    assert re.fullmatch(r"init 1/2: 3/3 batches in \d+\.\d s, action=0\.412\n", log.getvalue()), log.getvalue()


def test_resumed_counting_and_manual_updates():
    log = io.StringIO()
    for _ in progress_bar(range(2), desc="adversarial 1/1", total=5, initial=3, unit="batch", stream=log):
        pass
    assert log.getvalue().startswith("adversarial 1/1: 5/5 batches")
    log = io.StringIO()
    bar = progress_bar(total=10, desc="clip.mp4", unit="frame", stream=log)
    bar.update(4)
    bar.close()  # not finished (an error stopped it): no line, so the error stays the only one
    assert log.getvalue() == ""
    bar = progress_bar(total=10, desc="clip.mp4", unit="frame", stream=log)
    bar.update(10)
    bar.close()
    bar.close()
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("clip.mp4: 10/10 frames")


def test_disabled_prints_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(3), disable=True, stream=log):
        pass
    assert log.getvalue() == ""


def test_training_into_a_log_file_writes_one_line_per_epoch(tmp_path):
    config = write_config(tmp_path / "run.json", progress=True, init_epochs=2, adv_epochs=1, eval_epochs=1,
                          log="none")
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        result = subprocess.run([sys.executable, "-m", "stprivacy", "train", "--config", str(config),
                                 "--out", str(tmp_path / "run"), "--skip-evaluation"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=cli_env(), timeout=600)
    text = log.read_text()
    assert result.returncode == 0, text
    assert "\r" not in text
    lines = [line for line in text.splitlines() if re.match(r"(init|adversarial) \d/\d: ", line)]
    assert [line.split(":")[0] for line in lines] == ["init 1/2", "init 2/2", "adversarial 1/1"], text
    assert all(re.search(r": 2/2 batches in \d+\.\d s, action=\d", line) for line in lines), text
