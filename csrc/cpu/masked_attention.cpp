// CPU kernels of stpriv::masked_attention and its backward (docs/ops.md, "masked_attention").
//
// Flash-style: per thread, a block of queries meets a block of keys through BLAS matrix
// products on small scratch tiles; the N x N score matrix of a head never exists. The
// elementwise work between the products (exp, keep weights, row sums, the dkeep column sums)
// runs in row loops that the compiler vectorizes; on x86-64 Linux they are compiled for
// AVX-512, AVX2 and baseline and picked at load time (target_clones), so the build needs no
// -march flag. Half and bfloat16 inputs are widened to float32 once on entry (O(B·H·N·d),
// small next to the O(B·H·N²·d) work); float64 runs in float64 so gradcheck is exact.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/exp_approx.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

// BLAS from the libraries torch itself links (MKL or OpenBLAS export the Fortran symbols). They
// are weak so that a torch built without BLAS still loads this library; at::mm takes over then.
#if defined(__GNUC__) && !defined(STPRIV_NO_BLAS)
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}
#define STPRIV_HAS_BLAS_SYMBOLS 1
#else
#define STPRIV_HAS_BLAS_SYMBOLS 0
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define STPRIV_VECTORIZE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STPRIV_VECTORIZE
#endif
// The row templates must be inlined into each clone to be compiled for its instruction set.
#if defined(__GNUC__)
#define STPRIV_INLINE inline __attribute__((always_inline))
#else
#define STPRIV_INLINE inline
#endif

namespace stpriv {
namespace {

// Block sizes, measured on a 2-core AVX-512 EPYC (benchmarks/RESULTS.md): query blocks of 32..128
// and key blocks of 512..1600 were all within that shared machine's noise; 64 x 512 keeps each
// thread's three tiles (384 KiB) inside L2. A key row of up to kKeyBlock keys is one tile, so for
// ViT-sized N (392 tokens) the forward needs no online rescaling at all.
constexpr int64_t kQueryBlockFwd = 64;
constexpr int64_t kQueryBlockBwd = 64;
constexpr int64_t kKeyBlock = 512;

// Key blocks of near-equal width: a narrow last block would cost a full BLAS call for little work.
int64_t key_block_width(int64_t N) {
  const int64_t blocks = (N + kKeyBlock - 1) / kKeyBlock;
  const int64_t width = ((N + blocks - 1) / blocks + 15) / 16 * 16;
  return std::min(width, N);
}

// ---------------------------------------------------------------------------------------------
// Row-major matrix product on raw pointers: C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C.

template <typename T>
void gemm_with_aten(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                    int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto wrap = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    auto t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  at::Tensor prod = at::mm(wrap(A, M, K, lda, trans_a), wrap(B, K, N, ldb, trans_b));
  if (beta == T(0)) {
    c.copy_(prod.mul_(alpha));
  } else {
    c.mul_(beta).add_(prod, alpha);
  }
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
#if STPRIV_HAS_BLAS_SYMBOLS
  // Column-major BLAS sees the row-major product transposed: C^T = op(B)^T op(A)^T.
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ia = static_cast<int>(lda), ib = static_cast<int>(ldb), ic = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) {
      sgemm_(&tb, &ta, &m, &n, &k, &alpha, B, &ib, A, &ia, &beta, C, &ic);
      return;
    }
  } else {
    if (dgemm_ != nullptr) {
      dgemm_(&tb, &ta, &m, &n, &k, &alpha, B, &ib, A, &ia, &beta, C, &ic);
      return;
    }
  }
#endif
  gemm_with_aten<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------------------------------------
// Elementwise row kernels. float: an exp the compiler can vectorize (Cephes expf, ~1 ulp);
// double: std::exp, since float64 is for gradcheck, not speed.

STPRIV_INLINE float exp_approx(float x) {
  // The kernels only take exp of (score - row max) <= 0; the clamp keeps 2^n a normal float.
  return exp_in_range(std::min(std::max(x, -87.3f), 88.3f));
}
inline double exp_approx(double x) { return std::exp(x); }

// Reductions keep kLanes partial results, one per SIMD lane, so that they vectorize without
// -ffast-math and always add in the same order (deterministic).
constexpr int kLanes = 16;

template <typename T>
STPRIV_INLINE T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  // max is exact in any order, so the vectorized reduction is still deterministic.
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

STPRIV_VECTORIZE float row_max_f32(const float* x, int64_t n) { return row_max<float>(x, n); }

// s <- exp(s - m) * keep; returns the sum of the new s.
template <typename T>
STPRIV_INLINE T exp_keep_sum(T* s, const T* keep, int64_t n, T m) {
  T part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T p = exp_approx(s[j + l] - m) * keep[j + l];
      s[j + l] = p;
      part[l] += p;
    }
  }
  T sum = 0;
  for (; j < n; ++j) {
    const T p = exp_approx(s[j] - m) * keep[j];
    s[j] = p;
    sum += p;
  }
  for (int l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

STPRIV_VECTORIZE float exp_keep_sum_f32(float* s, const float* keep, int64_t n, float m) {
  return exp_keep_sum<float>(s, keep, n, m);
}

template <typename T>
STPRIV_INLINE void scale_row(T* x, int64_t n, T a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

STPRIV_VECTORIZE void scale_row_f32(float* x, int64_t n, float a) { scale_row<float>(x, n, a); }

// out = (acc + eps_over_n * vsum) * inv_z, widened/narrowed on store.
template <typename T, typename O>
STPRIV_INLINE void finish_row(O* out, const T* acc, const T* vsum, int64_t n, T eps_over_n, T inv_z) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<O>((acc[j] + eps_over_n * vsum[j]) * inv_z);
}

// Backward, first half: e <- exp(s - m) in place, p = (keep * e + eps/N) / Z.
template <typename T>
STPRIV_INLINE void probs_row(T* s, T* p, const T* keep, int64_t n, T m, T eps_over_n, T inv_z) {
  for (int64_t j = 0; j < n; ++j) {
    T e = exp_approx(s[j] - m);
    s[j] = e;
    p[j] = (keep[j] * e + eps_over_n) * inv_z;
  }
}

STPRIV_VECTORIZE void probs_row_f32(float* s, float* p, const float* keep, int64_t n, float m, float eps_over_n,
                                    float inv_z) {
  probs_row<float>(s, p, keep, n, m, eps_over_n, inv_z);
}

// Backward, second half: with g = (dP - D) / Z, accumulate e*g into the dkeep column sums and
// turn dP into dS = keep * e * g in place.
template <typename T>
STPRIV_INLINE void grad_scores_row(T* dp, const T* e, const T* keep, T* dkeep_acc, int64_t n, T D, T inv_z) {
  for (int64_t j = 0; j < n; ++j) {
    T eg = e[j] * (dp[j] - D) * inv_z;
    dkeep_acc[j] += eg;
    dp[j] = keep[j] * eg;
  }
}

STPRIV_VECTORIZE void grad_scores_row_f32(float* dp, const float* e, const float* keep, float* dkeep_acc, int64_t n,
                                          float D, float inv_z) {
  grad_scores_row<float>(dp, e, keep, dkeep_acc, n, D, inv_z);
}

template <typename T>
STPRIV_INLINE T dot(const T* a, const T* b, int64_t n) {
  T part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += a[j + l] * b[j + l];
  }
  T sum = 0;
  for (; j < n; ++j) sum += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

STPRIV_VECTORIZE float dot_f32(const float* a, const float* b, int64_t n) { return dot<float>(a, b, n); }

// Dispatch the hot loops to their multi-versioned float32 builds.
inline float k_row_max(const float* x, int64_t n) { return row_max_f32(x, n); }
inline double k_row_max(const double* x, int64_t n) { return row_max<double>(x, n); }
inline float k_exp_keep_sum(float* s, const float* keep, int64_t n, float m) { return exp_keep_sum_f32(s, keep, n, m); }
inline double k_exp_keep_sum(double* s, const double* keep, int64_t n, double m) {
  return exp_keep_sum<double>(s, keep, n, m);
}
inline void k_scale_row(float* x, int64_t n, float a) { scale_row_f32(x, n, a); }
inline void k_scale_row(double* x, int64_t n, double a) { scale_row<double>(x, n, a); }
inline void k_probs_row(float* s, float* p, const float* keep, int64_t n, float m, float en, float iz) {
  probs_row_f32(s, p, keep, n, m, en, iz);
}
inline void k_probs_row(double* s, double* p, const double* keep, int64_t n, double m, double en, double iz) {
  probs_row<double>(s, p, keep, n, m, en, iz);
}
inline void k_grad_scores_row(float* dp, const float* e, const float* keep, float* acc, int64_t n, float D,
                              float iz) {
  grad_scores_row_f32(dp, e, keep, acc, n, D, iz);
}
inline void k_grad_scores_row(double* dp, const double* e, const double* keep, double* acc, int64_t n, double D,
                              double iz) {
  grad_scores_row<double>(dp, e, keep, acc, n, D, iz);
}
inline float k_dot(const float* a, const float* b, int64_t n) { return dot_f32(a, b, n); }
inline double k_dot(const double* a, const double* b, int64_t n) { return dot<double>(a, b, n); }

// ---------------------------------------------------------------------------------------------
// Validation.

void check_qkv_keep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep,
                    double eps) {
  TORCH_CHECK(q.dim() == 4, "masked_attention: q must be [B, H, N, d], got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), "masked_attention: k must have the shape of q ", q.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(v.sizes() == q.sizes(), "masked_attention: v must have the shape of q ", q.sizes(), ", got ",
              v.sizes());
  TORCH_CHECK(keep.dim() == 2 && keep.size(0) == q.size(0) && keep.size(1) == q.size(2),
              "masked_attention: keep must be [B, N] = [", q.size(0), ", ", q.size(2), "], got shape ",
              keep.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "masked_attention: q must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, "masked_attention: k and v must have q's dtype ", dt,
              ", got k ", k.scalar_type(), " and v ", v.scalar_type());
  TORCH_CHECK(at::isFloatingType(keep.scalar_type()), "masked_attention: keep must be a floating tensor, got ",
              keep.scalar_type());
  for (const at::Tensor* t : {&q, &k, &v, &keep}) {
    TORCH_CHECK(t->device().is_cpu(), "masked_attention (CPU kernel): q, k, v and keep must be CPU tensors, got ",
                t->device());
  }
  TORCH_CHECK(q.numel() > 0, "masked_attention: q must not be empty, got shape ", q.sizes());
  TORCH_CHECK(eps >= 0, "masked_attention: eps must be >= 0, got ", eps);
}

at::ScalarType accumulate_type(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, typename O>
void forward_kernel(const T* q, const T* k, const T* v, const T* keep, O* out, T* row_max_out, T* row_sum_out,
                    int64_t B, int64_t H, int64_t N, int64_t d, T scale, T eps) {
  const int64_t qblocks = (N + kQueryBlockFwd - 1) / kQueryBlockFwd;
  const int64_t kb = key_block_width(N);
  const T eps_over_n = eps / static_cast<T>(N);
  at::parallel_for(0, B * H * qblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(kQueryBlockFwd * kb), acc(kQueryBlockFwd * d), vsum(d), m(kQueryBlockFwd),
        l(kQueryBlockFwd);
    int64_t vsum_of = -1;  // the (b, h) whose sum of values vsum holds
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / qblocks, b = bh / H;
      const int64_t i0 = (task % qblocks) * kQueryBlockFwd, qn = std::min(kQueryBlockFwd, N - i0);
      const T* Q = q + (bh * N + i0) * d;
      const T* K = k + bh * N * d;
      const T* V = v + bh * N * d;
      const T* keep_b = keep + b * N;
      for (int64_t j0 = 0; j0 < N; j0 += kb) {
        const int64_t kn = std::min(kb, N - j0);
        gemm<T>(false, true, qn, kn, d, scale, Q, d, K + j0 * d, d, T(0), scores.data(), kb);
        for (int64_t r = 0; r < qn; ++r) {
          T* s = scores.data() + r * kb;
          const int64_t i = i0 + r;
          const T m_new = j0 == 0 ? k_row_max(s, kn) : std::max(m[r], k_row_max(s, kn));
          // The diagonal is kept whatever keep_i says: take its e before the keep weight.
          const bool has_diag = i >= j0 && i < j0 + kn;
          const T e_diag = has_diag ? exp_approx(s[i - j0] - m_new) : T(0);
          T sum = k_exp_keep_sum(s, keep_b + j0, kn, m_new);
          if (has_diag) {
            sum += e_diag - s[i - j0];
            s[i - j0] = e_diag;
          }
          if (j0 == 0) {
            l[r] = sum;
          } else {
            const T alpha = exp_approx(m[r] - m_new);
            l[r] = l[r] * alpha + sum;
            k_scale_row(acc.data() + r * d, d, alpha);
          }
          m[r] = m_new;
        }
        gemm<T>(false, false, qn, d, kn, T(1), scores.data(), kb, V + j0 * d, d, j0 == 0 ? T(0) : T(1), acc.data(),
                d);
      }
      if (eps_over_n != T(0) && vsum_of != bh) {
        std::fill(vsum.begin(), vsum.end(), T(0));
        for (int64_t j = 0; j < N; ++j) {
          const T* vj = V + j * d;
          for (int64_t c = 0; c < d; ++c) vsum[c] += vj[c];
        }
        vsum_of = bh;
      }
      for (int64_t r = 0; r < qn; ++r) {
        const T z = l[r] + eps;
        row_max_out[bh * N + i0 + r] = m[r];
        row_sum_out[bh * N + i0 + r] = z;
        finish_row<T, O>(out + (bh * N + i0 + r) * d, acc.data() + r * d, vsum.data(), d, eps_over_n, T(1) / z);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                    const at::Tensor& v_in,
                                                                    const at::Tensor& keep_in,
                                                                    std::optional<double> scale_opt, double eps) {
  check_qkv_keep(q_in, k_in, v_in, keep_in, eps);
  const int64_t B = q_in.size(0), H = q_in.size(1), N = q_in.size(2), d = q_in.size(3);
  const double scale = scale_opt.has_value() ? *scale_opt : 1.0 / std::sqrt(static_cast<double>(d));
  const auto acc_type = accumulate_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc_type).contiguous();
  const at::Tensor k = k_in.to(acc_type).contiguous();
  const at::Tensor v = v_in.to(acc_type).contiguous();
  const at::Tensor keep = keep_in.to(acc_type).contiguous();
  at::Tensor out = at::empty(q_in.sizes(), q_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor row_max = at::empty({B, H, N}, q.options());
  at::Tensor row_sum = at::empty({B, H, N}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "masked_attention_cpu", [&] {
    using O = scalar_t;
    if (acc_type == at::kDouble) {
      forward_kernel<double, O>(q.data_ptr<double>(), k.data_ptr<double>(), v.data_ptr<double>(),
                                keep.data_ptr<double>(), out.data_ptr<O>(), row_max.data_ptr<double>(),
                                row_sum.data_ptr<double>(), B, H, N, d, scale, eps);
    } else {
      forward_kernel<float, O>(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), keep.data_ptr<float>(),
                               out.data_ptr<O>(), row_max.data_ptr<float>(), row_sum.data_ptr<float>(), B, H, N, d,
                               static_cast<float>(scale), static_cast<float>(eps));
    }
  });
  return {out, row_max, row_sum};
}

// ---------------------------------------------------------------------------------------------
// Backward. One task per (b, h) owns dq, dk, dv and that head's dkeep row, so nothing is shared
// between threads; the per-head dkeep rows are then summed over h in order (deterministic).
// Key blocks are the outer loop (FlashAttention-2 order): a key block's dk, dv and dkeep stay in
// cache while every query block passes, and only the small dq blocks are re-read.

template <typename T>
void backward_kernel(const T* dout, const T* q, const T* k, const T* v, const T* keep, const T* out,
                     const T* row_max, const T* row_sum, T* dq, T* dk, T* dv, T* dkeep_heads, int64_t B, int64_t H,
                     int64_t N, int64_t d, T scale, T eps, bool out_is_rounded) {
  const int64_t kb = key_block_width(N);
  // D_i = dout_i . out_i = sum_j P_ij dP_ij. When out was rounded to float16/bfloat16 its error
  // would swamp the cancellation in dP_ij - D_i, so D is taken from the float32 P and dP, which
  // one tile holds whole when the key row fits one block.
  const bool d_from_probs = out_is_rounded && kb == N;
  const T eps_over_n = eps / static_cast<T>(N);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> e(kQueryBlockBwd * kb), p(kQueryBlockBwd * kb), ds(kQueryBlockBwd * kb), D(N), inv_z(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, base = bh * N * d;
      const T* keep_b = keep + b * N;
      T* dkeep_h = dkeep_heads + bh * N;
      std::fill(dk + base, dk + base + N * d, T(0));
      std::fill(dv + base, dv + base + N * d, T(0));
      std::fill(dkeep_h, dkeep_h + N, T(0));
      for (int64_t i = 0; i < N; ++i) {
        if (!d_from_probs) D[i] = k_dot(dout + base + i * d, out + base + i * d, d);
        inv_z[i] = T(1) / row_sum[bh * N + i];
      }
      for (int64_t j0 = 0; j0 < N; j0 += kb) {
        const int64_t kn = std::min(kb, N - j0);
        const T* K = k + base + j0 * d;
        const T* V = v + base + j0 * d;
        for (int64_t i0 = 0; i0 < N; i0 += kQueryBlockBwd) {
          const int64_t qn = std::min(kQueryBlockBwd, N - i0);
          const T* Q = q + base + i0 * d;
          const T* dO = dout + base + i0 * d;
          gemm<T>(false, true, qn, kn, d, scale, Q, d, K, d, T(0), e.data(), kb);
          for (int64_t r = 0; r < qn; ++r) {
            const int64_t i = i0 + r;
            T* er = e.data() + r * kb;
            T* pr = p.data() + r * kb;
            k_probs_row(er, pr, keep_b + j0, kn, row_max[bh * N + i], eps_over_n, inv_z[i]);
            if (i >= j0 && i < j0 + kn) pr[i - j0] = (er[i - j0] + eps_over_n) * inv_z[i];
          }
          gemm<T>(true, false, kn, d, qn, T(1), p.data(), kb, dO, d, T(1), dv + base + j0 * d, d);
          gemm<T>(false, true, qn, kn, d, T(1), dO, d, V, d, T(0), ds.data(), kb);
          if (d_from_probs) {
            for (int64_t r = 0; r < qn; ++r) D[i0 + r] = k_dot(p.data() + r * kb, ds.data() + r * kb, kn);
          }
          for (int64_t r = 0; r < qn; ++r) {
            const int64_t i = i0 + r;
            T* dsr = ds.data() + r * kb;
            const T* er = e.data() + r * kb;
            const bool has_diag = i >= j0 && i < j0 + kn;
            const T eg_diag = has_diag ? er[i - j0] * (dsr[i - j0] - D[i]) * inv_z[i] : T(0);
            const T dkeep_diag = has_diag ? dkeep_h[i] : T(0);
            k_grad_scores_row(dsr, er, keep_b + j0, dkeep_h + j0, kn, D[i], inv_z[i]);
            if (has_diag) {  // w_ii = 1, and dkeep_j sums over i != j only
              dsr[i - j0] = eg_diag;
              dkeep_h[i] = dkeep_diag;
            }
          }
          gemm<T>(false, false, qn, d, kn, scale, ds.data(), kb, K, d, j0 == 0 ? T(0) : T(1), dq + base + i0 * d, d);
          gemm<T>(true, false, kn, d, qn, scale, ds.data(), kb, Q, d, T(1), dk + base + j0 * d, d);
        }
      }
    }
  });
}

void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                           const at::Tensor& row_max, const at::Tensor& row_sum) {
  TORCH_CHECK(grad_out.sizes() == q.sizes(), "_masked_attention_backward: grad_out must have the shape of q ",
              q.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == q.sizes(), "_masked_attention_backward: out must have the shape of q ", q.sizes(),
              ", got ", out.sizes());
  const std::vector<int64_t> stats{q.size(0), q.size(1), q.size(2)};
  TORCH_CHECK(row_max.sizes() == at::IntArrayRef(stats), "_masked_attention_backward: row_max must be [B, H, N] = ",
              at::IntArrayRef(stats), ", got ", row_max.sizes());
  TORCH_CHECK(row_sum.sizes() == at::IntArrayRef(stats), "_masked_attention_backward: row_sum must be [B, H, N] = ",
              at::IntArrayRef(stats), ", got ", row_sum.sizes());
  for (const at::Tensor* t : {&grad_out, &out, &row_max, &row_sum}) {
    TORCH_CHECK(at::isFloatingType(t->scalar_type()) && t->device().is_cpu(),
                "_masked_attention_backward: grad_out, out, row_max and row_sum must be floating CPU tensors, got ",
                t->scalar_type(), " on ", t->device());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& keep_in, const at::Tensor& out_in, const at::Tensor& row_max_in, const at::Tensor& row_sum_in,
    std::optional<double> scale_opt, double eps, std::array<bool, 4> output_mask) {
  check_qkv_keep(q_in, k_in, v_in, keep_in, eps);
  check_backward_inputs(grad_out_in, q_in, out_in, row_max_in, row_sum_in);
  // The kernel computes all four gradients in one pass (dq, dk, dv and dkeep share every score);
  // what the mask spares is the head sum of dkeep and the conversions back to the input dtypes.
  const at::Tensor none = at::empty({0}, q_in.options());
  if (!(output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3])) {
    return {none, none, none, none.to(keep_in.scalar_type())};
  }
  const int64_t B = q_in.size(0), H = q_in.size(1), N = q_in.size(2), d = q_in.size(3);
  const double scale = scale_opt.has_value() ? *scale_opt : 1.0 / std::sqrt(static_cast<double>(d));
  const auto acc_type = accumulate_type(q_in.scalar_type());
  auto widen = [&](const at::Tensor& t) { return t.to(acc_type).contiguous(); };
  const at::Tensor dout = widen(grad_out_in), q = widen(q_in), k = widen(k_in), v = widen(v_in);
  const at::Tensor keep = widen(keep_in), out = widen(out_in), row_max = widen(row_max_in);
  const at::Tensor row_sum = widen(row_sum_in);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  at::Tensor dkeep_heads = at::empty({B, H, N}, q.options());
  AT_DISPATCH_FLOATING_TYPES(acc_type, "masked_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                              v.data_ptr<scalar_t>(), keep.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                              row_max.data_ptr<scalar_t>(), row_sum.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                              dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), dkeep_heads.data_ptr<scalar_t>(), B,
                              H, N, d, static_cast<scalar_t>(scale), static_cast<scalar_t>(eps),
                              out_in.scalar_type() != acc_type);
  });
  // Sum the heads in a fixed order: at::sum's reduction order could depend on the thread count.
  const auto dt = q_in.scalar_type();
  auto requested = [&](int i, const at::Tensor& grad) { return output_mask[i] ? grad.to(dt) : none; };
  if (!output_mask[3]) return {requested(0, dq), requested(1, dk), requested(2, dv), none.to(keep_in.scalar_type())};
  at::Tensor dkeep = at::empty({B, N}, q.options());
  AT_DISPATCH_FLOATING_TYPES(acc_type, "masked_attention_backward_cpu_dkeep", [&] {
    const scalar_t* src = dkeep_heads.data_ptr<scalar_t>();
    scalar_t* dst = dkeep.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < N; ++j) {
        scalar_t s = 0;
        for (int64_t h = 0; h < H; ++h) s += src[(b * H + h) * N + j];
        dst[b * N + j] = s;
      }
    }
  });
  return {requested(0, dq), requested(1, dk), requested(2, dv), dkeep.to(keep_in.scalar_type())};
}

}  // namespace
}  // namespace stpriv

TORCH_LIBRARY_IMPL(stpriv, CPU, m) {
  m.impl("masked_attention", &stpriv::masked_attention_cpu);
  m.impl("_masked_attention_backward", &stpriv::masked_attention_backward_cpu);
}
