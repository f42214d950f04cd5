"""stpriv_ops: fused kernels for token-pruning video transformers, as ``torch.ops.stpriv.*``.

Each op has a C++ CPU kernel, a Triton CUDA kernel, a fake kernel for torch.compile, autograd,
and a pure-PyTorch oracle in :mod:`stpriv_ops.reference` that also runs when the compiled
extension is missing.
"""
from . import reference
from ._extension import has_ops, has_triton
from .masked_attention import masked_attention

__all__ = ["has_ops", "has_triton", "masked_attention", "reference"]
__version__ = "0.1.0"
