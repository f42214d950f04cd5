// CPU kernels of stpriv::masked_mean and its backward (docs/ops.md, "masked_mean"; paper Eq. 2-3).
//
// Forward: one pass over x. Each (b, l) group sums keep * x over its N tubelets into a float32
// scratch row (float64 for float64); the spatio-temporal mean then reuses those per-step sums,
// so x is read once for both means. The per-step sums run over register tiles of channels
// (weighted_step_sums).
// Backward: per (b, l), grad_x = keep_n * g with
// g = grad_spatial / count_l + grad_spatiotemporal / count_b, and
// grad_keep_n = x_n . g - (grad_spatial . spatial / count_l + grad_spatiotemporal . st / count_b),
// which is sum_c g_c (x_nc - mean_c) split so that x is read once. Empty groups (count 0) use
// 1/count := 0, so they give 0 and zero gradients.
// The float32 inner loops of both are built for AVX-512, AVX2 and baseline x86-64 and picked at
// load time (target_clones), so the build needs no -march flag.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/grain.h"

#include <algorithm>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define STPRIV_MEAN_VECTORIZE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STPRIV_MEAN_VECTORIZE
#endif
// The templates must be inlined into each clone to be compiled for its instruction set.
#if defined(__GNUC__)
#define STPRIV_MEAN_INLINE inline __attribute__((always_inline))
#else
#define STPRIV_MEAN_INLINE inline
#endif

namespace stpriv {
namespace {

// Channels per register tile. The first version kept the running sums of a step in a scratch
// row, so every x element cost a load, a multiply-add and a store of the sum (0.24 ms for the
// B32 L8 N49 C128 benchmark on one core); 64 float32 sums fit in 4 AVX-512 / 8 AVX2 registers,
// which leaves one load and one multiply-add per element (0.09 ms, benchmarks/RESULTS.md).
constexpr int64_t kTile = 64;

// sums[c] = sum_n keep[n] * x[n, c] over one tile of `width` <= kTile channels of one step's rows
// (x: [N, C] with row stride C), accumulated in acc_t. kFull tiles have the compile-time width
// kTile, so their channel loop unrolls onto registers.
template <bool kFull, typename scalar_t, typename acc_t>
STPRIV_MEAN_INLINE void weighted_tile_sums(const scalar_t* __restrict x, const scalar_t* __restrict keep, int64_t N,
                                           int64_t C, int64_t width, acc_t* __restrict sums) {
  const int64_t tile_width = kFull ? kTile : width;
  acc_t acc[kTile] = {};
  for (int64_t n = 0; n < N; ++n) {
    const acc_t w = static_cast<acc_t>(keep[n]);
    const scalar_t* __restrict row = x + n * C;
    for (int64_t c = 0; c < tile_width; ++c) acc[c] += w * static_cast<acc_t>(row[c]);
  }
  for (int64_t c = 0; c < tile_width; ++c) sums[c] = acc[c];
}

// sums[c] = sum_n keep[n] * x[n, c] for one step, x: [N, C], sums: [C].
template <typename scalar_t, typename acc_t>
STPRIV_MEAN_INLINE void weighted_step_sums(const scalar_t* x, const scalar_t* keep, int64_t N, int64_t C,
                                           acc_t* sums) {
  int64_t c0 = 0;
  for (; c0 + kTile <= C; c0 += kTile) weighted_tile_sums<true>(x + c0, keep, N, C, kTile, sums + c0);
  if (c0 < C) weighted_tile_sums<false>(x + c0, keep, N, C, C - c0, sums + c0);
}

STPRIV_MEAN_VECTORIZE void weighted_step_sums_f32(const float* x, const float* keep, int64_t N, int64_t C,
                                                  float* sums) {
  weighted_step_sums<float, float>(x, keep, N, C, sums);
}

// float32 gets the vectorized clones; the other dtypes run the same template for baseline x86-64.
template <typename scalar_t, typename acc_t>
void step_sums(const scalar_t* x, const scalar_t* keep, int64_t N, int64_t C, acc_t* sums) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    weighted_step_sums_f32(x, keep, N, C, sums);
  } else {
    weighted_step_sums<scalar_t, acc_t>(x, keep, N, C, sums);
  }
}

template <typename acc_t>
inline acc_t inverse_or_zero(acc_t count) {
  return count == acc_t(0) ? acc_t(0) : acc_t(1) / count;
}

// x . g with kLanes independent partial sums: one running sum would make the loop wait on the
// add latency, and the compiler may not reorder float additions to vectorize it by itself.
template <typename scalar_t, typename acc_t>
STPRIV_MEAN_INLINE acc_t dot_product(const scalar_t* __restrict x, const acc_t* __restrict g, int64_t C) {
  constexpr int64_t kLanes = 16;
  acc_t partial[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) partial[lane] += static_cast<acc_t>(x[c + lane]) * g[c + lane];
  }
  acc_t total = 0;
  for (; c < C; ++c) total += static_cast<acc_t>(x[c]) * g[c];
  for (int64_t lane = 0; lane < kLanes; ++lane) total += partial[lane];
  return total;
}

// One step's gradients: grad_x[n] = keep[n] * g and grad_keep[n] = x[n] . g - offset, for
// x, grad_x: [N, C], g: [C].
template <typename scalar_t, typename acc_t>
STPRIV_MEAN_INLINE void step_grads_rows(const scalar_t* __restrict x, const scalar_t* __restrict keep,
                                        const acc_t* __restrict g, acc_t offset, int64_t N, int64_t C,
                                        scalar_t* __restrict grad_x, scalar_t* __restrict grad_keep) {
  for (int64_t n = 0; n < N; ++n) {
    const acc_t w = static_cast<acc_t>(keep[n]);
    scalar_t* __restrict gx = grad_x + n * C;
    for (int64_t c = 0; c < C; ++c) gx[c] = static_cast<scalar_t>(w * g[c]);
    grad_keep[n] = static_cast<scalar_t>(dot_product(x + n * C, g, C) - offset);
  }
}

STPRIV_MEAN_VECTORIZE void step_grads_f32(const float* x, const float* keep, const float* g, float offset, int64_t N,
                                          int64_t C, float* grad_x, float* grad_keep) {
  step_grads_rows<float, float>(x, keep, g, offset, N, C, grad_x, grad_keep);
}

template <typename scalar_t, typename acc_t>
void step_grads(const scalar_t* x, const scalar_t* keep, const acc_t* g, acc_t offset, int64_t N, int64_t C,
                scalar_t* grad_x, scalar_t* grad_keep) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    step_grads_f32(x, keep, g, offset, N, C, grad_x, grad_keep);
  } else {
    step_grads_rows<scalar_t, acc_t>(x, keep, g, offset, N, C, grad_x, grad_keep);
  }
}

void check_masked_mean_inputs(const at::Tensor& x, const at::Tensor& keep) {
  TORCH_CHECK(x.dim() == 4, "masked_mean: x must be [B, L, N, C], got shape ", x.sizes());
  TORCH_CHECK(keep.dim() == 3 && keep.size(0) == x.size(0) && keep.size(1) == x.size(1) &&
                  keep.size(2) == x.size(2),
              "masked_mean: keep must be [B, L, N] = [", x.size(0), ", ", x.size(1), ", ", x.size(2),
              "], got shape ", keep.sizes());
  TORCH_CHECK(keep.scalar_type() == x.scalar_type(), "masked_mean: keep must have the dtype of x (",
              x.scalar_type(), "), got ", keep.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "masked_mean: x must be floating point, got ",
              x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> masked_mean_cpu(const at::Tensor& x_in, const at::Tensor& keep_in) {
  check_masked_mean_inputs(x_in, keep_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor keep = keep_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), N = x.size(2), C = x.size(3);
  at::Tensor spatial = at::empty({B, L, C}, x.options());
  at::Tensor spatiotemporal = at::empty({B, C}, x.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_mean_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* kp = keep.const_data_ptr<scalar_t>();
    scalar_t* sp = spatial.mutable_data_ptr<scalar_t>();
    scalar_t* stp = spatiotemporal.mutable_data_ptr<scalar_t>();
    // Unnormalized per-step sums and counts, kept for the spatio-temporal reduction. Every entry
    // is written before it is read, so they are not zero-filled.
    std::unique_ptr<acc_t[]> sums(new acc_t[B * L * C]);
    std::unique_ptr<acc_t[]> counts(new acc_t[B * L]);

    at::parallel_for(0, B * L, grain_for(N * C), [&](int64_t begin, int64_t end) {
      for (int64_t bl = begin; bl < end; ++bl) {
        acc_t* __restrict acc = sums.get() + bl * C;
        step_sums<scalar_t, acc_t>(xp + bl * N * C, kp + bl * N, N, C, acc);
        acc_t count = 0;
        for (int64_t n = 0; n < N; ++n) count += static_cast<acc_t>(kp[bl * N + n]);
        counts[bl] = count;
        const acc_t inv = inverse_or_zero(count);
        for (int64_t c = 0; c < C; ++c) sp[bl * C + c] = static_cast<scalar_t>(acc[c] * inv);
      }
    });
    at::parallel_for(0, B, grain_for(L * C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(C);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        acc_t count = 0;
        for (int64_t l = 0; l < L; ++l) {
          const acc_t* __restrict row = sums.get() + (b * L + l) * C;
          count += counts[b * L + l];
          for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
        }
        const acc_t inv = inverse_or_zero(count);
        for (int64_t c = 0; c < C; ++c) stp[b * C + c] = static_cast<scalar_t>(acc[c] * inv);
      }
    });
  });
  return {spatial, spatiotemporal};
}

std::tuple<at::Tensor, at::Tensor> masked_mean_backward_cpu(const at::Tensor& grad_spatial_in,
                                                            const at::Tensor& grad_st_in,
                                                            const at::Tensor& x_in, const at::Tensor& keep_in,
                                                            const at::Tensor& spatial_in,
                                                            const at::Tensor& st_in) {
  check_masked_mean_inputs(x_in, keep_in);
  const int64_t B = x_in.size(0), L = x_in.size(1), N = x_in.size(2), C = x_in.size(3);
  TORCH_CHECK(grad_spatial_in.sizes() == spatial_in.sizes() && spatial_in.dim() == 3 &&
                  spatial_in.size(0) == B && spatial_in.size(1) == L && spatial_in.size(2) == C,
              "masked_mean_backward: grad_spatial and spatial must be [B, L, C]");
  TORCH_CHECK(grad_st_in.sizes() == st_in.sizes() && st_in.dim() == 2 && st_in.size(0) == B &&
                  st_in.size(1) == C,
              "masked_mean_backward: grad_spatiotemporal and spatiotemporal must be [B, C]");
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = x_in.contiguous(), keep = keep_in.contiguous();
  const at::Tensor gs = grad_spatial_in.to(dtype).contiguous(), gst = grad_st_in.to(dtype).contiguous();
  const at::Tensor spatial = spatial_in.to(dtype).contiguous(), st = st_in.to(dtype).contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_keep = at::empty_like(keep);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_mean_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* kp = keep.const_data_ptr<scalar_t>();
    const scalar_t* gsp = gs.const_data_ptr<scalar_t>();
    const scalar_t* gstp = gst.const_data_ptr<scalar_t>();
    const scalar_t* sp = spatial.const_data_ptr<scalar_t>();
    const scalar_t* stp = st.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gkp = grad_keep.mutable_data_ptr<scalar_t>();

    // 1 / count per step and per video; recounting keep is O(B·L·N), nothing next to x.
    std::vector<acc_t> inv_step(B * L), inv_video(B);
    for (int64_t b = 0; b < B; ++b) {
      acc_t video = 0;
      for (int64_t l = 0; l < L; ++l) {
        acc_t step = 0;
        for (int64_t n = 0; n < N; ++n) step += static_cast<acc_t>(kp[(b * L + l) * N + n]);
        inv_step[b * L + l] = inverse_or_zero(step);
        video += step;
      }
      inv_video[b] = inverse_or_zero(video);
    }

    at::parallel_for(0, B * L, grain_for(2 * N * C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> g(C);
      for (int64_t bl = begin; bl < end; ++bl) {
        const int64_t b = bl / L;
        const acc_t inv_s = inv_step[bl], inv_st = inv_video[b];
        acc_t offset = 0;  // grad_spatial . spatial / count_l + grad_st . st / count_b
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gs_c = static_cast<acc_t>(gsp[bl * C + c]) * inv_s;
          const acc_t gst_c = static_cast<acc_t>(gstp[b * C + c]) * inv_st;
          g[c] = gs_c + gst_c;
          offset += gs_c * static_cast<acc_t>(sp[bl * C + c]) + gst_c * static_cast<acc_t>(stp[b * C + c]);
        }
        step_grads<scalar_t, acc_t>(xp + bl * N * C, kp + bl * N, g.data(), offset, N, C, gxp + bl * N * C,
                                    gkp + bl * N);
      }
    });
  });
  return {grad_x, grad_keep};
}

}  // namespace

TORCH_LIBRARY_IMPL(stpriv, CPU, m) {
  m.impl("masked_mean", &masked_mean_cpu);
  m.impl("_masked_mean_backward", &masked_mean_backward_cpu);
}

}  // namespace stpriv
