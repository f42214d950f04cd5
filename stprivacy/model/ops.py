"""The stpriv ops the model calls, switchable to their eager references for comparisons.

Everything in ``stprivacy.model`` calls the kernels through this module, so that one switch,
:func:`reference_ops`, runs the same model on ``stpriv_ops.reference`` (DynamicViT-style eager
PyTorch) instead: that is how the benchmarks and tests compare the two with the same weights.

Attention without a mask (every token real: after compaction, in the recognizers on unpruned
video, in the anonymization block) runs on PyTorch's SDPA, or on xformers' memory-efficient
attention where that is installed and measured faster on the user's GPU: the optional extra
``pip install stpriv[xformers]``, selected with :func:`attention_backend` or the environment
variable ``STPRIV_ATTENTION=xformers`` (read at the first attention call). Nothing requires xformers.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator

import stpriv_ops
import torch
import torch.nn.functional as F
from stpriv_ops import reference
from torch import Tensor

ATTENTION_BACKENDS = ("sdpa", "xformers")
_ATTENTION_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("stprivacy_attention_backend",
                                                                                default=None)

_USE_REFERENCE = contextvars.ContextVar("stprivacy_use_reference_ops", default=False)


@contextlib.contextmanager
def reference_ops(enabled: bool = True) -> Iterator[None]:
    """Within this context the model runs on the eager reference ops instead of stpriv_ops.

    Example::

        with reference_ops():
            out = model(video)   # same weights, DynamicViT-style eager attention and means
    """
    token = _USE_REFERENCE.set(enabled)
    try:
        yield
    finally:
        _USE_REFERENCE.reset(token)


def using_reference() -> bool:
    return _USE_REFERENCE.get()


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Within this context unmasked attention runs on ``name``: "sdpa" or "xformers".

    Example::

        with attention_backend("xformers"):
            out = model.eval()(video)   # compacted tokens on xformers' memory-efficient kernel
    """
    token = _ATTENTION_BACKEND.set(_check_backend(name, "name"))
    try:
        yield
    finally:
        _ATTENTION_BACKEND.reset(token)


def current_attention_backend() -> str:
    """The backend in force: :func:`attention_backend`'s, else the default, ``$STPRIV_ATTENTION``
    ("sdpa" when unset), read once, at the first call that needs it."""
    name = _ATTENTION_BACKEND.get()
    if name is not None:
        return name
    default = getattr(current_attention_backend, "default", None)
    if default is None:  # kept on the function: one reading per process, not one per attention call
        default = _check_backend(os.environ.get("STPRIV_ATTENTION", "sdpa"), "the environment variable STPRIV_ATTENTION")
        current_attention_backend.default = default
    return default


def _check_backend(name: str, what: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"{what} must be one of {ATTENTION_BACKENDS}, got {name!r}")
    return name


def _xformers_ops():
    try:
        return importlib.import_module("xformers.ops")
    except ImportError as err:
        raise RuntimeError(
            "the attention backend 'xformers' was requested but xformers is not installed: "
            "`pip install stpriv[xformers]`, or use the default backend 'sdpa'"
        ) from err


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``Tensor[B, H, N, d]``: plain softmax attention over every token (no mask)."""
    if current_attention_backend() == "xformers":
        xops = _xformers_ops()
        # xformers takes [B, N, H, d]: the transposes are views, not copies.
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float, eps: float) -> Tensor:
    """``Tensor[B, H, N, d]``: attention in which keys with ``keep == 0`` are masked out."""
    if _USE_REFERENCE.get():
        return reference.masked_attention(q, k, v, keep, scale, eps)
    return stpriv_ops.masked_attention(q, k, v, keep, scale=scale, eps=eps)


def masked_mean(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(``Tensor[B, L, C]``, ``Tensor[B, C]``): means of ``x[B, L, N, C]`` over kept tokens."""
    if _USE_REFERENCE.get():
        return reference.masked_mean(x, keep)
    return stpriv_ops.masked_mean(x, keep)


def _open_uniform(like: Tensor, generator) -> Tensor:
    """Uniforms in the open interval (0, 1), float32, shaped and placed like ``like``: the reference
    path's noise source (drawn on the generator's device)."""
    device = generator.device if generator is not None else like.device
    uniform = torch.rand(like.shape, generator=generator, device=device, dtype=torch.float32).to(like.device)
    return uniform.clamp_(2.0**-24, 1.0 - 2.0**-24)


def gumbel_noise(like: Tensor, generator=None) -> Tensor:
    """Gumbel(0, 1) draws shaped, typed and placed like ``like`` (a sampler's own noise)."""
    return reference.gumbel_noise(_open_uniform(like, generator)).to(like.dtype)


def logistic_noise(like: Tensor, generator=None) -> Tensor:
    """Logistic(0, 1) draws (the difference of two Gumbels) shaped, typed and placed like ``like``."""
    return reference.logistic_noise(_open_uniform(like, generator)).to(like.dtype)


def gumbel_keep(log_probs: Tensor, prev: Tensor, tau: float, generator=None, noise: Tensor | None = None) -> Tensor:
    """``Tensor[B, T]``: hard Gumbel keep decision times ``prev``, straight-through gradient.

    ``noise`` (``Tensor[B, T]``, Logistic(0, 1)) replaces the random draw; the reference path
    draws it from ``generator`` itself, the kernels generate it in place.
    """
    if _USE_REFERENCE.get():
        if noise is None:
            noise = reference.logistic_noise(_open_uniform(prev, generator))
        return reference.gumbel_keep(log_probs, prev, noise, tau)
    return stpriv_ops.gumbel_keep(log_probs, prev, tau=tau, generator=generator, noise=noise)


def gumbel_topk(score: Tensor, k: int, tau: float, generator=None) -> Tensor:
    """``Tensor[B, L, N]``: exactly ``k`` tokens per step sampled by Gumbel-perturbed top-k of
    ``score``, as a 0/1 mask with a straight-through (softmax over the step) gradient."""
    if _USE_REFERENCE.get():
        return reference.gumbel_topk(score, k, reference.gumbel_noise(_open_uniform(score, generator)), tau)
    return stpriv_ops.gumbel_topk(score, k, tau=tau, generator=generator)


def topk_keep(score: Tensor, k: int) -> Tensor:
    """``Tensor[B, L, k]`` (int64, sorted): the k best tokens of each time step."""
    if _USE_REFERENCE.get():
        return reference.topk_keep(score, k)
    return stpriv_ops.topk_keep(score, k)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``Tensor[B, L*k, D]``: the tokens of ``x[B, L*N, D]`` named by ``idx[B, L, k]``."""
    if _USE_REFERENCE.get():
        return reference.gather_tokens(x, idx)
    return stpriv_ops.gather_tokens(x, idx)


def scatter_tokens(y: Tensor, idx: Tensor, n: int) -> Tensor:
    """``Tensor[B, L*n, D]``: ``y[B, L*k, D]`` put back at ``idx[B, L, k]``; the rest is 0."""
    if _USE_REFERENCE.get():
        return reference.scatter_tokens(y, idx, n)
    return stpriv_ops.scatter_tokens(y, idx, n)
