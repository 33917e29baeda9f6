// The Python module pygpt._C. Importing it registers every op with the dispatcher (see ops.cpp); the few
// bindings here only describe how the extension was built, for `pygpt info`.
#include <pybind11/pybind11.h>

#include <string>

#ifndef PYGPT_TORCH_VERSION
#define PYGPT_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pygpt's compiled ops (registered under torch.ops.pygpt)";
  m.def("built_with_cuda", []() { return PYGPT_WITH_CUDA != 0; }, "Whether the CUDA C++ kernels were compiled in");
  m.def("built_against_torch", []() { return std::string(PYGPT_TORCH_VERSION); },
        "The torch version whose headers this extension was compiled against");
#ifdef _OPENMP
  m.def("openmp", []() { return true; });
#else
  m.def("openmp", []() { return false; });
#endif
}
