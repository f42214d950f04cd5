"""``masked_attention``: public wrapper, fake kernels and autograd for the ``stpriv`` op.

The op itself (``torch.ops.stpriv.masked_attention``) is defined in csrc/ops.cpp and implemented
in C++ for CPU (csrc/cpu/masked_attention.cpp) and in Triton for CUDA
(stpriv_ops/triton/masked_attention.py). Its backward is the separate op
``_masked_attention_backward`` so that torch.compile and opcheck can see through it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._checks import check_nonempty, check_same_device, check_shape, check_tensor
from ._extension import has_ops


def check_inputs(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, eps: float) -> None:
    """Validates masked_attention's arguments; errors name the argument and what was expected."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    check_tensor("keep", keep, ndim=2)
    check_same_device(q=q, k=k, v=v, keep=keep)
    B, H, N, d = q.shape
    check_shape("k", k, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("v", v, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("keep", keep, (B, N), "[B, N] with B and N of q")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    check_nonempty(q=q)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, *, scale: float | None = None, eps: float = 1e-6
) -> Tensor:
    """Self-attention in which dropped tokens are masked out as keys, the diagonal always kept.

    ``out_i = sum_j P_ij v_j`` with ``P_ij = (w_ij e_ij + eps/N) / (sum_j w_ij e_ij + eps)``,
    ``e_ij = exp(S_ij - max_j S_ij)``, ``S = scale * q k^T`` and ``w_ij = 1 if i == j else keep_j``
    (DynamicViT's ``softmax_with_policy``; STPrivacy Eq. 8-10). Differentiable in q, k, v and keep;
    the gradient for keep is nonzero for dropped keys too, which is what trains a keep predictor
    through a straight-through estimator.

    Args:
        q, k, v: ``Tensor[B, H, N, d]``, float16, bfloat16, float32 or float64.
        keep: ``Tensor[B, N]``, values in [0, 1] (hard 0/1 or soft).
        scale: score scale, ``d ** -0.5`` when None.
        eps: smoothing term (>= 0).

    Returns:
        ``Tensor[B, H, N, d]`` in the dtype of ``q``.
    """
    check_inputs(q, k, v, keep, eps)
    if not has_ops():
        return reference.masked_attention(q, k, v, keep, scale, eps)
    out, _, _ = torch.ops.stpriv.masked_attention(q, k, v, keep, scale, eps)
    return out


def _register() -> None:
    @torch.library.register_fake("stpriv::masked_attention")
    def _fake_forward(q, k, v, keep, scale=None, eps=1e-6):
        torch._check(q.dim() == 4, lambda: f"q must be [B, H, N, d], got {q.shape}")
        torch._check(k.shape == q.shape and v.shape == q.shape, lambda: "k and v must match q")
        torch._check(keep.dim() == 2, lambda: f"keep must be [B, N], got {keep.shape}")
        stats_shape = q.shape[:3]
        # Row statistics are in the accumulation dtype: float64 for float64 inputs (exact
        # gradcheck), float32 otherwise.
        stats_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return (
            q.new_empty(q.shape),
            q.new_empty(stats_shape, dtype=stats_dtype),
            q.new_empty(stats_shape, dtype=stats_dtype),
        )

    @torch.library.register_fake("stpriv::_masked_attention_backward")
    def _fake_backward(grad_out, q, k, v, keep, out, row_max, row_sum, scale, eps, output_mask=(True,) * 4):
        return tuple(
            t.new_empty(t.shape) if needed else t.new_empty(0) for t, needed in zip((q, k, v, keep), output_mask)
        )

    def setup_context(ctx, inputs, output):
        q, k, v, keep, scale, eps = inputs
        out, row_max, row_sum = output
        # The statistics are for the backward, not functions to differentiate: their gradients
        # would be silently dropped, so autograd must refuse them instead.
        ctx.mark_non_differentiable(row_max, row_sum)
        ctx.save_for_backward(q, k, v, keep, out, row_max, row_sum)
        ctx.scale, ctx.eps = scale, eps

    def backward(ctx, grad_out, _grad_row_max, _grad_row_sum):
        needed = list(ctx.needs_input_grad[:4])
        if grad_out is None or not any(needed):
            return None, None, None, None, None, None
        q, k, v, keep, out, row_max, row_sum = ctx.saved_tensors
        grads = torch.ops.stpriv._masked_attention_backward(
            grad_out, q, k, v, keep, out, row_max, row_sum, ctx.scale, ctx.eps, needed
        )
        return tuple(g if need else None for g, need in zip(grads, needed)) + (None, None)

    torch.library.register_autograd("stpriv::masked_attention", backward, setup_context=setup_context)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "stpriv.masked_attention does not support double backward (create_graph=True through its "
            "gradient); use stpriv_ops.reference.masked_attention for higher-order derivatives"
        )

    torch.library.register_autograd(
        "stpriv::_masked_attention_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )


if has_ops():
    _register()


def _register_cuda() -> None:
    # Triton is imported on first CUDA call only: importing it costs about a second, and CPU-only
    # users never need it.
    def forward_cuda(q, k, v, keep, scale=None, eps=1e-6):
        from .triton.masked_attention import masked_attention_forward

        return masked_attention_forward(q, k, v, keep, scale, eps)

    def backward_cuda(grad_out, q, k, v, keep, out, row_max, row_sum, scale, eps, output_mask=(True,) * 4):
        from .triton.masked_attention import masked_attention_backward

        grads = masked_attention_backward(
            grad_out, q, k, v, keep, out, row_max, row_sum, scale, eps, needs=tuple(output_mask)
        )
        # The schema returns tensors: an empty one stands for a gradient not asked for.
        return tuple(g if g is not None else t.new_empty(0) for g, t in zip(grads, (q, k, v, keep)))

    torch.library.register_kernel("stpriv::masked_attention", "cuda", forward_cuda)
    torch.library.register_kernel("stpriv::_masked_attention_backward", "cuda", backward_cuda)


if has_ops():
    _register_cuda()
