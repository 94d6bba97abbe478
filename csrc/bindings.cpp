// The only PYBIND11_MODULE of the project: claspe._C.
//
// Thin layer: converts arrays (buffer protocol; float32/float16, any strides) to views, checks the
// structural things the kernels rely on (ndim, dtype, writable contiguous outputs), releases the GIL
// and calls the CPU kernels of csrc/cpu/engine.h.  Shape/semantic validation with user-facing
// messages lives in claspe/ops.py; errors here raise ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/hd.h"
#include "cpu/engine.h"

namespace py = pybind11;
using claspe::cpu::View4;
using I3 = std::array<int64_t, 3>;

#ifndef CLASPE_CXX_FLAGS
#define CLASPE_CXX_FLAGS ""
#endif

#ifdef CLASPE_WITH_CUDA
// CUDA hook (helper H2, committed in 0cecb6c; please keep): csrc/cuda/bindings_cuda.cpp registers the
// CUDA kernels and fills the cuda_* build_info fields (device count 0, no error, without driver/GPU).
void claspe_register_cuda(pybind11::module_& m);
void claspe_cuda_build_info(pybind11::dict& d);
#endif

namespace {

View4 view_of(const py::array& a, const char* name, int ndim_lo = 4, int ndim_hi = 4) {
  const int nd = static_cast<int>(a.ndim());
  if (nd < ndim_lo || nd > ndim_hi)
    throw py::value_error(std::string(name) + ": wrong number of dimensions " + std::to_string(nd));
  const py::dtype dt = a.dtype();
  View4 v;
  if (dt.kind() == 'f' && dt.itemsize() == 4)
    v.dtype = claspe::cpu::kF32;
  else if (dt.kind() == 'f' && dt.itemsize() == 2)
    v.dtype = claspe::cpu::kF16;
  else
    throw py::value_error(std::string(name) + ": dtype must be float32 or float16");
  v.data = static_cast<const char*>(a.data());
  const int off = 4 - nd;
  for (int i = 0; i < nd; ++i) {
    v.shape[off + i] = a.shape(i);
    v.strides[off + i] = a.strides(i);
  }
  return v;
}

float* out_ptr(py::array_t<float>& a, const char* name, int64_t size) {
  if (!(a.flags() & py::array::c_style) || !a.writeable() || a.size() != size)
    throw py::value_error(std::string(name) + ": must be a writable C-contiguous float32 array of the right size");
  return a.mutable_data();
}

claspe::cpu::ScoreSpec spec_of(int kind, const std::vector<int>& classes) {
  if (kind < 0 || kind > 3) throw py::value_error("unknown score kind");
  claspe::cpu::ScoreSpec s;
  s.kind = kind;
  s.classes = classes;
  if (kind == 1 && classes.empty()) throw py::value_error("class_pe needs classes");
  return s;
}

void check_classes(const claspe::cpu::ScoreSpec& s, int64_t C) {
  for (int c : s.classes)
    if (c < 0 || c >= C) throw py::value_error("class index out of range");
}

claspe::cpu::BoxSpec box_of(const int64_t dims[3], const I3& patch, const I3& stride) {
  for (int a = 0; a < 3; ++a)
    if (patch[a] <= 0 || stride[a] <= 0) throw py::value_error("patch and stride must be positive");
  return claspe::cpu::make_box_spec(dims, patch.data(), stride.data());
}

// The optional fold entropy sum of acc_maps/acc_box: its [X, Y, Z] view, stored in ``storage``, or
// nullptr when ``entsum`` is None, which only scores below kind 2 (not BALD/expected entropy) allow.
const View4* entsum_view(const py::object& entsum, int kind, View4& storage) {
  if (!entsum.is_none()) {
    storage = view_of(entsum.cast<py::array>(), "entropy sum", 3, 3);
    return &storage;
  }
  if (kind >= 2) throw py::value_error("this score needs the fold entropy sum");
  return nullptr;
}

py::tuple check_tuple(const claspe::cpu::CheckResult& r) { return py::make_tuple(r.flags, r.maxdev); }

py::array_t<float> new_f32(std::vector<py::ssize_t> shape) { return py::array_t<float>(shape); }

py::array_t<float> run_x_pass(const std::vector<double>& t2, int64_t K, int64_t X, const claspe::cpu::BoxSpec& box) {
  py::array_t<float> out = new_f32({K, box.grid[0], box.grid[1], box.grid[2]});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    claspe::cpu::box_x_pass(t2.data(), K, X, box, o);
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  d["cxx_flags"] = std::string(CLASPE_CXX_FLAGS);
#ifdef _OPENMP
  d["openmp"] = true;
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["omp_max_threads"] = 1;
#endif
#if defined(__F16C__)
  d["f16c"] = true;
#else
  d["f16c"] = false;
#endif
  d["cuda_built"] = false;
  d["cuda_archs"] = py::list();
  d["cuda_device_count"] = 0;
#ifdef CLASPE_WITH_CUDA
  claspe_cuda_build_info(d);
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ClaSP PE compiled query engine (CPU; CUDA when built). Use claspe.ops, not this module.";
  m.attr("HAS_CUDA") = false;
#ifdef CLASPE_WITH_CUDA
  m.attr("HAS_CUDA") = true;
  claspe_register_cuda(m);
#endif
  m.def("build_info", &build_info, "What was built: compiler flags, OpenMP threads, CUDA part");
  m.def("set_num_threads", &claspe::cpu::set_num_threads, py::arg("n"), "OpenMP threads for later kernels");
  m.def("get_num_threads", &claspe::cpu::get_num_threads);

  m.def("check_probs", [](const py::array& p, double tol) {
    View4 v = view_of(p, "probabilities");
    claspe::cpu::CheckResult r;
    {
      py::gil_scoped_release nogil;
      r = claspe::cpu::check_probs(v, static_cast<float>(tol));
    }
    return check_tuple(r);
  }, py::arg("p"), py::arg("tol"), "(flags, max |sum-1|) of a [C, X, Y, Z] probability array");

  m.def("check_finite", [](const py::array& a) {
    View4 v = view_of(a, "array", 1, 4);
    claspe::cpu::CheckResult r;
    {
      py::gil_scoped_release nogil;
      r = claspe::cpu::check_finite(v);
    }
    return r.flags;
  }, py::arg("a"));

  m.def("fold_add", [](const py::array& fold, bool logits, double tol, py::array_t<float>& sum,
                       py::object entsum, bool first) {
    View4 v = view_of(fold, "fold");
    const int64_t n = v.shape[0] * v.shape[1] * v.shape[2] * v.shape[3];
    float* s = out_ptr(sum, "sum", n);
    float* e = nullptr;
    py::array_t<float> ent;
    if (!entsum.is_none()) {
      ent = entsum.cast<py::array_t<float>>();
      e = out_ptr(ent, "entropy sum", n / v.shape[0]);
    }
    claspe::cpu::CheckResult r;
    {
      py::gil_scoped_release nogil;
      r = claspe::cpu::fold_add(v, logits, static_cast<float>(tol), s, e, first);
    }
    return check_tuple(r);
  }, py::arg("fold"), py::arg("logits"), py::arg("tol"), py::arg("sum"), py::arg("entsum"), py::arg("first"),
     "Validate then add one fold; returns (flags, maxdev); nothing is written when flags != 0");

  m.def("acc_maps", [](const py::array& sum, py::object entsum, float n, int kind, std::vector<int> classes) {
    View4 v = view_of(sum, "sum");
    auto spec = spec_of(kind, classes);
    check_classes(spec, v.shape[0]);
    View4 e;
    const View4* ep = entsum_view(entsum, kind, e);
    const int64_t K = spec.n_maps();
    py::array_t<float> out = new_f32({K, v.shape[1], v.shape[2], v.shape[3]});
    float* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      claspe::cpu::acc_maps(v, ep, n, spec, o);
    }
    return out;
  }, py::arg("sum"), py::arg("entsum"), py::arg("n"), py::arg("kind"), py::arg("classes"));

  m.def("box_mean", [](const py::array& maps, I3 patch, I3 stride) {
    View4 v = view_of(maps, "maps");
    auto box = box_of(v.shape + 1, patch, stride);
    const int64_t K = v.shape[0], X = v.shape[1];
    std::vector<double> t2(K * X * box.grid[1] * box.grid[2]);
    {
      py::gil_scoped_release nogil;
      claspe::cpu::box_planes_maps(v, box, 0, X, t2.data());
    }
    return run_x_pass(t2, K, X, box);
  }, py::arg("maps"), py::arg("patch"), py::arg("stride"));

  m.def("acc_box", [](const py::array& sum, py::object entsum, float n, int kind, std::vector<int> classes, I3 patch,
                      I3 stride) {
    View4 v = view_of(sum, "sum");
    auto spec = spec_of(kind, classes);
    check_classes(spec, v.shape[0]);
    View4 e;
    const View4* ep = entsum_view(entsum, kind, e);
    auto box = box_of(v.shape + 1, patch, stride);
    const int64_t K = spec.n_maps(), X = v.shape[1];
    std::vector<double> t2(K * X * box.grid[1] * box.grid[2]);
    {
      py::gil_scoped_release nogil;
      claspe::cpu::box_planes_acc(v, ep, n, spec, box, 0, X, t2.data());
    }
    return run_x_pass(t2, K, X, box);
  }, py::arg("sum"), py::arg("entsum"), py::arg("n"), py::arg("kind"), py::arg("classes"), py::arg("patch"),
     py::arg("stride"));

  m.def("folds_box_planes", [](const std::vector<py::array>& folds, bool logits, double tol, int kind,
                               std::vector<int> classes, I3 patch, I3 stride, int64_t x0, int64_t x1,
                               py::array_t<double>& t2) {
    if (folds.empty()) throw py::value_error("no folds");
    std::vector<View4> views;
    for (const auto& f : folds) views.push_back(view_of(f, "fold"));
    for (const auto& v : views)
      for (int a = 0; a < 4; ++a)
        if (v.shape[a] != views[0].shape[a] || v.dtype != views[0].dtype)
          throw py::value_error("folds differ in shape or dtype");
    auto spec = spec_of(kind, classes);
    check_classes(spec, views[0].shape[0]);
    auto box = box_of(views[0].shape + 1, patch, stride);
    const int64_t K = spec.n_maps(), X = views[0].shape[1];
    if (x0 < 0 || x1 > X || x0 > x1) throw py::value_error("bad x range");
    if (!(t2.flags() & py::array::c_style) || !t2.writeable() || t2.size() != K * X * box.grid[1] * box.grid[2])
      throw py::value_error("t2 must be a writable contiguous float64 [K, X, ny, nz] array");
    double* t = t2.mutable_data();
    std::vector<claspe::cpu::CheckResult> r;
    {
      py::gil_scoped_release nogil;
      r = claspe::cpu::box_planes_folds(views, logits, static_cast<float>(tol), spec, box, x0, x1, t);
    }
    py::list out;
    for (const auto& c : r) out.append(check_tuple(c));
    return out;
  }, py::arg("folds"), py::arg("logits"), py::arg("tol"), py::arg("kind"), py::arg("classes"), py::arg("patch"),
     py::arg("stride"), py::arg("x0"), py::arg("x1"), py::arg("t2"),
     "Fused multi-fold Z/Y box passes of planes x0..x1-1 into t2; returns per-fold (flags, maxdev)");

  m.def("box_x_pass", [](py::array_t<double, py::array::c_style | py::array::forcecast> t2, I3 dims, I3 patch,
                         I3 stride) {
    auto box = box_of(dims.data(), patch, stride);
    const int64_t X = dims[0];
    if (t2.ndim() != 4 || t2.shape(1) != X || t2.shape(2) != box.grid[1] || t2.shape(3) != box.grid[2])
      throw py::value_error("t2 has the wrong shape");
    const int64_t K = t2.shape(0);
    py::array_t<float> out = new_f32({K, box.grid[0], box.grid[1], box.grid[2]});
    float* o = out.mutable_data();
    const double* t = t2.data();
    {
      py::gil_scoped_release nogil;
      claspe::cpu::box_x_pass(t, K, X, box, o);
    }
    return out;
  }, py::arg("t2"), py::arg("dims"), py::arg("patch"), py::arg("stride"));

  m.def("power_noise", [](py::array_t<float, py::array::c_style | py::array::forcecast> s, uint64_t seed,
                          uint32_t loop, uint32_t image, uint32_t key, double beta) {
    if (static_cast<uint64_t>(s.size()) > 0xFFFFFFFFull) throw py::value_error("more than 2**32 candidates");
    std::vector<py::ssize_t> shape(s.shape(), s.shape() + s.ndim());
    py::array_t<float> out(shape);
    float* o = out.mutable_data();
    const float* in = s.data();
    const int64_t n = s.size();
    {
      py::gil_scoped_release nogil;
      claspe::cpu::power_noise(in, n, seed, loop, image, key, beta, o);
    }
    return out;
  }, py::arg("scores"), py::arg("seed"), py::arg("loop"), py::arg("image"), py::arg("key"), py::arg("beta"));

  m.def("log_plus_noise", [](py::array_t<float, py::array::c_style | py::array::forcecast> s,
                             py::array_t<double, py::array::c_style | py::array::forcecast> noise) {
    if (noise.size() != s.size()) throw py::value_error("noise and scores differ in size");
    std::vector<py::ssize_t> shape(s.shape(), s.shape() + s.ndim());
    py::array_t<float> out(shape);
    float* o = out.mutable_data();
    const float* in = s.data();
    const double* nz = noise.data();
    const int64_t n = s.size();
    {
      py::gil_scoped_release nogil;
      claspe::cpu::log_plus_noise(in, nz, n, o);
    }
    return out;
  }, py::arg("scores"), py::arg("noise"));

  m.def("select_patches", [](py::array_t<float, py::array::c_style | py::array::forcecast> scores, I3 patch,
                             I3 stride, I3 volume_shape, std::vector<int64_t> quotas,
                             std::vector<std::pair<I3, I3>> blocked) {
    if (scores.ndim() != 4) throw py::value_error("scores must be [K, nx, ny, nz]");
    auto box = box_of(volume_shape.data(), patch, stride);
    for (int a = 0; a < 3; ++a)
      if (scores.shape(a + 1) != box.grid[a]) throw py::value_error("scores grid does not match the volume");
    const int64_t K = scores.shape(0);
    if (static_cast<int64_t>(quotas.size()) != K) throw py::value_error("one quota per key");
    if (box.grid[0] * box.grid[1] * box.grid[2] > 0xFFFFFFFFll) throw py::value_error("more than 2**32 candidates");
    std::vector<claspe::cpu::Box> boxes;
    for (const auto& b : blocked) {
      claspe::cpu::Box bb;
      for (int a = 0; a < 3; ++a) {
        bb.start[a] = b.first[a];
        bb.size[a] = b.second[a];
      }
      boxes.push_back(bb);
    }
    const float* s = scores.data();
    std::vector<claspe::cpu::KeySelection> sel;
    {
      py::gil_scoped_release nogil;
      sel = claspe::cpu::select_patches(s, K, box, quotas, boxes);
    }
    py::list out;
    for (auto& ks : sel) {
      const py::ssize_t nk = static_cast<py::ssize_t>(ks.scores.size());
      py::array_t<int64_t> st(std::vector<py::ssize_t>{nk, 3});
      py::array_t<float> sc(std::vector<py::ssize_t>{nk});
      std::copy(ks.starts.begin(), ks.starts.end(), st.mutable_data());
      std::copy(ks.scores.begin(), ks.scores.end(), sc.mutable_data());
      out.append(py::make_tuple(st, sc));
    }
    return out;
  }, py::arg("scores"), py::arg("patch"), py::arg("stride"), py::arg("volume_shape"), py::arg("quotas"),
     py::arg("blocked"));

  m.def("half_to_float_portable", [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> h) {
    py::array_t<float> out(h.size());
    float* o = out.mutable_data();
    const uint16_t* in = h.data();
    for (py::ssize_t i = 0; i < h.size(); ++i) o[i] = claspe::half_to_float(in[i]);
    return out;
  }, py::arg("bits"), "csrc/common/hd.h half_to_float on raw float16 bits (tests compare it with numpy)");
}
