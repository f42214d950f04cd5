// CPU kernels of stpriv::gumbel_keep and stpriv::gumbel_topk and their backwards
// (docs/ops.md, "gumbel_keep" and "gumbel_topk"; paper Eq. 6).
//
// Noise is either given (exact tests) or generated here: one uniform per token from counter-based
// Philox-4x32-10 keyed by the seed (token i: output i % 4 of counter i / 4). It is the generator of
// triton.language.randint4x, so the Triton kernels draw the very same uniforms on the GPU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/exp_approx.h"
#include "cpu/grain.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace stpriv {
namespace {

// Philox-4x32 with 10 rounds, counter (offset, 0, 0), key = seed, as fill_noise below computes it,
// gives the four 32-bit outputs of triton.language.randint4x(seed, offset), bit for bit.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// Compiled for AVX2 and baseline, picked at load time: the build needs no -march flag. No
// AVX-512 clone: on the 2-core EPYC of benchmarks/RESULTS.md it made gumbel_topk slower, and the
// code that ran after it too, where AVX2 made it faster ("Measurements behind code choices").
#define STPRIV_GUMBEL_VECTORIZE __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define STPRIV_GUMBEL_VECTORIZE
#endif
// For the helpers of those functions: inlined, they are compiled for each clone's target.
#define STPRIV_GUMBEL_INLINE inline __attribute__((always_inline))

// A uniform in the open interval (0, 1) from 32 random bits: 23 of them, centred in their
// bucket, so the logarithms below stay finite. Exact in float32: (2m + 1) * 2^-24, 2m + 1 < 2^24.
inline float uniform_from_bits(uint32_t bits) { return static_cast<float>(bits >> 9) * 0x1p-23f + 0x1p-24f; }

// Natural logarithm of a positive normal float, branch-free so that loops over it vectorize
// (loops over glibc's logf do not without -ffast-math). Cephes' logf polynomial, within 2 ulp; noise only
// needs it to be monotone and accurate to float precision, which this is.
inline float log_positive(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  int32_t exponent = ((bits >> 23) & 0xff) - 126;  // x = m * 2^exponent, m in [0.5, 1)
  float m = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f000000);
  // Fold m into [sqrt(1/2), sqrt(2)) around 1, with arithmetic rather than a branch.
  const int32_t small = m < 0.707106781186547524f;
  exponent -= small;
  m = m + m * static_cast<float>(small) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float e = static_cast<float>(exponent);
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
}

enum class NoiseKind { kLogistic, kGumbel };

constexpr int kPhiloxLanes = 8;                     // counters advanced together
constexpr int kTokensPerBlock = 4 * kPhiloxLanes;  // four uniforms per counter

// The uniforms of tokens 4 * first_counter .. + kTokensPerBlock - 1 into out: Philox-4x32-10 with
// counter (c, 0, 0) and key = seed, for eight counters c at once in lane loops the compiler
// vectorizes. The 32-bit words live in 64-bit lanes: the rounds' 32 x 32 -> 64-bit products are
// then vpmuludq, which GCC does not emit for 32-bit lanes (there the rounds stayed scalar: 55 ->
// 25 us for the 12544 tokens of benchmarks/bench_gumbel.py).
STPRIV_GUMBEL_INLINE void philox_uniforms(uint64_t seed, uint64_t first_counter, float* __restrict out) {
  constexpr uint64_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint64_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  uint64_t c0[kPhiloxLanes], c1[kPhiloxLanes], c2[kPhiloxLanes], c3[kPhiloxLanes];
  for (int lane = 0; lane < kPhiloxLanes; ++lane) {
    c0[lane] = (first_counter + lane) & kLow;
    c1[lane] = (first_counter + lane) >> 32;
    c2[lane] = 0;
    c3[lane] = 0;
  }
  uint64_t k0 = seed & kLow, k1 = seed >> 32;
  for (int round = 0; round < 10; ++round) {
    for (int lane = 0; lane < kPhiloxLanes; ++lane) {
      const uint64_t product_b = kRoundB * c2[lane];
      const uint64_t product_a = kRoundA * c0[lane];
      c0[lane] = (product_b >> 32) ^ c1[lane] ^ k0;
      c2[lane] = (product_a >> 32) ^ c3[lane] ^ k1;
      c1[lane] = product_b & kLow;
      c3[lane] = product_a & kLow;
    }
    k0 = (k0 + kKeyA) & kLow;
    k1 = (k1 + kKeyB) & kLow;
  }
  for (int lane = 0; lane < kPhiloxLanes; ++lane) {
    out[4 * lane + 0] = uniform_from_bits(static_cast<uint32_t>(c0[lane]));
    out[4 * lane + 1] = uniform_from_bits(static_cast<uint32_t>(c1[lane]));
    out[4 * lane + 2] = uniform_from_bits(static_cast<uint32_t>(c2[lane]));
    out[4 * lane + 3] = uniform_from_bits(static_cast<uint32_t>(c3[lane]));
  }
}

// The uniforms of `blocks` whole blocks of tokens, from counter first_counter on, into out. Its own
// function so that the lane loops vectorize: inlined into fill_noise, GCC kept them scalar.
STPRIV_GUMBEL_VECTORIZE
void philox_blocks(uint64_t seed, uint64_t first_counter, int64_t blocks, float* __restrict out) {
  for (int64_t block = 0; block < blocks; ++block) {
    philox_uniforms(seed, first_counter + block * kPhiloxLanes, out + block * kTokensPerBlock);
  }
}

// Uniforms in (0, 1) -> Logistic(0, 1) or Gumbel(0, 1) noise, in place.
STPRIV_GUMBEL_VECTORIZE
void uniforms_to_noise(NoiseKind kind, int64_t count, float* __restrict out) {
  if (kind == NoiseKind::kLogistic) {
    // log(u) - log(1 - u) as one logarithm; 1 - u is exact for these u (the Triton kernel agrees).
    for (int64_t i = 0; i < count; ++i) out[i] = log_positive(out[i] / (1.0f - out[i]));
  } else {
    for (int64_t i = 0; i < count; ++i) out[i] = -log_positive(-log_positive(out[i]));
  }
}

// Noise for tokens first .. first + count - 1 into out[0 .. count): token i takes output i % 4 of
// Philox counter i / 4, as the Triton kernels do with randint4x. Whole blocks of tokens are drawn
// in place; the ragged ends of the span go through a small buffer.
void fill_noise(NoiseKind kind, uint64_t seed, int64_t first, int64_t count, float* __restrict out) {
  const int64_t end = first + count;
  // Tokens [inner_first, inner_end) form whole blocks inside the span.
  const int64_t inner_first = (first + kTokensPerBlock - 1) / kTokensPerBlock * kTokensPerBlock;
  const int64_t inner_end = std::max(inner_first, end / kTokensPerBlock * kTokensPerBlock);
  if (inner_first < inner_end) {
    philox_blocks(seed, static_cast<uint64_t>(inner_first) / 4, (inner_end - inner_first) / kTokensPerBlock,
                  out + (inner_first - first));
  }
  // Tokens [lo, hi) of the block starting at token block_first: the ragged ends of the span.
  const auto draw_partial = [&](int64_t block_first, int64_t lo, int64_t hi) {
    float uniform[kTokensPerBlock];
    philox_blocks(seed, static_cast<uint64_t>(block_first) / 4, 1, uniform);
    std::memcpy(out + (lo - first), uniform + (lo - block_first), (hi - lo) * sizeof(float));
  };
  if (first < inner_first) draw_partial(inner_first - kTokensPerBlock, first, std::min(end, inner_first));
  if (inner_end < end) draw_partial(inner_end, inner_end, end);
  uniforms_to_noise(kind, count, out);
}

at::ScalarType noise_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The noise tensor (converted to its compute dtype), or the seed when there is none.
std::tuple<std::optional<at::Tensor>, uint64_t> rng_inputs(const char* op, const std::optional<at::Tensor>& noise,
                                                           const std::optional<at::Tensor>& seed,
                                                           at::IntArrayRef shape, at::ScalarType compute) {
  if (noise.has_value()) {
    TORCH_CHECK(noise->sizes() == shape, op, ": noise must have shape ", shape, ", got ", noise->sizes());
    return {noise->to(compute).contiguous(), 0};
  }
  TORCH_CHECK(seed.has_value(), op, ": pass either noise or seed");
  TORCH_CHECK(seed->numel() == 1 && !at::isFloatingType(seed->scalar_type()),
              op, ": seed must be one integer, got ", seed->scalar_type(), " of shape ", seed->sizes());
  return {std::nullopt, static_cast<uint64_t>(seed->item<int64_t>())};
}

// ---- gumbel_keep ----

std::tuple<at::Tensor, at::Tensor> gumbel_keep_cpu(const at::Tensor& log_probs_in, const at::Tensor& prev_in,
                                                   const std::optional<at::Tensor>& noise_in,
                                                   const std::optional<at::Tensor>& seed, double tau) {
  TORCH_CHECK(log_probs_in.dim() == 3 && log_probs_in.size(2) == 2,
              "gumbel_keep: log_probs must be [B, T, 2], got shape ", log_probs_in.sizes());
  TORCH_CHECK(prev_in.dim() == 2 && prev_in.size(0) == log_probs_in.size(0) &&
                  prev_in.size(1) == log_probs_in.size(1),
              "gumbel_keep: prev must be [B, T] like log_probs, got shape ", prev_in.sizes());
  TORCH_CHECK(prev_in.scalar_type() == log_probs_in.scalar_type(),
              "gumbel_keep: prev must have the dtype of log_probs (", log_probs_in.scalar_type(), "), got ",
              prev_in.scalar_type());
  TORCH_CHECK(tau > 0, "gumbel_keep: tau must be > 0, got ", tau);
  const at::ScalarType dtype = log_probs_in.scalar_type();
  const at::ScalarType compute = noise_dtype(dtype);
  const at::Tensor lp = log_probs_in.contiguous(), prev = prev_in.contiguous();
  auto [noise, seed_value] = rng_inputs("gumbel_keep", noise_in, seed, prev.sizes(), compute);
  at::Tensor keep = at::empty_like(prev);
  at::Tensor logit = at::empty(prev.sizes(), prev.options().dtype(compute));
  const int64_t count = prev.numel();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gumbel_keep_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lpp = lp.const_data_ptr<scalar_t>();
    const scalar_t* pp = prev.const_data_ptr<scalar_t>();
    const acc_t* np = noise.has_value() ? noise->const_data_ptr<acc_t>() : nullptr;
    scalar_t* kp = keep.mutable_data_ptr<scalar_t>();
    acc_t* zp = logit.mutable_data_ptr<acc_t>();
    at::parallel_for(0, count, grain_for(np ? 2 : 8), [&](int64_t begin, int64_t end) {
      std::vector<float> drawn;
      if (!np) {
        drawn.resize(end - begin);
        fill_noise(NoiseKind::kLogistic, seed_value, begin, end - begin, drawn.data());
      }
      for (int64_t i = begin; i < end; ++i) {
        const acc_t g = np ? np[i] : static_cast<acc_t>(drawn[i - begin]);
        // Same operations in the same order as the reference, so explicit noise matches bit for bit.
        const acc_t z = (static_cast<acc_t>(lpp[2 * i]) - static_cast<acc_t>(lpp[2 * i + 1])) + g;
        const acc_t hard = z > acc_t(0) ? acc_t(1) : acc_t(0);
        zp[i] = z;
        kp[i] = static_cast<scalar_t>(hard * static_cast<acc_t>(pp[i]));
      }
    });
  });
  return {keep, logit};
}

std::tuple<at::Tensor, at::Tensor> gumbel_keep_backward_cpu(const at::Tensor& grad_keep_in,
                                                            const at::Tensor& logit_in, const at::Tensor& prev_in,
                                                            double tau) {
  TORCH_CHECK(grad_keep_in.sizes() == prev_in.sizes() && logit_in.sizes() == prev_in.sizes() && prev_in.dim() == 2,
              "gumbel_keep_backward: grad_keep, logit and prev must all be [B, T]");
  TORCH_CHECK(tau > 0, "gumbel_keep_backward: tau must be > 0, got ", tau);
  const at::ScalarType dtype = grad_keep_in.scalar_type();
  const at::Tensor grad = grad_keep_in.contiguous(), prev = prev_in.to(dtype).contiguous();
  const at::Tensor logit = logit_in.to(noise_dtype(dtype)).contiguous();
  const int64_t B = prev.size(0), T = prev.size(1), count = prev.numel();
  at::Tensor grad_lp = at::empty({B, T, 2}, grad.options());
  at::Tensor grad_prev = at::empty({B, T}, grad.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gumbel_keep_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* pp = prev.const_data_ptr<scalar_t>();
    const acc_t* zp = logit.const_data_ptr<acc_t>();
    scalar_t* glp = grad_lp.mutable_data_ptr<scalar_t>();
    scalar_t* gpp = grad_prev.mutable_data_ptr<scalar_t>();
    const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(tau);
    at::parallel_for(0, count, grain_for(4), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t z = zp[i], g = static_cast<acc_t>(gp[i]);
        const acc_t soft = acc_t(1) / (acc_t(1) + std::exp(-z * inv_tau));
        // d/dz sigmoid(z / tau) * prev, and d/d(lp0 - lp1) = d/dz.
        const acc_t dz = g * static_cast<acc_t>(pp[i]) * soft * (acc_t(1) - soft) * inv_tau;
        glp[2 * i] = static_cast<scalar_t>(dz);
        glp[2 * i + 1] = static_cast<scalar_t>(-dz);
        gpp[i] = static_cast<scalar_t>(z > acc_t(0) ? g : acc_t(0));
      }
    });
  });
  return {grad_lp, grad_prev};
}

// ---- gumbel_topk ----

// exp(x) for the softmax, where x = score / tau - (row max) <= 0, or NaN. In float the branch-free
// Cephes expf of exp_approx.h, so that the loop over a step vectorizes; glibc's expf does not
// without -ffast-math. exp(x) below FLT_MIN (x < -87.34) gives 0; a NaN stays NaN. The special
// cases are selected with masks from sign shifts, not comparisons: with those (under GCC's default
// -ftrapping-math) the loop stayed scalar.
STPRIV_GUMBEL_INLINE float softmax_exp(float x) {
  constexpr float kMinArgument = -87.3365447505f;  // log(FLT_MIN)
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  const int32_t magnitude = bits & 0x7fffffff;
  const int32_t nan_mask = (0x7f800000 - magnitude) >> 31;  // all ones where x is NaN
  // All ones where x < kMinArgument (-inf included): negative, and larger in magnitude.
  const int32_t underflow_mask = (bits >> 31) & ((__builtin_bit_cast(int32_t, -kMinArgument) - magnitude) >> 31);
  const int32_t special = nan_mask | underflow_mask;
  const float xc = __builtin_bit_cast(float, (bits & ~special) | (__builtin_bit_cast(int32_t, kMinArgument) & special));
  const int32_t y = __builtin_bit_cast(int32_t, exp_in_range(xc));
  return __builtin_bit_cast(float, (y & ~special) | (bits & nan_mask));
}
inline double softmax_exp(double x) { return std::exp(x); }

// Reductions over one step in kReduceLanes interleaved partial results, so that they vectorize
// (GCC keeps a single floating-point accumulator a serial chain: it may not reorder the sum).
constexpr int kReduceLanes = 8;

template <typename acc_t>
STPRIV_GUMBEL_INLINE acc_t sum_of(const acc_t* __restrict x, int64_t count) {
  acc_t partial[kReduceLanes] = {};
  int64_t i = 0;
  for (; i + kReduceLanes <= count; i += kReduceLanes) {
    for (int lane = 0; lane < kReduceLanes; ++lane) partial[lane] += x[i + lane];
  }
  for (int lane = 0; i < count; ++i, ++lane) partial[lane] += x[i];
  acc_t total = 0;
  for (int lane = 0; lane < kReduceLanes; ++lane) total += partial[lane];
  return total;
}

// The largest non-NaN value (-inf when there is none), as a running std::max would give.
template <typename acc_t>
STPRIV_GUMBEL_INLINE acc_t max_of(const acc_t* __restrict x, int64_t count) {
  acc_t partial[kReduceLanes];
  std::fill(partial, partial + kReduceLanes, -std::numeric_limits<acc_t>::infinity());
  int64_t i = 0;
  for (; i + kReduceLanes <= count; i += kReduceLanes) {
    for (int lane = 0; lane < kReduceLanes; ++lane) partial[lane] = std::max(partial[lane], x[i + lane]);
  }
  for (int lane = 0; i < count; ++i, ++lane) partial[lane] = std::max(partial[lane], x[i]);
  return *std::max_element(partial, partial + kReduceLanes);
}

// Steps of at most this many tubelets select by counting ranks; longer ones by nth_element.
constexpr int64_t kRankCountMaxN = 64;

// ahead[n] = how many tubelets rank ahead of tubelet n: those with a higher value and, when
// kTiesByIndex, those with an equal value and a lower index. `padded` holds the step's N values
// then anything up to kRankCountMaxN (those lanes are counted but never read). O(N^2) compares,
// but branch-free and vectorized over n: the inner loop has a constant trip count, unrolled over
// vector registers.
template <bool kTiesByIndex, typename acc_t>
STPRIV_GUMBEL_INLINE void count_ahead(const acc_t* __restrict padded, int32_t N, int32_t* __restrict ahead) {
  std::fill(ahead, ahead + kRankCountMaxN, 0);
  for (int32_t j = 0; j < N; ++j) {  // 32-bit indices, the width of `ahead`'s lanes
    const acc_t v = padded[j];
    for (int32_t n = 0; n < kRankCountMaxN; ++n) {
      if constexpr (kTiesByIndex) {
        ahead[n] += (v > padded[n]) | ((v == padded[n]) & (j < n));
      } else {
        ahead[n] += v > padded[n];
      }
    }
  }
}

// keep[n] = 1 for the k tubelets first in best-first order (higher value, then lower index), N <=
// kRankCountMaxN, by ranking every tubelet: nth_element mispredicts about every other branch on
// random noise, ranking has no data-dependent branches (benchmarks/RESULTS.md). First by
// higher values only, half the compares: unless a group of equal values straddles the k-th place
// that keeps exactly k, the right ones; else (count != k) again with ties broken by index.
// `value` has NaN already replaced by +inf.
template <typename scalar_t, typename acc_t>
STPRIV_GUMBEL_INLINE void keep_top_k_by_rank(const acc_t* __restrict value, int64_t N, int64_t k,
                                             scalar_t* __restrict keep) {
  acc_t padded[kRankCountMaxN] = {};
  int32_t ahead[kRankCountMaxN];
  std::copy(value, value + N, padded);
  count_ahead<false>(padded, static_cast<int32_t>(N), ahead);
  int64_t kept = 0;
  for (int64_t n = 0; n < N; ++n) kept += ahead[n] < k;
  if (kept != k) count_ahead<true>(padded, static_cast<int32_t>(N), ahead);
  for (int64_t n = 0; n < N; ++n) keep[n] = ahead[n] < k ? scalar_t(1) : scalar_t(0);
}

// Orders tubelets best first: higher value, then lower index.
template <typename acc_t>
struct BestFirst {
  const acc_t* value;
  bool operator()(int64_t a, int64_t b) const { return value[a] > value[b] || (value[a] == value[b] && a < b); }
};

template <typename scalar_t, typename acc_t>
void keep_top_k_by_selection(const acc_t* value, int64_t N, int64_t k, scalar_t* keep) {
  std::vector<int64_t> order(N);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::nth_element(order.begin(), order.begin() + k, order.end(), BestFirst<acc_t>{value});
  std::fill(keep, keep + N, scalar_t(0));
  for (int64_t j = 0; j < k; ++j) keep[order[j]] = scalar_t(1);
}

// gumbel_topk for `rows` time steps of N tubelets: the keep mask and softmax((score + noise) / tau).
// `scratch` holds 2 * N values.
template <typename scalar_t, typename acc_t, typename noise_t>
STPRIV_GUMBEL_VECTORIZE
void gumbel_topk_rows(const scalar_t* __restrict score, const noise_t* __restrict noise, int64_t rows, int64_t N,
                      int64_t k, acc_t tau, scalar_t* __restrict keep, acc_t* __restrict soft,
                      acc_t* __restrict scratch) {
  acc_t* __restrict scaled = scratch;          // (score + noise) / tau
  acc_t* __restrict ranked = scratch + N;  // score + noise, NaN as +inf
  for (int64_t row = 0; row < rows; ++row, score += N, noise += N, keep += N, soft += N) {
    for (int64_t n = 0; n < N; ++n) {
      const acc_t perturbed = static_cast<acc_t>(score[n]) + static_cast<acc_t>(noise[n]);
      scaled[n] = perturbed / tau;
      ranked[n] = std::isnan(perturbed) ? std::numeric_limits<acc_t>::infinity() : perturbed;
    }
    const acc_t row_max = max_of(scaled, N);
    for (int64_t n = 0; n < N; ++n) soft[n] = softmax_exp(scaled[n] - row_max);
    const acc_t total = sum_of(soft, N);
    for (int64_t n = 0; n < N; ++n) soft[n] /= total;
    if (N <= kRankCountMaxN) {
      keep_top_k_by_rank(ranked, N, k, keep);
    } else {
      keep_top_k_by_selection(ranked, N, k, keep);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> gumbel_topk_cpu(const at::Tensor& score_in, int64_t k,
                                                   const std::optional<at::Tensor>& noise_in,
                                                   const std::optional<at::Tensor>& seed, double tau) {
  TORCH_CHECK(score_in.dim() == 3, "gumbel_topk: score must be [B, L, N], got shape ", score_in.sizes());
  const int64_t B = score_in.size(0), L = score_in.size(1), N = score_in.size(2);
  TORCH_CHECK(0 <= k && k <= N, "gumbel_topk: k must be in [0, N=", N, "], got ", k);
  TORCH_CHECK(tau > 0, "gumbel_topk: tau must be > 0, got ", tau);
  const at::ScalarType dtype = score_in.scalar_type();
  const at::ScalarType compute = noise_dtype(dtype);
  const at::Tensor score = score_in.contiguous();
  auto [noise, seed_value] = rng_inputs("gumbel_topk", noise_in, seed, score.sizes(), compute);
  at::Tensor keep = at::empty_like(score);
  at::Tensor soft = at::empty(score.sizes(), score.options().dtype(compute));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gumbel_topk_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = score.const_data_ptr<scalar_t>();
    const acc_t* np = noise.has_value() ? noise->const_data_ptr<acc_t>() : nullptr;
    scalar_t* kp = keep.mutable_data_ptr<scalar_t>();
    acc_t* softp = soft.mutable_data_ptr<acc_t>();
    const acc_t tau_acc = static_cast<acc_t>(tau);
    at::parallel_for(0, B * L, grain_for(N * (np ? 8 : 12)), [&](int64_t begin, int64_t end) {
      const int64_t first = begin * N, rows = end - begin;
      std::vector<acc_t> scratch(2 * N);
      if (np) {
        gumbel_topk_rows(sp + first, np + first, rows, N, k, tau_acc, kp + first, softp + first, scratch.data());
      } else {
        std::vector<float> drawn(rows * N);
        fill_noise(NoiseKind::kGumbel, seed_value, first, rows * N, drawn.data());
        gumbel_topk_rows(sp + first, drawn.data(), rows, N, k, tau_acc, kp + first, softp + first, scratch.data());
      }
    });
  });
  return {keep, soft};
}

at::Tensor gumbel_topk_backward_cpu(const at::Tensor& grad_keep_in, const at::Tensor& soft_in, double tau) {
  TORCH_CHECK(grad_keep_in.dim() == 3 && grad_keep_in.sizes() == soft_in.sizes(),
              "gumbel_topk_backward: grad_keep and soft must both be [B, L, N]");
  TORCH_CHECK(tau > 0, "gumbel_topk_backward: tau must be > 0, got ", tau);
  const at::ScalarType dtype = grad_keep_in.scalar_type();
  const at::Tensor grad = grad_keep_in.contiguous();
  const at::Tensor soft = soft_in.to(noise_dtype(dtype)).contiguous();
  const int64_t rows = grad.size(0) * grad.size(1), N = grad.size(2);
  at::Tensor grad_score = at::empty_like(grad);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gumbel_topk_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const acc_t* softp = soft.const_data_ptr<acc_t>();
    scalar_t* out = grad_score.mutable_data_ptr<scalar_t>();
    const acc_t inv_tau = acc_t(1) / static_cast<acc_t>(tau);
    at::parallel_for(0, rows, grain_for(2 * N), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t base = row * N;
        acc_t weighted = 0;  // sum_j g_j soft_j: the softmax Jacobian is diag(s) - s s^T
        for (int64_t n = 0; n < N; ++n) weighted += static_cast<acc_t>(gp[base + n]) * softp[base + n];
        for (int64_t n = 0; n < N; ++n) {
          out[base + n] = static_cast<scalar_t>(softp[base + n] * (static_cast<acc_t>(gp[base + n]) - weighted) * inv_tau);
        }
      }
    });
  });
  return grad_score;
}

}  // namespace

TORCH_LIBRARY_IMPL(stpriv, CPU, m) {
  m.impl("gumbel_keep", &gumbel_keep_cpu);
  m.impl("_gumbel_keep_backward", &gumbel_keep_backward_cpu);
  m.impl("gumbel_topk", &gumbel_topk_cpu);
  m.impl("_gumbel_topk_backward", &gumbel_topk_backward_cpu);
}

}  // namespace stpriv
