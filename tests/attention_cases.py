"""Shared inputs and oracles for the masked-attention tests (C++ path and Triton path)."""
from __future__ import annotations

import torch

from stpriv_ops import reference

# Absolute/relative tolerances against the float64 oracle, per input dtype (xformers-style table).
# Low precision additionally follows the flash-attention rule: at most 2x the error of the
# same-dtype PyTorch reference (see assert_close_to_oracle).
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-3, 2e-2),
    torch.bfloat16: (1.6e-2, 5e-2),
}


def make_keep(kind: str, B: int, N: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return (torch.rand(B, N, generator=generator) < 0.7).double()
    if kind == "zeros":
        return torch.zeros(B, N, dtype=torch.float64)
    if kind == "ones":
        return torch.ones(B, N, dtype=torch.float64)
    if kind == "soft":
        return torch.rand(B, N, generator=generator, dtype=torch.float64)
    raise ValueError(kind)


def sample_inputs(B, H, N, d, *, keep="random", seed=None, magnitude=1.0):
    """float64 q, k, v, keep, grad_out, drawn fresh each run unless a seed is given."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())) if seed is None else seed)
    q, k, v, dout = (torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(4))
    return q * magnitude, k * magnitude, v, make_keep(keep, B, N, g), dout


def oracle(q, k, v, keep, dout, scale=None, eps=1e-6):
    """Forward output and the four gradients of the float64 reference under autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v, keep)]
    out = reference.masked_attention(*leaves, scale=scale, eps=eps)
    grads = torch.autograd.grad(out, leaves, dout.double())
    return out.detach(), grads


def run_op(fn, q, k, v, keep, dout, dtype, device="cpu", **kwargs):
    """Runs fn (an attention implementation) in `dtype`; returns the output and four gradients."""
    leaves = [t.detach().to(device=device, dtype=dtype).requires_grad_(True) for t in (q, k, v, keep)]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, dout.to(device=device, dtype=dtype))
    return out.detach(), grads


def max_err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


def assert_close_to_oracle(name, got, want, dtype, same_dtype_ref=None):
    atol, rtol = TOLERANCES[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    if same_dtype_ref is not None and dtype != torch.float64:
        err, ref_err = max_err(got, want), max_err(same_dtype_ref, want)
        if err <= 2 * ref_err + atol:
            return
        if dtype in (torch.float16, torch.bfloat16):
            raise AssertionError(f"{name}: error {err:.3g} > 2 x reference error {ref_err:.3g} + {atol}")
    # float32: within the table, or (above) within 2x the float32 reference's own error, which grows
    # with the magnitude of the scores. The absolute tolerance also scales with the tensor's largest
    # entry: a dkeep entry sums N terms as large as that, and where they cancel to a small value its
    # rounding error is still of their size (seen: 3e-4 on an entry of 3.4 among entries of 860).
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, atol=max(atol, atol * scale), rtol=rtol, msg=lambda m: f"{name}: {m}")
