// Greedy non-overlapping top-n selection per key (see engine.h).
//
// Overlap test: a byte mask over the candidate grid; when a box is taken (or given as blocked),
// every candidate whose box would intersect it is marked (a rectangular range of grid positions,
// common/grid.h blocked_range), so testing a candidate is one load.  Ranking without sorting the
// whole grid: the unmasked candidates' rank keys (common/grid.h rank_key) are partitioned with
// nth_element into a batch of the best B, which is sorted and walked; if the quota is not met the
// next batch is taken from the rest (B doubles each time).  Keys are unique (they contain the flat
// index), so the walk order equals a full sort's.
#include <algorithm>
#include <vector>

#include "common/grid.h"
#include "cpu/engine.h"

namespace claspe {
namespace cpu {
namespace {

void mark(std::vector<uint8_t>& mask, const BoxSpec& box, const int64_t start[3], const int64_t size[3]) {
  int64_t lo[3], hi[3];
  for (int a = 0; a < 3; ++a)
    if (!blocked_range(start[a], size[a], box.patch[a], box.stride[a], box.grid[a], &lo[a], &hi[a])) return;
  const int64_t gy = box.grid[1], gz = box.grid[2];
  for (int64_t i = lo[0]; i <= hi[0]; ++i)
    for (int64_t j = lo[1]; j <= hi[1]; ++j) {
      uint8_t* row = mask.data() + (i * gy + j) * gz;
      std::fill(row + lo[2], row + hi[2] + 1, uint8_t(1));
    }
}

}  // namespace

std::vector<KeySelection> select_patches(const float* scores, int64_t K, const BoxSpec& box,
                                         const std::vector<int64_t>& quotas, const std::vector<Box>& blocked) {
  const int64_t gy = box.grid[1], gz = box.grid[2];
  const int64_t n = box.grid[0] * gy * gz;
  std::vector<uint8_t> mask(n, 0);
  for (const Box& b : blocked) mark(mask, box, b.start, b.size);
  std::vector<KeySelection> out(K);
  std::vector<uint64_t> keys;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t quota = quotas[k];
    if (quota <= 0) continue;
    const float* s = scores + k * n;
    keys.clear();
    for (int64_t i = 0; i < n; ++i)
      if (!mask[i]) keys.push_back(rank_key(s[i], static_cast<uint32_t>(i)));
    const size_t m = keys.size();
    size_t begin = 0, batch = static_cast<size_t>(std::max<int64_t>(64, 4 * quota));
    int64_t taken = 0;
    while (taken < quota && begin < m) {
      const size_t end = std::min(m, begin + batch);
      if (end < m) std::nth_element(keys.begin() + begin, keys.begin() + end, keys.end());
      std::sort(keys.begin() + begin, keys.begin() + end);
      for (size_t t = begin; t < end && taken < quota; ++t) {
        const int64_t i = rank_key_index(keys[t]);
        if (mask[i]) continue;
        const int64_t g[3] = {i / (gy * gz), (i / gz) % gy, i % gz};
        const int64_t st[3] = {g[0] * box.stride[0], g[1] * box.stride[1], g[2] * box.stride[2]};
        out[k].starts.insert(out[k].starts.end(), st, st + 3);
        out[k].scores.push_back(s[i]);
        mark(mask, box, st, box.patch);
        ++taken;
      }
      begin = end;
      batch *= 2;
    }
  }
  return out;
}

}  // namespace cpu
}  // namespace claspe
