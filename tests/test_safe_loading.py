"""Checkpoints from strangers cannot run code; torn or truncated ones never cost the last good state."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from stprivacy.cli import main as cli_main
from stprivacy.train import checkpoint as ckpt
from stprivacy.train.checkpoint import (CheckpointError, UnsafeCheckpointError, load_checkpoint, load_latest,
                                        save_checkpoint, save_rotating)

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this would run a shell command (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _good(step: int) -> dict:
    return {"phase": "initialization", "step": step, "model": {"w": torch.full((64,), float(step))}}


def test_pickle_payload_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"phase": "initialization", "model": {}, "extra": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil\.pt.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_cli_refuses_a_malicious_checkpoint_with_one_clear_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"phase": "adversarial", "epoch": 1, "config": _Payload(marker)}, path)
    assert cli_main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _good(1))
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not an stprivacy checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rotation_keeps_the_previous_checkpoint_and_resume_falls_back_to_it(tmp_path):
    assert load_latest(tmp_path) is None
    save_rotating(tmp_path, _good(1))
    save_rotating(tmp_path, _good(2))
    assert load_latest(tmp_path)["step"] == 2
    assert load_checkpoint(tmp_path / "last.prev.pt")["step"] == 1
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # torn by a crash of the disk, not of our writer
    with pytest.warns(UserWarning, match=r"last\.pt is truncated or corrupt.*previous good checkpoint .*last\.prev\.pt"):
        assert load_latest(tmp_path)["step"] == 1
    (tmp_path / "last.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_latest(tmp_path)


def test_unsafe_last_checkpoint_is_not_silently_skipped(tmp_path):
    save_rotating(tmp_path, _good(1))
    torch.save({"phase": "initialization", "x": _Payload(tmp_path / "pwned")}, tmp_path / "last.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_latest(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", _good(1))

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _good(2))
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_every_torch_load_in_the_package_is_weights_only():
    """A new ``torch.load`` without ``weights_only=True`` would reopen the pickle hole."""
    offenders = []
    for package in ("stprivacy", "stpriv_ops"):
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            for match in re.finditer(r"torch\.load\(", text):
                call = text[match.start(): text.find(")", match.end()) + 1]
                if "weights_only=True" not in call:
                    offenders.append(f"{source.relative_to(ROOT)}: {call}")
    assert not offenders, offenders
