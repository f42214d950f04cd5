"""Launchers of the Triton masked-attention kernels: the CUDA implementation of ``stpriv.masked_attention``.

The kernels: ``masked_attention_fwd.py`` (forward) and ``masked_attention_bwd.py`` (dq, then dk,
dv and dkeep); their tiles: ``masked_attention_tuning.py``. Inputs are read in place, any strides,
any head dim up to 128 (the tiles round it up to a power of two and mask the rest). A negative
scale needs no copy either: the forward takes the op's row max from the row minimum of ``q.k``.

Precision: float32 accumulation; probabilities and ``dS`` enter the second matrix product in the
input dtype, as in flash attention. float32 inputs use 3xTF32 products (about float32's accuracy,
on tensor cores) when ``torch.get_float32_matmul_precision() == "highest"`` (PyTorch's default)
and one TF32 product otherwise, so ``torch.set_float32_matmul_precision("high")`` speeds them up
the way it does ``torch.matmul``. float64 inputs, which only gradcheck-style checks use, run the
PyTorch reference.
"""
from __future__ import annotations

import torch
import triton
from torch import Tensor

from .. import reference
from .._checks import check_shape
from ..masked_attention import check_inputs as check_masked_attention_inputs
from .attention_tiles import LOG2E, block_d
from .masked_attention_bwd import masked_attention_bwd_dkdv_kernel, masked_attention_bwd_dq_kernel
from .masked_attention_fwd import masked_attention_fwd_kernel
from .masked_attention_tuning import pinned_config

MAX_HEAD_DIM = 128
_MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1, which carries batch * heads (or batch)


def _launch(kernel, stage: str, grid_rows: int, tile: str, grid_y: int, blocks: dict | None, *args, **kwargs) -> None:
    """Runs ``kernel`` over ``(cdiv(grid_rows, tile size), grid_y)`` programs.

    The tiles are ``blocks[stage]``, a ``(BLOCK_M, BLOCK_N)`` pair or a ``triton.Config``, when
    given, else the pinned configuration for the inputs (``kwargs`` carries HEAD_DIM, ``args[0]``
    is q).
    """
    config = (blocks or {}).get(stage)
    if config is None:
        config = pinned_config(stage, kwargs["HEAD_DIM"], grid_rows, args[0].dtype)
    if isinstance(config, triton.Config):
        options = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        options = {"BLOCK_M": config[0], "BLOCK_N": config[1]}
    kernel[(triton.cdiv(grid_rows, options[tile]), grid_y)](*args, **options, **kwargs)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, eps: float) -> None:
    # The op's own contract first (shared with the public wrapper), then the kernels' limits.
    check_masked_attention_inputs(q, k, v, keep, eps)
    B, H, _, d = q.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"q's head dim (last axis) must be <= {MAX_HEAD_DIM} for the Triton kernels, got {d}")
    if B * H > _MAX_GRID_Y:
        raise ValueError(f"batch * heads of q must be <= {_MAX_GRID_Y} for the Triton kernels, got {B} * {H}")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp16/bf16 ignore it. fp32 follows torch.set_float32_matmul_precision: "highest" gets three
    # TF32 products per product (fp32-level error on tensor cores; "ieee" would run on FMA units
    # and spill at these tiles), "high"/"medium" one.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


def _scale(scale: float | None, head_dim: int) -> float:
    return head_dim**-0.5 if scale is None else float(scale)


def masked_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float | None = None, eps: float = 1e-6,
    *, blocks: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of ``stpriv.masked_attention`` (the op's CUDA kernel; CPU tensors under the interpreter).

    Args:
        q, k, v: ``Tensor[B, H, N, d]``, float16, bfloat16 or float32 (float64 runs the reference);
            any strides, d <= 128.
        keep: ``Tensor[B, N]``, any floating dtype, any strides.
        scale: score scale, ``d ** -0.5`` when None; any sign.
        eps: smoothing term (>= 0).
        blocks: ``{"fwd": (BLOCK_M, BLOCK_N) or triton.Config}`` instead of the pinned tiles.

    Returns:
        out ``Tensor[B, H, N, d]`` in q's dtype, row_max ``m_i`` and row_sum ``Z_i`` as float32
        ``Tensor[B, H, N]`` (float64 for float64 inputs).
    """
    _check_inputs(q, k, v, keep, eps)
    if q.dtype == torch.float64:
        return _forward_float64(q, k, v, keep, scale, eps)
    B, H, N, d = q.shape
    scale = _scale(scale, d)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    row_max = q.new_empty((B, H, N), dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    has_eps = eps > 0
    # sum_j v_j for the eps/N term: one read of v here beats a cross-warp column sum per key tile.
    v_sum = v.sum(dim=2, dtype=torch.float32) if has_eps else row_sum
    _launch(
        masked_attention_fwd_kernel, "fwd", N, "BLOCK_M", B * H, blocks,
        q, k, v, keep, v_sum, out, row_max, row_sum,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *keep.stride(),
        H, N, scale, scale * LOG2E, eps, eps / N,
        HEAD_DIM=d, BLOCK_D=block_d(d), HAS_EPS=has_eps, SCALE_NEGATIVE=scale < 0,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, row_max, row_sum


def masked_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, out: Tensor, row_max: Tensor,
    row_sum: Tensor, scale: float | None, eps: float, *,
    needs: tuple[bool, bool, bool, bool] = (True, True, True, True), blocks: dict | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Backward of ``stpriv.masked_attention``: the requested gradients for q, k, v and keep, deterministic.

    Args:
        grad_out, out: ``Tensor[B, H, N, d]`` like q, any strides.
        q, k, v, keep, scale, eps: the forward's inputs.
        row_max, row_sum: ``Tensor[B, H, N]``, the forward's statistics ``m_i`` and ``Z_i``.
        needs: which of (dq, dk, dv, dkeep) to compute; the others come back as None. Without dq
            the dq kernel only computes ``D_i``; without dk, dv and dkeep the second kernel is
            not launched.
        blocks: ``{"dkdv": ..., "dq": ...}`` tiles, each ``(BLOCK_M, BLOCK_N)`` or a
            ``triton.Config``, instead of the pinned ones.

    Returns:
        dq, dk, dv ``Tensor[B, H, N, d]`` in q's dtype and dkeep ``Tensor[B, N]`` in keep's dtype,
        ``dkeep_j = sum_h sum_{i != j} e_ij g_ij``; None where ``needs`` says so.
    """
    _check_inputs(q, k, v, keep, eps)
    B, H, N, d = q.shape
    check_shape("grad_out", grad_out, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("out", out, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("row_max", row_max, (B, H, N), "[B, H, N] from the forward")
    check_shape("row_sum", row_sum, (B, H, N), "[B, H, N] from the forward")
    if len(needs) != 4:
        raise ValueError(f"needs must give 4 flags (dq, dk, dv, dkeep), got {needs!r}")
    need_dq, need_dk, need_dv, need_dkeep = (bool(n) for n in needs)
    if not any(needs):
        return None, None, None, None
    if q.dtype == torch.float64:
        grads = _backward_float64(grad_out, q, k, v, keep, scale, eps)
        return tuple(g if n else None for g, n in zip(grads, needs))
    for name, t in (("grad_out", grad_out), ("out", out)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    # The kernels index the statistics as contiguous [B, H, N] float32: the forward's already are.
    row_max = row_max.to(torch.float32).contiguous()
    row_sum = row_sum.to(torch.float32).contiguous()
    scale = _scale(scale, d)
    precision = _dot_precision(q.dtype)
    tiles = dict(HEAD_DIM=d, BLOCK_D=block_d(d), DOT_PRECISION=precision)

    delta = torch.empty_like(row_max)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if need_dq else None
    dq_arg = dq if need_dq else delta  # any pointer: never written without NEED_DQ
    _launch(
        masked_attention_bwd_dq_kernel, "dq", N, "BLOCK_M", B * H, blocks,
        q, k, v, keep, out, grad_out, row_max, row_sum, delta, dq_arg,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *grad_out.stride(),
        *(dq.stride() if need_dq else (0, 0, 0, 0)), *keep.stride(),
        H, N, scale, scale * LOG2E,
        NEED_DQ=need_dq, **tiles,
    )
    if not (need_dk or need_dv or need_dkeep):
        return dq, None, None, None
    if B > _MAX_GRID_Y:
        raise ValueError(f"batch of q must be <= {_MAX_GRID_Y} for the Triton backward, got {B}")
    dk = torch.empty_like(k, memory_format=torch.contiguous_format) if need_dk else None
    dv = torch.empty_like(v, memory_format=torch.contiguous_format) if need_dv else None
    dkeep = keep.new_empty((B, N)) if need_dkeep else None
    unused = (0, 0, 0, 0)
    _launch(
        masked_attention_bwd_dkdv_kernel, "dkdv", N, "BLOCK_N", B, blocks,
        q, k, v, keep, grad_out, row_max, row_sum, delta,
        dk if need_dk else delta, dv if need_dv else delta, dkeep if need_dkeep else delta,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
        *(dk.stride() if need_dk else unused), *(dv.stride() if need_dv else unused),
        *keep.stride(), *(dkeep.stride() if need_dkeep else (0, 0)),
        H, N, scale, scale * LOG2E, eps / N,
        HAS_EPS=eps > 0, NEED_DK=need_dk, NEED_DV=need_dv, NEED_DKEEP=need_dkeep, **tiles,
    )
    return dq, dk, dv, dkeep


# float64 has no place on tensor cores; it serves gradcheck-style checks, so it runs the reference.
def _forward_float64(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float | None, eps: float):
    n, d = q.shape[-2:]
    scale = _scale(scale, d)
    scores = scale * (q @ k.transpose(-2, -1))
    row_max = scores.amax(dim=-1)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    w = keep.to(q.dtype)[:, None, None, :] * (1 - eye) + eye
    row_sum = (w * torch.exp(scores - row_max[..., None])).sum(dim=-1) + eps
    return reference.masked_attention(q, k, v, keep, scale, eps), row_max, row_sum


def _backward_float64(grad_out, q, k, v, keep, scale, eps):
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v, keep)]
        out = reference.masked_attention(*leaves, scale, eps)
        return tuple(torch.autograd.grad(out, leaves, grad_out))
