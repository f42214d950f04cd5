// exp for float32 loops that must vectorize: the Cephes expf polynomial, within 1.5 ulp, with no
// branch and no libm call (glibc's expf keeps a loop scalar without -ffast-math). Shared by the
// masked-attention softmax and the Gumbel top-k softmax, which each handle their own special
// cases (clamping, NaN, underflow) around it.
#pragma once

#include <cstdint>

namespace stpriv {

// exp(x) for x in [-87.3, 88.3] (callers clamp or mask): exp(x) = 2^n exp(r) with
// n = round(x / ln 2) (adding 1.5 * 2^23 rounds to an integer) and |r| <= ln(2) / 2.
inline __attribute__((always_inline)) float exp_in_range(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts: n * first is exact
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

}  // namespace stpriv
