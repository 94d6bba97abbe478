// Power noise (see engine.h and common/philox.h).
#include "common/philox.h"
#include "cpu/engine.h"

namespace claspe {
namespace cpu {

// Below this many elements a kernel runs on the calling thread: waking the OpenMP team costs more
// than the work, and much more on a loaded machine (results do not depend on it).
constexpr int64_t kParallelMinWork = 1 << 16;

void power_noise(const float* scores, int64_t n, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
                 double beta, float* out) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i)
    out[i] = power_noised(scores[i], gumbel_at(seed, loop, image, key, static_cast<uint32_t>(i)), beta);
}

void log_plus_noise(const float* scores, const double* noise, int64_t n, float* out) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) out[i] = claspe::log_plus_noise(scores[i], noise[i]);
}

}  // namespace cpu
}  // namespace claspe
