// Philox4x32-10 counter-based generator (Salmon et al., SC'11) and the Gumbel noise of the engine.
//
// Noise for candidate flat position `pos` of key `key` in image `image`, AL loop `loop`, with 64-bit
// `seed`: counter = (pos, image, loop, key) as uint32 words (key -1 -> 0xFFFFFFFF), Philox key =
// (seed low 32 bits, seed high 32 bits).  From the first two output words r0, r1:
//   bits = (r0 << 32) | r1;  u = (2 * (bits >> 12) + 1) * 2^-53  in (0, 1);  g = -log(-log(u))
// with log_portable, so g is a pure function of (seed, loop, image, key, pos) on every backend.
// Identical to reference.philox4x32_10 / reference.gumbel_noise.
#pragma once

#include "hd.h"
#include "portable_math.h"

namespace claspe {

struct Philox4 {
  uint32_t v[4];
};

CLASPE_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint64_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  const uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = kM0 * c0;
    const uint64_t p1 = kM1 * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  Philox4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// Standard Gumbel(0, 1) variate (double) for one candidate position.
CLASPE_HD double gumbel_at(uint64_t seed, uint32_t loop, uint32_t image, uint32_t key, uint32_t pos) {
  const Philox4 r = philox4x32_10(pos, image, loop, key, static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
  const uint64_t x = bits >> 12;
  const double u = static_cast<double>((x << 1) + 1) * 0x1p-53;
  return -log_portable(-log_portable(u));
}

// Power noising of one aggregated score s >= 0: float32(log(s) + g / beta); s == 0 gives -inf.
CLASPE_HD float power_noised(float score, double gumbel, double beta) {
  return static_cast<float>(log_portable(static_cast<double>(score)) + gumbel / beta);
}

// Same with caller-supplied, already scaled noise: float32(log(s) + noise).
CLASPE_HD float log_plus_noise(float score, double noise) {
  return static_cast<float>(log_portable(static_cast<double>(score)) + noise);
}

}  // namespace claspe
