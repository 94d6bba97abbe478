// The only PYBIND11_MODULE of the project: claspe._C.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifndef CLASPE_CXX_FLAGS
#define CLASPE_CXX_FLAGS ""
#endif

#ifdef CLASPE_WITH_CUDA
// CUDA part (csrc/cuda/bindings_cuda.cpp): registers the CUDA kernels on the module and fills the
// cuda_* fields of build_info (device count is 0, without error, when there is no driver or GPU).
void claspe_register_cuda(pybind11::module_& m);
void claspe_cuda_build_info(pybind11::dict& d);
#endif

static py::dict build_info() {
  py::dict d;
  d["cxx_flags"] = std::string(CLASPE_CXX_FLAGS);
#ifdef _OPENMP
  d["openmp"] = true;
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["omp_max_threads"] = 1;
#endif
  d["cuda_built"] = false;
  d["cuda_archs"] = py::list();
  d["cuda_device_count"] = 0;
#ifdef CLASPE_WITH_CUDA
  claspe_cuda_build_info(d);
#endif
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "ClaSP PE compiled query engine (CPU; CUDA when built)";
  m.attr("HAS_CUDA") = false;
#ifdef CLASPE_WITH_CUDA
  m.attr("HAS_CUDA") = true;
  claspe_register_cuda(m);
#endif
  m.def("build_info", &build_info, "What was built: compiler flags, OpenMP threads, CUDA part");
}
