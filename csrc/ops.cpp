// Every schema of the stpriv op library, in one place. Backends register implementations in
// their own files (csrc/cpu/*.cpp for CPU; the Triton kernels register CUDA from Python), and
// fake kernels and autograd are registered from Python (stpriv_ops/<family>.py).
#include <torch/library.h>

#ifdef STPRIV_PYTHON_MODULE
#include <Python.h>
// An empty module: `import stpriv_ops._C` only has to load this library, whose static
// initializers run the TORCH_LIBRARY registrations below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif

TORCH_LIBRARY(stpriv, m) {
  // ---- masked self-attention (paper Eq. 8-10; DynamicViT softmax_with_policy) ----
  // Returns the output and the per-row statistics the backward needs: row_max = m_i (max over
  // all keys, float32) and row_sum = Z_i (the normalizer, eps included, float32).
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor keep, float? scale=None, "
      "float eps=1e-06) -> (Tensor out, Tensor row_max, Tensor row_sum)");
  m.def(
      "_masked_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor keep, "
      "Tensor out, Tensor row_max, Tensor row_sum, float? scale, float eps) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_keep)");
}
