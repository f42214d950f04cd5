"""The phase-2 probe's references (``benchmarks/phase2_probe.py``): the colour-statistics reader
of the tint reads an unchanged video and not a grey one, and the supervised grey fit learns."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from stprivacy.data.synthetic import SyntheticVideos, materialize
from stprivacy.model import STPrivacy, STPrivacyConfig
from train_fixtures import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _probe_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "phase2_probe.py"
    spec = importlib.util.spec_from_file_location("phase2_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tint_reader_reads_the_raw_actor_and_not_a_grey_one():
    probe = _probe_module()
    torch.manual_seed(0)
    test = materialize(SyntheticVideos("test", 160, seed=3))
    # No sparsification, a PAB filter with closed gates: the output is the input, tint and all.
    model = STPrivacy(STPrivacyConfig.small(embed_dim=24, num_heads=2, use_psb=False, pab_residual=True,
                                            pab_filter=True))
    raw = probe.tint_leak(model, test)
    with torch.no_grad():
        model.pab.filter.bias.copy_(torch.tensor([1.0, 0.0]))  # desaturate fully: no colour left
    grey = probe.tint_leak(model, test)
    assert raw > 0.9, f"raw video: tint AP {raw:.3f}"
    assert grey < 0.7, f"grey video: tint AP {grey:.3f}"


def test_fit_grey_brings_the_kept_tubelets_closer_to_grey(tmp_path):
    probe = _probe_module()
    settings, model_cfg, cfg, train, test, test_raw, model, *_ = probe.phase1(0, ["demo.adv_epochs=20"], tmp_path,
                                                                              tiny=True)
    videos = train.tensors[0]

    def error() -> float:
        with torch.no_grad():
            return float(probe.grey_error(model, model.eval()(videos), videos))

    before = error()
    per_epoch = probe.fit_grey(model, train, cfg)
    after = error()
    assert len(per_epoch) == 20 and all(math.isfinite(e) for e in per_epoch)
    assert after < 0.8 * before, (before, after)


def test_filter_gates_are_read_per_kind_of_kept_tubelet(tmp_path):
    probe = _probe_module()
    *_, test_raw, model, _, _, _ = probe.phase1(0, ["model.pab_filter=true"], tmp_path, tiny=True)
    assert probe.filter_gates(model, test_raw) == {"actor": (0.0, 0.0), "other": (0.0, 0.0)}  # the identity
    with torch.no_grad():  # grey every tubelet whose token has a positive first feature, blur every one
        model.pab.filter.weight[0, 0] = 1e4
        model.pab.filter.bias.copy_(torch.tensor([0.0, 1.0]))
    gates = probe.filter_gates(model, test_raw)
    assert set(gates) == {"actor", "other"}
    assert all(g[1] == 1.0 for g in gates.values())
    # Each token's desaturation gate is 0 or 1 by the sign of its first feature: a mean per kind
    # in [0, 1], opened on some kept tubelets (which kinds depends on the tiny run's weights).
    assert all(0.0 <= g[0] <= 1.0 for g in gates.values()) and any(g[0] > 0.0 for g in gates.values())
    assert probe.filter_gates(STPrivacy(model.cfg.__class__.small(embed_dim=24, num_heads=2)), test_raw) is None
