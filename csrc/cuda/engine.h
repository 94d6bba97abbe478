// CUDA engine of claspe._C: host-side launchers (plain C++ declarations, no CUDA headers needed).
//
// Every launcher takes device pointers that Python obtained from __cuda_array_interface__ (torch CUDA
// tensors, CuPy arrays; DLPack producers via torch.from_dlpack), runs on the given device and on
// the caller's stream (a cudaStream_t passed as an integer: 0 legacy default, 1 cudaStreamLegacy,
// 2 cudaStreamPerThread, or a stream handle), and does not synchronize unless it says so.  Output
// and scratch buffers are allocated by the caller (Python, with the input's own library so its
// caching allocator and stream semantics apply) and are C-contiguous.  Inputs may be strided.
//
// The arithmetic is the contract of claspe/reference.py, operation by operation, using the shared
// CLASPE_HD functions of csrc/common (portable log/exp, plogp, Philox, rank_key), compiled with
// --fmad=false: results are bit-identical to the CPU engine and the NumPy reference.
//
// Errors: CUDA failures throw std::runtime_error naming the call (pybind11 -> RuntimeError).  Input
// validation (dtype, shape, NaN, devices) is done in Python (claspe/_cuda.py), using check_values()
// for the value checks that need the data.
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

namespace claspe {
namespace cuda {

enum DType : int { kF32 = 0, kF16 = 1, kF64 = 2 };

// A strided view of GPU memory with up to 4 dimensions, padded at the front with size-1 axes
// (stride 0).  Strides are in elements.  `contiguous` is true for C-contiguous data (then
// strides are ignored and offsets equal flat indices).
struct DevArray {
  uintptr_t ptr = 0;
  int dtype = kF32;
  int ndim = 0;  // before padding
  int64_t shape[4] = {1, 1, 1, 1};
  int64_t strides[4] = {0, 0, 0, 0};
  bool contiguous = true;
  int64_t size() const { return shape[0] * shape[1] * shape[2] * shape[3]; }
};

// ---- device / runtime queries ------------------------------------------------------------------
// Number of usable devices; 0 (and the reason in *why) when there is no driver or no GPU.
int device_count(std::string* why);
// Device ordinal of a device (or managed) pointer; -1 when the pointer is host memory or unknown.
int pointer_device(uintptr_t ptr);
std::string runtime_version();
std::string driver_version();
void stream_synchronize(int device, uintptr_t stream);

// ---- value checks (one pass; synchronizes the stream to read the result back) ------------------
struct CheckResult {
  bool nan = false, posinf = false, neginf = false;
  bool below = false;  // some value < lo
  bool above = false;  // some value > hi
  float max_sum_dev = 0.0f;  // max over positions of |sum over axis 0 - 1| (only with sum_axis0)
};
// Checks every element of `a`; with sum_axis0, also the per-position sum over axis 0 (computed in
// float32, sequentially over the axis, like ops._check_probabilities).
CheckResult check_values(const DevArray& a, double lo, double hi, bool sum_axis0, int device, uintptr_t stream);

// ---- kernels -------------------------------------------------------------------------------------
// Adds one fold [C, X, Y, Z] (f32/f16) out of place and checks it in the same pass:
//   new_sum[c, v] = old_sum[c, v] + p_c(v),  p = softmax(fold) when logits else fold
//   new_ent[v]    = old_ent[v] + H(p(v))     (when new_ent != 0)
// old_sum/old_ent == 0 means the first fold (0 + p).  sum: float32 [C, X*Y*Z], ent: float32 [X*Y*Z],
// C-contiguous.  Returns the checks of the fold (NaN/Inf always; for probabilities also values
// outside [lo, hi] and the max |channel sum - 1|); synchronizes the stream to read them.  When a
// check fails the caller discards new_sum/new_ent, so the accumulator stays unchanged while every
// fold is read only once.
CheckResult accumulate_fold(const DevArray& fold, uintptr_t old_sum, uintptr_t new_sum, uintptr_t old_ent,
                            uintptr_t new_ent, bool logits, float lo, float hi, int device, uintptr_t stream);

enum ScoreKind : int { kPE = 0, kClassPE = 1, kBALD = 2, kExpectedEntropy = 3 };
// out [K, X, Y, Z] float32 from mean = src / src_div ([C, X, Y, Z], f32/f16) and, for BALD/expected
// entropy, mfe = mfe_src / mfe_div ([X, Y, Z], f32/f16).  K = 1, or len(classes) + 1 for class_pe.
void score_maps(const DevArray& src, float src_div, int kind, const std::vector<int>& classes,
                const DevArray* mfe, float mfe_div, uintptr_t out, int device, uintptr_t stream);

// out[i] = in[i] / div (float32, IEEE division), n elements, contiguous.
void divide(uintptr_t in, float div, uintptr_t out, int64_t n, int device, uintptr_t stream);

// Valid-mode box mean of maps [K, X, Y, Z] at stride positions -> out float32 [K, nx, ny, nz].
// Scratch: t1 float64 [K, X, Y, nz], t2 float64 [K, X, ny, nz].  patch is clipped here.
void box_mean(const DevArray& maps, const int64_t patch[3], const int64_t stride[3], uintptr_t t1, uintptr_t t2,
              uintptr_t out, int device, uintptr_t stream);

// out = float32(log(s) + g / beta) with Philox Gumbel g at the flat C-order position, or
// float32(log(s) + noise) when noise != nullptr.  scores and noise: up to 4 dims, same shape.
void power_noise(const DevArray& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
                 const DevArray* noise, uintptr_t out, int device, uintptr_t stream);

// ---- candidate ranking -----------------------------------------------------------------------
// Sorts the candidates of every key of scores [K, n] (any float dtype, strided 4-D view with the
// grid flattened) by rank_key (higher score, then lower flat index) into keys_out uint64 [K, n]
// (caller-allocated).  Returns true when some score is NaN or +inf (then keys_out is unspecified).
// Synchronizes the stream.
bool rank_candidates(const DevArray& scores, uintptr_t keys_out, int device, uintptr_t stream);

// Copies count uint64 keys from device (keys + offset) into host memory `dst` and synchronizes.
void copy_keys_to_host(uintptr_t keys, int64_t offset, int64_t count, uint64_t* dst, int device, uintptr_t stream);
// Copies the first `count` sorted keys of each of the K rows of keys [K, n] into dst [K, count] (one
// 2-D copy) and synchronizes.
void copy_key_prefixes_to_host(uintptr_t keys, int64_t K, int64_t n, int64_t count, uint64_t* dst, int device,
                               uintptr_t stream);

// ---- host emulation ----------------------------------------------------------------------------
// The kernels' per-element bodies (the same __host__ __device__ functions the kernels call), run
// sequentially on *host* memory.  They let the CPU test suite check the CUDA code's indexing,
// strides and arithmetic against claspe/reference.py on machines without a GPU; the launch
// configuration, the device memory handling and the CUB sort (replaced by std::sort of the same
// keys) are only exercised on a GPU (tests marked `gpu`).
CheckResult emulate_accumulate_fold(const DevArray& fold, const float* old_sum, float* new_sum, const float* old_ent,
                                    float* new_ent, bool logits, float lo, float hi);
void emulate_score_maps(const DevArray& src, float src_div, int kind, const std::vector<int>& classes,
                        const DevArray* mfe, float mfe_div, float* out);
void emulate_box_mean(const DevArray& maps, const int64_t patch[3], const int64_t stride[3], float* out);
void emulate_power_noise(const DevArray& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image,
                         uint32_t key, const DevArray* noise, float* out);
bool emulate_rank_candidates(const DevArray& scores, uint64_t* keys_out);

}  // namespace cuda
}  // namespace claspe
