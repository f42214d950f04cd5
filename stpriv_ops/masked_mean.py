"""``masked_mean``: public wrapper, fake kernels and autograd for the ``stpriv`` op (Eq. 2-3).

The op (``torch.ops.stpriv.masked_mean``) is defined in csrc/ops.cpp and implemented in C++ for
CPU (csrc/cpu/masked_mean.cpp) and in Triton for CUDA (stpriv_ops/triton/masked_mean.py). Both
means come out of one pass over ``x``; the backward ``_masked_mean_backward`` is one more pass
that writes ``grad_x`` and reduces ``grad_keep``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._checks import check_nonempty, check_same_device, check_shape, check_tensor
from ._extension import has_ops

# False while the compiled extension predates this op (a stale build): the reference runs instead.
_HAS_OP = has_ops() and hasattr(torch.ops.stpriv, "masked_mean")


def masked_mean(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Masked spatial and spatio-temporal means of token features (STPrivacy Eq. 2-3).

    Args:
        x: ``Tensor[B, L, N, C]`` features, float16, bfloat16, float32 or float64.
        keep: ``Tensor[B, L, N]`` keep weights in [0, 1]; cast to the dtype of x.

    Returns:
        ``(spatial, spatiotemporal)``: ``Tensor[B, L, C] = sum_n keep*x / sum_n keep`` and
        ``Tensor[B, C] = sum_{l,n} keep*x / sum_{l,n} keep``, in the dtype of x, accumulated in
        float32 (float64 for float64). A group whose keep sums to 0 yields 0 and zero gradients.
        Differentiable in x and keep. Expanding them back to ``[B, L, N, C]`` is a broadcast.
    """
    check_tensor("x", x, ndim=4)
    check_tensor("keep", keep, ndim=3)
    check_same_device(x=x, keep=keep)
    B, L, N, _ = x.shape
    check_shape("keep", keep, (B, L, N), "[B, L, N] with B, L and N of x")
    check_nonempty(x=x)
    keep = keep.to(x.dtype)
    if not _HAS_OP:
        return reference.masked_mean(x, keep)
    return torch.ops.stpriv.masked_mean(x, keep)


def _register() -> None:
    @torch.library.register_fake("stpriv::masked_mean")
    def _fake_forward(x, keep):
        torch._check(x.dim() == 4, lambda: f"x must be [B, L, N, C], got {x.shape}")
        torch._check(keep.shape == x.shape[:3], lambda: f"keep must be [B, L, N], got {keep.shape}")
        B, L, _, C = x.shape
        return x.new_empty((B, L, C)), x.new_empty((B, C))

    @torch.library.register_fake("stpriv::_masked_mean_backward")
    def _fake_backward(grad_spatial, grad_spatiotemporal, x, keep, spatial, spatiotemporal):
        return x.new_empty(x.shape), keep.new_empty(keep.shape)

    def setup_context(ctx, inputs, output):
        x, keep = inputs
        ctx.save_for_backward(x, keep, *output)

    def backward(ctx, grad_spatial, grad_spatiotemporal):
        x, keep, spatial, spatiotemporal = ctx.saved_tensors
        grad_x, grad_keep = torch.ops.stpriv._masked_mean_backward(
            grad_spatial.contiguous(), grad_spatiotemporal.contiguous(), x, keep, spatial, spatiotemporal
        )
        need_x, need_keep = ctx.needs_input_grad
        return (grad_x if need_x else None, grad_keep if need_keep else None)

    torch.library.register_autograd("stpriv::masked_mean", backward, setup_context=setup_context)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "stpriv.masked_mean does not support double backward (create_graph=True through its "
            "gradient); use stpriv_ops.reference.masked_mean for higher-order derivatives"
        )

    torch.library.register_autograd(
        "stpriv::_masked_mean_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )

    # Triton is imported on the first CUDA call only (about a second; CPU users never need it).
    def forward_cuda(x, keep):
        from .triton.masked_mean import masked_mean_forward

        return masked_mean_forward(x, keep)

    def backward_cuda(grad_spatial, grad_spatiotemporal, x, keep, spatial, spatiotemporal):
        from .triton.masked_mean import masked_mean_backward

        return masked_mean_backward(grad_spatial, grad_spatiotemporal, x, keep, spatial, spatiotemporal)

    torch.library.register_kernel("stpriv::masked_mean", "cuda", forward_cuda)
    torch.library.register_kernel("stpriv::_masked_mean_backward", "cuda", backward_cuda)


if _HAS_OP:
    _register()
