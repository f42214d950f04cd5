"""stpriv_ops: fused kernels for token-pruning video transformers, as ``torch.ops.stpriv.*``.

Each op has a C++ CPU kernel, a Triton CUDA kernel, a fake kernel for torch.compile, autograd,
and a pure-PyTorch oracle in :mod:`stpriv_ops.reference` that also runs when the compiled
extension is missing.
"""
from . import reference
from ._extension import has_ops, has_triton
from .gumbel import gumbel_keep, gumbel_topk
from .losses import sparsity_loss
from .masked_attention import masked_attention
from .masked_mean import masked_mean
from .topk import gather_tokens, scatter_tokens, topk_keep

__all__ = [
    "gather_tokens",
    "gumbel_keep",
    "gumbel_topk",
    "has_ops",
    "has_triton",
    "masked_attention",
    "masked_mean",
    "reference",
    "scatter_tokens",
    "sparsity_loss",
    "topk_keep",
]
__version__ = "0.1.0"
