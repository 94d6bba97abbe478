// Fold accumulation, validation, score maps and the fused box-mean plane passes (see engine.h).
//
// Work is organised in segments (lines y0..y0+31 of one x-plane, all z): each channel segment is read
// in place when it is contiguous float32, else converted to a float32 scratch buffer (F16C for
// float16).  All per-voxel arithmetic runs in `omp simd` loops over the segment that evaluate the
// scalar rules of csrc/common (bit-identical to claspe/reference.py: vectorising across independent
// voxels does not change any voxel's operations).  Every output element is written by one thread,
// so results do not depend on the thread count or schedule.
#include <float.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <utility>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/grid.h"
#include "common/hd.h"
#include "common/portable_math.h"
#include "common/scores.h"
#include "cpu/engine.h"

namespace claspe {
namespace cpu {
namespace {

inline int64_t padded(int64_t n) { return (n + 15) & ~int64_t(15); }

// y-lines per segment: a segment is lines y0..y0+yt-1 (yt <= kYTile) of one x-plane, all z, i.e.
// n = yt*Z voxels flattened as (y, z).  Long contiguous segments keep the hardware prefetchers busy:
// 32 lines (32 KiB per stream for Z = 256) took ~10% less CPU time than 8 for the KiTS-like and
// AMOS-like benchmark cases (M x C = 20 and 80 input streams), 64 was no better than 32.
#ifndef CLASPE_YTILE
#define CLASPE_YTILE 32
#endif
constexpr int64_t kYTile = CLASPE_YTILE;

// Below this many voxel-channel reads a kernel runs on the calling thread: waking the OpenMP team
// costs more than the work, and much more on a loaded machine (results do not depend on it).
constexpr int64_t kParallelMinWork = 1 << 20;

// Converts line (c, x, y, 0..n-1) of `a` to float32.
inline void load_line(const View4& a, int64_t c, int64_t x, int64_t y, int64_t n, float* dst) {
  const char* p = a.data + c * a.strides[0] + x * a.strides[1] + y * a.strides[2];
  const int64_t sz = a.strides[3];
  if (a.dtype == kF32) {
    if (sz == 4) {
      memcpy(dst, p, static_cast<size_t>(n) * 4);
    } else {
      for (int64_t i = 0; i < n; ++i) memcpy(dst + i, p + i * sz, 4);
    }
    return;
  }
  int64_t i = 0;
#if defined(__F16C__)
  if (sz == 2) {
    for (; i + 8 <= n; i += 8) {
      if ((i & 31) == 0) __builtin_prefetch(p + 2 * (i + n), 0, 3);  // next segment (see CLASPE_PREFETCH)
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  }
#endif
  for (; i < n; ++i) {
    uint16_t h;
    memcpy(&h, p + i * sz, 2);
    dst[i] = half_to_float(h);
  }
}

// Segment (c, x, y0..y0+yt-1, all z) of `a` as yt*Z contiguous floats: a pointer into `a` itself
// when it is aligned contiguous float32 there, else converted into `scratch`.
inline const float* seg_ptr(const View4& a, int64_t c, int64_t x, int64_t y0, int64_t yt, float* scratch) {
  const int64_t Z = a.shape[3];
  const char* p = a.data + c * a.strides[0] + x * a.strides[1] + y0 * a.strides[2];
  const int64_t isz = a.dtype == kF32 ? 4 : 2;
  const bool contiguous = a.strides[3] == isz && (yt == 1 || a.strides[2] == Z * isz);
  if (contiguous && a.dtype == kF32 && reinterpret_cast<uintptr_t>(p) % 4 == 0)
    return reinterpret_cast<const float*>(p);
  if (contiguous) {
    View4 flat = a;  // one long line
    flat.data = p;
    load_line(flat, 0, 0, 0, yt * Z, scratch);
  } else {
    for (int64_t yl = 0; yl < yt; ++yl) load_line(a, c, x, y0 + yl, Z, scratch + yl * Z);
  }
  return scratch;
}

struct Thresholds {
  float lo, hi;
  double tol;
  explicit Thresholds(double t) : lo(static_cast<float>(-t)), hi(static_cast<float>(1.0 + t)), tol(t) {}
};

// Software prefetch of the same row of the next segment (n floats ahead: contiguous when the y-z
// plane is contiguous; prefetches never fault, so addresses past the array are harmless).  Many
// input streams (M folds x C channels) are more than the hardware prefetchers track; measured
// ~10-15% less CPU time for C=16, M=5.
#define CLASPE_PREFETCH(p) __builtin_prefetch((p), 0, 3)

// One channel of the probability check, fused with the fold-sum update:
//   s = (first channel ? 0 : ssum) + v;   acc = (first fold ? 0 : acc) + v   (acc may be null);
//   running maximum of the bits of v as unsigned integers (range check, see check_probs_seg); on
//   the last channel the running max of |s - 1| is taken (and s is not stored) and `bad` is set
//   where !(|s - 1| <= tol): a NaN or +-inf anywhere in a voxel's channels makes its sum NaN or inf,
//   so non-finite values are caught by the sum (the precise kind of problem is found on the error
//   path).  Per element: 1 load, 2 adds, 1 integer max.
template <bool kFirstChannel, bool kFirstFold, bool kLastChannel, bool kAcc>
inline void prob_channel(const float* v, float* ssum, float* acc, int64_t n, float tolf, int& bad, float& maxdev,
                         uint32_t& umax) {
  int b = 0;
  float md = maxdev;
  uint32_t um = umax;
  for (int64_t z0 = 0; z0 < n; z0 += 64) {
    const int64_t z1 = z0 + 64 < n ? z0 + 64 : n;
    CLASPE_PREFETCH(v + z0 + n);
    CLASPE_PREFETCH(v + z0 + n + 16);
    CLASPE_PREFETCH(v + z0 + n + 32);
    CLASPE_PREFETCH(v + z0 + n + 48);
#pragma omp simd reduction(| : b) reduction(max : md, um)
    for (int64_t z = z0; z < z1; ++z) {
      const float x = v[z];
      const float s = (kFirstChannel ? 0.0f : ssum[z]) + x;
      if (kLastChannel) {
        const float d = fabsf(s - 1.0f);
        md = d > md ? d : md;
        b |= !(d <= tolf);
      } else {
        ssum[z] = s;
      }
      if (kAcc) acc[z] = (kFirstFold ? 0.0f : acc[z]) + x;
      const uint32_t u = float_bits(x);
      um = u > um ? u : um;
    }
  }
  bad |= b;
  maxdev = md;
  umax = um;
}

#if defined(__AVX2__)
// The same with AVX2 intrinsics: vector accumulators for the whole row (the omp simd version
// reduces them horizontally after every 64-element prefetch block), one prefetch per cache line.
// Identical operations per element (IEEE add/sub/abs/compare), so identical sums and flags.
template <bool kFirstChannel, bool kFirstFold, bool kLastChannel, bool kAcc>
inline void prob_channel_avx2(const float* v, float* ssum, float* acc, int64_t n, float tolf, int& bad,
                              float& maxdev, uint32_t& umax) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), tol = _mm256_set1_ps(tolf);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 md = _mm256_set1_ps(maxdev), b = _mm256_setzero_ps();
  __m256i um = _mm256_set1_epi32(static_cast<int>(umax));
  int64_t z = 0;
  for (; z + 8 <= n; z += 8) {
    if ((z & 15) == 0) CLASPE_PREFETCH(v + z + n);
    const __m256 x = _mm256_loadu_ps(v + z);
    const __m256 s = _mm256_add_ps(kFirstChannel ? zero : _mm256_loadu_ps(ssum + z), x);
    if (kLastChannel) {
      const __m256 d = _mm256_and_ps(_mm256_sub_ps(s, one), absmask);
      md = _mm256_max_ps(d, md);  // d > md ? d : md
      b = _mm256_or_ps(b, _mm256_cmp_ps(d, tol, _CMP_NLE_UQ));  // !(d <= tol)
    } else {
      _mm256_storeu_ps(ssum + z, s);
    }
    if (kAcc) _mm256_storeu_ps(acc + z, _mm256_add_ps(kFirstFold ? zero : _mm256_loadu_ps(acc + z), x));
    um = _mm256_max_epu32(um, _mm256_castps_si256(x));
  }
  float mdv[8];
  uint32_t umv[8];
  _mm256_storeu_ps(mdv, md);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(umv), um);
  float m = maxdev;
  uint32_t u = umax;
  for (int l = 0; l < 8; ++l) {
    m = mdv[l] > m ? mdv[l] : m;
    u = umv[l] > u ? umv[l] : u;
  }
  int bb = _mm256_movemask_ps(b) != 0;
  for (; z < n; ++z) {
    if ((z & 15) == 0) CLASPE_PREFETCH(v + z + n);
    const float x = v[z];
    const float s = (kFirstChannel ? 0.0f : ssum[z]) + x;
    if (kLastChannel) {
      const float d = fabsf(s - 1.0f);
      m = d > m ? d : m;
      bb |= !(d <= tolf);
    } else {
      ssum[z] = s;
    }
    if (kAcc) acc[z] = (kFirstFold ? 0.0f : acc[z]) + x;
    const uint32_t ux = float_bits(x);
    u = ux > u ? ux : u;
  }
  bad |= bb;
  maxdev = m;
  umax = u;
}
#define CLASPE_PROB_CHANNEL prob_channel_avx2
#else
#define CLASPE_PROB_CHANNEL prob_channel
#endif

template <bool kFirstChannel, bool kLastChannel>
inline void prob_channel_dispatch(const float* v, float* ssum, float* acc, bool first, int64_t n, float tolf,
                                  int& bad, float& md, uint32_t& um) {
  if (acc) {
    if (first)
      CLASPE_PROB_CHANNEL<kFirstChannel, true, kLastChannel, true>(v, ssum, acc, n, tolf, bad, md, um);
    else
      CLASPE_PROB_CHANNEL<kFirstChannel, false, kLastChannel, true>(v, ssum, acc, n, tolf, bad, md, um);
  } else {
    CLASPE_PROB_CHANNEL<kFirstChannel, false, kLastChannel, false>(v, ssum, acc, n, tolf, bad, md, um);
  }
}

// Probability checks of C channel rows src[c] (n voxels), optionally adding them to acc rows
// (acc + c*astride): finite, within [lo, hi], |sum_c - 1| <= tol (float32 sum over c in order).
// Range check: the fused pass keeps only the largest bit pattern of the values as unsigned
// integers.  If it is at most the bits of hi, every value is a non-negative float <= hi (the bits
// of non-negative floats order like the floats; -0.0, negatives and NaN have larger patterns), so
// the range holds; otherwise the exact running min/max (from 0) of the segment's values decides,
// as a second pass that only segments with a negative value (or a problem) take.
inline void check_probs_seg(const float* const* src, int64_t C, int64_t n, const Thresholds& th, float* ssum,
                            float* acc, int64_t astride, bool first, CheckResult& r) {
  int bad = 0;
  float md = r.maxdev, mn = 0.0f, mx = 0.0f;
  uint32_t um = 0;
  const float tolf = static_cast<float>(th.tol);
  for (int64_t c = 0; c < C; ++c) {
    float* a = acc ? acc + c * astride : nullptr;
    const bool f = c == 0, l = c == C - 1;
    if (f && l)
      prob_channel_dispatch<true, true>(src[c], ssum, a, first, n, tolf, bad, md, um);
    else if (f)
      prob_channel_dispatch<true, false>(src[c], ssum, a, first, n, tolf, bad, md, um);
    else if (l)
      prob_channel_dispatch<false, true>(src[c], ssum, a, first, n, tolf, bad, md, um);
    else
      prob_channel_dispatch<false, false>(src[c], ssum, a, first, n, tolf, bad, md, um);
  }
  r.maxdev = md;
  if (um > float_bits(th.hi)) {
    for (int64_t c = 0; c < C; ++c) {
      const float* v = src[c];
#pragma omp simd reduction(max : mx) reduction(min : mn)
      for (int64_t z = 0; z < n; ++z) {
        const float x = v[z];
        mn = x < mn ? x : mn;
        mx = x > mx ? x : mx;
      }
    }
  }
  if (bad || mn < th.lo || mx > th.hi) {  // error path: find the kinds precisely
    for (int64_t z = 0; z < n; ++z) {
      float s = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        const float x = src[c][z];
        s = s + x;
        if (!(fabsf(x) <= FLT_MAX))
          r.flags |= kFlagNonFinite;
        else if (x < th.lo || x > th.hi)
          r.flags |= kFlagOutOfRange;
      }
      if (!(static_cast<double>(fabsf(s - 1.0f)) <= th.tol)) r.flags |= kFlagBadSum;
    }
  }
  if (static_cast<double>(md) > th.tol) r.flags |= kFlagBadSum;
}

inline void check_finite_seg(const float* const* src, int64_t rows, int64_t n, CheckResult& r) {
  int bad = 0;
  for (int64_t c = 0; c < rows; ++c) {
    const float* v = src[c];
    for (int64_t z0 = 0; z0 < n; z0 += 64) {
      const int64_t z1 = z0 + 64 < n ? z0 + 64 : n;
      for (int64_t q = 0; q < 64; q += 16) CLASPE_PREFETCH(v + z0 + n + q);
#pragma omp simd reduction(| : bad)
      for (int64_t z = z0; z < z1; ++z) bad |= !(fabsf(v[z]) <= FLT_MAX);
    }
  }
  if (bad) r.flags |= kFlagNonFinite;
}

// Softmax over C rows (reference.softmax): dst[c] = expf(src[c] - max) / sum; dst may alias src.
inline void softmax_seg(const float* const* src, int64_t C, int64_t n, float* dst, int64_t dstride, float* mx,
                        float* s) {
  memcpy(mx, src[0], static_cast<size_t>(n) * 4);
  for (int64_t c = 1; c < C; ++c) {
    const float* v = src[c];
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) mx[z] = v[z] > mx[z] ? v[z] : mx[z];
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* v = src[c];
    float* d = dst + c * dstride;
    if (c == 0) {
#pragma omp simd
      for (int64_t z = 0; z < n; ++z) {
        const float e = expf_portable(v[z] - mx[z]);
        d[z] = e;
        s[z] = 0.0f + e;
      }
    } else {
#pragma omp simd
      for (int64_t z = 0; z < n; ++z) {
        const float e = expf_portable(v[z] - mx[z]);
        d[z] = e;
        s[z] = s[z] + e;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    float* d = dst + c * dstride;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) d[z] = d[z] / s[z];
  }
}

// h = -(sum_c plogp(p_c)) (reference.entropy) of C rows p[c].
inline void entropy_seg(const float* const* p, int64_t C, int64_t n, float* h) {
  for (int64_t c = 0; c < C; ++c) {
    const float* v = p[c];
    if (c == 0) {
#pragma omp simd
      for (int64_t z = 0; z < n; ++z) h[z] = 0.0f + plogp(v[z]);
    } else {
#pragma omp simd
      for (int64_t z = 0; z < n; ++z) h[z] = h[z] + plogp(v[z]);
    }
  }
#pragma omp simd
  for (int64_t z = 0; z < n; ++z) h[z] = -h[z];
}

// dst = (first ? 0 : dst) + src
inline void add_row(float* dst, const float* src, int64_t n, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) dst[z] = 0.0f + src[z];
  } else {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) dst[z] = dst[z] + src[z];
  }
}

// Score map rows out + k*ostride from fold-sum rows s[c], entropy-sum row e, fold count mf.
// tmp: (C + 1) * tstride floats of scratch (PE row, then the fold means of the channels that class
// maps use, each computed once).
inline void maps_from_sums(const float* const* s, const float* e, int64_t C, int64_t n, float mf,
                           const ScoreSpec& spec, float* tmp, int64_t tstride, float* out, int64_t ostride) {
  if (spec.kind == kScoreExpectedEntropy) {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) out[z] = e[z] / mf;
    return;
  }
  // Blocks of kMapBlock voxels, so that the running PE sum and the kept means stay in L1 between
  // the channel loops (per voxel the same operations in the same order as one pass per channel).
  constexpr int64_t kMapBlock = 512;
  const int64_t nc = spec.kind == kScoreClassPE ? static_cast<int64_t>(spec.classes.size()) : 0;
  for (int64_t z0 = 0; z0 < n; z0 += kMapBlock) {
    const int64_t w = std::min(kMapBlock, n - z0);
    float* pe = tmp + z0;
    for (int64_t c = 0; c < C; ++c) {
      const float* v = s[c] + z0;
      bool keep = false;
      for (int64_t j = 0; j < nc; ++j) keep = keep || spec.classes[j] == c;
      float* m = tmp + (1 + c) * tstride + z0;
      if (keep) {
        if (c == 0) {
#pragma omp simd
          for (int64_t z = 0; z < w; ++z) {
            m[z] = v[z] / mf;
            pe[z] = 0.0f + plogp(m[z]);
          }
        } else {
#pragma omp simd
          for (int64_t z = 0; z < w; ++z) {
            m[z] = v[z] / mf;
            pe[z] = pe[z] + plogp(m[z]);
          }
        }
      } else if (c == 0) {
#pragma omp simd
        for (int64_t z = 0; z < w; ++z) pe[z] = 0.0f + plogp(v[z] / mf);
      } else {
#pragma omp simd
        for (int64_t z = 0; z < w; ++z) pe[z] = pe[z] + plogp(v[z] / mf);
      }
    }
    if (spec.kind == kScorePE) {
      float* o = out + z0;
#pragma omp simd
      for (int64_t z = 0; z < w; ++z) o[z] = -pe[z];
    } else if (spec.kind == kScoreClassPE) {
      float* on = out + nc * ostride + z0;  // the PE map
#pragma omp simd
      for (int64_t z = 0; z < w; ++z) on[z] = -pe[z];
      for (int64_t j = 0; j < nc; ++j) {
        const float* m = tmp + (1 + spec.classes[j]) * tstride + z0;
        float* o = out + j * ostride + z0;
#pragma omp simd
        for (int64_t z = 0; z < w; ++z) o[z] = on[z] * m[z];
      }
    } else {  // BALD
      const float* ev = e + z0;
      float* o = out + z0;
#pragma omp simd
      for (int64_t z = 0; z < w; ++z) o[z] = bald_score(-pe[z], ev[z] / mf);
    }
  }
}

int n_threads_now() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ---------------------------------------------------------------------------------------------
// map producers: segment(x, y0, yt, rows) points rows[k] (k < K) at the yt*Z floats of map k of
// the segment.  One producer per thread (it owns its scratch buffers).
// ---------------------------------------------------------------------------------------------

struct MapsProducer {
  const View4& maps;
  int64_t K, np;
  std::vector<float> buf;
  MapsProducer(const View4& m) : maps(m), K(m.shape[0]), np(padded(kYTile * m.shape[3])), buf(K * np) {}
  void segment(int64_t x, int64_t y0, int64_t yt, const float** rows) {
    for (int64_t k = 0; k < K; ++k) rows[k] = seg_ptr(maps, k, x, y0, yt, buf.data() + k * np);
  }
  void finish() {}
};

struct AccProducer {
  const View4& sum;
  const View4* ent;
  float mf;
  const ScoreSpec& spec;
  int64_t C, np;
  std::vector<float> sb, eb, tmp, out;
  std::vector<const float*> s;
  AccProducer(const View4& sum_, const View4* ent_, float n, const ScoreSpec& spec_)
      : sum(sum_), ent(ent_), mf(n), spec(spec_), C(sum_.shape[0]), np(padded(kYTile * sum_.shape[3])) {
    sb.resize(C * np);
    eb.resize(np);
    tmp.resize((C + 1) * np);
    out.resize(spec.n_maps() * np);
    s.resize(C);
  }
  void segment(int64_t x, int64_t y0, int64_t yt, const float** rows) {
    const int64_t n = yt * sum.shape[3];
    if (spec.kind != kScoreExpectedEntropy)
      for (int64_t c = 0; c < C; ++c) s[c] = seg_ptr(sum, c, x, y0, yt, sb.data() + c * np);
    const float* e = score_needs_fold_entropy(spec.kind) ? seg_ptr(*ent, 0, x, y0, yt, eb.data()) : nullptr;
    maps_from_sums(s.data(), e, C, n, mf, spec, tmp.data(), np, out.data(), np);
    for (int64_t k = 0; k < spec.n_maps(); ++k) rows[k] = out.data() + k * np;
  }
  void finish() {}
};

struct FoldsProducer {
  const std::vector<View4>& folds;
  bool logits;
  Thresholds th;
  const ScoreSpec& spec;
  bool track;
  int64_t C, np;
  std::vector<float> b, s, e, h, t1, t2, mt, out;
  std::vector<const float*> src, srows;
  std::vector<CheckResult> checks;
  std::vector<CheckResult>* total;
  FoldsProducer(const std::vector<View4>& folds_, bool logits_, double tol, const ScoreSpec& spec_,
                std::vector<CheckResult>* total_)
      : folds(folds_), logits(logits_), th(tol), spec(spec_), track(score_needs_fold_entropy(spec_.kind)),
        C(folds_[0].shape[0]), np(padded(kYTile * folds_[0].shape[3])), total(total_) {
    b.resize(C * np);
    s.resize(C * np);
    e.resize(np);
    h.resize(np);
    t1.resize(np);
    t2.resize(np);
    mt.resize((C + 1) * np);
    out.resize(spec.n_maps() * np);
    src.resize(C);
    srows.resize(C);
    checks.resize(folds_.size());
    for (int64_t c = 0; c < C; ++c) srows[c] = s.data() + c * np;
  }
  void segment(int64_t x, int64_t y0, int64_t yt, const float** rows) {
    const int64_t M = static_cast<int64_t>(folds.size());
    const int64_t n = yt * folds[0].shape[3];
    for (int64_t f = 0; f < M; ++f) {
      const bool first = f == 0;
      for (int64_t c = 0; c < C; ++c) src[c] = seg_ptr(folds[f], c, x, y0, yt, b.data() + c * np);
      if (logits) {
        check_finite_seg(src.data(), C, n, checks[f]);
        softmax_seg(src.data(), C, n, b.data(), np, t1.data(), t2.data());
        for (int64_t c = 0; c < C; ++c) {
          src[c] = b.data() + c * np;  // now the fold's probabilities
          add_row(s.data() + c * np, src[c], n, first);
        }
      } else {
        check_probs_seg(src.data(), C, n, th, t1.data(), s.data(), np, first, checks[f]);
      }
      if (track) entropy_seg(src.data(), C, n, h.data());
      if (track) add_row(e.data(), h.data(), n, first);
    }
    maps_from_sums(srows.data(), e.data(), C, n, static_cast<float>(M), spec, mt.data(), np, out.data(), np);
    for (int64_t k = 0; k < spec.n_maps(); ++k) rows[k] = out.data() + k * np;
  }
  void finish() {
#pragma omp critical(claspe_fold_checks)
    for (size_t i = 0; i < checks.size(); ++i) {
      (*total)[i].flags |= checks[i].flags;
      (*total)[i].maxdev = std::max((*total)[i].maxdev, checks[i].maxdev);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// plane passes (Z then Y) of one x-plane, reference.box_mean order
// ---------------------------------------------------------------------------------------------

struct PlaneScratch {
  std::vector<const float*> rows, chain;
  std::vector<double> pz, acc, t1, py;
};

// Z prefix sums of 8 lines (line l = base + l*Z): pz[(z+1)*8 + l] = pz[z*8 + l] + line_l[z],
// pz[l] = 0, in double, sequential in z per line (reference.box_mean).  With AVX2 an 8x8 transpose
// feeds two 4-wide double accumulators (same additions, same order per line as the scalar loop).
inline void prefix8(const float* base, int64_t Z, double* pz) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int l = 0; l < 8; ++l) pz[l] = 0.0;
  int64_t z = 0;
#if defined(__AVX2__)
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; z + 8 <= Z; z += 8) {
    __m256 r0 = _mm256_loadu_ps(base + 0 * Z + z), r1 = _mm256_loadu_ps(base + 1 * Z + z);
    __m256 r2 = _mm256_loadu_ps(base + 2 * Z + z), r3 = _mm256_loadu_ps(base + 3 * Z + z);
    __m256 r4 = _mm256_loadu_ps(base + 4 * Z + z), r5 = _mm256_loadu_ps(base + 5 * Z + z);
    __m256 r6 = _mm256_loadu_ps(base + 6 * Z + z), r7 = _mm256_loadu_ps(base + 7 * Z + z);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 col[8];  // col[j][l] = line l at z + j
    col[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    col[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    col[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    col[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    col[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    col[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    col[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    col[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    for (int j = 0; j < 8; ++j) {
      a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(col[j])));
      a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(col[j], 1)));
      _mm256_storeu_pd(pz + (z + j + 1) * 8, a0);
      _mm256_storeu_pd(pz + (z + j + 1) * 8 + 4, a1);
    }
  }
  _mm256_storeu_pd(acc, a0);
  _mm256_storeu_pd(acc + 4, a1);
#endif
  for (; z < Z; ++z)
    for (int l = 0; l < 8; ++l) {
      acc[l] = acc[l] + static_cast<double>(base[l * Z + z]);
      pz[(z + 1) * 8 + l] = acc[l];
    }
}

template <class Producer>
void plane_pass(Producer& prod, int64_t x, int64_t K, int64_t X, int64_t Y, int64_t Z, const BoxSpec& box,
                PlaneScratch& sc, double* t2) {
  const int64_t ny = box.grid[1], nz = box.grid[2];
  const int64_t pY = box.patch[1], sY = box.stride[1], pZ = box.patch[2], sZ = box.stride[2];
  const int64_t jmax = K * kYTile;
  sc.rows.resize(K);
  sc.chain.resize(jmax);
  sc.pz.resize((Z + 1) * jmax);
  sc.acc.resize(std::max(jmax, nz));
  sc.t1.resize(K * Y * nz);
  sc.py.resize((Y + 1) * nz);
  double* acc = sc.acc.data();
  double* pz = sc.pz.data();
  for (int64_t y0 = 0; y0 < Y; y0 += kYTile) {
    const int64_t yt = std::min(kYTile, Y - y0);
    prod.segment(x, y0, yt, sc.rows.data());
    if (yt % 8 == 0) {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t g = 0; g < yt; g += 8) {
          prefix8(sc.rows[k] + g * Z, Z, pz);
          for (int64_t yl = 0; yl < 8; ++yl) {
            double* o = sc.t1.data() + (k * Y + y0 + g + yl) * nz;
            for (int64_t iz = 0; iz < nz; ++iz) o[iz] = pz[(iz * sZ + pZ) * 8 + yl] - pz[(iz * sZ) * 8 + yl];
          }
        }
      continue;
    }
    // Z prefix sums of the J = K*yt lines (chain j = k*yt + yl), interleaved for throughput
    const int64_t J = K * yt;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t yl = 0; yl < yt; ++yl) sc.chain[k * yt + yl] = sc.rows[k] + yl * Z;
    const float* const* ch = sc.chain.data();
    for (int64_t j = 0; j < J; ++j) {
      acc[j] = 0.0;
      pz[j] = 0.0;
    }
    for (int64_t z = 0; z < Z; ++z) {
      double* row = pz + (z + 1) * J;
      for (int64_t j = 0; j < J; ++j) {
        acc[j] = acc[j] + static_cast<double>(ch[j][z]);
        row[j] = acc[j];
      }
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t yl = 0; yl < yt; ++yl) {
        const int64_t j = k * yt + yl;
        double* o = sc.t1.data() + (k * Y + y0 + yl) * nz;
        for (int64_t iz = 0; iz < nz; ++iz) o[iz] = pz[(iz * sZ + pZ) * J + j] - pz[(iz * sZ) * J + j];
      }
  }
  double* py = sc.py.data();
  for (int64_t k = 0; k < K; ++k) {
    const double* t1 = sc.t1.data() + k * Y * nz;
    for (int64_t iz = 0; iz < nz; ++iz) {
      acc[iz] = 0.0;
      py[iz] = 0.0;
    }
    for (int64_t y = 0; y < Y; ++y) {
      double* row = py + (y + 1) * nz;
      const double* v = t1 + y * nz;
#pragma omp simd
      for (int64_t iz = 0; iz < nz; ++iz) {
        acc[iz] = acc[iz] + v[iz];
        row[iz] = acc[iz];
      }
    }
    double* o = t2 + (k * X + x) * ny * nz;
    for (int64_t iy = 0; iy < ny; ++iy) {
      const double* hi = py + (iy * sY + pY) * nz;
      const double* lo = py + (iy * sY) * nz;
#pragma omp simd
      for (int64_t iz = 0; iz < nz; ++iz) o[iy * nz + iz] = hi[iz] - lo[iz];
    }
  }
}

template <class MakeProducer>
void run_planes(MakeProducer make, int64_t K, int64_t X, int64_t Y, int64_t Z, const BoxSpec& box, int64_t x0,
                int64_t x1, double* t2, int64_t reads_per_voxel) {
  const int64_t work = (x1 - x0) * Y * Z * reads_per_voxel;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    auto prod = make();
    PlaneScratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t x = x0; x < x1; ++x) plane_pass(prod, x, K, X, Y, Z, box, sc, t2);
    prod.finish();
  }
}

// Runs fn(x, y0, yt, check) over all segments of an [*, X, Y, *] volume in parallel; merges checks.
template <class MakeFn>
CheckResult for_segments(int64_t X, int64_t Y, int64_t work, MakeFn make) {
  CheckResult total;
  const int64_t ty = (Y + kYTile - 1) / kYTile;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    CheckResult mine;
    auto fn = make();
#pragma omp for schedule(dynamic, 4)
    for (int64_t u = 0; u < X * ty; ++u) {
      const int64_t x = u / ty, y0 = (u % ty) * kYTile;
      fn(x, y0, std::min(kYTile, Y - y0), mine);
    }
#pragma omp critical(claspe_checks)
    {
      total.flags |= mine.flags;
      total.maxdev = std::max(total.maxdev, mine.maxdev);
    }
  }
  return total;
}

struct SegBuffers {
  int64_t C, np;
  std::vector<float> b, t1, t2, h;
  std::vector<const float*> src;
  SegBuffers(int64_t C_, int64_t Z) : C(C_), np(padded(kYTile * Z)), b(C_ * np), t1(np), t2(np), h(np), src(C_) {}
  void load(const View4& a, int64_t x, int64_t y0, int64_t yt) {
    for (int64_t c = 0; c < C; ++c) src[c] = seg_ptr(a, c, x, y0, yt, b.data() + c * np);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------

BoxSpec make_box_spec(const int64_t dims[3], const int64_t patch[3], const int64_t stride[3]) {
  BoxSpec b;
  for (int a = 0; a < 3; ++a) {
    b.patch[a] = clipped_patch(dims[a], patch[a]);
    b.stride[a] = stride[a];
    b.grid[a] = grid_dim(dims[a], patch[a], stride[a]);
  }
  return b;
}

CheckResult check_probs(const View4& p, float tol) {
  const Thresholds th(tol);
  return for_segments(p.shape[1], p.shape[2], p.shape[0] * p.shape[1] * p.shape[2] * p.shape[3], [&]() {
    return [&, buf = SegBuffers(p.shape[0], p.shape[3])](int64_t x, int64_t y0, int64_t yt,
                                                         CheckResult& r) mutable {
      buf.load(p, x, y0, yt);
      check_probs_seg(buf.src.data(), buf.C, yt * p.shape[3], th, buf.t1.data(), nullptr, 0, true, r);
    };
  });
}

CheckResult check_finite(const View4& a) {
  return for_segments(a.shape[1], a.shape[2], a.shape[0] * a.shape[1] * a.shape[2] * a.shape[3], [&]() {
    return [&, buf = SegBuffers(a.shape[0], a.shape[3])](int64_t x, int64_t y0, int64_t yt,
                                                         CheckResult& r) mutable {
      buf.load(a, x, y0, yt);
      check_finite_seg(buf.src.data(), buf.C, yt * a.shape[3], r);
    };
  });
}

CheckResult fold_add(const View4& fold, bool logits, float tol, float* sum, float* entsum, bool first) {
  CheckResult r = logits ? check_finite(fold) : check_probs(fold, tol);
  if (r.flags) return r;  // nothing written
  const int64_t C = fold.shape[0], X = fold.shape[1], Y = fold.shape[2], Z = fold.shape[3];
  for_segments(X, Y, C * X * Y * Z, [&]() {
    return [&, buf = SegBuffers(C, Z)](int64_t x, int64_t y0, int64_t yt, CheckResult&) mutable {
      const int64_t n = yt * Z;
      buf.load(fold, x, y0, yt);
      if (logits) {
        softmax_seg(buf.src.data(), C, n, buf.b.data(), buf.np, buf.t1.data(), buf.t2.data());
        for (int64_t c = 0; c < C; ++c) buf.src[c] = buf.b.data() + c * buf.np;
      }
      for (int64_t c = 0; c < C; ++c) add_row(sum + ((c * X + x) * Y + y0) * Z, buf.src[c], n, first);
      if (entsum) {
        entropy_seg(buf.src.data(), C, n, buf.h.data());
        add_row(entsum + (x * Y + y0) * Z, buf.h.data(), n, first);
      }
    };
  });
  return r;
}

void acc_maps(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, float* out) {
  const int64_t X = sum.shape[1], Y = sum.shape[2], Z = sum.shape[3];
  const int64_t K = spec.n_maps();
  for_segments(X, Y, sum.shape[0] * X * Y * Z, [&]() {
    return [&, prod = AccProducer(sum, entsum, n, spec),
            rows = std::vector<const float*>(K)](int64_t x, int64_t y0, int64_t yt, CheckResult&) mutable {
      prod.segment(x, y0, yt, rows.data());
      for (int64_t k = 0; k < K; ++k)
        memcpy(out + ((k * X + x) * Y + y0) * Z, rows[k], static_cast<size_t>(yt * Z) * 4);
    };
  });
}

void box_planes_maps(const View4& maps, const BoxSpec& box, int64_t x0, int64_t x1, double* t2) {
  const int64_t K = maps.shape[0], X = maps.shape[1], Y = maps.shape[2], Z = maps.shape[3];
  run_planes([&]() { return MapsProducer(maps); }, K, X, Y, Z, box, x0, x1, t2, K);
}

void box_planes_acc(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, const BoxSpec& box,
                    int64_t x0, int64_t x1, double* t2) {
  const int64_t X = sum.shape[1], Y = sum.shape[2], Z = sum.shape[3];
  run_planes([&]() { return AccProducer(sum, entsum, n, spec); }, spec.n_maps(), X, Y, Z, box, x0, x1, t2,
             sum.shape[0] + 1);
}

std::vector<CheckResult> box_planes_folds(const std::vector<View4>& folds, bool logits, float tol,
                                          const ScoreSpec& spec, const BoxSpec& box, int64_t x0, int64_t x1,
                                          double* t2) {
  std::vector<CheckResult> total(folds.size());
  const View4& f0 = folds[0];
  const int64_t X = f0.shape[1], Y = f0.shape[2], Z = f0.shape[3];
  run_planes([&]() { return FoldsProducer(folds, logits, tol, spec, &total); }, spec.n_maps(), X, Y, Z, box, x0,
             x1, t2, static_cast<int64_t>(folds.size()) * f0.shape[0]);
  return total;
}

void box_x_pass(const double* t2, int64_t K, int64_t X, const BoxSpec& box, float* out) {
  const int64_t nx = box.grid[0], m = box.grid[1] * box.grid[2];
  const int64_t pX = box.patch[0], sX = box.stride[0];
  const double vol = static_cast<double>(box.patch[0] * box.patch[1] * box.patch[2]);
  constexpr int64_t kBlock = 512;
  const int64_t nb = (m + kBlock - 1) / kBlock;
#pragma omp parallel if (K * m * X >= kParallelMinWork)
  {
    std::vector<double> px, acc(kBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < K * nb; ++u) {
      const int64_t k = u / nb, j0 = (u % nb) * kBlock, w = std::min(kBlock, m - j0);
      px.resize((X + 1) * w);
      for (int64_t j = 0; j < w; ++j) {
        acc[j] = 0.0;
        px[j] = 0.0;
      }
      for (int64_t x = 0; x < X; ++x) {
        const double* v = t2 + (k * X + x) * m + j0;
        double* row = px.data() + (x + 1) * w;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          acc[j] = acc[j] + v[j];
          row[j] = acc[j];
        }
      }
      for (int64_t ix = 0; ix < nx; ++ix) {
        const double* hi = px.data() + (ix * sX + pX) * w;
        const double* lo = px.data() + (ix * sX) * w;
        float* o = out + (k * nx + ix) * m + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) o[j] = static_cast<float>((hi[j] - lo[j]) / vol);
      }
    }
  }
}

void set_num_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

int get_num_threads() { return n_threads_now(); }

}  // namespace cpu
}  // namespace claspe
