// Candidate grid geometry, box blocking ranges and the selection tie-break rule.
//
// Volume axes (x, y, z), extent d, patch p (> 0), stride s (> 0).  The patch is clipped per axis:
// pe = min(p, d).  Candidate i on an axis has start corner i*s and covers [i*s, i*s + pe); there
// are n = (d - pe) / s + 1 candidates (positions beyond the last full stride step are not scored).
// Identical to reference.grid_shape.
#pragma once

#include "hd.h"

namespace claspe {

CLASPE_HD int64_t clipped_patch(int64_t dim, int64_t patch) { return patch < dim ? patch : dim; }

CLASPE_HD int64_t grid_dim(int64_t dim, int64_t patch, int64_t stride) {
  return (dim - clipped_patch(dim, patch)) / stride + 1;
}

CLASPE_HD int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}

// Candidate indices i (on one axis) whose box [i*s, i*s+pe) intersects [b, b+q) by >= 1 voxel:
// i*s < b+q  and  b < i*s + pe   <=>   floor((b-pe)/s) + 1 <= i <= floor((b+q-1)/s),
// clipped to [0, n-1].  Returns false when the range is empty.
CLASPE_HD bool blocked_range(int64_t b, int64_t q, int64_t pe, int64_t s, int64_t n, int64_t* lo, int64_t* hi) {
  int64_t l = floor_div(b - pe, s) + 1;
  int64_t h = floor_div(b + q - 1, s);
  if (l < 0) l = 0;
  if (h > n - 1) h = n - 1;
  *lo = l;
  *hi = h;
  return l <= h;
}

// Tie-break rule of the selection: higher score first, then lower flat index.  rank_key maps
// (score, flat index) to an unsigned 64-bit key whose ascending order is exactly that ranking
// (-inf ranks after every finite score; -0.0 and +0.0 are the same score; NaN/+inf are rejected
// before).  Flat indices must be < 2^32.
CLASPE_HD uint64_t rank_key(float score, uint32_t flat_index) {
  uint32_t u = float_bits(score);
  if (u == 0x80000000u) u = 0;  // -0.0 == +0.0
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // monotone in the score
  const uint32_t descending = ~ascending;
  return (static_cast<uint64_t>(descending) << 32) | flat_index;
}

CLASPE_HD uint32_t rank_key_index(uint64_t key) { return static_cast<uint32_t>(key); }

}  // namespace claspe
