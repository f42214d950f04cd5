"""The unmasked-attention backend: SDPA by default, xformers' memory-efficient attention on request.

xformers is an optional extra that is not installed here, so a stand-in module with its calling
convention ([B, N, H, d] inputs, ``scale=``) checks the dispatch, the layout and the error paths.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from stprivacy.model import STPrivacy, STPrivacyConfig, attention_backend
from stprivacy.model.ops import attention, current_attention_backend


@pytest.fixture
def fake_xformers(monkeypatch):
    calls = []

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        assert attn_bias is None and p == 0.0
        calls.append(tuple(query.shape))
        # [B, N, H, d] in and out, as xformers.
        scores = torch.einsum("bnhd,bmhd->bhnm", query, key) * scale
        return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), value)

    package, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


def _qkv(B=2, H=3, N=7, d=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.fixture(autouse=True)
def _no_cached_default():
    """Each test starts, and leaves the process, with the default not yet read."""
    current_attention_backend.__dict__.pop("default", None)
    yield
    current_attention_backend.__dict__.pop("default", None)


def _fresh_default(monkeypatch, value=None):
    """As in a new process: the environment variable is read again at the next call."""
    current_attention_backend.__dict__.pop("default", None)
    if value is None:
        monkeypatch.delenv("STPRIV_ATTENTION", raising=False)
    else:
        monkeypatch.setenv("STPRIV_ATTENTION", value)


def test_default_is_sdpa(monkeypatch):
    _fresh_default(monkeypatch)
    assert current_attention_backend() == "sdpa"
    q, k, v = _qkv()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(attention(q, k, v, 0.3), want)


def test_xformers_backend_matches_sdpa(fake_xformers):
    q, k, v = _qkv()
    with attention_backend("xformers"):
        out = attention(q, k, v, 0.3)
    assert fake_xformers == [(2, 7, 3, 8)]  # called once, in xformers' [B, N, H, d] layout
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_the_model_runs_its_unmasked_attention_on_xformers(fake_xformers):
    torch.manual_seed(0)
    cfg = STPrivacyConfig.small(frames=4, image_size=16, tubelet=(2, 4, 4), embed_dim=24, num_heads=2, depth=1,
                                pab_depth=1, mlp_ratio=2.0)
    model = STPrivacy(cfg).eval()
    video = torch.rand(2, 3, 4, 16, 16)
    want = model(video).video
    with attention_backend("xformers"):
        got = model(video).video
    assert len(fake_xformers) == cfg.num_psb * cfg.depth + cfg.pab_depth  # every block after compaction, and the PAB
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_environment_variable_selects_the_backend(fake_xformers, monkeypatch):
    _fresh_default(monkeypatch, "xformers")
    assert current_attention_backend() == "xformers"
    attention(*_qkv(), 0.5)
    assert len(fake_xformers) == 1
    monkeypatch.setenv("STPRIV_ATTENTION", "sdpa")  # read once: a later change does not switch it
    assert current_attention_backend() == "xformers"
    with attention_backend("sdpa"):  # the argument always wins
        assert current_attention_backend() == "sdpa"
    _fresh_default(monkeypatch, "flash")
    with pytest.raises(ValueError, match="STPRIV_ATTENTION"):
        current_attention_backend()


def test_unknown_backend_and_missing_xformers_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="name must be one of"):
        with attention_backend("flash"):
            pass
    monkeypatch.setitem(sys.modules, "xformers", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with attention_backend("xformers"), pytest.raises(RuntimeError, match="xformers is not installed"):
        attention(*_qkv(), 0.5)
