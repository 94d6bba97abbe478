// Fold accumulation, validation, score maps and the fused box-mean plane passes (see engine.h).
//
// Work is organised in voxel lines (x, y, z = 0..Z-1): each line of every channel is converted to a
// float32 scratch buffer (F16C for float16), and all per-voxel arithmetic runs in `omp simd` loops
// over z that evaluate the scalar rules of csrc/common (bit-identical to claspe/reference.py;
// vectorising across independent voxels does not change any voxel's operations).
#include <float.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <utility>
#include <vector>

#if defined(__F16C__)
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

struct Thresholds {
  float lo, hi;
  double tol;
  explicit Thresholds(double t) : lo(static_cast<float>(-t)), hi(static_cast<float>(1.0 + t)), tol(t) {}
};

// Probability checks of one voxel line of C channels (b: C rows of stride zp).
inline void check_prob_line(const float* b, int64_t C, int64_t zp, int64_t n, const Thresholds& th, float* ssum,
                            CheckResult& r) {
  int bad_nf = 0, bad_rng = 0;
  for (int64_t z = 0; z < n; ++z) ssum[z] = 0.0f;
  const float lo = th.lo, hi = th.hi;
  for (int64_t c = 0; c < C; ++c) {
    const float* v = b + c * zp;
#pragma omp simd reduction(| : bad_nf, bad_rng)
    for (int64_t z = 0; z < n; ++z) {
      const float x = v[z];
      ssum[z] = ssum[z] + x;
      bad_nf |= !(fabsf(x) <= FLT_MAX);
      bad_rng |= (x < lo) | (x > hi);
    }
  }
  float md = r.maxdev;
#pragma omp simd reduction(max : md)
  for (int64_t z = 0; z < n; ++z) {
    const float d = fabsf(ssum[z] - 1.0f);
    md = d > md ? d : md;
  }
  r.maxdev = md;
  if (bad_nf) r.flags |= kFlagNonFinite;
  if (bad_rng) r.flags |= kFlagOutOfRange;
  if (static_cast<double>(md) > th.tol) r.flags |= kFlagBadSum;
}

inline void check_finite_line(const float* b, int64_t rows, int64_t zp, int64_t n, CheckResult& r) {
  int bad = 0;
  for (int64_t c = 0; c < rows; ++c) {
    const float* v = b + c * zp;
#pragma omp simd reduction(| : bad)
    for (int64_t z = 0; z < n; ++z) bad |= !(fabsf(v[z]) <= FLT_MAX);
  }
  if (bad) r.flags |= kFlagNonFinite;
}

// In-place softmax over C rows (reference.softmax).
inline void softmax_line(float* b, int64_t C, int64_t zp, int64_t n, float* mx, float* s) {
  memcpy(mx, b, static_cast<size_t>(n) * 4);
  for (int64_t c = 1; c < C; ++c) {
    const float* v = b + c * zp;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) mx[z] = v[z] > mx[z] ? v[z] : mx[z];
  }
  for (int64_t z = 0; z < n; ++z) s[z] = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    float* v = b + c * zp;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) {
      const float e = expf_portable(v[z] - mx[z]);
      v[z] = e;
      s[z] = s[z] + e;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    float* v = b + c * zp;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) v[z] = v[z] / s[z];
  }
}

// h = -(sum_c plogp(b_c)) (reference.entropy); `scale` != 1 divides b first (fold mean).
inline void entropy_line(const float* b, int64_t C, int64_t zp, int64_t n, float* h) {
  for (int64_t z = 0; z < n; ++z) h[z] = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float* v = b + c * zp;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) h[z] = h[z] + plogp(v[z]);
  }
#pragma omp simd
  for (int64_t z = 0; z < n; ++z) h[z] = -h[z];
}

// dst = (first ? 0 : dst) + src
inline void add_line(float* dst, const float* src, int64_t n, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) dst[z] = 0.0f + src[z];
  } else {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) dst[z] = dst[z] + src[z];
  }
}

// Score map rows out[k * ostride + z] from fold sums s (C rows), entropy sum e, fold count mf.
inline void maps_from_sums(const float* s, const float* e, int64_t C, int64_t zp, int64_t n, float mf,
                           const ScoreSpec& spec, float* tmp, float* out, int64_t ostride) {
  if (spec.kind == kScoreExpectedEntropy) {
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) out[z] = e[z] / mf;
    return;
  }
  float* pe = tmp;
  for (int64_t z = 0; z < n; ++z) pe[z] = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float* v = s + c * zp;
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) pe[z] = pe[z] + plogp(v[z] / mf);
  }
#pragma omp simd
  for (int64_t z = 0; z < n; ++z) pe[z] = -pe[z];
  if (spec.kind == kScorePE) {
    memcpy(out, pe, static_cast<size_t>(n) * 4);
  } else if (spec.kind == kScoreClassPE) {
    const int64_t nc = static_cast<int64_t>(spec.classes.size());
    for (int64_t j = 0; j < nc; ++j) {
      const float* v = s + spec.classes[j] * zp;
      float* o = out + j * ostride;
#pragma omp simd
      for (int64_t z = 0; z < n; ++z) o[z] = pe[z] * (v[z] / mf);
    }
    memcpy(out + nc * ostride, pe, static_cast<size_t>(n) * 4);
  } else {  // BALD
#pragma omp simd
    for (int64_t z = 0; z < n; ++z) out[z] = bald_score(pe[z], e[z] / mf);
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
// map producers: fill K rows (stride zp) with the score maps of line (x, y)
// ---------------------------------------------------------------------------------------------

struct MapsProducer {
  const View4& maps;
  int64_t K, Z;
  void line(int64_t x, int64_t y, float* out, int64_t zp) {
    for (int64_t k = 0; k < K; ++k) load_line(maps, k, x, y, Z, out + k * zp);
  }
};

struct AccProducer {
  const View4& sum;
  const View4* ent;
  float mf;
  const ScoreSpec& spec;
  int64_t C, Z, zp;
  std::vector<float> s, e, tmp;
  AccProducer(const View4& sum_, const View4* ent_, float n, const ScoreSpec& spec_)
      : sum(sum_), ent(ent_), mf(n), spec(spec_), C(sum_.shape[0]), Z(sum_.shape[3]), zp(padded(sum_.shape[3])) {
    s.resize(C * zp);
    e.resize(zp);
    tmp.resize(zp);
  }
  void line(int64_t x, int64_t y, float* out, int64_t ostride) {
    const bool need_pe_sums = spec.kind != kScoreExpectedEntropy;
    if (need_pe_sums)
      for (int64_t c = 0; c < C; ++c) load_line(sum, c, x, y, Z, s.data() + c * zp);
    if (score_needs_fold_entropy(spec.kind)) load_line(*ent, 0, x, y, Z, e.data());
    maps_from_sums(s.data(), e.data(), C, zp, Z, mf, spec, tmp.data(), out, ostride);
  }
};

struct FoldsProducer {
  const std::vector<View4>& folds;
  bool logits;
  Thresholds th;
  const ScoreSpec& spec;
  bool track;
  int64_t C, Z, zp;
  std::vector<float> b, s, e, h, t1, t2;
  std::vector<CheckResult> checks;
  FoldsProducer(const std::vector<View4>& folds_, bool logits_, double tol, const ScoreSpec& spec_)
      : folds(folds_), logits(logits_), th(tol), spec(spec_), track(score_needs_fold_entropy(spec_.kind)),
        C(folds_[0].shape[0]), Z(folds_[0].shape[3]), zp(padded(folds_[0].shape[3])) {
    b.resize(C * zp);
    s.resize(C * zp);
    e.resize(zp);
    h.resize(zp);
    t1.resize(zp);
    t2.resize(zp);
    checks.resize(folds_.size());
  }
  void line(int64_t x, int64_t y, float* out, int64_t ostride) {
    const int64_t M = static_cast<int64_t>(folds.size());
    for (int64_t f = 0; f < M; ++f) {
      for (int64_t c = 0; c < C; ++c) load_line(folds[f], c, x, y, Z, b.data() + c * zp);
      if (logits) {
        check_finite_line(b.data(), C, zp, Z, checks[f]);
        softmax_line(b.data(), C, zp, Z, t1.data(), t2.data());
      } else {
        check_prob_line(b.data(), C, zp, Z, th, t1.data(), checks[f]);
      }
      for (int64_t c = 0; c < C; ++c) add_line(s.data() + c * zp, b.data() + c * zp, Z, f == 0);
      if (track) {
        entropy_line(b.data(), C, zp, Z, h.data());
        add_line(e.data(), h.data(), Z, f == 0);
      }
    }
    maps_from_sums(s.data(), e.data(), C, zp, Z, static_cast<float>(M), spec, t1.data(), out, ostride);
  }
};

// ---------------------------------------------------------------------------------------------
// plane passes (Z then Y) of one x-plane, reference.box_mean order
// ---------------------------------------------------------------------------------------------

struct PlaneScratch {
  std::vector<float> mb;
  std::vector<double> pz, acc, t1, py;
};

constexpr int64_t kYTile = 8;

template <class Producer>
void plane_pass(Producer& prod, int64_t x, int64_t K, int64_t X, int64_t Y, int64_t Z, const BoxSpec& box,
                PlaneScratch& sc, double* t2) {
  const int64_t zp = padded(Z);
  const int64_t ny = box.grid[1], nz = box.grid[2];
  const int64_t pY = box.patch[1], sY = box.stride[1], pZ = box.patch[2], sZ = box.stride[2];
  const int64_t jmax = K * kYTile;
  sc.mb.resize(jmax * zp);
  sc.pz.resize((Z + 1) * jmax);
  sc.acc.resize(std::max(jmax, nz));
  sc.t1.resize(K * Y * nz);
  sc.py.resize((Y + 1) * nz);
  double* acc = sc.acc.data();
  for (int64_t y0 = 0; y0 < Y; y0 += kYTile) {
    const int64_t yt = std::min(kYTile, Y - y0);
    for (int64_t yl = 0; yl < yt; ++yl) prod.line(x, y0 + yl, sc.mb.data() + yl * K * zp, zp);
    const int64_t J = yt * K;  // chain j = yl * K + k, row j of mb
    double* pz = sc.pz.data();
    for (int64_t j = 0; j < J; ++j) {
      acc[j] = 0.0;
      pz[j] = 0.0;
    }
    const float* mb = sc.mb.data();
    for (int64_t z = 0; z < Z; ++z) {
      double* row = pz + (z + 1) * J;
      for (int64_t j = 0; j < J; ++j) {
        acc[j] = acc[j] + static_cast<double>(mb[j * zp + z]);
        row[j] = acc[j];
      }
    }
    for (int64_t iz = 0; iz < nz; ++iz) {
      const double* hi = pz + (iz * sZ + pZ) * J;
      const double* lo = pz + (iz * sZ) * J;
      for (int64_t j = 0; j < J; ++j) {
        const int64_t yl = j / K, k = j % K;
        sc.t1[(k * Y + y0 + yl) * nz + iz] = hi[j] - lo[j];
      }
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
                int64_t x1, double* t2) {
#pragma omp parallel
  {
    auto prod = make();
    PlaneScratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t x = x0; x < x1; ++x) plane_pass(*prod, x, K, X, Y, Z, box, sc, t2);
    prod->finish();
  }
}

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

namespace {
template <class LineFn>
CheckResult for_lines_checked(int64_t X, int64_t Y, LineFn fn) {
  CheckResult total;
#pragma omp parallel
  {
    CheckResult mine;
    LineFn local = fn;  // thread-private scratch buffers
    local.init();
#pragma omp for schedule(static)
    for (int64_t l = 0; l < X * Y; ++l) local(l / Y, l % Y, mine);
#pragma omp critical
    {
      total.flags |= mine.flags;
      total.maxdev = std::max(total.maxdev, mine.maxdev);
    }
  }
  return total;
}

struct CheckLine {
  const View4& a;
  bool probs;
  Thresholds th;
  int64_t C, Z, zp;
  std::vector<float> b, t;
  void init() {
    b.resize(C * zp);
    t.resize(zp);
  }
  void operator()(int64_t x, int64_t y, CheckResult& r) {
    for (int64_t c = 0; c < C; ++c) load_line(a, c, x, y, Z, b.data() + c * zp);
    if (probs)
      check_prob_line(b.data(), C, zp, Z, th, t.data(), r);
    else
      check_finite_line(b.data(), C, zp, Z, r);
  }
};
}  // namespace

CheckResult check_probs(const View4& p, float tol) {
  CheckLine fn{p, true, Thresholds(tol), p.shape[0], p.shape[3], padded(p.shape[3]), {}, {}};
  return for_lines_checked(p.shape[1], p.shape[2], fn);
}

CheckResult check_finite(const View4& a) {
  CheckLine fn{a, false, Thresholds(0.0), a.shape[0], a.shape[3], padded(a.shape[3]), {}, {}};
  return for_lines_checked(a.shape[1], a.shape[2], fn);
}

CheckResult fold_add(const View4& fold, bool logits, float tol, float* sum, float* entsum, bool first) {
  CheckResult r = logits ? check_finite(fold) : check_probs(fold, tol);
  if (r.flags) return r;
  const int64_t C = fold.shape[0], X = fold.shape[1], Y = fold.shape[2], Z = fold.shape[3];
  const int64_t zp = padded(Z);
#pragma omp parallel
  {
    std::vector<float> b(C * zp), t1(zp), t2(zp), h(zp);
#pragma omp for schedule(static)
    for (int64_t l = 0; l < X * Y; ++l) {
      const int64_t x = l / Y, y = l % Y;
      for (int64_t c = 0; c < C; ++c) load_line(fold, c, x, y, Z, b.data() + c * zp);
      if (logits) softmax_line(b.data(), C, zp, Z, t1.data(), t2.data());
      for (int64_t c = 0; c < C; ++c) add_line(sum + ((c * X + x) * Y + y) * Z, b.data() + c * zp, Z, first);
      if (entsum) {
        entropy_line(b.data(), C, zp, Z, h.data());
        add_line(entsum + (x * Y + y) * Z, h.data(), Z, first);
      }
    }
  }
  return r;
}

void acc_maps(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, float* out) {
  const int64_t X = sum.shape[1], Y = sum.shape[2], Z = sum.shape[3];
  const int64_t K = spec.n_maps();
#pragma omp parallel
  {
    AccProducer prod(sum, entsum, n, spec);
#pragma omp for schedule(static)
    for (int64_t l = 0; l < X * Y; ++l) {
      const int64_t x = l / Y, y = l % Y;
      prod.line(x, y, out + (x * Y + y) * Z, X * Y * Z);
    }
  }
}

namespace {
template <class P>
struct Owned {
  P p;
  template <class... A>
  explicit Owned(A&&... a) : p(std::forward<A>(a)...) {}
  P& operator*() { return p; }
  P* operator->() { return &p; }
};
struct MapsProd : MapsProducer {
  void finish() {}
};
struct AccProd : AccProducer {
  using AccProducer::AccProducer;
  void finish() {}
};
}  // namespace

void box_planes_maps(const View4& maps, const BoxSpec& box, int64_t x0, int64_t x1, double* t2) {
  const int64_t K = maps.shape[0], X = maps.shape[1], Y = maps.shape[2], Z = maps.shape[3];
  run_planes([&]() { return Owned<MapsProd>(MapsProd{{maps, K, Z}}); }, K, X, Y, Z, box, x0, x1, t2);
}

void box_planes_acc(const View4& sum, const View4* entsum, float n, const ScoreSpec& spec, const BoxSpec& box,
                    int64_t x0, int64_t x1, double* t2) {
  const int64_t X = sum.shape[1], Y = sum.shape[2], Z = sum.shape[3];
  run_planes([&]() { return Owned<AccProd>(sum, entsum, n, spec); }, spec.n_maps(), X, Y, Z, box, x0, x1, t2);
}

namespace {
struct FoldsProd : FoldsProducer {
  std::vector<CheckResult>* total;
  FoldsProd(const std::vector<View4>& f, bool l, double tol, const ScoreSpec& s, std::vector<CheckResult>* t)
      : FoldsProducer(f, l, tol, s), total(t) {}
  void finish() {
#pragma omp critical(claspe_fold_checks)
    for (size_t i = 0; i < checks.size(); ++i) {
      (*total)[i].flags |= checks[i].flags;
      (*total)[i].maxdev = std::max((*total)[i].maxdev, checks[i].maxdev);
    }
  }
};
}  // namespace

std::vector<CheckResult> box_planes_folds(const std::vector<View4>& folds, bool logits, float tol,
                                          const ScoreSpec& spec, const BoxSpec& box, int64_t x0, int64_t x1,
                                          double* t2) {
  std::vector<CheckResult> total(folds.size());
  const View4& f0 = folds[0];
  const int64_t X = f0.shape[1], Y = f0.shape[2], Z = f0.shape[3];
  run_planes([&]() { return Owned<FoldsProd>(folds, logits, tol, spec, &total); }, spec.n_maps(), X, Y, Z, box, x0,
             x1, t2);
  return total;
}

void box_x_pass(const double* t2, int64_t K, int64_t X, const BoxSpec& box, float* out) {
  const int64_t nx = box.grid[0], m = box.grid[1] * box.grid[2];
  const int64_t pX = box.patch[0], sX = box.stride[0];
  const double vol = static_cast<double>(box.patch[0] * box.patch[1] * box.patch[2]);
  constexpr int64_t kBlock = 512;
  const int64_t nb = (m + kBlock - 1) / kBlock;
#pragma omp parallel
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
