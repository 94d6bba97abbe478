// Portable transcendental functions: bit-identical to claspe/reference.py on every backend.
//
// These reproduce reference.logf_portable / expf_portable / log_portable / plogp operation by
// operation (same constants, same order, IEEE single/double, no fused multiply-add: compile with
// -ffp-contract=off on the host and --fmad=false with nvcc).  Do not "simplify" an expression here
// without changing reference.py the same way: the CPU engine, the CUDA engine and the NumPy oracle
// must give identical bits.
//
// Domains (callers guarantee them; nothing is checked here):
//   logf_portable(x): float x >= FLT_MIN (normal, positive, finite).
//   expf_portable(y): float y <= 0 (softmax after subtracting the max); y < -87 gives 0.
//   log_portable(x):  double x >= 0 finite; 0 gives -inf.
//   plogp(p):         any float; p < FLT_MIN (incl. 0, negatives, subnormals) gives 0.
#pragma once

#include <math.h>

#include "hd.h"

namespace claspe {

constexpr float kFltMin = 0x1p-126f;  // FLT_MIN, smallest normal float

CLASPE_HD float logf_portable(float x) {
  const float kLn2 = 0x1.62e43p-1f;
  const float kSqrt2 = 0x1.6a09e6p+0f;
  const float kInv3 = 0x1.555556p-2f, kInv5 = 0x1.99999ap-3f, kInv7 = 0x1.24924ap-3f, kInv9 = 0x1.c71c72p-4f;
  const int32_t bits = static_cast<int32_t>(float_bits(x));
  int32_t e = ((bits >> 23) & 0xFF) - 127;
  float m = bits_float(static_cast<uint32_t>((bits & 0x7FFFFF) | 0x3F800000));
  // Both sides of each select are computed unconditionally (no speculation of FP operations, so
  // compilers can vectorise these functions under the default -ftrapping-math).
  const bool big = m > kSqrt2;
  const float m_half = m * 0.5f;
  m = big ? m_half : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float poly = 1.0f + z * (kInv3 + z * (kInv5 + z * (kInv7 + z * kInv9)));
  return static_cast<float>(e) * kLn2 + (2.0f * s) * poly;
}

CLASPE_HD float expf_portable(float y) {
  const float kLog2e = 0x1.715476p+0f;
  const float kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
  const float c0 = 0x1p+0f, c1 = 0x1p+0f, c2 = 0x1p-1f, c3 = 0x1.555556p-3f, c4 = 0x1.555556p-5f,
              c5 = 0x1.111112p-7f, c6 = 0x1.6c16c2p-10f, c7 = 0x1.a01a02p-13f;
  const bool small = y < -87.0f;
  const float yc = small ? 0.0f : y;
  const float n = floorf(yc * kLog2e + 0.5f);
  const float r = (yc - n * kLn2Hi) - n * kLn2Lo;
  float p = c7;
  p = c6 + r * p;
  p = c5 + r * p;
  p = c4 + r * p;
  p = c3 + r * p;
  p = c2 + r * p;
  p = c1 + r * p;
  p = c0 + r * p;
  const float scale = bits_float(static_cast<uint32_t>((static_cast<int32_t>(n) + 127) << 23));
  const float out = p * scale;
  return small ? 0.0f : out;
}

CLASPE_HD double log_portable(double x) {
  const double kLn2Hi = 0x1.62e42feep-1, kLn2Lo = 0x1.a39ef35793c76p-33;
  const double kSqrt2 = 0x1.6a09e667f3bcdp+0;
  if (x == 0.0) return -HUGE_VAL;
  int e = 0;
  double m = frexp(x, &e);  // exact: m in [0.5, 1)
  m = m * 2.0;
  e = e - 1;
  if (m > kSqrt2) {
    m = m * 0.5;
    e = e + 1;
  }
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double poly = 0x1.47ae147ae147bp-5;        // 1/25
  poly = 0x1.642c8590b2164p-5 + z * poly;    // 1/23
  poly = 0x1.8618618618618p-5 + z * poly;    // 1/21
  poly = 0x1.af286bca1af28p-5 + z * poly;    // 1/19
  poly = 0x1.e1e1e1e1e1e1ep-5 + z * poly;    // 1/17
  poly = 0x1.1111111111111p-4 + z * poly;    // 1/15
  poly = 0x1.3b13b13b13b14p-4 + z * poly;    // 1/13
  poly = 0x1.745d1745d1746p-4 + z * poly;    // 1/11
  poly = 0x1.c71c71c71c71cp-4 + z * poly;    // 1/9
  poly = 0x1.2492492492492p-3 + z * poly;    // 1/7
  poly = 0x1.999999999999ap-3 + z * poly;    // 1/5
  poly = 0x1.5555555555555p-2 + z * poly;    // 1/3
  poly = 1.0 + z * poly;
  const double ed = static_cast<double>(e);
  return ed * kLn2Hi + (ed * kLn2Lo + (2.0 * s) * poly);
}

// p * log(p) in float32, 0 for p < FLT_MIN (so 0 * log 0 = 0).
CLASPE_HD float plogp(float p) {
  const bool ok = p >= kFltMin;
  const float safe = ok ? p : 1.0f;
  const float r = safe * logf_portable(safe);
  return ok ? r : 0.0f;
}

}  // namespace claspe
