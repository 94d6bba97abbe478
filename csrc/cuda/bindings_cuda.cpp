// Registers the CUDA engine on claspe._C (compiled by the host compiler with the rest of the module;
// the device code lives in the .cu files, reached through engine.h).  Called from csrc/bindings.cpp
// when the module is built with CLASPE_WITH_CUDA.
//
// Python passes arrays as tuples (ptr, dtype, shape, strides_in_elements, contiguous) built by
// claspe/_cuda.py from __cuda_array_interface__; all validation that does not need the data happens
// there.  Functions named cuda_* are internal (use claspe.ops or claspe._cuda).
//
// Selection: the ranking (rank keys + radix sort per key) runs on the GPU; the greedy non-overlap
// walk runs here on the host over the sorted prefix, copied back in chunks (first max(4096, 64*quota)
// keys per key, then doubling).  Reason: the walk is sequential by definition (each decision depends
// on all earlier ones), touches a few hundred to a few thousand candidates, and its overlap test is
// O(1) with the blocked mask over the stride grid; on the GPU it would run in a single thread or need
// one launch per step.  Not measured (no GPU was available when this was written).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/grid.h"
#include "common/hd.h"
#include "cuda/engine.h"

#ifndef CLASPE_CUDA_ARCHS
#define CLASPE_CUDA_ARCHS ""
#endif

namespace py = pybind11;
namespace cu = claspe::cuda;

namespace {

cu::DevArray to_dev(const py::tuple& t) {
  if (t.size() != 5) throw std::invalid_argument("internal: array descriptor must have 5 fields");
  cu::DevArray a;
  a.ptr = t[0].cast<uintptr_t>();
  a.dtype = t[1].cast<int>();
  const auto shape = t[2].cast<std::vector<int64_t>>();
  const auto strides = t[3].cast<std::vector<int64_t>>();
  a.contiguous = t[4].cast<bool>();
  const int d = static_cast<int>(shape.size());
  if (d < 1 || d > 4 || strides.size() != shape.size())
    throw std::invalid_argument("internal: arrays must have 1 to 4 dimensions");
  a.ndim = d;
  for (int i = 0; i < d; ++i) {
    a.shape[4 - d + i] = shape[i];
    a.strides[4 - d + i] = strides[i];
  }
  if (a.dtype != cu::kF32 && a.dtype != cu::kF16 && a.dtype != cu::kF64)
    throw std::invalid_argument("internal: unknown dtype code");
  return a;
}

// Inverse of claspe::rank_key for the score part (-0.0 comes back as +0.0).
float rank_key_score(uint64_t key) {
  const uint32_t descending = static_cast<uint32_t>(key >> 32);
  const uint32_t ascending = ~descending;
  const uint32_t u = (ascending & 0x80000000u) ? (ascending & 0x7FFFFFFFu) : ~ascending;
  return claspe::bits_float(u);
}

py::dict result_dict(const cu::CheckResult& r) {
  py::dict d;
  d["nan"] = r.nan;
  d["posinf"] = r.posinf;
  d["neginf"] = r.neginf;
  d["below"] = r.below;
  d["above"] = r.above;
  d["max_sum_dev"] = r.max_sum_dev;
  return d;
}

py::dict check(const py::tuple& arr, double lo, double hi, bool sum_axis0, int device, uintptr_t stream) {
  const cu::DevArray a = to_dev(arr);
  cu::CheckResult r;
  {
    py::gil_scoped_release nogil;
    r = cu::check_values(a, lo, hi, sum_axis0, device, stream);
  }
  return result_dict(r);
}

py::dict accumulate(const py::tuple& fold, uintptr_t old_sum, uintptr_t new_sum, uintptr_t old_ent, uintptr_t new_ent,
                    bool logits, float lo, float hi, int device, uintptr_t stream) {
  const cu::DevArray a = to_dev(fold);
  if (a.ndim != 4) throw std::invalid_argument("fold must be [C, X, Y, Z]");
  cu::CheckResult r;
  {
    py::gil_scoped_release nogil;
    r = cu::accumulate_fold(a, old_sum, new_sum, old_ent, new_ent, logits, lo, hi, device, stream);
  }
  return result_dict(r);
}

void score_maps(const py::tuple& src, float src_div, int kind, const std::vector<int>& classes, const py::object& mfe,
                float mfe_div, uintptr_t out, int device, uintptr_t stream) {
  const cu::DevArray s = to_dev(src);
  cu::DevArray m;
  const bool has_mfe = !mfe.is_none();
  if (has_mfe) m = to_dev(mfe.cast<py::tuple>());
  for (int c : classes)
    if (c < 0 || c >= s.shape[0]) throw std::invalid_argument("class index out of range");
  py::gil_scoped_release nogil;
  cu::score_maps(s, src_div, kind, classes, has_mfe ? &m : nullptr, mfe_div, out, device, stream);
}

void box_mean(const py::tuple& maps, std::array<int64_t, 3> patch, std::array<int64_t, 3> stride, uintptr_t t1,
              uintptr_t t2, uintptr_t out, int device, uintptr_t stream) {
  const cu::DevArray a = to_dev(maps);
  for (int i = 0; i < 3; ++i)
    if (patch[i] <= 0 || stride[i] <= 0) throw std::invalid_argument("patch and stride must be positive");
  py::gil_scoped_release nogil;
  cu::box_mean(a, patch.data(), stride.data(), t1, t2, out, device, stream);
}

void power_noise(const py::tuple& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
                 const py::object& noise, uintptr_t out, int device, uintptr_t stream) {
  const cu::DevArray s = to_dev(scores);
  cu::DevArray z;
  const bool has_noise = !noise.is_none();
  if (has_noise) z = to_dev(noise.cast<py::tuple>());
  py::gil_scoped_release nogil;
  cu::power_noise(s, beta, seed, loop, image, key, has_noise ? &z : nullptr, out, device, stream);
}

using Box = std::array<int64_t, 6>;  // start x, y, z, size x, y, z

// Fetches `count` sorted keys of key row k starting at rank `offset` into dst.
using KeyFetch = std::function<void(int64_t k, int64_t offset, int64_t count, uint64_t* dst)>;

// Greedy non-overlapping top-n per key over sorted rank keys (reference.select_patches), with the
// blocked mask over the stride grid (O(1) overlap test).  Keys are read in chunks: the first
// `first_chunk` of every row (prefetched by the caller into `prefix`, [K, first_chunk]), then
// doubling chunks from `fetch`.
struct Selection {
  std::vector<std::vector<int64_t>> starts;
  std::vector<std::vector<float>> vals;
};

Selection greedy(int64_t K, const int64_t n3[3], const int64_t pe[3], const std::array<int64_t, 3>& stride,
                 const std::vector<int64_t>& quotas, const std::vector<Box>& blocked, const std::vector<uint64_t>& prefix,
                 int64_t first_chunk, const KeyFetch& fetch) {
  const int64_t N = n3[0] * n3[1] * n3[2];
  Selection sel;
  sel.starts.resize(K);
  sel.vals.resize(K);
  std::vector<uint8_t> mask(static_cast<size_t>(N), 0);
  auto block = [&](const int64_t b[3], const int64_t q[3]) {
    int64_t lo[3], hi[3];
    for (int i = 0; i < 3; ++i)
      if (!claspe::blocked_range(b[i], q[i], pe[i], stride[i], n3[i], &lo[i], &hi[i])) return;
    for (int64_t x = lo[0]; x <= hi[0]; ++x)
      for (int64_t y = lo[1]; y <= hi[1]; ++y)
        std::memset(&mask[static_cast<size_t>((x * n3[1] + y) * n3[2] + lo[2])], 1,
                    static_cast<size_t>(hi[2] - lo[2] + 1));
  };
  for (const Box& b : blocked) {
    const int64_t st[3] = {b[0], b[1], b[2]}, sz[3] = {b[3], b[4], b[5]};
    block(st, sz);
  }
  std::vector<uint64_t> more;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t q = quotas[k];
    const uint64_t* chunk = prefix.data() + k * first_chunk;
    int64_t chunk_start = 0, chunk_len = first_chunk;
    for (int64_t pos = 0; pos < N && static_cast<int64_t>(sel.vals[k].size()) < q; ++pos) {
      if (pos >= chunk_start + chunk_len) {  // walked past the copied keys: fetch the next chunk
        const int64_t len = std::min<int64_t>(N - pos, 2 * chunk_len);
        more.resize(static_cast<size_t>(len));
        fetch(k, pos, len, more.data());
        chunk = more.data();
        chunk_start = pos;
        chunk_len = len;
      }
      const uint64_t key = chunk[pos - chunk_start];
      const int64_t idx = static_cast<int64_t>(claspe::rank_key_index(key));
      if (mask[static_cast<size_t>(idx)]) continue;
      const int64_t gz = idx % n3[2], gy = (idx / n3[2]) % n3[1], gx = idx / (n3[1] * n3[2]);
      const int64_t st[3] = {gx * stride[0], gy * stride[1], gz * stride[2]};
      sel.starts[k].insert(sel.starts[k].end(), st, st + 3);
      sel.vals[k].push_back(rank_key_score(key));
      block(st, pe);
    }
  }
  return sel;
}

struct SelectGeom {
  int64_t K, N, n3[3], pe[3], first;
};

SelectGeom select_geom(const cu::DevArray& a, const std::array<int64_t, 3>& volume, const std::array<int64_t, 3>& patch,
                       const std::array<int64_t, 3>& stride, const std::vector<int64_t>& quotas, int64_t first_chunk) {
  SelectGeom g;
  g.K = a.shape[0];
  for (int i = 0; i < 3; ++i) g.n3[i] = a.shape[i + 1];
  g.N = g.n3[0] * g.n3[1] * g.n3[2];
  if (static_cast<int64_t>(quotas.size()) != g.K) throw std::invalid_argument("one quota per key is needed");
  for (int i = 0; i < 3; ++i) {
    if (patch[i] <= 0 || stride[i] <= 0 || volume[i] <= 0)
      throw std::invalid_argument("volume, patch and stride must be positive");
    g.pe[i] = claspe::clipped_patch(volume[i], patch[i]);
    if (claspe::grid_dim(volume[i], patch[i], stride[i]) != g.n3[i])
      throw std::invalid_argument("scores grid does not match volume_shape, patch and stride");
  }
  int64_t qmax = 0;
  for (int64_t q : quotas) {
    if (q < 0) throw std::invalid_argument("quotas must be >= 0");
    qmax = std::max(qmax, q);
  }
  if (first_chunk <= 0) first_chunk = std::max<int64_t>(4096, 64 * qmax);
  g.first = std::min<int64_t>(g.N, first_chunk);
  if (qmax == 0) g.first = 0;
  return g;
}

py::list to_python(const Selection& sel) {
  py::list out;
  for (size_t k = 0; k < sel.vals.size(); ++k) {
    const py::ssize_t m = static_cast<py::ssize_t>(sel.vals[k].size());
    py::array_t<int64_t> s({m, static_cast<py::ssize_t>(3)});
    py::array_t<float> v(m);
    if (m > 0) {
      std::memcpy(s.mutable_data(), sel.starts[k].data(), sel.starts[k].size() * sizeof(int64_t));
      std::memcpy(v.mutable_data(), sel.vals[k].data(), sel.vals[k].size() * sizeof(float));
    }
    out.append(py::make_tuple(s, v));
  }
  return out;
}

py::list select_patches(const py::tuple& scores, uintptr_t keys, std::array<int64_t, 3> volume,
                        std::array<int64_t, 3> patch, std::array<int64_t, 3> stride, const std::vector<int64_t>& quotas,
                        const std::vector<Box>& blocked, int64_t first_chunk, int device, uintptr_t stream) {
  const cu::DevArray a = to_dev(scores);
  const SelectGeom g = select_geom(a, volume, patch, stride, quotas, first_chunk);
  Selection sel;
  {
    py::gil_scoped_release nogil;
    if (cu::rank_candidates(a, keys, device, stream)) throw std::invalid_argument("scores contain NaN or +Inf");
    std::vector<uint64_t> prefix(static_cast<size_t>(g.K * g.first));
    cu::copy_key_prefixes_to_host(keys, g.K, g.N, g.first, prefix.data(), device, stream);
    const int64_t N = g.N;
    KeyFetch fetch = [&](int64_t k, int64_t offset, int64_t count, uint64_t* dst) {
      cu::copy_keys_to_host(keys, k * N + offset, count, dst, device, stream);
    };
    sel = greedy(g.K, g.n3, g.pe, stride, quotas, blocked, prefix, g.first, fetch);
  }
  return to_python(sel);
}

// ---- host emulation (numpy arrays in host memory; see engine.h) ----------------------------------

cu::DevArray host_view(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  cu::DevArray d;
  if (dt.kind() == 'f' && dt.itemsize() == 4)
    d.dtype = cu::kF32;
  else if (dt.kind() == 'f' && dt.itemsize() == 2)
    d.dtype = cu::kF16;
  else if (dt.kind() == 'f' && dt.itemsize() == 8)
    d.dtype = cu::kF64;
  else
    throw std::invalid_argument(std::string(name) + ": dtype must be float16, float32 or float64");
  const int nd = static_cast<int>(a.ndim());
  if (nd < 1 || nd > 4) throw std::invalid_argument(std::string(name) + ": 1 to 4 dimensions");
  d.ptr = reinterpret_cast<uintptr_t>(a.data());
  d.ndim = nd;
  for (int i = 0; i < nd; ++i) {
    if (a.strides(i) % dt.itemsize() != 0) throw std::invalid_argument(std::string(name) + ": unaligned strides");
    d.shape[4 - nd + i] = a.shape(i);
    d.strides[4 - nd + i] = a.strides(i) / dt.itemsize();
  }
  d.contiguous = (a.flags() & py::array::c_style) != 0;
  return d;
}

py::array_t<float> new_f32(const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<float>(s);
}

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == ';' || ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace

void claspe_cuda_build_info(py::dict& d) {
  std::string why;
  const int n = cu::device_count(&why);
  d["cuda_built"] = true;
  d["cuda_archs"] = split_archs(CLASPE_CUDA_ARCHS);
  d["cuda_device_count"] = n;
  d["cuda_runtime_version"] = cu::runtime_version();
  d["cuda_driver_version"] = cu::driver_version();
  if (n == 0) d["cuda_unavailable_reason"] = why.empty() ? std::string("no CUDA device") : why;
}

void claspe_register_cuda(py::module_& m) {
  m.attr("CUDA_ARCHS") = split_archs(CLASPE_CUDA_ARCHS);
  m.def(
      "cuda_device_count",
      []() {
        std::string why;
        const int n = cu::device_count(&why);
        return py::make_tuple(n, why);
      },
      "(number of usable CUDA devices, reason when 0); never raises");
  m.def("cuda_pointer_device", &cu::pointer_device, py::arg("ptr"),
        "device ordinal of a device pointer, -1 for host/unknown memory");
  m.def(
      "cuda_synchronize",
      [](int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cu::stream_synchronize(device, stream);
      },
      py::arg("device"), py::arg("stream"));
  m.def("cuda_check", &check, py::arg("array"), py::arg("lo"), py::arg("hi"), py::arg("sum_axis0"),
        py::arg("device"), py::arg("stream"), "value checks (NaN/Inf/range/channel sums); synchronizes");
  m.def("cuda_accumulate", &accumulate, py::arg("fold"), py::arg("old_sum"), py::arg("new_sum"), py::arg("old_ent"),
        py::arg("new_ent"), py::arg("logits"), py::arg("lo"), py::arg("hi"), py::arg("device"), py::arg("stream"),
        "new = old + fold (softmax with logits) and the fold's checks in one pass; synchronizes; returns the checks");
  m.def("cuda_score_maps", &score_maps, py::arg("src"), py::arg("src_div"), py::arg("kind"), py::arg("classes"),
        py::arg("mfe"), py::arg("mfe_div"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def(
      "cuda_divide",
      [](uintptr_t in, float div, uintptr_t out, int64_t n, int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cu::divide(in, div, out, n, device, stream);
      },
      py::arg("src"), py::arg("div"), py::arg("out"), py::arg("n"), py::arg("device"), py::arg("stream"));
  m.def("cuda_box_mean", &box_mean, py::arg("maps"), py::arg("patch"), py::arg("stride"), py::arg("t1"),
        py::arg("t2"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def("cuda_power_noise", &power_noise, py::arg("scores"), py::arg("beta"), py::arg("seed"), py::arg("loop"),
        py::arg("image"), py::arg("key"), py::arg("noise"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def("cuda_select", &select_patches, py::arg("scores"), py::arg("keys"), py::arg("volume_shape"),
        py::arg("patch"), py::arg("stride"), py::arg("quotas"), py::arg("blocked"), py::arg("first_chunk"),
        py::arg("device"), py::arg("stream"),
        "rank on the GPU, greedy non-overlap walk on the host; returns [(starts int64 [n,3], scores f32 [n])]");

  // host emulation of the kernel bodies (tests without a GPU); arrays are numpy, results numpy
  m.def(
      "cuda_emulate_accumulate",
      [](const py::array& fold, py::array_t<float>& sum, py::object ent, bool logits, bool first, float lo, float hi) {
        const cu::DevArray f = host_view(fold, "fold");
        if (f.ndim != 4) throw std::invalid_argument("fold must be [C, X, Y, Z]");
        if (!(sum.flags() & py::array::c_style) || sum.size() != f.size())
          throw std::invalid_argument("sum must be a C-contiguous float32 array of the fold's size");
        float* e = nullptr;
        py::array_t<float> ea;
        if (!ent.is_none()) {
          ea = ent.cast<py::array_t<float>>();
          if (!(ea.flags() & py::array::c_style) || ea.size() * f.shape[0] != f.size())
            throw std::invalid_argument("ent_sum must be a C-contiguous float32 [X, Y, Z] array");
          e = ea.mutable_data();
        }
        float* s = sum.mutable_data();  // in place on the host: new = old (+ p)
        return result_dict(cu::emulate_accumulate_fold(f, first ? nullptr : s, s, first ? nullptr : e, e, logits, lo, hi));
      },
      py::arg("fold"), py::arg("sum"), py::arg("ent_sum"), py::arg("logits"), py::arg("first"), py::arg("lo"),
      py::arg("hi"));
  m.def(
      "cuda_emulate_score_maps",
      [](const py::array& src, float src_div, int kind, const std::vector<int>& classes, py::object mfe,
         float mfe_div) {
        const cu::DevArray s = host_view(src, "src");
        for (int c : classes)
          if (c < 0 || c >= s.shape[0]) throw std::invalid_argument("class index out of range");
        cu::DevArray m;
        if (!mfe.is_none()) m = host_view(mfe.cast<py::array>(), "mfe");
        const int64_t K = kind == cu::kClassPE ? static_cast<int64_t>(classes.size()) + 1 : 1;
        auto out = new_f32({K, s.shape[1], s.shape[2], s.shape[3]});
        cu::emulate_score_maps(s, src_div, kind, classes, mfe.is_none() ? nullptr : &m, mfe_div, out.mutable_data());
        return out;
      },
      py::arg("src"), py::arg("src_div"), py::arg("kind"), py::arg("classes"), py::arg("mfe"), py::arg("mfe_div"));
  m.def(
      "cuda_emulate_box_mean",
      [](const py::array& maps, std::array<int64_t, 3> patch, std::array<int64_t, 3> stride) {
        const cu::DevArray a = host_view(maps, "maps");
        int64_t n[3];
        for (int i = 0; i < 3; ++i) {
          if (patch[i] <= 0 || stride[i] <= 0) throw std::invalid_argument("patch and stride must be positive");
          n[i] = claspe::grid_dim(a.shape[i + 1], patch[i], stride[i]);
        }
        auto out = new_f32({a.shape[0], n[0], n[1], n[2]});
        cu::emulate_box_mean(a, patch.data(), stride.data(), out.mutable_data());
        return out;
      },
      py::arg("maps"), py::arg("patch"), py::arg("stride"));
  m.def(
      "cuda_emulate_power_noise",
      [](const py::array& scores, double beta, uint64_t seed, uint32_t loop, uint32_t image, uint32_t key,
         py::object noise) {
        const cu::DevArray s = host_view(scores, "scores");
        cu::DevArray z;
        if (!noise.is_none()) z = host_view(noise.cast<py::array>(), "noise");
        std::vector<int64_t> shape(scores.shape(), scores.shape() + scores.ndim());
        auto out = new_f32(shape);
        cu::emulate_power_noise(s, beta, seed, loop, image, key, noise.is_none() ? nullptr : &z, out.mutable_data());
        return out;
      },
      py::arg("scores"), py::arg("beta"), py::arg("seed"), py::arg("loop"), py::arg("image"), py::arg("key"),
      py::arg("noise"));
  m.def(
      "cuda_emulate_select",
      [](const py::array& scores, std::array<int64_t, 3> volume, std::array<int64_t, 3> patch,
         std::array<int64_t, 3> stride, const std::vector<int64_t>& quotas, const std::vector<Box>& blocked,
         int64_t first_chunk) {
        const cu::DevArray a = host_view(scores, "scores");
        const SelectGeom g = select_geom(a, volume, patch, stride, quotas, first_chunk);
        std::vector<uint64_t> keys(static_cast<size_t>(g.K * g.N));
        if (cu::emulate_rank_candidates(a, keys.data())) throw std::invalid_argument("scores contain NaN or +Inf");
        std::vector<uint64_t> prefix(static_cast<size_t>(g.K * g.first));
        for (int64_t k = 0; k < g.K; ++k)
          std::copy(keys.begin() + k * g.N, keys.begin() + k * g.N + g.first, prefix.begin() + k * g.first);
        const int64_t N = g.N;
        KeyFetch fetch = [&](int64_t k, int64_t offset, int64_t count, uint64_t* dst) {
          std::copy(keys.begin() + k * N + offset, keys.begin() + k * N + offset + count, dst);
        };
        return to_python(greedy(g.K, g.n3, g.pe, stride, quotas, blocked, prefix, g.first, fetch));
      },
      py::arg("scores"), py::arg("volume_shape"), py::arg("patch"), py::arg("stride"), py::arg("quotas"),
      py::arg("blocked"), py::arg("first_chunk"));
}
