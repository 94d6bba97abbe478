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
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "ClaSP PE compiled query engine (CPU; CUDA when built)";
  m.attr("HAS_CUDA") = false;
  m.def("build_info", &build_info, "What was built: compiler flags, OpenMP threads, CUDA part");
}
