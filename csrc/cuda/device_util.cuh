// Device-side helpers of the CUDA engine: strided views, loads, launch configuration, error checks.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/hd.h"
#include "cuda/engine.h"

namespace claspe {
namespace cuda {

// Kernel-side copy of a DevArray (passed by value).
struct View {
  const void* p;
  int dtype;
  int64_t n[4];
  int64_t s[4];
  bool contig;
};

inline View make_view(const DevArray& a) {
  View v;
  v.p = reinterpret_cast<const void*>(a.ptr);
  v.dtype = a.dtype;
  for (int i = 0; i < 4; ++i) {
    v.n[i] = a.shape[i];
    v.s[i] = a.strides[i];
  }
  v.contig = a.contiguous;
  return v;
}

// Host+device: the kernel bodies below are also run on the host by the emulation entry points
// (engine.h), which the CPU test suite uses to check the kernels' indexing and arithmetic on machines
// without a GPU.
#define CLASPE_KHD __host__ __device__ __forceinline__

// float16 element -> float (exact).  Device: hardware conversion; host: common/hd.h half_to_float.
CLASPE_KHD float half_at(const void* p, int64_t off) {
#if defined(__CUDA_ARCH__)
  return __half2float(reinterpret_cast<const __half*>(p)[off]);
#else
  return half_to_float(reinterpret_cast<const uint16_t*>(p)[off]);
#endif
}

// float value of element `off` (f16 -> f32 is exact; f64 is rounded to nearest float, as numpy's
// astype(float32) does).
CLASPE_KHD float load_f(const View& v, int64_t off) {
  switch (v.dtype) {
    case kF16:
      return half_at(v.p, off);
    case kF64:
      return static_cast<float>(reinterpret_cast<const double*>(v.p)[off]);
    default:
      return reinterpret_cast<const float*>(v.p)[off];
  }
}

// double value of element `off` (exact widening for f16/f32).
CLASPE_KHD double load_d(const View& v, int64_t off) {
  switch (v.dtype) {
    case kF16:
      return static_cast<double>(half_at(v.p, off));
    case kF64:
      return reinterpret_cast<const double*>(v.p)[off];
    default:
      return static_cast<double>(reinterpret_cast<const float*>(v.p)[off]);
  }
}

// Offset of flat C-order index i over all 4 (padded) dims.
CLASPE_KHD int64_t offset4(const View& v, int64_t i) {
  if (v.contig) return i;
  const int64_t z = i % v.n[3];
  int64_t t = i / v.n[3];
  const int64_t y = t % v.n[2];
  t /= v.n[2];
  const int64_t x = t % v.n[1];
  const int64_t c = t / v.n[1];
  return c * v.s[0] + x * v.s[1] + y * v.s[2] + z * v.s[3];
}

// Offset of flat spatial index i over dims 1..3 (axis 0 = channel, not included).
CLASPE_KHD int64_t offset3(const View& v, int64_t i) {
  if (v.contig) return i;
  const int64_t z = i % v.n[3];
  const int64_t t = i / v.n[3];
  const int64_t y = t % v.n[2];
  const int64_t x = t / v.n[2];
  return x * v.s[1] + y * v.s[2] + z * v.s[3];
}

// Stride of axis 0 in elements (for contiguous views: the product of the other dims).
CLASPE_KHD int64_t channel_stride(const View& v) {
  return v.contig ? v.n[1] * v.n[2] * v.n[3] : v.s[0];
}

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > 65535) b = 65535;  // grid-stride loops cover the rest
  return static_cast<unsigned int>(b);
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

// Sets the current device for the lifetime of the guard, restores the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

#define CLASPE_CHECK_LAUNCH(name) ::claspe::cuda::check_cuda(cudaGetLastError(), name)

}  // namespace cuda
}  // namespace claspe
