// CPU query engine (C++17, OpenMP).  Called from csrc/bindings.cpp with the GIL released.
//
// Arrays come in as View4: a 4-d strided view (byte strides, any sign/order) of float32 or float16
// data.  3-d arrays are passed with a leading axis of extent 1.  Volumes are [C, X, Y, Z].
// All kernels are deterministic: each output element is computed by one thread with the
// arithmetic of claspe/reference.py, so results are identical for any thread count.
//
// Errors: the kernels trust their inputs' shapes (validated in claspe/ops.py) and report data
// problems (NaN/Inf, probabilities outside [0, 1] +- tol, |sum_c p_c - 1| > tol) as flags
// (csrc/common/scores.h CheckFlag) plus the largest sum deviation; they never throw from inside
// parallel regions.
#pragma once

#include <stdint.h>

#include <vector>

namespace claspe {
namespace cpu {

enum DType : int { kF32 = 0, kF16 = 1 };

struct View4 {
  const char* data = nullptr;
  int64_t shape[4] = {1, 1, 1, 1};
  int64_t strides[4] = {0, 0, 0, 0};  // bytes
  int dtype = kF32;
};

struct CheckResult {
  int flags = 0;        // CheckFlag bits
  float maxdev = 0.0f;  // max |sum_c p_c - 1| over voxels (probability checks only)
};

struct ScoreSpec {
  int kind = 0;              // ScoreKind
  std::vector<int> classes;  // channels for kScoreClassPE
  int n_maps() const { return kind == 1 ? static_cast<int>(classes.size()) + 1 : 1; }
};

struct BoxSpec {
  int64_t patch[3];   // clipped patch (min(patch, dim)) per axis
  int64_t stride[3];  // > 0
  int64_t grid[3];    // candidates per axis
};

BoxSpec make_box_spec(const int64_t dims[3], const int64_t patch[3], const int64_t stride[3]);

// --- validation ------------------------------------------------------------------------------
// Probabilities [C, X, Y, Z]: finite, in [-tol, 1+tol], |sum_c p_c - 1| <= tol (float32 sum over c).
CheckResult check_probs(const View4& p, float tol);
// Any array: all finite.
CheckResult check_finite(const View4& a);

// --- fold accumulation -----------------------------------------------------------------------
// Adds one fold [C, X, Y, Z] (probabilities, or logits with the softmax fused) to the running sum
// `sum` (float32, contiguous [C, X, Y, Z]) and, if `entsum` is not null, its entropy to `entsum`
// (float32 contiguous [X, Y, Z]).  `first`: the sums are (re)initialised to 0 + fold.
// Two passes: the whole fold is validated first; on any problem nothing is written and the flags
// are returned, so the accumulator stays unchanged.
CheckResult fold_add(const View4& fold, bool logits, float tol, float* sum, float* entsum, bool first);

// --- score maps --------------------------------------------------------------------------------
// Score maps [K, X, Y, Z] (contiguous float32 `out`) from fold sums `sum` [C, X, Y, Z], fold
// entropy sum `entsum` [1, X, Y, Z] (may be null unless the score needs it) and fold count n.
void acc_maps(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, float* out);

// --- box mean ------------------------------------------------------------------------------------
// The box mean runs in three passes (reference.box_mean): along Z and Y per x-plane ("plane
// passes", fused with the map producer so that full-size score maps never exist), then along X.
// Plane passes write rows x0..x1-1 of t2, a contiguous double array [K, X, ny, nz] of window sums.
void box_planes_maps(const View4& maps, const BoxSpec& box, int64_t x0, int64_t x1, double* t2);
void box_planes_acc(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, const BoxSpec& box,
                    int64_t x0, int64_t x1, double* t2);
// Multi-fold fused path: the M folds are read block-wise (each input byte once), softmax (logits),
// validated, summed in fold order, entropy'd and box-filtered.  Returns one CheckResult per fold;
// when any has flags set, t2 rows x0..x1-1 are garbage and the caller must raise.
std::vector<CheckResult> box_planes_folds(const std::vector<View4>& folds, bool logits, float tol,
                                          const ScoreSpec& spec, const BoxSpec& box, int64_t x0, int64_t x1,
                                          double* t2);
// X pass: out [K, nx, ny, nz] float32 = float32((window sum over x) / volume).
void box_x_pass(const double* t2, int64_t K, int64_t X, const BoxSpec& box, float* out);

// --- noise -----------------------------------------------------------------------------------------
// out[i] = float32(log(s[i]) + gumbel(seed, loop, image, key, i) / beta)     (common/philox.h)
void power_noise(const float* scores, int64_t n, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
                 double beta, float* out);
// out[i] = float32(log(s[i]) + noise[i])
void log_plus_noise(const float* scores, const double* noise, int64_t n, float* out);

// --- selection ---------------------------------------------------------------------------------------
struct Box {
  int64_t start[3];
  int64_t size[3];
};
struct KeySelection {
  std::vector<int64_t> starts;  // n_k * 3
  std::vector<float> scores;    // n_k
};
// scores: contiguous float32 [K, gx, gy, gz] (no NaN/+inf).  Greedy non-overlapping top quotas[k]
// per key in key order; ranking by common/grid.h rank_key; blocked boxes and earlier picks block
// candidates through a mask over the candidate grid (O(1) test per candidate).
std::vector<KeySelection> select_patches(const float* scores, int64_t K, const BoxSpec& box,
                                         const std::vector<int64_t>& quotas, const std::vector<Box>& blocked);

// --- threads -------------------------------------------------------------------------------------
void set_num_threads(int n);
int get_num_threads();

}  // namespace cpu
}  // namespace claspe
