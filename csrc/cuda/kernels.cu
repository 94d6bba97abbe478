// CUDA kernels of the query engine: value checks, fold accumulation (fused softmax), score maps,
// box mean at stride positions, Philox power noise.  Arithmetic = claspe/reference.py (see engine.h).
//
// Parallelization keeps every reduction order of the reference: one thread per voxel for the channel
// loops (channels summed sequentially c = 0..C-1), one thread per line for the box-mean prefix sums
// (sequential along the line, float64), elementwise for the noise.  Nothing is reduced across
// threads except the boolean/max results of check_values, whose order does not matter.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/philox.h"
#include "common/portable_math.h"
#include "common/scores.h"
#include "cuda/device_util.cuh"
#include "cuda/engine.h"

namespace claspe {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// runtime queries
// ---------------------------------------------------------------------------------------------

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    return 0;
  }
  if (why) why->clear();
  return n;
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

std::string runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return "unknown";
  }
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

std::string driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess || v == 0) {
    cudaGetLastError();
    return "none";
  }
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

void stream_synchronize(int device, uintptr_t stream) {
  DeviceGuard g(device);
  check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

// ---------------------------------------------------------------------------------------------
// value checks
// ---------------------------------------------------------------------------------------------

enum CheckFlag : unsigned { kNaN = 1u, kPosInf = 2u, kNegInf = 4u, kBelow = 8u, kAbove = 16u };

__global__ void k_check(View a, int64_t npos, int64_t nchan, bool sum_axis0, double lo, double hi,
                        unsigned* flags, unsigned* maxdev_bits) {
  unsigned f = 0;
  float dev = 0.0f;
  const int64_t cs = channel_stride(a);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < npos;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = sum_axis0 ? offset3(a, i) : offset4(a, i);
    float s = 0.0f;
    for (int64_t c = 0; c < nchan; ++c) {
      const double x = load_d(a, base + c * cs);
      if (x != x) {
        f |= kNaN;
      } else if (isinf(x)) {
        f |= (x > 0) ? kPosInf : kNegInf;
      }
      if (x < lo) f |= kBelow;
      if (x > hi) f |= kAbove;
      s = s + static_cast<float>(x);
    }
    if (sum_axis0) {
      const float d = fabsf(s - 1.0f);
      if (d > dev || d != d) dev = (d != d) ? __int_as_float(0x7f800000) : d;
    }
  }
  if (f) atomicOr(flags, f);
  if (sum_axis0 && dev > 0.0f) atomicMax(maxdev_bits, __float_as_uint(dev));
}

CheckResult check_values(const DevArray& arr, double lo, double hi, bool sum_axis0, int device, uintptr_t stream) {
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  const View a = make_view(arr);
  const int64_t nchan = sum_axis0 ? arr.shape[0] : 1;
  const int64_t npos = sum_axis0 ? arr.shape[1] * arr.shape[2] * arr.shape[3] : arr.size();
  unsigned* d = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&d), 2 * sizeof(unsigned), st), "cudaMallocAsync");
  unsigned h[2] = {0, 0};
  cudaError_t err = cudaMemsetAsync(d, 0, 2 * sizeof(unsigned), st);
  if (err == cudaSuccess) {
    k_check<<<blocks_for(npos), kThreads, 0, st>>>(a, npos, nchan, sum_axis0, lo, hi, d, d + 1);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, st);
  cudaFreeAsync(d, st);
  if (err == cudaSuccess) err = cudaStreamSynchronize(st);
  check_cuda(err, "check_values");
  CheckResult r;
  r.nan = h[0] & kNaN;
  r.posinf = h[0] & kPosInf;
  r.neginf = h[0] & kNegInf;
  r.below = h[0] & kBelow;
  r.above = h[0] & kAbove;
  float dev;
  memcpy(&dev, &h[1], sizeof dev);
  r.max_sum_dev = dev;
  return r;
}

// ---------------------------------------------------------------------------------------------
// fold accumulation with fused softmax
// ---------------------------------------------------------------------------------------------

template <typename T>
CLASPE_KHD float ld(const T* p, int64_t off);
template <>
CLASPE_KHD float ld<float>(const float* p, int64_t off) {
  return p[off];
}
template <>
CLASPE_KHD float ld<__half>(const __half* p, int64_t off) {
  return half_at(p, off);
}

// One voxel v of the fold accumulation with the fold's checks in the same pass (shared by the kernel
// and the host emulation).  new_sum = old_sum + p (old_sum == nullptr: the first fold, 0 + p), and
// new_ent = old_ent + H(p) with ENT.  The checks are those of ops._check_probabilities /
// ops._check_finite on the input values: NaN/Inf; for probabilities also each value against
// [lo, hi] and the float32 channel sum's distance to 1 (max over voxels in maxdev).
template <typename T, bool CONTIG, bool LOGITS, bool ENT>
CLASPE_KHD void accumulate_voxel(const View& f, int64_t v, int64_t N, int64_t C, const float* old_sum, float* new_sum,
                                 const float* old_ent, float* new_ent, float lo, float hi, unsigned& flags,
                                 float& maxdev) {
  const T* in = reinterpret_cast<const T*>(f.p);
  const int64_t cs = CONTIG ? N : f.s[0];
  const int64_t base = CONTIG ? v : offset3(f, v);
  const float kInf = bits_float(0x7f800000u);
  float chk = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float x = ld<T>(in, base + c * cs);
    if (x != x)
      flags |= kNaN;
    else if (x == kInf)
      flags |= kPosInf;
    else if (x == -kInf)
      flags |= kNegInf;
    if (!LOGITS) {
      if (x < lo) flags |= kBelow;
      if (x > hi) flags |= kAbove;
      chk = chk + x;
    }
  }
  if (!LOGITS) {
    const float d = fabsf(chk - 1.0f);
    if (d != d)
      maxdev = kInf;
    else if (d > maxdev)
      maxdev = d;
  }
  float h = 0.0f;
  if (LOGITS) {
    // reference.softmax: mx = max_c x_c; e_c = expf(x_c - mx); s = sum_c e_c; p_c = e_c / s.
    // e_c is recomputed in the second loop (same inputs, same bits) instead of being stored.
    float mx = ld<T>(in, base);
    for (int64_t c = 1; c < C; ++c) {
      const float x = ld<T>(in, base + c * cs);
      mx = (mx >= x) ? mx : x;
    }
    float s = 0.0f;
    for (int64_t c = 0; c < C; ++c) s = s + expf_portable(ld<T>(in, base + c * cs) - mx);
    for (int64_t c = 0; c < C; ++c) {
      const float p = expf_portable(ld<T>(in, base + c * cs) - mx) / s;
      new_sum[c * N + v] = (old_sum ? old_sum[c * N + v] : 0.0f) + p;
      if (ENT) h = h + plogp(p);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const float p = ld<T>(in, base + c * cs);
      new_sum[c * N + v] = (old_sum ? old_sum[c * N + v] : 0.0f) + p;
      if (ENT) h = h + plogp(p);
    }
  }
  if (ENT) new_ent[v] = (old_ent ? old_ent[v] : 0.0f) + (-h);
}

struct AccArgs {
  const float* old_sum;
  float* new_sum;
  const float* old_ent;
  float* new_ent;
  float lo, hi;
};

template <typename T, bool CONTIG, bool LOGITS, bool ENT>
__global__ void k_accumulate(View f, int64_t N, int64_t C, AccArgs a, unsigned* flags, unsigned* maxdev_bits) {
  unsigned fl = 0;
  float dev = 0.0f;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < N;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x)
    accumulate_voxel<T, CONTIG, LOGITS, ENT>(f, v, N, C, a.old_sum, a.new_sum, a.old_ent, a.new_ent, a.lo, a.hi, fl,
                                             dev);
  if (fl) atomicOr(flags, fl);
  if (dev > 0.0f) atomicMax(maxdev_bits, __float_as_uint(dev));
}

template <typename T, bool CONTIG>
static void launch_accumulate(const View& f, int64_t N, int64_t C, const AccArgs& a, bool logits, unsigned* d,
                              cudaStream_t st) {
  const unsigned nb = blocks_for(N);
  const bool ent = a.new_ent != nullptr;
  if (logits) {
    if (ent)
      k_accumulate<T, CONTIG, true, true><<<nb, kThreads, 0, st>>>(f, N, C, a, d, d + 1);
    else
      k_accumulate<T, CONTIG, true, false><<<nb, kThreads, 0, st>>>(f, N, C, a, d, d + 1);
  } else {
    if (ent)
      k_accumulate<T, CONTIG, false, true><<<nb, kThreads, 0, st>>>(f, N, C, a, d, d + 1);
    else
      k_accumulate<T, CONTIG, false, false><<<nb, kThreads, 0, st>>>(f, N, C, a, d, d + 1);
  }
}

static CheckResult to_result(unsigned fl, unsigned devbits) {
  CheckResult r;
  r.nan = fl & kNaN;
  r.posinf = fl & kPosInf;
  r.neginf = fl & kNegInf;
  r.below = fl & kBelow;
  r.above = fl & kAbove;
  float dev;
  memcpy(&dev, &devbits, sizeof dev);
  r.max_sum_dev = dev;
  return r;
}

CheckResult accumulate_fold(const DevArray& fold, uintptr_t old_sum, uintptr_t new_sum, uintptr_t old_ent,
                            uintptr_t new_ent, bool logits, float lo, float hi, int device, uintptr_t stream) {
  if (fold.dtype != kF32 && fold.dtype != kF16) throw std::invalid_argument("fold must be float32 or float16");
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  const View f = make_view(fold);
  const int64_t C = fold.shape[0];
  const int64_t N = fold.shape[1] * fold.shape[2] * fold.shape[3];
  AccArgs a{reinterpret_cast<const float*>(old_sum), reinterpret_cast<float*>(new_sum),
            reinterpret_cast<const float*>(old_ent), reinterpret_cast<float*>(new_ent), lo, hi};
  unsigned* d = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&d), 2 * sizeof(unsigned), st), "cudaMallocAsync");
  unsigned h[2] = {0, 0};
  cudaError_t err = cudaMemsetAsync(d, 0, 2 * sizeof(unsigned), st);
  if (err == cudaSuccess) {
    if (fold.dtype == kF16) {
      if (f.contig)
        launch_accumulate<__half, true>(f, N, C, a, logits, d, st);
      else
        launch_accumulate<__half, false>(f, N, C, a, logits, d, st);
    } else {
      if (f.contig)
        launch_accumulate<float, true>(f, N, C, a, logits, d, st);
      else
        launch_accumulate<float, false>(f, N, C, a, logits, d, st);
    }
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, st);
  cudaFreeAsync(d, st);
  if (err == cudaSuccess) err = cudaStreamSynchronize(st);
  check_cuda(err, "accumulate_fold");
  return to_result(h[0], h[1]);
}

// ---------------------------------------------------------------------------------------------
// score maps
// ---------------------------------------------------------------------------------------------

constexpr int kMaxClasses = 512;
struct ClassList {
  int n;
  int c[kMaxClasses];
};

CLASPE_KHD void score_voxel(const View& src, int64_t v, int64_t N, int64_t C, float div, int kind,
                            const ClassList& cls, const View& mfe, float mfe_div, float* out) {
  const int64_t cs = channel_stride(src);
  const int64_t base = offset3(src, v);
  float pe = 0.0f;
  if (kind != kExpectedEntropy) {
    float h = 0.0f;  // reference.entropy: h = sum_c plogp(p_c), sequential; PE = -h
    for (int64_t c = 0; c < C; ++c) h = h + plogp(load_f(src, base + c * cs) / div);
    pe = -h;
  }
  switch (kind) {
    case kPE:
      out[v] = pe;
      break;
    case kClassPE:
      for (int j = 0; j < cls.n; ++j) out[j * N + v] = pe * (load_f(src, base + cls.c[j] * cs) / div);
      out[cls.n * N + v] = pe;
      break;
    case kBALD: {
      out[v] = bald_score(pe, load_f(mfe, offset3(mfe, v)) / mfe_div);  // common/scores.h
      break;
    }
    default:  // expected entropy
      out[v] = load_f(mfe, offset3(mfe, v)) / mfe_div;
      break;
  }
}

__global__ void k_score_maps(View src, int64_t N, int64_t C, float div, int kind, ClassList cls, View mfe,
                             float mfe_div, float* __restrict__ out) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < N;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x)
    score_voxel(src, v, N, C, div, kind, cls, mfe, mfe_div, out);
}

void score_maps(const DevArray& src, float src_div, int kind, const std::vector<int>& classes, const DevArray* mfe,
                float mfe_div, uintptr_t out, int device, uintptr_t stream) {
  if (kind < kPE || kind > kExpectedEntropy) throw std::invalid_argument("unknown score kind");
  if (static_cast<int>(classes.size()) > kMaxClasses)
    throw std::invalid_argument("class_pe supports at most " + std::to_string(kMaxClasses) + " classes");
  if ((kind == kBALD || kind == kExpectedEntropy) && mfe == nullptr)
    throw std::invalid_argument("bald / expected_entropy need the mean fold entropy");
  ClassList cl;
  cl.n = kind == kClassPE ? static_cast<int>(classes.size()) : 0;
  for (int j = 0; j < cl.n; ++j) cl.c[j] = classes[j];
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  const View s = make_view(src);
  const View m = mfe ? make_view(*mfe) : s;
  const int64_t N = src.shape[1] * src.shape[2] * src.shape[3];
  k_score_maps<<<blocks_for(N), kThreads, 0, st>>>(s, N, src.shape[0], src_div, kind, cl, m, mfe_div,
                                                    reinterpret_cast<float*>(out));
  CLASPE_CHECK_LAUNCH("score_maps");
}

__global__ void k_divide(const float* __restrict__ in, float div, float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = in[i] / div;
}

void divide(uintptr_t in, float div, uintptr_t out, int64_t n, int device, uintptr_t stream) {
  DeviceGuard g(device);
  k_divide<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(reinterpret_cast<const float*>(in), div,
                                                               reinterpret_cast<float*>(out), n);
  CLASPE_CHECK_LAUNCH("divide");
}

// ---------------------------------------------------------------------------------------------
// box mean: per axis Z, Y, X, sequential float64 prefix sums along each line (reference.box_mean)
// ---------------------------------------------------------------------------------------------
// A line's prefix sum P is evaluated twice by running sums that advance in lockstep: `lead` at the
// window end and `lag` at the window start.  Both repeat the reference's sequential additions
// P[j+1] = P[j] + v[j] from P[0] = 0, so P[i*s + p] - P[i*s] has exactly the reference's bits
// without storing P.

CLASPE_KHD void box_z_line(const View& m, int64_t l, int64_t Z, int64_t p, int64_t s, int64_t nz, double* out) {
  int64_t base, sz;
  if (m.contig) {
    base = l * Z;
    sz = 1;
  } else {
    const int64_t y = l % m.n[2];
    const int64_t t = l / m.n[2];
    const int64_t x = t % m.n[1];
    const int64_t k = t / m.n[1];
    base = k * m.s[0] + x * m.s[1] + y * m.s[2];
    sz = m.s[3];
  }
  double lead = 0.0, lag = 0.0;
  int64_t jd = 0, jl = 0;
  for (int64_t i = 0; i < nz; ++i) {
    const int64_t st = i * s;
    const int64_t en = st + p;
    for (; jl < st; ++jl) lag = lag + load_d(m, base + jl * sz);
    for (; jd < en; ++jd) lead = lead + load_d(m, base + jd * sz);
    out[l * nz + i] = lead - lag;
  }
}

template <bool FINAL>
CLASPE_KHD void box_line(const double* in, int64_t l, int64_t inner, int64_t D, int64_t p, int64_t s, int64_t n,
                         double* out, float* outf, double vol) {
  const int64_t r = l % inner;
  const int64_t o = l / inner;
  const double* line = in + o * D * inner + r;
  const int64_t obase = o * n * inner + r;
  double lead = 0.0, lag = 0.0;
  int64_t jd = 0, jl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t st = i * s;
    const int64_t en = st + p;
    for (; jl < st; ++jl) lag = lag + line[jl * inner];
    for (; jd < en; ++jd) lead = lead + line[jd * inner];
    const double w = lead - lag;
    if (FINAL)
      outf[obase + i * inner] = static_cast<float>(w / vol);
    else
      out[obase + i * inner] = w;
  }
}

__global__ void k_box_z(View m, int64_t L, int64_t Z, int64_t p, int64_t s, int64_t nz, double* __restrict__ out) {
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < L;
       l += static_cast<int64_t>(gridDim.x) * blockDim.x)
    box_z_line(m, l, Z, p, s, nz, out);
}

template <bool FINAL>
__global__ void k_box_line(const double* __restrict__ in, int64_t L, int64_t inner, int64_t D, int64_t p, int64_t s,
                           int64_t n, double* __restrict__ out, float* __restrict__ outf, double vol) {
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < L;
       l += static_cast<int64_t>(gridDim.x) * blockDim.x)
    box_line<FINAL>(in, l, inner, D, p, s, n, out, outf, vol);
}

struct BoxGeom {
  int64_t K, X, Y, Z, px, py, pz, nx, ny, nz;
  double vol;
};

static BoxGeom box_geom(const DevArray& maps, const int64_t patch[3], const int64_t stride[3]) {
  BoxGeom g;
  g.K = maps.shape[0];
  g.X = maps.shape[1];
  g.Y = maps.shape[2];
  g.Z = maps.shape[3];
  g.px = std::min(patch[0], g.X);
  g.py = std::min(patch[1], g.Y);
  g.pz = std::min(patch[2], g.Z);
  g.nx = (g.X - g.px) / stride[0] + 1;
  g.ny = (g.Y - g.py) / stride[1] + 1;
  g.nz = (g.Z - g.pz) / stride[2] + 1;
  g.vol = static_cast<double>(g.px * g.py * g.pz);
  return g;
}

void box_mean(const DevArray& maps, const int64_t patch[3], const int64_t stride[3], uintptr_t t1, uintptr_t t2,
              uintptr_t out, int device, uintptr_t stream) {
  const BoxGeom bg = box_geom(maps, patch, stride);
  const int64_t K = bg.K, X = bg.X, Y = bg.Y, Z = bg.Z, px = bg.px, py = bg.py, pz = bg.pz, nx = bg.nx,
                ny = bg.ny, nz = bg.nz;
  const double vol = bg.vol;
  DeviceGuard g(device);
  const cudaStream_t st = as_stream(stream);
  double* a = reinterpret_cast<double*>(t1);
  double* b = reinterpret_cast<double*>(t2);
  const int64_t L1 = K * X * Y;
  k_box_z<<<blocks_for(L1), kThreads, 0, st>>>(make_view(maps), L1, Z, pz, stride[2], nz, a);
  CLASPE_CHECK_LAUNCH("box_mean (z)");
  const int64_t L2 = K * X * nz;  // lines along Y of [K, X, Y, nz]
  k_box_line<false><<<blocks_for(L2), kThreads, 0, st>>>(a, L2, nz, Y, py, stride[1], ny, b, nullptr, vol);
  CLASPE_CHECK_LAUNCH("box_mean (y)");
  const int64_t L3 = K * ny * nz;  // lines along X of [K, X, ny, nz]
  k_box_line<true><<<blocks_for(L3), kThreads, 0, st>>>(b, L3, ny * nz, X, px, stride[0], nx, nullptr,
                                                         reinterpret_cast<float*>(out), vol);
  CLASPE_CHECK_LAUNCH("box_mean (x)");
}

// ---------------------------------------------------------------------------------------------
// power noise
// ---------------------------------------------------------------------------------------------

CLASPE_KHD float noise_elem(const View& sc, int64_t i, double beta, uint64_t seed, uint32_t loop, uint32_t image,
                            uint32_t key, const View& nz, bool has_noise) {
  const float s = load_f(sc, offset4(sc, i));
  if (has_noise) return log_plus_noise(s, load_d(nz, offset4(nz, i)));
  return power_noised(s, gumbel_at(seed, loop, image, key, static_cast<uint32_t>(i)), beta);
}

__global__ void k_power_noise(View sc, int64_t n, double beta, uint64_t seed, uint32_t loop, uint32_t image,
                              uint32_t key, View nz, bool has_noise, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = noise_elem(sc, i, beta, seed, loop, image, key, nz, has_noise);
}

void power_noise(const DevArray& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
                 const DevArray* noise, uintptr_t out, int device, uintptr_t stream) {
  const int64_t n = scores.size();
  if (n >= (int64_t(1) << 32)) throw std::invalid_argument("more than 2**32 candidate positions");
  DeviceGuard g(device);
  const View s = make_view(scores);
  const View z = noise ? make_view(*noise) : s;
  k_power_noise<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(s, n, beta, seed, loop, image, key, z,
                                                                    noise != nullptr, reinterpret_cast<float*>(out));
  CLASPE_CHECK_LAUNCH("power_noise");
}

// ---------------------------------------------------------------------------------------------
// host emulation: the same per-element bodies, run sequentially on host memory (see engine.h)
// ---------------------------------------------------------------------------------------------

template <typename T, bool CONTIG>
static void emulate_acc_t(const View& f, int64_t N, int64_t C, const AccArgs& a, bool logits, unsigned& fl,
                          float& dev) {
  const bool ent = a.new_ent != nullptr;
  for (int64_t v = 0; v < N; ++v) {
    if (logits) {
      if (ent)
        accumulate_voxel<T, CONTIG, true, true>(f, v, N, C, a.old_sum, a.new_sum, a.old_ent, a.new_ent, a.lo, a.hi,
                                                fl, dev);
      else
        accumulate_voxel<T, CONTIG, true, false>(f, v, N, C, a.old_sum, a.new_sum, a.old_ent, a.new_ent, a.lo, a.hi,
                                                 fl, dev);
    } else {
      if (ent)
        accumulate_voxel<T, CONTIG, false, true>(f, v, N, C, a.old_sum, a.new_sum, a.old_ent, a.new_ent, a.lo, a.hi,
                                                 fl, dev);
      else
        accumulate_voxel<T, CONTIG, false, false>(f, v, N, C, a.old_sum, a.new_sum, a.old_ent, a.new_ent, a.lo,
                                                  a.hi, fl, dev);
    }
  }
}

CheckResult emulate_accumulate_fold(const DevArray& fold, const float* old_sum, float* new_sum, const float* old_ent,
                                    float* new_ent, bool logits, float lo, float hi) {
  if (fold.dtype != kF32 && fold.dtype != kF16) throw std::invalid_argument("fold must be float32 or float16");
  const View f = make_view(fold);
  const int64_t C = fold.shape[0];
  const int64_t N = fold.shape[1] * fold.shape[2] * fold.shape[3];
  const AccArgs a{old_sum, new_sum, old_ent, new_ent, lo, hi};
  unsigned fl = 0;
  float dev = 0.0f;
  if (fold.dtype == kF16) {
    if (f.contig)
      emulate_acc_t<__half, true>(f, N, C, a, logits, fl, dev);
    else
      emulate_acc_t<__half, false>(f, N, C, a, logits, fl, dev);
  } else {
    if (f.contig)
      emulate_acc_t<float, true>(f, N, C, a, logits, fl, dev);
    else
      emulate_acc_t<float, false>(f, N, C, a, logits, fl, dev);
  }
  unsigned bits;
  memcpy(&bits, &dev, sizeof bits);
  return to_result(fl, bits);
}

void emulate_score_maps(const DevArray& src, float src_div, int kind, const std::vector<int>& classes,
                        const DevArray* mfe, float mfe_div, float* out) {
  if (kind < kPE || kind > kExpectedEntropy) throw std::invalid_argument("unknown score kind");
  if (static_cast<int>(classes.size()) > kMaxClasses) throw std::invalid_argument("too many classes");
  if ((kind == kBALD || kind == kExpectedEntropy) && mfe == nullptr)
    throw std::invalid_argument("bald / expected_entropy need the mean fold entropy");
  ClassList cl;
  cl.n = kind == kClassPE ? static_cast<int>(classes.size()) : 0;
  for (int j = 0; j < cl.n; ++j) cl.c[j] = classes[j];
  const View s = make_view(src);
  const View m = mfe ? make_view(*mfe) : s;
  const int64_t N = src.shape[1] * src.shape[2] * src.shape[3];
  for (int64_t v = 0; v < N; ++v) score_voxel(s, v, N, src.shape[0], src_div, kind, cl, m, mfe_div, out);
}

void emulate_box_mean(const DevArray& maps, const int64_t patch[3], const int64_t stride[3], float* out) {
  const BoxGeom b = box_geom(maps, patch, stride);
  std::vector<double> t1(static_cast<size_t>(b.K * b.X * b.Y * b.nz)), t2(static_cast<size_t>(b.K * b.X * b.ny * b.nz));
  const View m = make_view(maps);
  for (int64_t l = 0; l < b.K * b.X * b.Y; ++l) box_z_line(m, l, b.Z, b.pz, stride[2], b.nz, t1.data());
  for (int64_t l = 0; l < b.K * b.X * b.nz; ++l)
    box_line<false>(t1.data(), l, b.nz, b.Y, b.py, stride[1], b.ny, t2.data(), nullptr, b.vol);
  for (int64_t l = 0; l < b.K * b.ny * b.nz; ++l)
    box_line<true>(t2.data(), l, b.ny * b.nz, b.X, b.px, stride[0], b.nx, nullptr, out, b.vol);
}

void emulate_power_noise(const DevArray& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image,
                         uint32_t key, const DevArray* noise, float* out) {
  const int64_t n = scores.size();
  if (n >= (int64_t(1) << 32)) throw std::invalid_argument("more than 2**32 candidate positions");
  const View s = make_view(scores);
  const View z = noise ? make_view(*noise) : s;
  for (int64_t i = 0; i < n; ++i) out[i] = noise_elem(s, i, beta, seed, loop, image, key, z, noise != nullptr);
}

}  // namespace cuda
}  // namespace claspe
