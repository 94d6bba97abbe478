// Host/device portability layer shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) engines.
//
// CLASPE_HD marks small inline functions usable from host code and CUDA device code.  Everything
// reachable from a CLASPE_HD function is plain arithmetic on scalars: no exceptions, no heap, no STL
// containers, no libm transcendental functions (see portable_math.h for why).
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define CLASPE_HAS_BIT_CAST 1
#endif
#endif

#if defined(__CUDACC__)
#define CLASPE_HD __host__ __device__ __forceinline__
#else
#define CLASPE_HD inline
#endif

namespace claspe {

CLASPE_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#elif defined(CLASPE_HAS_BIT_CAST)
  return __builtin_bit_cast(uint32_t, x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

CLASPE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#elif defined(CLASPE_HAS_BIT_CAST)
  return __builtin_bit_cast(float, u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

CLASPE_HD uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

CLASPE_HD double bits_double(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// IEEE half (binary16, as stored by numpy float16) -> float, exact for every input (subnormals,
// +-0, +-inf, NaN payloads).  The CPU engine uses F16C instructions where built with them; this
// scalar version is the definition and the fallback (tests compare both on all 65536 inputs).
CLASPE_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  uint32_t out;
  if (em >= 0x7C00u) {  // inf / NaN
    out = 0x7F800000u | ((em & 0x03FFu) << 13);
  } else {
    // normal and subnormal: reinterpret the bits with 13 extra mantissa bits, rescale by 2^112
    // (exact multiply by a power of two; for subnormal halves the float32 operand is subnormal).
    out = float_bits(bits_float(em << 13) * 0x1p112f);
  }
  return bits_float(out | sign);
}

}  // namespace claspe
