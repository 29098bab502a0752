// Shared pieces of the fused CPU loops (cpu_fused.cpp, cpu_attention.cpp): the per-ISA clones
// attribute and a vectorisable e^x. Both files are built with -fopenmp (for `omp simd` and
// at::parallel_for; see src/ops/CMakeLists.txt).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// GCC target_clones: an AVX-512, an AVX2 and a baseline copy of a function, picked at load time
// (the x86-64-v3/v4 names need GCC 12; older compilers build the baseline copy only).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__)
#define MOETRON_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOETRON_CPU_CLONES
#endif

namespace moetron::ops::cpu::detail {

// e^x for the SwiGLU and softmax loops, written so that `omp simd` vectorises it (glibc's expf has
// no vector form outside -ffast-math): Cephes' range reduction x = n ln2 + r, |r| <= ln2 / 2, a
// degree-6 polynomial for e^r and 2^n built in the exponent bits. Relative error ~1e-7 (1-2 ulp) on
// [-87, 88]; below that it returns 0 and above it +inf (e^88.7 is the float limit), which is what
// the sigmoid 1 / (1 + e^-a) and a softmax over -inf entries need at the extremes.
inline float exp_f32(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__clang__) || __GNUC__ >= 11
  const float two_n = __builtin_bit_cast(float, bits);
#else
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
#endif
  const float e = p * two_n;
  return x > 88.0f ? std::numeric_limits<float>::infinity() : (x < -87.0f ? 0.0f : e);
}

}  // namespace moetron::ops::cpu::detail
