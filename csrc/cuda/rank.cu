// Candidate ranking on the GPU: per key, every candidate gets the 64-bit rank_key (common/grid.h:
// higher score first, then lower flat index; ascending key order = ranking order) and the keys are
// sorted with one CUB radix sort per key.  The greedy non-overlap walk over the sorted list runs on
// the host (bindings_cuda.cpp) over a short prefix that is copied back in chunks.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/grid.h"
#include "cuda/device_util.cuh"
#include "cuda/engine.h"

namespace claspe {
namespace cuda {

// Rank key of candidate i of key k; sets *bad for NaN / +inf (shared by the kernel and the emulation).
CLASPE_KHD uint64_t rank_elem(const View& sc, int64_t k, int64_t i, unsigned* bad) {
  const float f = load_f(sc, k * channel_stride(sc) + offset3(sc, i));
  if (f != f || f == bits_float(0x7f800000u)) *bad = 1;
  return rank_key(f, static_cast<uint32_t>(i));
}

__global__ void k_rank_keys(View sc, int64_t k, int64_t n, uint64_t* __restrict__ keys, unsigned* bad) {
  unsigned b = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    keys[i] = rank_elem(sc, k, i, &b);
  if (b) atomicOr(bad, 1u);
}

namespace {
struct AsyncBuffer {  // stream-ordered scratch memory, freed on the same stream
  void* p = nullptr;
  cudaStream_t st;
  AsyncBuffer(size_t bytes, cudaStream_t s) : st(s) {
    check_cuda(cudaMallocAsync(&p, bytes ? bytes : 1, st), "cudaMallocAsync");
  }
  ~AsyncBuffer() {
    if (p) cudaFreeAsync(p, st);
  }
  AsyncBuffer(const AsyncBuffer&) = delete;
  AsyncBuffer& operator=(const AsyncBuffer&) = delete;
};
}  // namespace

bool rank_candidates(const DevArray& scores, uintptr_t keys_out, int device, uintptr_t stream) {
  const int64_t K = scores.shape[0];
  const int64_t n = scores.shape[1] * scores.shape[2] * scores.shape[3];
  if (n >= (int64_t(1) << 32)) throw std::invalid_argument("more than 2**32 candidate positions");
  if (n > INT32_MAX) throw std::invalid_argument("candidate grid too large for one sort");
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  const View v = make_view(scores);
  uint64_t* out = reinterpret_cast<uint64_t*>(keys_out);
  size_t temp_bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, static_cast<const uint64_t*>(nullptr),
                                            static_cast<uint64_t*>(nullptr), static_cast<int>(n), 0, 64, st),
             "cub::DeviceRadixSort (size query)");
  AsyncBuffer keys_in(static_cast<size_t>(n) * sizeof(uint64_t), st);
  AsyncBuffer temp(temp_bytes, st);
  AsyncBuffer bad(sizeof(unsigned), st);
  check_cuda(cudaMemsetAsync(bad.p, 0, sizeof(unsigned), st), "cudaMemsetAsync");
  for (int64_t k = 0; k < K; ++k) {
    k_rank_keys<<<blocks_for(n), kThreads, 0, st>>>(v, k, n, static_cast<uint64_t*>(keys_in.p),
                                                     static_cast<unsigned*>(bad.p));
    CLASPE_CHECK_LAUNCH("rank keys");
    size_t tb = temp_bytes;
    check_cuda(cub::DeviceRadixSort::SortKeys(temp.p, tb, static_cast<const uint64_t*>(keys_in.p), out + k * n,
                                              static_cast<int>(n), 0, 64, st),
               "cub::DeviceRadixSort::SortKeys");
  }
  unsigned h = 0;
  check_cuda(cudaMemcpyAsync(&h, bad.p, sizeof h, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(st), "cudaStreamSynchronize (rank)");
  return h != 0;
}

void copy_keys_to_host(uintptr_t keys, int64_t offset, int64_t count, uint64_t* dst, int device, uintptr_t stream) {
  if (count <= 0) return;
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  check_cuda(cudaMemcpyAsync(dst, reinterpret_cast<const uint64_t*>(keys) + offset, count * sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, st),
             "cudaMemcpyAsync (keys)");
  check_cuda(cudaStreamSynchronize(st), "cudaStreamSynchronize (keys)");
}

void copy_key_prefixes_to_host(uintptr_t keys, int64_t K, int64_t n, int64_t count, uint64_t* dst, int device,
                               uintptr_t stream) {
  if (count <= 0 || K <= 0) return;
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  const size_t w = static_cast<size_t>(count) * sizeof(uint64_t);
  check_cuda(cudaMemcpy2DAsync(dst, w, reinterpret_cast<const uint64_t*>(keys), static_cast<size_t>(n) * sizeof(uint64_t),
                               w, static_cast<size_t>(K), cudaMemcpyDeviceToHost, st),
             "cudaMemcpy2DAsync (keys)");
  check_cuda(cudaStreamSynchronize(st), "cudaStreamSynchronize (keys)");
}

bool emulate_rank_candidates(const DevArray& scores, uint64_t* keys_out) {
  const int64_t K = scores.shape[0];
  const int64_t n = scores.shape[1] * scores.shape[2] * scores.shape[3];
  if (n >= (int64_t(1) << 32)) throw std::invalid_argument("more than 2**32 candidate positions");
  const View v = make_view(scores);
  unsigned bad = 0;
  for (int64_t k = 0; k < K; ++k) {
    uint64_t* row = keys_out + k * n;
    for (int64_t i = 0; i < n; ++i) row[i] = rank_elem(v, k, i, &bad);
    std::sort(row, row + n);  // the device path sorts the same keys with cub::DeviceRadixSort
  }
  return bad != 0;
}

}  // namespace cuda
}  // namespace claspe
