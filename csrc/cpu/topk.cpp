// CPU kernels of stpriv::topk_keep, stpriv::gather_tokens and stpriv::scatter_tokens
// (docs/ops.md, "topk_keep, gather_tokens, scatter_tokens"; paper §3.2).
//
// topk_keep: per (b, l) row, nth_element with a total order (score descending, then index
// ascending; NaN ranks like +inf), then the k winners sorted by index: O(N + k log k) per row.
// gather/scatter copy whole D-rows; rows of one (b, l) step never overlap another step's, so the
// parallel loop over steps needs no atomics, and scatter adds repeated indices deterministically.
// scatter writes every output row exactly once, in order, and with non-temporal stores when the
// output is large (see kStreamBytes).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/grain.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace stpriv {
namespace {

// Outputs of at least this many bytes are written with non-temporal (streaming) stores. A normal
// store first reads the line it writes into the cache; for scatter's B32 L8 N49 D384 float32
// output (19 MB, more than the 2-core VM's L2s hold) that doubled the traffic and cost 1.2-1.4 ms
// per call where streaming stores take 0.4 ms (one core, benchmarks/RESULTS.md). Below it the
// output stays in cache for the op that reads it next, which streaming stores would evict.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// dst[0, nbytes) = src[0, nbytes), or zeros when src is null, bypassing the cache when `stream`.
// Streaming stores are weakly ordered: the caller ends its loop with finish_streaming().
inline void write_row(char* __restrict dst, const char* __restrict src, int64_t nbytes, bool stream) {
  const auto plain = [&](int64_t from, int64_t to) {
    if (from >= to) return;
    if (src) {
      std::memcpy(dst + from, src + from, to - from);
    } else {
      std::memset(dst + from, 0, to - from);
    }
  };
#if defined(__SSE2__)
  if (stream) {
    // Plain bytes up to dst's first 16-byte boundary, then whole 64-byte lines: four loads before
    // four stores fill a write-combining buffer at once (16 bytes at a time was 1.4x slower).
    const int64_t head = std::min<int64_t>(nbytes, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
    plain(0, head);
    int64_t i = head;
    const auto store = [&](int64_t at, __m128i v) { _mm_stream_si128(reinterpret_cast<__m128i*>(dst + at), v); };
    const auto load = [&](int64_t at) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + at)); };
    if (src) {
      for (; i + 64 <= nbytes; i += 64) {
        const __m128i a = load(i), b = load(i + 16), c = load(i + 32), d = load(i + 48);
        store(i, a), store(i + 16, b), store(i + 32, c), store(i + 48, d);
      }
      for (; i + 16 <= nbytes; i += 16) store(i, load(i));
    } else {
      const __m128i zero = _mm_setzero_si128();
      for (; i + 16 <= nbytes; i += 16) store(i, zero);
    }
    plain(i, nbytes);
    return;
  }
#endif
  plain(0, nbytes);
}

// Orders this thread's streaming stores before whatever the caller does next (the end of the
// parallel region, after which other threads read the output).
inline void finish_streaming(bool stream) {
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
}

at::Tensor topk_keep_cpu(const at::Tensor& score_in, int64_t k) {
  TORCH_CHECK(score_in.dim() == 3, "topk_keep: score must be [B, L, N], got shape ", score_in.sizes());
  TORCH_CHECK(at::isFloatingType(score_in.scalar_type()), "topk_keep: score must be floating point, got ",
              score_in.scalar_type());
  const int64_t B = score_in.size(0), L = score_in.size(1), N = score_in.size(2);
  TORCH_CHECK(0 <= k && k <= N, "topk_keep: k must be in [0, N=", N, "], got ", k);
  const at::Tensor score = score_in.contiguous();
  at::Tensor idx = at::empty({B, L, k}, score.options().dtype(at::kLong));
  int64_t* out = idx.mutable_data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "topk_keep_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = score.const_data_ptr<scalar_t>();
    at::parallel_for(0, B * L, grain_for(8 * N), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> value(N);
      std::vector<int64_t> order(N);
      for (int64_t row = begin; row < end; ++row) {
        for (int64_t n = 0; n < N; ++n) {
          const acc_t v = static_cast<acc_t>(sp[row * N + n]);
          value[n] = std::isnan(v) ? std::numeric_limits<acc_t>::infinity() : v;
        }
        std::iota(order.begin(), order.end(), int64_t(0));
        const acc_t* v = value.data();
        std::nth_element(order.begin(), order.begin() + k, order.end(),
                         [v](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
        std::sort(order.begin(), order.begin() + k);
        std::copy(order.begin(), order.begin() + k, out + row * k);
      }
    });
  });
  return idx;
}

// Checks idx against [B, L, k] int64 with values in [0, N); returns it contiguous.
at::Tensor checked_index(const char* op, const at::Tensor& idx_in, int64_t B, int64_t N) {
  TORCH_CHECK(idx_in.dim() == 3 && idx_in.size(0) == B, op, ": idx must be [B, L, k] with B=", B, ", got shape ",
              idx_in.sizes());
  TORCH_CHECK(idx_in.scalar_type() == at::kLong, op, ": idx must be int64, got ", idx_in.scalar_type());
  at::Tensor idx = idx_in.contiguous();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    TORCH_CHECK(0 <= ip[i] && ip[i] < N, op, ": idx values must be in [0, N=", N, "), found ", ip[i]);
  }
  return idx;
}

at::Tensor gather_tokens_cpu(const at::Tensor& x_in, const at::Tensor& idx_in) {
  TORCH_CHECK(x_in.dim() == 3, "gather_tokens: x must be [B, L*N, D], got shape ", x_in.sizes());
  TORCH_CHECK(idx_in.dim() == 3 && idx_in.size(1) > 0, "gather_tokens: idx must be [B, L, k] with L >= 1, got shape ",
              idx_in.sizes());
  const int64_t B = x_in.size(0), D = x_in.size(2), L = idx_in.size(1), k = idx_in.size(2);
  TORCH_CHECK(x_in.size(1) % L == 0, "gather_tokens: x must have L*N tokens with L=", L, ", got ", x_in.size(1));
  const int64_t N = x_in.size(1) / L;
  const at::Tensor idx = checked_index("gather_tokens", idx_in, B, N);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({B, L * k, D}, x.options());
  const int64_t row_bytes = D * static_cast<int64_t>(x.element_size());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* op = static_cast<char*>(out.mutable_data_ptr());
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  at::parallel_for(0, B * L, grain_for(k * D), [&](int64_t begin, int64_t end) {
    for (int64_t bl = begin; bl < end; ++bl) {
      const int64_t b = bl / L, l = bl % L;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t src = b * L * N + l * N + ip[bl * k + j];
        std::memcpy(op + (bl * k + j) * row_bytes, xp + src * row_bytes, row_bytes);
      }
    }
  });
  return out;
}

at::Tensor scatter_tokens_cpu(const at::Tensor& y_in, const at::Tensor& idx_in, int64_t num_tokens_per_step) {
  TORCH_CHECK(y_in.dim() == 3, "scatter_tokens: y must be [B, L*k, D], got shape ", y_in.sizes());
  TORCH_CHECK(idx_in.dim() == 3, "scatter_tokens: idx must be [B, L, k], got shape ", idx_in.sizes());
  const int64_t B = y_in.size(0), D = y_in.size(2), L = idx_in.size(1), k = idx_in.size(2);
  const int64_t N = num_tokens_per_step;
  TORCH_CHECK(N >= 1, "scatter_tokens: num_tokens_per_step must be >= 1, got ", N);
  TORCH_CHECK(y_in.size(1) == L * k, "scatter_tokens: y must have L*k = ", L * k, " tokens, got ", y_in.size(1));
  const at::Tensor idx = checked_index("scatter_tokens", idx_in, B, N);
  const at::Tensor y = y_in.contiguous();
  // Every output row is written exactly once (a copy, a sum of repeats, or zeros), so the output
  // is not zero-filled first: that would write the whole [B, L*N, D] grid twice.
  at::Tensor out = at::empty({B, L * N, D}, y.options());
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  const bool stream = static_cast<int64_t>(out.nbytes()) >= kStreamBytes;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "scatter_tokens_cpu", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
    at::parallel_for(0, B * L, grain_for(2 * N * D), [&](int64_t begin, int64_t end) {
      constexpr int64_t kNone = -1;
      std::vector<int64_t> first(N);  // the first j with idx[b, l, j] == n, or kNone
      std::vector<char> repeated(N);
      using acc_t = at::opmath_type<scalar_t>;
      std::vector<acc_t> sum(D);        // rows that several j point to are summed here
      std::vector<scalar_t> summed(D);  // and rounded once, as scatter_add does
      for (int64_t bl = begin; bl < end; ++bl) {
        const int64_t* step_idx = ip + bl * k;
        const scalar_t* step_y = yp + bl * k * D;
        std::fill(first.begin(), first.end(), kNone);
        std::fill(repeated.begin(), repeated.end(), 0);
        for (int64_t j = 0; j < k; ++j) {
          int64_t& f = first[step_idx[j]];
          if (f == kNone) {
            f = j;
          } else {
            repeated[step_idx[j]] = 1;
          }
        }
        // Rows go out in order n = 0..N-1, one sequential stream per step.
        char* step_out = reinterpret_cast<char*>(outp + bl * N * D);
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* src = first[n] == kNone ? nullptr : step_y + first[n] * D;
          if (repeated[n]) {
            // In j order in float32 (float64 for float64), then rounded once: scatter_add's order
            // and precision, so float16 / bfloat16 results match it bit for bit.
            std::fill(sum.begin(), sum.end(), acc_t(0));
            for (int64_t j = first[n]; j < k; ++j) {
              if (step_idx[j] != n) continue;
              const scalar_t* __restrict row = step_y + j * D;
              for (int64_t d = 0; d < D; ++d) sum[d] += static_cast<acc_t>(row[d]);
            }
            for (int64_t d = 0; d < D; ++d) summed[d] = static_cast<scalar_t>(sum[d]);
            src = summed.data();
          }
          write_row(step_out + n * row_bytes, reinterpret_cast<const char*>(src), row_bytes, stream);
        }
      }
      finish_streaming(stream);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(stpriv, CPU, m) {
  m.impl("topk_keep", &topk_keep_cpu);
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("scatter_tokens", &scatter_tokens_cpu);
}

}  // namespace stpriv
