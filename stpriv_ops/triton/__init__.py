"""Triton kernels: the CUDA implementations of the ``torch.ops.stpriv`` ops.

Nothing is imported here on purpose: importing Triton costs about a second, so each op family's
module (``stpriv_ops.triton.masked_attention``, ...) is imported lazily by the CUDA kernel that
``stpriv_ops/<family>.py`` registers, on the first CUDA call. The same modules run on CPU tensors
under ``TRITON_INTERPRET=1``, which is how the tests check them without a GPU.
"""
