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
  // all keys) and row_sum = Z_i (the normalizer, eps included), both float32, or float64 for
  // float64 inputs (so that gradcheck of the C++ path is exact).
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor keep, float? scale=None, "
      "float eps=1e-06) -> (Tensor out, Tensor row_max, Tensor row_sum)");
  m.def(
      "_masked_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor keep, "
      "Tensor out, Tensor row_max, Tensor row_sum, float? scale, float eps, "
      "bool[4] output_mask=[True, True, True, True]) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_keep)");
  // output_mask says which of (grad_q, grad_k, grad_v, grad_keep) to compute; the others come back
  // as empty tensors (shape [0]).
  // ---- token pruning (paper Eq. 2-3, Eq. 6, §3.2) ----
  // Masked spatial [B, L, C] and spatio-temporal [B, C] means of x [B, L, N, C] under keep [B, L, N].
  m.def("masked_mean(Tensor x, Tensor keep) -> (Tensor spatial, Tensor spatiotemporal)");
  m.def(
      "_masked_mean_backward(Tensor grad_spatial, Tensor grad_spatiotemporal, Tensor x, Tensor keep, "
      "Tensor spatial, Tensor spatiotemporal) -> (Tensor grad_x, Tensor grad_keep)");
  // Hard Gumbel keep decision times prev. Noise is given (Logistic [B, T]) or drawn in-kernel by
  // Philox from seed (int64, one element); logit = lp0 - lp1 + noise is saved for the backward.
  m.def(
      "gumbel_keep(Tensor log_probs, Tensor prev, Tensor? noise, Tensor? seed, float tau) "
      "-> (Tensor keep, Tensor logit)");
  m.def(
      "_gumbel_keep_backward(Tensor grad_keep, Tensor logit, Tensor prev, float tau) "
      "-> (Tensor grad_log_probs, Tensor grad_prev)");
  // Exactly k per step of score + Gumbel noise; soft = softmax((score + noise) / tau) for the backward.
  m.def(
      "gumbel_topk(Tensor score, int k, Tensor? noise, Tensor? seed, float tau) "
      "-> (Tensor keep, Tensor soft)");
  m.def("_gumbel_topk_backward(Tensor grad_keep, Tensor soft, float tau) -> Tensor grad_score");
  // Per-step top-k indices (sorted, ties to the lower index) and the token compaction they drive.
  m.def("topk_keep(Tensor score, int k) -> Tensor idx");
  m.def("gather_tokens(Tensor x, Tensor idx) -> Tensor");
  m.def("scatter_tokens(Tensor y, Tensor idx, int num_tokens_per_step) -> Tensor");
}
